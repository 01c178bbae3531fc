"""LOZO: directions U·Vᵀ/√r in the row space of the lazy V; unbiased with a fresh V; LOZO-M's momentum."""

from __future__ import annotations

import pytest
import torch

from tests.problems import assert_contract, assert_mean_matches, estimates, flat_grad, logistic, mlp, train_losses
from unigrad import UnigradError, make_estimator
from unigrad.optim import ReplaySGD
from unigrad.zeroth.lozo import LOZO


def test_unbiased_when_v_is_fresh_every_step() -> None:
    problem = logistic()
    samples = estimates(LOZO(probes=8, sigma=1e-3, rank=2, lazy=1, seed=3), problem, 300)
    assert_mean_matches(samples, problem.grad())


def test_directions_live_in_the_row_space_of_v() -> None:
    problem = mlp()
    est = LOZO(probes=3, rank=2, lazy=100, seed=1)
    for _ in range(3):  # steps within one epoch of V
        est.estimate(problem.model, problem.objective)
        for k, p in enumerate(problem.model.parameters()):
            if p.dim() < 2:
                continue
            v = est.factor(est.step - 1, k, p).double()
            proj = v @ torch.linalg.pinv(v)  # projector on span(V)
            g = p.grad.double()
            torch.testing.assert_close(g @ proj, g, rtol=0, atol=1e-5 * float(g.abs().max()))  # float32 rounding
            assert torch.linalg.matrix_rank(g, rtol=1e-4) <= 2


def test_momentum_follows_the_recurrence() -> None:
    problem = mlp()
    beta = 0.8
    plain, heavy = LOZO(probes=2, rank=2, lazy=2, seed=5), LOZO(probes=2, rank=2, lazy=2, momentum=beta, seed=5)
    m = None
    for step in range(4):  # epochs of V: 0, 0, 1, 1 (a refresh at step 2)
        e = plain.estimate(problem.model, problem.objective)
        g = [p.grad.double().clone() for p in problem.model.parameters()]
        heavy.estimate(problem.model, problem.objective)
        got = [p.grad.double() for p in problem.model.parameters()]
        if m is None:
            m = g
        elif step == 2:  # for matrices the carried momentum is projected on the new V (not checked here)
            m = [None if x.dim() >= 2 else beta * a + (1 - beta) * b for x, a, b in zip(got, m, g)]
            m = [got[i] if a is None else a for i, a in enumerate(m)]
        else:
            m = [beta * a + (1 - beta) * b for a, b in zip(m, g)]
        for a, b in zip(got, m):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
        assert e.info["state_bytes"] > 0


def test_contract_replay_and_training() -> None:
    assert_contract(lambda seed: LOZO(probes=2, lazy=2, seed=seed), mlp())
    assert_contract(lambda seed: LOZO(probes=2, lazy=2, momentum=0.9, seed=seed), mlp())
    before, after = train_losses(LOZO(probes=4, rank=2, lazy=10), mlp(), steps=60, lr=0.05)
    assert after < before
    problem = mlp()
    for momentum in (0.0, 0.9):
        dense = LOZO(probes=2, momentum=momentum, seed=2)
        lean = LOZO(probes=2, momentum=momentum, seed=2, write_grad=False)
        for _ in range(2):
            dense.estimate(problem.model, problem.objective)
            e = lean.estimate(problem.model, problem.objective)
        replayed = torch.cat([t.reshape(-1).double() for t in e.info["direction"].materialize()])
        torch.testing.assert_close(replayed, flat_grad(problem.model), rtol=1e-6, atol=1e-9)
        ReplaySGD(problem.model.parameters(), lr=1e-3).step(e.info["direction"])


@pytest.mark.parametrize(("key", "bad"), [("rank", 0), ("lazy", 1.5), ("momentum", 1.0), ("momentum", -0.1)])
def test_bad_options(key, bad) -> None:
    with pytest.raises(UnigradError, match=key):
        make_estimator("lozo", **{key: bad})
