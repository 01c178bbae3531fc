"""HiZOO: with a fixed H the estimate is unbiased for H⁻¹∇f; the H update has the mean its equation gives."""

from __future__ import annotations

import pytest
import torch

from tests.problems import assert_contract, assert_mean_matches, estimates, mlp, quadratic, train_losses
from unigrad import UnigradError, make_estimator
from unigrad.zeroth.hizoo import HiZOO


def test_fixed_preconditioner_gives_h_inverse_gradient() -> None:
    problem = quadratic(12, dense=True)
    h = torch.linspace(0.5, 4.0, 12)
    est = HiZOO(probes=8, sigma=0.3, hessian_smooth=0.0, seed=2)
    est.hessian = [h.clone()]
    samples = estimates(est, problem, 300)
    assert torch.equal(est.hessian[0], h)  # α = 0: H never moves
    assert_mean_matches(samples, problem.grad() / h.double())


def test_hessian_update_has_its_expected_mean() -> None:
    problem = quadratic(10, dense=False, cond=8.0)  # diagonal A, so the second difference is exact: zᵀAz
    a = problem.model.a.double()
    rows = []
    est = HiZOO(probes=1, sigma=0.5, hessian_smooth=1.0, seed=0)
    for _ in range(600):
        est.hessian = [torch.ones(10)]
        est.estimate(problem.model, problem.objective)
        rows.append(est.hessian[0].double())
    assert_mean_matches(torch.stack(rows), (2 * a + a.sum()) / 2)  # E[(zᵀAz/2)·z_j²] with E z⁴ = 3


def test_cost_state_and_contract() -> None:
    problem = mlp()
    e = HiZOO(probes=3).estimate(problem.model, problem.objective)
    assert e.cost.forwards == 7 * 64 and not e.loss_is_probe_mean  # 2q probes and f(θ)
    d = sum(p.numel() for p in problem.model.parameters())
    assert e.info["state_bytes"] == 4 * d
    assert_contract(lambda seed: HiZOO(probes=2, hessian_smooth=0.1, seed=seed), mlp())
    before, after = train_losses(HiZOO(probes=4, hessian_smooth=1e-3), mlp(), steps=60, lr=0.05)
    assert after < before


@pytest.mark.parametrize("bad", [-1e-3, 1.5, "x"])
def test_bad_smoothing(bad) -> None:
    with pytest.raises(UnigradError, match="hessian_smooth"):
        make_estimator("hizoo", hessian_smooth=bad)
