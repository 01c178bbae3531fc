"""FZOO: unbiased one-sided Rademacher estimate unnormalised; the normalised step is it times ε/spread."""

from __future__ import annotations

import pytest
import torch

from tests.problems import assert_contract, assert_mean_matches, estimates, flat_grad, logistic, mlp, quadratic
from unigrad import UnigradError, make_estimator
from unigrad.zeroth.fzoo import FZOO


def test_unnormalised_is_unbiased() -> None:
    problem = quadratic(16)  # Rademacher odd moments vanish: the one-sided estimate is exact in mean on a quadratic
    samples = estimates(FZOO(probes=8, sigma=0.3, normalize=False, seed=2), problem, 300)
    assert_mean_matches(samples, problem.grad())


def test_normalised_is_the_unnormalised_times_sigma_over_spread() -> None:
    problem = mlp()
    for sigma in (1e-2, 1e-3):
        plain = FZOO(probes=8, sigma=sigma, normalize=False, seed=4)
        plain.estimate(problem.model, problem.objective)
        g = flat_grad(problem.model)
        scaled = FZOO(probes=8, sigma=sigma, seed=4)
        e = scaled.estimate(problem.model, problem.objective)
        spread = float(e.info["probe_losses"][0].double().std(correction=0))
        torch.testing.assert_close(flat_grad(problem.model), g * (sigma / spread), rtol=1e-4, atol=1e-7)
        assert e.info["loss_spread"] == pytest.approx(spread, rel=1e-6)


def test_normalised_step_length_does_not_depend_on_sigma() -> None:
    problem = logistic()
    norms = []
    for sigma in (1e-1, 1e-3):
        samples = estimates(FZOO(probes=8, sigma=sigma, seed=1), problem, 40)
        norms.append(float(samples.norm(dim=1).median()))
    assert 0.7 < norms[0] / norms[1] < 1.4, norms


def test_contract_cost_and_training() -> None:
    assert_contract(lambda seed: FZOO(probes=4, seed=seed), mlp())
    problem = mlp()
    e = FZOO(probes=5).estimate(problem.model, problem.objective)
    assert e.cost.forwards == 6 * 64 and not e.loss_is_probe_mean  # N probes and f(θ)
    opt = torch.optim.SGD(problem.model.parameters(), lr=0.05)
    first = problem.loss()
    est = FZOO(probes=8, sigma=1e-3)
    for _ in range(60):
        opt.zero_grad()
        est.estimate(problem.model, problem.objective)
        opt.step()
    assert problem.loss() < first - 0.05


def test_flat_losses_give_a_zero_direction() -> None:
    problem = mlp()
    for p in problem.model.parameters():
        p.requires_grad_(False)
    problem.model[0].bias.requires_grad_(True)
    FZOO(probes=4, sigma=1e-30).estimate(problem.model, problem.objective)  # every probe rounds away
    assert torch.all(problem.model[0].bias.grad == 0)


def test_bad_normalize() -> None:
    with pytest.raises(UnigradError, match="normalize"):
        make_estimator("fzoo", normalize="yes")
