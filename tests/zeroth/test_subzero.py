"""SubZero: directions P·Z·Qᵀ in the epoch's subspace, scaled like full noise; unbiased over fresh subspaces."""

from __future__ import annotations

import pytest
import torch

from tests.problems import assert_contract, assert_mean_matches, estimates, logistic, mlp, train_losses
from unigrad import UnigradError, make_estimator
from unigrad.zeroth.subzero import SubZero


def test_unbiased_over_fresh_subspaces() -> None:
    problem = logistic()
    samples = estimates(SubZero(probes=8, sigma=1e-3, rank=1, refresh=1, seed=3), problem, 400)
    assert_mean_matches(samples, problem.grad())


def test_directions_live_in_the_subspace_and_have_full_noise_scale() -> None:
    problem = mlp()
    est = SubZero(probes=2, rank=3, refresh=50, seed=1)
    w = problem.model[0].weight  # 16 × 10
    norms = []
    for step in range(30):
        est.estimate(problem.model, problem.objective)
        P, Q = est.bases(step, 0, w)
        assert torch.allclose(P.T @ P, torch.eye(3), atol=1e-5) and torch.allclose(Q.T @ Q, torch.eye(3), atol=1e-5)
        g = w.grad.double()
        projected = P.double() @ (P.double().T @ g @ Q.double()) @ Q.double().T
        torch.testing.assert_close(projected, g, rtol=0, atol=1e-5 * float(g.abs().max()))  # float32 rounding
        norms.append(float(est._direction(step, 0, w, 0).double().square().sum()))
    mean = sum(norms) / len(norms)
    assert 0.6 * w.numel() < mean < 1.5 * w.numel(), mean  # E‖u‖² = m·n


def test_contract_and_training() -> None:
    assert_contract(lambda seed: SubZero(probes=2, refresh=2, seed=seed), mlp())
    before, after = train_losses(SubZero(probes=4, rank=4, refresh=20), mlp(), steps=60, lr=0.05)
    assert after < before


@pytest.mark.parametrize(("key", "bad"), [("rank", 0), ("refresh", 0)])
def test_bad_options(key, bad) -> None:
    with pytest.raises(UnigradError, match=key):
        make_estimator("subzero", **{key: bad})
