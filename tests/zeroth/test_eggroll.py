"""EGGROLL: unbiased low-rank ES (raw shaping), updates of rank ≤ q·r, and the batched population forward equal to
the generic one up to rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unigrad
from tests.problems import assert_contract, assert_mean_matches, estimates, logistic, mlp, train_losses
from unigrad import UnigradError, make_estimator
from unigrad.zeroth import eggroll
from unigrad.zeroth.eggroll import EGGROLL


def test_raw_shaping_is_unbiased() -> None:
    problem = logistic()
    samples = estimates(EGGROLL(probes=8, sigma=1e-3, rank=1, fitness_shaping="raw", seed=3), problem, 300)
    assert_mean_matches(samples, problem.grad())


def test_update_rank_is_at_most_q_times_r() -> None:
    problem = mlp()
    EGGROLL(probes=2, rank=2, seed=1).estimate(problem.model, problem.objective)
    assert torch.linalg.matrix_rank(problem.model[0].weight.grad.double(), rtol=1e-5) <= 4


@pytest.mark.parametrize("rank", [1, 3])
def test_batched_population_equals_the_generic_path(rank, monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    model[2].weight.requires_grad_(False)  # a frozen weight inside the chain, its bias still trains
    x, y = torch.randn(32, 10, generator=g), torch.randint(0, 3, (32,), generator=g)
    objective = unigrad.supervised(F.cross_entropy, x, y)
    runs = []
    for batched in (True, False):
        monkeypatch.setattr(eggroll, "BATCHED", batched)
        e = EGGROLL(probes=5, sigma=0.05, rank=rank, probe_batch=2, seed=4).estimate(model, objective)
        runs.append((e, [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (e1, g1), (e2, g2) = runs
    assert e1.info["batched"] and not e2.info["batched"] and e1.cost == e2.cost
    torch.testing.assert_close(e1.info["probe_losses"], e2.info["probe_losses"], rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_other_models_take_the_generic_path() -> None:
    problem = logistic()  # a custom objective: not provably row-wise
    e = EGGROLL(probes=2).estimate(problem.model, problem.objective)
    assert not e.info["batched"]


def test_contract_and_training() -> None:
    assert_contract(lambda seed: EGGROLL(probes=3, seed=seed), mlp())
    before, after = train_losses(EGGROLL(probes=8, sigma=0.05, rank=1), mlp(), steps=60, lr=0.03)
    assert after < before


@pytest.mark.parametrize(("key", "bad"), [("rank", 0), ("fitness_shaping", "ranks"), ("probes", 0)])
def test_bad_options(key, bad) -> None:
    with pytest.raises(UnigradError, match=key):
        make_estimator("eggroll", **{key: bad})
