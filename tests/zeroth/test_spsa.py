"""SPSA: unbiased for the gradient, cosine ~ √(q/d), and exactly RGE with Rademacher central probes."""

from __future__ import annotations

import pytest
import torch

from tests.problems import (
    assert_contract,
    assert_mean_matches,
    estimates,
    flat_grad,
    logistic,
    loglog_slope,
    mean_cosines,
    mlp,
    quadratic,
    train_losses,
)
from unigrad import UnigradError, make_estimator
from unigrad.zeroth.rge import RGE
from unigrad.zeroth.spsa import SPSA


@pytest.mark.parametrize(
    ("build", "sigma", "n"),
    [(lambda: quadratic(16), 0.5, 150), (logistic, 1e-3, 100), (mlp, 1e-3, 100)],
    ids=["quadratic", "logistic", "mlp"],
)
def test_unbiased(build, sigma: float, n: int) -> None:
    problem = build()
    assert_mean_matches(estimates(SPSA(probes=16, sigma=sigma, seed=7), problem, n), problem.grad())


def test_is_rademacher_central_rge() -> None:
    problem = mlp()
    SPSA(probes=5, seed=11).estimate(problem.model, problem.objective)
    g_spsa = flat_grad(problem.model)
    RGE(probes=5, distribution="rademacher", scheme="central", seed=11).estimate(problem.model, problem.objective)
    # bitwise: SPSA is RGE with these options, so both run the same ops on the same noise
    assert torch.equal(g_spsa, flat_grad(problem.model))


def test_cosine_scales_like_sqrt_q_over_d() -> None:
    # SEs as in test_rge: slope ≈ 0.018 (0.08 is 4.4 SE; measured slope + 0.5 in −0.029…0.042 over seeds 0–5),
    # ratio ≈ 0.13 around 2.1 (measured 1.90–2.18): [1.5, 2.7] is ≥ 4.6 SE either side (was [1.6, 2.4])
    dims = [64, 256, 1024, 4096]
    cos4 = mean_cosines(lambda: SPSA(probes=4, sigma=0.5, seed=1), dims)
    slope = loglog_slope(dims, cos4)
    assert abs(slope + 0.5) < 0.08, (slope, cos4)
    (cos16,) = mean_cosines(lambda: SPSA(probes=16, sigma=0.5, seed=1), [1024])
    assert 1.5 < cos16 / cos4[2] < 2.7, (cos16, cos4[2])


def test_contract() -> None:
    assert_contract(lambda seed: SPSA(probes=3, seed=seed), mlp())
    assert_contract(lambda seed: SPSA(probes=3, noise_source="table", seed=seed), logistic())


def test_cost_counts_samples() -> None:
    problem = mlp(batch=32)
    e = SPSA(probes=4).estimate(problem.model, problem.objective)
    assert e.cost.forwards == 2 * 4 * 32 and e.loss_is_probe_mean


def test_training_lowers_the_loss() -> None:
    problem = mlp(batch=128, seed=1)
    first, last = train_losses(SPSA(probes=8, seed=0), problem)
    assert last < 0.75 * first, (first, last)  # 0.41–0.47 of the first loss over seeds 0–5 (SD 0.02)


@pytest.mark.parametrize(
    "options", [{"sigma": 0.0}, {"sigma": -1.0}, {"probes": 0}, {"noise_source": "disk"}, {"distribution": "gaussian"}]
)
def test_bad_options_raise(options: dict) -> None:
    with pytest.raises(UnigradError):
        make_estimator("spsa", **options)
