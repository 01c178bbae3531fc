"""CGE: exact coordinate-wise finite differences; random blocks scaled by d/k are unbiased for them."""

from __future__ import annotations

import pytest
import torch

from tests.problems import (
    Problem,
    assert_contract,
    assert_mean_matches,
    estimates,
    flat_grad,
    flat_params,
    logistic,
    loglog_slope,
    mean_cosines,
    mlp,
    quadratic,
    train_losses,
)
from unigrad import UnigradError, make_estimator
from unigrad.core.cost import Cost
from unigrad.core.params import trainable
from unigrad.core.probe import losses_at
from unigrad.zeroth.cge import CGE


def finite_differences(problem: Problem, sigma: float, scheme: str) -> torch.Tensor:
    """The reference: one coordinate at a time, each loss from its own plain (unbatched) call."""
    theta = flat_params(problem.model)
    shapes = [p.shape for _, p in trainable(problem.model)]
    sizes = [p.numel() for _, p in trainable(problem.model)]

    def f(x: torch.Tensor) -> float:
        values = [v.view(s) for v, s in zip(x.split(sizes), shapes)]
        return float(losses_at(problem.model, problem.objective, values, Cost()).mean())

    f0 = f(theta)
    out = torch.empty(theta.numel(), dtype=torch.float64)
    for j in range(theta.numel()):
        plus, minus = theta.clone(), theta.clone()
        plus[j] += sigma
        minus[j] -= sigma
        out[j] = (f(plus) - f0) / sigma if scheme == "forward" else (f(plus) - f(minus)) / (2 * sigma)
    return out


@pytest.mark.parametrize("scheme", ["forward", "central"])
@pytest.mark.parametrize("build", [logistic, mlp], ids=["logistic", "mlp"])
def test_full_estimate_is_the_finite_difference_gradient(build, scheme: str) -> None:
    problem = build(dtype=torch.float64)
    reference = finite_differences(problem, 1e-4, scheme)
    e = CGE(sigma=1e-4, scheme=scheme, probe_batch=50).estimate(problem.model, problem.objective)
    # float64 losses (means of B = 64 samples, |f| ≈ 1) by two routes (vmapped vs one call each): each
    # ≲ 64·eps64·|f| ≈ 2e-14, so the quotients over σ = 1e-4 differ by ≲ 4e-10 < 1e-9 (measured ≤ 6e-13)
    assert torch.allclose(flat_grad(problem.model), reference, rtol=1e-9, atol=1e-9)
    # and the finite differences are the gradient up to O(σ) (forward: σ/2·|∂²f|, measured ≤ 1.7e-5) or O(σ²)
    # (central, plus the 4e-10 rounding above)
    tol = 1e-3 if scheme == "forward" else 1e-6
    assert torch.allclose(reference, problem.grad(), rtol=0, atol=tol)
    assert e.loss_is_probe_mean == (scheme == "central")


