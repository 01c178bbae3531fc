"""RGE: the mean of independent estimates is the (smoothed) gradient; cosine ~ √(q/d); seeded replay."""

from __future__ import annotations

import pytest
import torch

from tests.problems import (
    assert_contract,
    assert_mean_matches,
    estimates,
    logistic,
    loglog_slope,
    mean_cosines,
    mean_mismatch,
    mlp,
    quadratic,
    train_losses,
)
from unigrad import UnigradError, make_estimator
from unigrad.zeroth.rge import RGE

DISTRIBUTIONS = ("gaussian", "sphere", "rademacher")


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("scheme", ["central", "forward", "one-point"])
def test_unbiased_on_quadratic(scheme: str, distribution: str) -> None:
    # On a quadratic every scheme is unbiased at any σ: central differences are exact, and the
    # extra terms of the forward and one-point schemes (f(θ)·u, (σ/2)(uᵀAu)·u) have zero mean. σ
    # is chosen per scheme to keep those terms' variance small, so a 25% error is detected (the
    # one-point scheme's f(θ)/σ term still leaves it about twice as noisy as the others).
    problem = quadratic(16)
    sigma, probes, n = {"central": (0.5, 8, 200), "forward": (0.1, 8, 200), "one-point": (0.5, 16, 400)}[scheme]
    est = RGE(probes=probes, sigma=sigma, distribution=distribution, scheme=scheme, seed=3)
    samples = estimates(est, problem, n)
    assert_mean_matches(samples, problem.grad())
    if scheme != "one-point":  # measured: 8–9 SE along g, and a chi-square ≈ 3× its limit
        assert mean_mismatch(samples, 0.75 * problem.grad())


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("scheme", ["central", "forward"])
@pytest.mark.parametrize("build", [logistic, mlp], ids=["logistic", "mlp"])
def test_unbiased_on_networks(build, scheme: str, distribution: str) -> None:
    # At small σ the smoothed gradient equals the gradient up to O(σ²). (The one-point scheme is
    # left out here: its variance ~ (f/σ)² makes a test at small σ powerless.)
    problem = build()
    est = RGE(probes=16, sigma=1e-3, distribution=distribution, scheme=scheme, seed=5)
    assert_mean_matches(estimates(est, problem, 100), problem.grad())


def test_mean_check_has_power() -> None:
    # The same samples must reject a gradient that is 50% too small or has one coordinate flipped: ≈ 15 SE along g
    # and 27 SE on that coordinate (measured). A 25% error (tested before) is only 6–8.5 SE along g over seeds
    # 0–7, too close to the 5 SE threshold for a claim that must hold whatever the seed.
    problem = mlp()
    g = problem.grad()
    samples = estimates(RGE(probes=16, sigma=1e-3, seed=5), problem, 100)
    assert not mean_mismatch(samples, g)
    assert mean_mismatch(samples, 0.5 * g)
    flipped = g.clone()
    j = int(g.abs().argmax())
    flipped[j] = -flipped[j]
    assert mean_mismatch(samples, flipped)


def test_cosine_scales_like_sqrt_q_over_d() -> None:
    # Each cosine has relative SD ≈ 1/√(2q), so the mean of 40 has SE(log cos) ≈ 0.056 (q = 4) and the fitted
    # slope SE ≈ 0.056/√Σ(Δlog d)² ≈ 0.018: 0.08 is 4.4 SE (measured slope + 0.5 in −0.016…0.026 over seeds 0–5).
    # Ratio: √(16/4) = 2 times the Jensen factor E√χ²₁₆/E√χ²₄ ≈ 1.05, SE ≈ 2.1·√(1/32 + 1/8)/√40 ≈ 0.13;
    # measured 1.94–2.31 (seed 1: 2.31): [1.5, 2.7] is 4.6 SE either side (was [1.6, 2.4]: 2.3 SE above)
    dims = [64, 256, 1024, 4096]
    cos4 = mean_cosines(lambda: RGE(probes=4, sigma=0.5, seed=1), dims)
    slope = loglog_slope(dims, cos4)
    assert abs(slope + 0.5) < 0.08, (slope, cos4)
    (cos16,) = mean_cosines(lambda: RGE(probes=16, sigma=0.5, seed=1), [1024])
    assert 1.5 < cos16 / cos4[2] < 2.7, (cos16, cos4[2])


@pytest.mark.parametrize("scheme", ["central", "forward", "one-point"])
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_contract(scheme: str, distribution: str) -> None:
    assert_contract(lambda seed: RGE(probes=3, scheme=scheme, distribution=distribution, seed=seed), mlp())


def test_table_source_replays_and_is_unbiased() -> None:
    assert_contract(lambda seed: RGE(probes=3, noise_source="table", seed=seed), mlp())
    problem = quadratic(16)
    est = RGE(probes=4, sigma=0.5, noise_source="table", seed=2)
    assert_mean_matches(estimates(est, problem, 150), problem.grad())


@pytest.mark.parametrize(("scheme", "forwards"), [("central", 2 * 5), ("forward", 5 + 1), ("one-point", 5)])
def test_cost_counts_samples(scheme: str, forwards: int) -> None:
    problem = mlp(batch=32)
    e = RGE(probes=5, scheme=scheme, probe_batch=2).estimate(problem.model, problem.objective)
    assert e.cost.forwards == forwards * 32
    assert e.loss_is_probe_mean == (scheme != "forward")


def test_probe_batch_does_not_change_the_estimate() -> None:
    # In float64 (was float32): batching the probes differently (plain calls vs vmap) may round each loss
    # differently, by ≲ 80·eps·|f| (64 samples, 16 hidden units; |f| ≈ 1.3), and c = Δf/(2σ) divides that by
    # 2e-3: ≈ 1e-2 in float32, so the float32 claim held only while the kernels happened to agree bitwise. In
    # float64 that is ≲ 2e-11 per coefficient and ≲ 1e-10 per entry of g (|u| ≲ 5, 7 probes): 1e-9 covers it.
    problem = mlp(dtype=torch.float64)
    grads = []
    for batch in (1, 3, None):
        RGE(probes=7, probe_batch=batch, seed=4).estimate(problem.model, problem.objective)
        grads.append(torch.cat([p.grad.reshape(-1) for p in problem.model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-9)
    assert torch.allclose(grads[1], grads[2], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scheme", ["central", "forward"])
def test_training_lowers_the_loss(scheme: str) -> None:
    problem = mlp(batch=128, seed=1)
    first, last = train_losses(RGE(probes=8, scheme=scheme, seed=0), problem)
    assert last < 0.75 * first, (first, last)  # 0.40–0.46 of the first loss over seeds 0–5 (SD 0.02)


@pytest.mark.parametrize(
    "options",
    [
        {"sigma": 0.0},
        {"sigma": -1e-3},
        {"sigma": float("nan")},
        {"probes": 0},
        {"probes": 1.5},
        {"distribution": "cauchy"},
        {"scheme": "backward"},
        {"noise_source": "disk"},
        {"probe_batch": 0},
        {"memory_budget": 0},
        {"seed": -1},
    ],
)
def test_bad_options_raise(options: dict) -> None:
    with pytest.raises(UnigradError):
        make_estimator("rge", **options)
