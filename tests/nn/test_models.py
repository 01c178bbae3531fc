"""Model builders: deterministic from a seed, and the global RNG is never touched."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unigrad import UnigradError
from unigrad.nn import mlp, small_cnn


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("build", [lambda s: mlp([20, 30, 5], seed=s), lambda s: small_cnn(1, 12, (4, 8), 3, seed=s)])
def test_same_seed_same_weights_and_global_rng_untouched(build):
    state = torch.random.get_rng_state()
    a, b, c = _params(build(3)), _params(build(3)), _params(build(4))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not any(torch.equal(x, z) for x, z in zip(a, c))


def test_init_matches_pytorch_default_bounds():
    model = mlp([400, 300, 10], seed=0)
    w, bias = model[1].weight.detach(), model[1].bias.detach()
    bound = 1 / math.sqrt(400)
    assert w.abs().max() <= bound and bias.abs().max() <= bound
    # uniform on [-b, b] has standard deviation b/√3; over 120,000 draws the sample SD has relative SE
    # √((κ − 1)/4n) = 0.0013 (kurtosis κ = 1.8), i.e. 7.5e-4·b: 0.01·b is 13 SE
    assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.01 * bound


def test_mlp_structure_and_shapes():
    model = mlp([8, 16, 4], activation="tanh", seed=0)
    assert [type(m) for m in model] == [nn.Flatten, nn.Linear, nn.Tanh, nn.Linear]
    assert model(torch.zeros(5, 2, 4)).shape == (5, 4)
    cnn = small_cnn(1, 28, (16, 32), 10, seed=0)
    assert cnn(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_bad_builder_options():
    with pytest.raises(UnigradError, match="activation"):
        mlp([4, 2], activation="swishy")
    with pytest.raises(UnigradError):
        mlp([4])
    with pytest.raises(UnigradError, match="layer size"):
        mlp([4, 0, 2])