def test_quadratic_exactly() -> None:
    # central differences are exact on a quadratic; forward ones are off by (σ/2)·diag(A)
    # (up to rounding: float64 f ≈ 30 summed from 2×16 terms, ≲ 32·eps64·|f| ≈ 2e-13 per loss, so ≲ 1e-12 per
    # quotient over σ = 0.5; 1e-11, was 1e-12 which that bound reaches; measured ≤ 1e-14)
    problem = quadratic(16, dtype=torch.float64)
    g, diag = problem.grad(), torch.diagonal(problem.model.a)
    CGE(sigma=0.5, scheme="central").estimate(problem.model, problem.objective)
    assert torch.allclose(flat_grad(problem.model), g, rtol=1e-11, atol=1e-11)
    CGE(sigma=0.5, scheme="forward").estimate(problem.model, problem.objective)
    assert torch.allclose(flat_grad(problem.model), g + 0.25 * diag, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(
    ("build", "block", "n"),
    [(quadratic, 3, 300), (logistic, 2, 300), (mlp, 32, 200)],
    ids=["quadratic", "logistic", "mlp"],
)
def test_block_estimate_is_unbiased(build, block: int, n: int) -> None:
    problem = build(dtype=torch.float64)
    CGE(sigma=1e-2).estimate(problem.model, problem.objective)
    full = flat_grad(problem.model)
    samples = estimates(CGE(sigma=1e-2, block=block, seed=2), problem, n)
    assert_mean_matches(samples, full)
    # every estimate is d/k times the full estimate on exactly k coordinates, zero elsewhere
    d = problem.dim
    nonzero = samples != 0
    assert (nonzero.sum(1) <= block).all() and (nonzero.sum(1) >= block - (full == 0).sum()).all()
    # float64 losses from differently batched calls: ≲ 32·eps64·|f| ≈ 2e-13 (quadratic, |f| ≈ 30) each, over
    # σ = 1e-2 and times d/k ≤ 7: ≲ 3e-10 (atol 1e-9, was 1e-12, below that bound; measured bitwise equal)
    assert torch.allclose(samples[nonzero], (d / block * full.expand_as(samples))[nonzero], rtol=1e-9, atol=1e-9)


def test_coordinates_are_distinct_and_cover_every_coordinate() -> None:
    est = CGE(block=7, seed=5)
    seen = torch.zeros(50)
    for step in range(100):
        idx = est.coordinates(50, step)
        assert idx.numel() == 7 and idx.unique().numel() == 7
        seen[idx] += 1
    # inclusion counts are Binomial(100, 7/50): mean 14, sd ≈ 3.5; 5 sd over 50 counts: P(fail) ≈ 3e-5
    assert ((seen - 14).abs() < 5 * 3.5).all(), seen
    assert torch.equal(CGE(block=7, seed=5).coordinates(50, 3), est.coordinates(50, 3))
    assert torch.equal(CGE(block=80).coordinates(50, 0), torch.arange(50))


def test_cosine_scales_like_sqrt_k_over_d() -> None:
    dims = [64, 256, 1024, 4096]
    # over seeds 0–5: slope + 0.5 in −0.026…0.009 (SD 0.013; 0.08 is ≥ 4.4 SE, see test_rge), ratio 2.10–2.29
    # (SD 0.07, mean 2.2; √(16/4) = 2 times a Jensen factor): [1.5, 2.7] (was [1.6, 2.4]) is ≥ 7 SD either side
    cos4 = mean_cosines(lambda: CGE(sigma=0.5, scheme="central", block=4, seed=1), dims)
    slope = loglog_slope(dims, cos4)
    assert abs(slope + 0.5) < 0.08, (slope, cos4)
    (cos16,) = mean_cosines(lambda: CGE(sigma=0.5, scheme="central", block=16, seed=1), [1024])
    assert 1.5 < cos16 / cos4[2] < 2.7, (cos16, cos4[2])


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_contract(scheme: str) -> None:
    assert_contract(lambda seed: CGE(scheme=scheme, block=20, seed=seed), mlp())
    assert_contract(lambda seed: CGE(scheme=scheme, seed=seed), logistic(), seeded=False)


@pytest.mark.parametrize(
    ("scheme", "block", "forwards"),
    [("forward", None, 10), ("central", None, 18), ("forward", 4, 5), ("central", 4, 8)],
)
def test_cost_counts_samples(scheme: str, block: int | None, forwards: int) -> None:
    problem = logistic(batch=32)  # d = 9
    e = CGE(scheme=scheme, block=block).estimate(problem.model, problem.objective)
    assert e.cost.forwards == forwards * 32


def test_chunking_does_not_change_the_estimate() -> None:
    problem = mlp(dtype=torch.float64)
    grads = []
    for options in ({}, {"probe_batch": 1}, {"probe_batch": 17}, {"memory_budget": 3 * 227 * 8}):
        CGE(scheme="central", **options).estimate(problem.model, problem.objective)
        grads.append(flat_grad(problem.model))
    for g in grads[1:]:  # float64, B = 64, σ = 1e-3: ≲ 2·64·eps64·|f|/(2σ) ≈ 2e-11 ≪ 1e-9 (measured bitwise)
        assert torch.allclose(g, grads[0], rtol=1e-9, atol=1e-9)


def test_training_lowers_the_loss() -> None:
    problem = mlp(batch=128, seed=1)
    first, last = train_losses(CGE(block=16, seed=0), problem)
    assert last < 0.75 * first, (first, last)  # 0.41–0.43 of the first loss over seeds 0–5 (SD 0.01)


@pytest.mark.parametrize(
    "options",
    [
        {"sigma": 0.0},
        {"sigma": -1e-3},
        {"block": 0},
        {"block": 2.5},
        {"scheme": "one-point"},
        {"probe_batch": 0},
        {"memory_budget": -1},
        {"probes": 4},
    ],
)
def test_bad_options_raise(options: dict) -> None:
    with pytest.raises(UnigradError):
        make_estimator("cge", **options)
