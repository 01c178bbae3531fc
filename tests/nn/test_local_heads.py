"""Local heads: the wrapped model computes what the body computes; heads are found per block and never perturbed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unigrad.core.errors import UnigradError
from unigrad.nn.local_heads import LocallySupervised, head_key, pool, with_local_heads
from unigrad.nn.models import mlp, small_cnn
from unigrad.nn.perturbation import LayerTaps, perturbable_layers


def test_mlp_heads_read_each_block_output_and_forward_is_unchanged() -> None:
    body = mlp([12, 9, 7, 4], seed=0)
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(0))
    expected = body(x)
    rng = torch.get_rng_state()
    model = with_local_heads(body, x[:2], seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # heads are initialised from their own generator
    assert isinstance(model, LocallySupervised) and model.body is body
    assert torch.equal(model(x), expected)  # bitwise: the wrapper's forward is the body's, the same ops on the same x
    assert model.head_inputs == ["3", "5"]  # the inputs of the 2nd and 3rd Linear
    assert model.heads[head_key("3")].in_features == 9 and model.heads[head_key("5")].in_features == 7
    assert all(h.out_features == 4 for h in model.heads.values())
    # the heads are parameters of the model but not perturbable layers
    assert {id(p) for p in model.heads.parameters()} <= {id(p) for p in model.parameters()}
    assert [n for n, _ in perturbable_layers(model)] == ["body.1", "body.3", "body.5"]


def test_heads_are_seeded() -> None:
    x = torch.randn(2, 6)
    a = with_local_heads(mlp([6, 5, 3], seed=0), x, seed=1)
    b = with_local_heads(mlp([6, 5, 3], seed=0), x, seed=1)
    c = with_local_heads(mlp([6, 5, 3], seed=0), x, seed=2)
    assert torch.equal(a.heads[head_key("3")].weight, b.heads[head_key("3")].weight)
    assert not torch.equal(a.heads[head_key("3")].weight, c.heads[head_key("3")].weight)


def test_cnn_heads_pool_feature_maps() -> None:
    body = small_cnn(1, 12, (3, 4), 5, seed=0)
    model = with_local_heads(body, torch.randn(2, 1, 12, 12))
    sizes = [model.heads[head_key(n)].in_features for n in model.head_inputs]
    assert sizes == [3, 4 * 3 * 3]  # conv2 reads 3 channels (pooled); the final Linear reads flat features
    assert pool(torch.ones(2, 3, 4, 4)).shape == (2, 3)


def test_stop_gradient_taps_cut_derivatives_between_layers() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    x = torch.randn(4, 3)
    with LayerTaps(model, stop_gradient=True) as taps:
        out = model(x)
    out.sum().backward()
    assert model[0].weight.grad is None  # nothing reached the first layer through the second
    assert taps.order == [0, 1] and taps.live_inputs[1] is not None and taps.live_inputs[1].requires_grad


def test_bad_models_raise() -> None:
    x = torch.randn(2, 4)
    with pytest.raises(UnigradError, match="two Linear"):
        with_local_heads(nn.Sequential(nn.Linear(4, 3)), x)
    with pytest.raises(UnigradError, match="logits"):
        with_local_heads(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2), nn.Flatten(0)), x)
    model = with_local_heads(mlp([4, 3, 2]), x)
    with pytest.raises(UnigradError, match="already"):
        with_local_heads(model, x)
