"""ES: raw shaping is the central Gaussian RGE; ranked/z-scored directions are parallel to the gradient."""

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
from unigrad import UnigradError, make_estimator, objective
from unigrad.zeroth.es import ES
from unigrad.zeroth.rge import RGE

PROBLEMS = [(lambda: quadratic(16), 0.5, 150), (logistic, 1e-3, 100), (mlp, 1e-3, 100)]
IDS = ["quadratic", "logistic", "mlp"]


@pytest.mark.parametrize("source", ["generator", "table"])
def test_raw_shaping_is_central_gaussian_rge(source: str) -> None:
    problem = mlp()
    for step in range(2):
        es = ES(probes=6, sigma=0.01, fitness_shaping="raw", noise_source=source, seed=9)
        rge = RGE(probes=6, sigma=0.01, scheme="central", noise_source=source, seed=9)
        es.step = rge.step = step
        a = es.estimate(problem.model, problem.objective)
        g_es = flat_grad(problem.model)
        b = rge.estimate(problem.model, problem.objective)
        # bitwise: raw shaping is the identity, and both call the same probe_losses/combine ops on the same noise
        assert torch.equal(g_es, flat_grad(problem.model))
        assert a.loss == b.loss and a.cost == b.cost


@pytest.mark.parametrize(("build", "sigma", "n"), PROBLEMS, ids=IDS)
def test_raw_shaping_is_unbiased(build, sigma: float, n: int) -> None:
    problem = build()
    est = ES(probes=16, sigma=sigma, fitness_shaping="raw", seed=4)
    assert_mean_matches(estimates(est, problem, n), problem.grad())


@pytest.mark.parametrize("shaping", ["centered_ranks", "zscore"])
@pytest.mark.parametrize(("build", "n"), [(lambda: quadratic(16), 150), (logistic, 100), (mlp, 100)], ids=IDS)
def test_shaped_mean_is_parallel_to_the_gradient(build, n: int, shaping: str) -> None:
    # In the linear regime (small σ) shaping is a monotone function of εᵀ∇f shared by all
    # directions, so E[g] = c·∇f for some c > 0 that depends on the shaping, not on the loss scale.
    problem = build()
    g = problem.grad()
    samples = estimates(ES(probes=16, sigma=1e-3, fitness_shaping=shaping, seed=6), problem, n)
    c = float(samples.mean(0) @ g / (g @ g))
    assert c > 0
    assert_mean_matches(samples, c * g)
    # and not parallel to a wrong direction: rotate the gradient by swapping two of its coordinates
    wrong = g.clone()
    i, j = int(g.argmax()), int(g.argmin())
    wrong[i], wrong[j] = g[j], g[i]
    c_wrong = float(samples.mean(0) @ wrong / (wrong @ wrong))
    with pytest.raises(AssertionError):
        assert_mean_matches(samples, c_wrong * wrong)


@pytest.mark.parametrize("shaping", ["centered_ranks", "zscore"])
def test_shaped_estimate_is_invariant_to_the_loss_scale(shaping: str) -> None:
    problem = mlp()
    base = problem.objective
    scaled = objective(lambda m: 4.0 * base(m) + 3.0, n_samples=64)
    ES(probes=8, fitness_shaping=shaping, seed=1).estimate(problem.model, base)
    g = flat_grad(problem.model)
    ES(probes=8, fitness_shaping=shaping, seed=1).estimate(problem.model, scaled)
    if shaping == "centered_ranks":
        # same ranks, so the same ops follow: the 16 probe losses are ≥ 3.8e-4 apart (measured), far more than
        # the ≲ 1e-6 by which float32 rounding of 4f + 3 could move them, so no order can flip on any machine
        assert torch.equal(flat_grad(problem.model), g)
    else:
        # z-scores of float32 4f + 3 vs f: each fitness moves by ≲ ulp(8) ≈ 1e-6 against a spread of ≈ 5e-2, so the
        # z-scores (and the estimate, linear in them) by ≲ 1e-4 relative ≪ 1e-3 (measured 4e-3 of the tolerance)
        assert torch.allclose(flat_grad(problem.model), g, rtol=1e-3, atol=1e-3 * float(g.abs().max()))


def test_cosine_scales_like_sqrt_q_over_d() -> None:
    # over seeds 0–5: slope + 0.5 in −0.017…0.028 (SD 0.016; theory: 40 cosines of relative SD 1/√(2q) give
    # SE(log cos) ≈ 0.056 at each d, SE(slope) ≈ 0.056/√Σ(Δlog d)² ≈ 0.018), so 0.08 is ≈ 4.5 SE; ratio
    # 1.94–2.31 (SD 0.13 as theory gives, mean 2.10: √(16/4) = 2 times the Jensen factor E√χ²₁₆/E√χ²₄ ≈ 1.05):
    # [1.5, 2.7] is 4.6 SD either side (was [1.6, 2.4], 2.3 SD above the mean; seed 1 gives 2.31)
    dims = [64, 256, 1024, 4096]
    cos4 = mean_cosines(lambda: ES(probes=4, sigma=0.01, seed=1), dims)
    slope = loglog_slope(dims, cos4)
    assert abs(slope + 0.5) < 0.08, (slope, cos4)
    (cos16,) = mean_cosines(lambda: ES(probes=16, sigma=0.01, seed=1), [1024])
    assert 1.5 < cos16 / cos4[2] < 2.7, (cos16, cos4[2])


@pytest.mark.parametrize("shaping", ["centered_ranks", "zscore", "raw"])
def test_contract(shaping: str) -> None:
    assert_contract(lambda seed: ES(probes=3, fitness_shaping=shaping, seed=seed), mlp())


def test_table_source_contract() -> None:
    assert_contract(lambda seed: ES(probes=3, noise_source="table", seed=seed), logistic())


def test_cost_and_loss() -> None:
    problem = mlp(batch=32)
    e = ES(probes=5, probe_batch=2).estimate(problem.model, problem.objective)
    assert e.cost.forwards == 2 * 5 * 32
    assert e.loss_is_probe_mean
    # float32 vs float64 mean of the same 10 losses: ≲ 10·eps32 = 1.2e-6 relative (rel was 1e-6, below that)
    assert float(e.info["probe_losses"].mean()) == pytest.approx(e.loss, rel=1e-5)
    # probes σ = 0.02 away: measured |diff| ≤ 1.1e-3 over seeds 0–7 (SD 5e-4)
    assert abs(e.loss - problem.loss()) < 0.05


@pytest.mark.parametrize("shaping", ["centered_ranks", "zscore"])
def test_training_lowers_the_loss(shaping: str) -> None:
    problem = mlp(batch=128, seed=1)
    first, last = train_losses(ES(probes=8, fitness_shaping=shaping, seed=0), problem)
    assert last < 0.75 * first, (first, last)  # 0.36–0.42 of the first loss over seeds 0–5 (SD 0.02)


@pytest.mark.parametrize(
    "options",
    [
        {"sigma": 0.0},
        {"sigma": -0.02},
        {"probes": 0},
        {"fitness_shaping": "softmax"},
        {"noise_source": "disk"},
        {"probe_batch": 0},
        {"distribution": "rademacher"},
    ],
)
def test_bad_options_raise(options: dict) -> None:
    with pytest.raises(UnigradError):
        make_estimator("es", **options)
