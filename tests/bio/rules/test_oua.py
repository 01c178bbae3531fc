"""OUA: the deviation is the discretised OU process (stationary variance, autocorrelation, keyed replay), no
drift when the reward equals its baseline, the mean direction is the predicted multiple of the gradient,
SGD with lr = η lowers the loss, contract, options."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import unigrad
from tests.problems import (
    assert_contract,
    assert_mean_matches,
    cosine,
    flat_grad,
    flat_params,
    logistic,
    mean_mismatch,
    mlp,
    quadratic,
)
from unigrad import UnigradError
from unigrad.bio.rules.oua import OUA
from unigrad.core.objective import reduce
from unigrad.core.params import trainable
from unigrad.core.rng import ProbeNoise


def _deviations(est: OUA, problem, calls: int) -> torch.Tensor:
    """The flattened deviation after each of ``calls`` calls, ``(calls, d)`` float64 (no optimizer step: η = 0)."""
    rows = []
    for _ in range(calls):
        est.estimate(problem.model, problem.objective)
        rows.append(torch.cat([d.double().reshape(-1) for d in est.delta]))
    return torch.stack(rows)


@pytest.mark.parametrize("scheme", ["euler-maruyama", "heun", "exact"])
def test_deviation_has_the_stationary_statistics_of_its_scheme(scheme: str) -> None:
    # λ dt = 0.5 is coarse on purpose: Euler–Maruyama's variance σ²/(λ(2 − λdt)) is then 4/3 of the SDE's σ²/(2λ)
    lam, sigma, dt = 2.0, 0.3, 0.25
    problem = quadratic(256, dense=False, seed=0)
    est = OUA(lam=lam, sigma=sigma, dt=dt, scheme=scheme, init="stationary", seed=3)
    h = lam * dt
    a, v = {
        "euler-maruyama": (1 - h, sigma**2 / (lam * (2 - h))),
        "heun": (1 - h + h * h / 2, sigma**2 * dt * (1 - h / 2) ** 2 / (1 - (1 - h + h * h / 2) ** 2)),
        "exact": (math.exp(-h), sigma**2 / (2 * lam)),
    }[scheme]
    # closed forms against the rule's: a few float64 roundings, no cancellation (1 − a² ≥ 0.6)
    assert est.autocorrelation == pytest.approx(a, rel=1e-12)
    assert est.stationary_variance == pytest.approx(v, rel=1e-12)
    D = _deviations(est, problem, 400)  # 400 × 256 entries; per-coordinate series are independent
    n_eff = D.numel() * (1 - a * a) / (1 + a * a)  # effective sample size of the variance of an AR(1) series
    var = float(D.square().mean())  # the mean is zero by construction
    # 5 SE each (measured: var 0.8–0.9 SE, ρ 0.4 SE off); the lag-1 autocorrelation's SE is Bartlett's
    # √((1 − a²)/N), and the √2 is extra margin (7 SE)
    assert abs(var - v) < 5 * v * math.sqrt(2 / n_eff)
    rho = float((D[1:] * D[:-1]).mean() / D[:-1].square().mean())
    assert abs(rho - a) < 5 * math.sqrt((1 - a * a) / D[1:].numel()) * math.sqrt(2)
    if scheme == "euler-maruyama":  # the O(dt) excess over σ²/(2λ) is resolved (44 SE)
        assert abs(var - sigma**2 / (2 * lam)) > 10 * v * math.sqrt(2 / n_eff)
    # the mean of an AR(1) series has variance (v/N)·(1 + a)/(1 − a): 5 SE (measured 2.3 SE off)
    assert float(D.mean().abs()) < 5 * math.sqrt(v * (1 + a) / ((1 - a) * D.numel()))


def test_deviation_is_the_keyed_recursion_and_the_direction_is_minus_rpe_delta_dt() -> None:
    problem = logistic()
    model, obj = problem.model, problem.objective
    est = OUA(lam=1.5, sigma=0.2, eps=2.0, dt=0.1, baseline=-0.5, seed=7)
    noise = ProbeNoise("gaussian", "generator")
    params = trainable(model)
    delta = [torch.zeros_like(p) for _, p in params]
    rbar = -0.5
    for k in range(5):
        e = est.estimate(model, obj)
        xi = [noise.raw(7, k, 0, i, p.shape, p.dtype) for i, (_, p) in enumerate(params)]  # key (seed, step, 0, i)
        delta = [est.a * d + est.b * x for d, x in zip(delta, xi)]
        assert all(torch.equal(x, y) for x, y in zip(est.delta, delta))
        noisy = copy.deepcopy(model)
        with torch.no_grad():
            for (_, p), d in zip(trainable(noisy), delta):
                p.add_(d)
            loss = float(reduce(obj(noisy).double()))
        # the rule evaluates the same p + δ with the same float32 forward and float64 mean: equal up to reduction
        # order, ≲ 64·eps64 relative; rel = 1e-6 is loose
        assert e.loss == pytest.approx(loss, rel=1e-6) and e.loss_is_probe_mean
        assert e.info["reward"] == -e.loss and e.info["baseline"] == rbar
        assert e.info["rpe"] == e.info["reward"] - rbar
        expected = torch.cat([(-e.info["rpe"] * 0.1 * d).reshape(-1) for d in delta]).double()
        # bitwise: δ is the rule's own recursion (checked above) and the direction the same scalar times δ; r̄ the
        # same Python float expression
        assert torch.equal(flat_grad(model), expected)
        assert e.cost.forwards == 64 and e.cost.backwards == 0
        rbar = rbar + 2.0 * 0.1 * e.info["rpe"]
        assert est.rbar == rbar


def test_no_drift_when_the_reward_equals_its_baseline() -> None:
    # a constant objective: r = −3 at every θ; with r̄ initialised at −3 the reward-prediction error is exactly 0
    problem = quadratic(8)
    const = unigrad.objective(lambda m: torch.full((4,), 3.0), n_samples=4)
    for baseline in (-3.0, None):  # None: r̄ starts at the first reward, which is −3 too
        est = OUA(lam=1.0, sigma=0.5, dt=0.2, baseline=baseline, init="stationary", seed=1)
        opt = torch.optim.SGD(problem.model.parameters(), lr=10.0)
        before = flat_params(problem.model)
        for _ in range(20):
            opt.zero_grad()
            e = est.estimate(problem.model, const)
            assert e.info["rpe"] == 0.0
            assert torch.equal(flat_grad(problem.model), torch.zeros(8, dtype=torch.float64))
            opt.step()
        assert torch.equal(flat_params(problem.model), before) and est.rbar == -3.0
        assert est.delta[0].abs().max() > 0  # the deviation still explores


def test_first_direction_is_zero_without_an_initial_baseline() -> None:
    problem = logistic()
    est = OUA(seed=0)
    e = est.estimate(problem.model, problem.objective)
    assert e.info["rpe"] == 0.0 and float(flat_grad(problem.model).abs().max()) == 0.0
    assert est.rbar == e.info["reward"]
    est.estimate(problem.model, problem.objective)
    assert float(flat_grad(problem.model).abs().max()) > 0


def _batch_means(est: OUA, problem, calls: int, warmup: int = 100, batches: int = 50) -> torch.Tensor:
    """Means of consecutive blocks of directions at a fixed μ, after ``warmup`` calls (r̄ forgets its start).

    Consecutive directions are correlated (δ is an AR(1) series with a ≤ 0.5 here); blocks of 80 calls are
    far longer than that memory, so the block means are independent rows for the standard errors.
    """
    for _ in range(warmup):
        est.estimate(problem.model, problem.objective)
    rows = []
    for _ in range(calls):
        est.estimate(problem.model, problem.objective)
        rows.append(flat_grad(problem.model))
    return torch.stack(rows).view(batches, -1, rows[0].numel()).mean(1)


def test_mean_direction_is_the_predicted_multiple_of_the_gradient_on_a_quadratic() -> None:
    # at a fixed μ with δ and r̄ stationary, E[−(r − r̄)δ dt] = dt·v·κ·∇L exactly on a quadratic, any σ
    problem = quadratic(16, seed=1)
    est = OUA(lam=2.0, sigma=0.3, eps=1.0, dt=0.25, init="stationary", seed=1)
    kappa = (1 - est.a) / (1 - (1 - 1.0 * 0.25) * est.a)
    assert est.baseline_share == pytest.approx(kappa) and 0 < kappa < 1
    target = 0.25 * est.stationary_variance * kappa * problem.grad()
    means = _batch_means(est, problem, 4000)
    assert_mean_matches(means, target)
    assert mean_mismatch(means, target / kappa)  # the baseline's share κ = 0.8 is resolved (9–11 SE, seeds 0–2)
    assert cosine(means.mean(0), problem.grad()) > 0.99  # 0.997–0.998 over seeds 0–2 (> 10 SDs)


def test_mean_direction_aligns_with_backprop_on_a_tanh_mlp() -> None:
    problem = mlp()
    g = problem.grad()
    est = OUA(lam=2.0, sigma=0.01, eps=1.0, dt=0.25, init="stationary", seed=0)
    means = _batch_means(est, problem, 2000)
    mean = means.mean(0)
    assert cosine(mean, g) > 0.8  # 0.90–0.93 over seeds 0–5 (> 8 SDs)
    # the projection on the gradient is positive by many standard errors and near dt·v·κ·‖∇L‖ (small σ)
    proj = means @ (g / g.norm())
    se = float(proj.std() / math.sqrt(len(proj)))
    predicted = 0.25 * est.stationary_variance * est.baseline_share * float(g.norm())
    assert float(proj.mean()) > 10 * se  # 26–28 SE measured over seeds 0–2
    assert abs(float(proj.mean()) - predicted) < 5 * se  # 0.7–1.1 SE off over seeds 0–2


def _train(est: OUA, problem, lr: float, calls: int) -> tuple[float, float]:
    opt = torch.optim.SGD(problem.model.parameters(), lr=lr)  # lr plays η of dμ = η(r − r̄)(θ − μ)dt
    first = problem.loss()
    for _ in range(calls):
        opt.zero_grad()
        est.estimate(problem.model, problem.objective)
        opt.step()
    return first, problem.loss()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sgd_lowers_the_loss_of_a_quadratic(seed: int) -> None:
    first, last = _train(OUA(lam=2.0, sigma=0.3, eps=1.0, dt=0.25, seed=seed), quadratic(16, seed=seed), 0.5, 300)
    assert last < 0.1 * first  # 0.015–0.035 of the start over seeds 0–5 (SD 0.007: > 9 SDs)


def test_sgd_lowers_the_loss_of_logistic_regression() -> None:
    first, last = _train(OUA(lam=2.0, sigma=0.1, eps=1.0, dt=0.25, seed=0), logistic(seed=0), 100.0, 300)
    # 0.14–0.37 of the start over seeds 0–5 (SD 0.09); seed 0 gives 0.14, 4 SDs below 0.5
    assert last < 0.5 * first


def test_reset_every_restarts_the_deviation() -> None:
    problem = logistic()
    est = OUA(reset_every=4, seed=2)
    fresh = OUA(seed=2)
    fresh.step = 4
    for _ in range(5):
        est.estimate(problem.model, problem.objective)
    fresh.estimate(problem.model, problem.objective)
    assert all(torch.equal(x, y) for x, y in zip(est.delta, fresh.delta))  # δ = 0·a + b·ξ_4 in both
    est.reset()
    assert est.delta is None and est.rbar is not None  # r̄ is kept


def test_reward_callable_scales_the_direction() -> None:
    # r = −2L: the reward-prediction error and r̄ double exactly (a power of two), so does the direction
    problem = logistic()
    a, b = OUA(seed=5), OUA(reward=lambda losses: -2.0 * losses.double().mean(), seed=5)
    for _ in range(4):
        a.estimate(problem.model, problem.objective)
        ga = flat_grad(problem.model)
        b.estimate(problem.model, problem.objective)
        # bitwise: the same float64 mean doubled (exact), so r, r̄ and the RPE double exactly and so does the product
        assert torch.equal(flat_grad(problem.model), 2 * ga)


@pytest.mark.parametrize("baseline", [None, -1.0])
def test_contract(baseline: float | None) -> None:
    assert_contract(lambda s: OUA(sigma=0.05, baseline=baseline, init="stationary", seed=s), mlp())


def test_parameters_changing_shape_is_an_error() -> None:
    est = OUA(seed=0)
    est.estimate(logistic(features=8).model, logistic(features=8).objective)
    other = logistic(features=4)
    with pytest.raises(UnigradError, match="reset"):
        est.estimate(other.model, other.objective)
    est.reset()
    est.estimate(other.model, other.objective)


@pytest.mark.parametrize(
    "options",
    [
        {"lam": 0.0},
        {"lam": True},
        {"sigma": -0.1},
        {"sigma": float("nan")},
        {"eps": -1.0},
        {"dt": 0.0},
        {"eps": 20.0, "dt": 0.1},
        {"lam": 25.0, "dt": 0.1},
        {"lam": 25.0, "dt": 0.1, "scheme": "heun"},
        {"scheme": "rk4"},
        {"init": "random"},
        {"baseline": float("inf")},
        {"reset_every": -1},
        {"reset_every": 2.5},
        {"reward": "accuracy"},
        {"noise_source": "dice"},
        {"seed": -1},
    ],
)
def test_bad_options_raise(options: dict) -> None:
    with pytest.raises(UnigradError):
        OUA(**options)


def test_exact_scheme_accepts_a_coarse_step() -> None:
    est = OUA(lam=25.0, dt=0.1, scheme="exact")
    assert est.stationary_variance == pytest.approx(0.1**2 / 50)
