"""Estimator variance: the exact alignment and error formulas against the library's estimators."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from unigrad.core.errors import UnigradError
from unigrad.experiments._common import fit_power
from unigrad.experiments.estimator_variance import (
    gaussian_cos,
    gaussian_cos2,
    mlp_problem,
    node_theory,
    rank_statistics,
    ranks_moments,
    run,
    run_experiment,
    sample,
    softmax_problem,
    true_gradient,
)


def _within(mean: float, se: float, expected: float, k: float = 4.0) -> bool:
    """``mean`` is within ``k`` of its standard errors ``se`` (estimated from the samples) of an exact ``expected``;
    every test below uses fixed seeds and k = 4 (measured |z| ≤ 2.0 at each call site)."""
    return abs(mean - expected) <= k * se


@pytest.mark.parametrize(("d", "q"), [(2, 1), (50, 1), (50, 4), (1000, 64)])
def test_gaussian_moments_are_those_of_beta(d: int, q: int) -> None:
    beta = stats.beta(q / 2, (d - 1) / 2)
    # q/(d+q−1) against scipy's a/(a+b): a few float64 operations each side, ≲ 4·eps64 ≪ 1e-12
    assert gaussian_cos2(d, q) == pytest.approx(beta.mean(), rel=1e-12)
    # expect() integrates by quad, whose default target is |error| ≤ max(1.49e-8, 1.49e-8·I) = 1.49e-8 here (I < 1);
    # the lgamma side errs by ≲ 4·eps64·|lgamma| ≈ 3e-12. So abs=2e-8 (was rel=1e-7: 1.1e-8 at d=50, q=1); measured
    # differences ≤ 3e-11
    assert gaussian_cos(d, q) == pytest.approx(beta.expect(math.sqrt), abs=2e-8)
    assert gaussian_cos(d, q) ** 2 <= gaussian_cos2(d, q)  # Jensen


@pytest.mark.parametrize(("name", "q"), [("rge", 1), ("forward-gradient", 4)])
def test_gaussian_estimators_match_the_exact_cos2_and_relative_error_at_d_50(name: str, q: int) -> None:
    model, obj = softmax_problem(52, seed=0)  # 13 inputs × 4 classes = 52 weights
    d = sum(p.numel() for p in model.parameters())
    opts = {"probes": q, "noise_source": "generator"} | ({"sigma": 1e-6} if name == "rge" else {})
    before = [p.detach().clone() for p in model.parameters()]
    cos, rel = sample(name, opts, model, obj, seed=3, n=400)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    c2 = cos**2
    se = c2.std(ddof=1) / math.sqrt(c2.size)
    assert _within(c2.mean(), se, q / (d + q - 1)), (c2.mean(), se, q / (d + q - 1))
    assert _within(rel.mean(), rel.std(ddof=1) / math.sqrt(rel.size), (d + 1) / q), rel.mean()
    if q == 1:  # and distinguishably not 2/(d+2), which a (q+1)/(d+q+1) rule of thumb would give (measured 14 SE off)
        assert abs(c2.mean() - 2 / (d + 2)) > 4 * se


def test_spsa_relative_error_is_d_minus_one() -> None:
    model, obj = softmax_problem(40, seed=1)
    cos, rel = sample("spsa", {"probes": 1, "sigma": 1e-6, "noise_source": "generator"}, model, obj, seed=0, n=400)
    assert _within(rel.mean(), rel.std(ddof=1) / math.sqrt(rel.size), 39.0)
    assert _within((cos**2).mean(), (cos**2).std(ddof=1) / math.sqrt(cos.size), 1 / 40)


def test_rank_statistic_limits_and_es_alignment() -> None:
    t1 = rank_statistics(1, 100_000, seed=0)
    # q = 1: T = z², Var z² = 2, so the mean of 1e5 has SE 0.0045 and abs=0.02 is 4.4 SE (measured off by 0.0003)
    assert t1.mean() == pytest.approx(1.0, abs=0.02)
    # linear scores on half-normal quantiles give 3/π as q → ∞; at q = 64 the mean is 0.0011 below it (4e5 draws),
    # and the mean of 2e4 has SE 0.0012: abs=0.01 is the offset plus 7 SE (measured off by 0.0011)
    t64 = rank_statistics(64, 20_000, seed=0)
    assert t64.mean() / 64 == pytest.approx(3 / math.pi, abs=0.01)
    d, q = 64, 8
    model, obj = softmax_problem(d, seed=2)
    opts = {"probes": q, "sigma": 1e-6, "fitness_shaping": "centered_ranks", "noise_source": "generator"}
    cos, _ = sample("es", opts, model, obj, seed=5, n=300)
    # the expectations are Monte Carlo too (1e5 draws: SE 1.6e-4 on cos², 6% of the 300 samples' SE of 2.8e-3,
    # so it adds 0.2% to the combined SE and _within's k = 4 stands)
    expected, expected_cos = ranks_moments(d, rank_statistics(q, 100_000, seed=1))
    assert expected < gaussian_cos2(d, q)  # ranks lose a little alignment
    assert _within((cos**2).mean(), (cos**2).std(ddof=1) / math.sqrt(cos.size), expected)
    assert _within(cos.mean(), cos.std(ddof=1) / math.sqrt(cos.size), expected_cos)


def test_node_theory_reproduces_the_gradient_norm_and_single_layer_counts() -> None:
    for widths in [(6, 16), (8, 12, 3)]:
        model, obj = mlp_problem(widths, seed=0)
        g = true_gradient(model, obj)
        th = node_theory(model, obj)
        # ‖g‖² in float64 two ways (Σ a_l‖δ_l‖² vs autograd's g·g), each a sum of ≤ 150 terms: ≲ 150·eps64 ≈ 3e-14
        assert th.grad_sq == pytest.approx(float(g @ g), rel=1e-10)
        assert th.nodes == sum(widths[1:])
        assert all(p.grad is None for p in model.parameters())
    th = node_theory(*mlp_problem((6, 16), seed=0))
    # one layer: both are exact ratios of the same float64 sums (measured errors 0 and 4e-15 ≪ approx's 1e-6)
    assert th.m_eff == pytest.approx(16.0) and th.rel_error == pytest.approx(17.0)
    model, obj = mlp_problem((8, 12, 3), seed=0)
    obj.inputs = torch.cat([obj.inputs, obj.inputs])
    with pytest.raises(UnigradError, match="single sample"):
        node_theory(model, obj)


@pytest.mark.parametrize("widths", [(20, 16), (16, 64, 4)])
def test_node_perturbation_matches_its_per_instance_formula(widths: tuple[int, ...]) -> None:
    model, obj = mlp_problem(widths, seed=1)
    th = node_theory(model, obj)
    cos, rel = sample("np", {"probes": 1, "sigma": 1e-6, "noise_source": "generator"}, model, obj, seed=0, n=500)
    c2 = cos**2
    assert _within(rel.mean(), rel.std(ddof=1) / math.sqrt(rel.size), th.rel_error), (rel.mean(), th.rel_error)
    # the cos² formula is exact for one layer and a large-M approximation for two: allow 5% on top of 4 SE
    # (measured: −2.0 SE for one layer, −0.7 SE for two)
    se = c2.std(ddof=1) / math.sqrt(c2.size)
    assert abs(c2.mean() - th.cos2) <= 4 * se + 0.05 * th.cos2, (c2.mean(), th.cos2)
    d = sum(p.numel() for p in model.parameters())
    assert th.cos2 > 3.0 / d  # NP searches far fewer dimensions than WP's d (exact theory: 7.0/d and 9.1/d here)


def test_fit_power_recovers_exponents_and_propagates_errors() -> None:
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    slope, se = fit_power(x, 3.0 * x**-0.5, 0.01 * 3.0 * x**-0.5)
    # a 5-point least-squares fit on logs ≤ 2.8 in float64: rounding ≲ 20·eps64·2.8 ≈ 1e-14 (vs 1e-12 and rel 1e-9)
    assert slope == pytest.approx(-0.5, abs=1e-12)
    dx = np.log(x) - np.log(x).mean()
    assert se == pytest.approx(0.01 / math.sqrt((dx**2).sum()), rel=1e-9)
    assert fit_power(x, x**2) == (pytest.approx(2.0), 0.0)


def test_quick_experiment_writes_figure_results_and_report(tmp_path) -> None:
    report = run_experiment(tmp_path / "ev", quick=True)
    assert (tmp_path / "ev" / "estimator-variance.png").stat().st_size > 10_000
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert {r["estimator"] for r in results["d_sweep"]} == {"rge", "spsa", "es", "forward-gradient"}
    assert set(results["node_sweeps"]) == {"nodes", "inputs", "width"}
    assert all({"measured", "se", "theory", "within"} <= set(f) for f in results["fits"])
    assert "Fitted exponents" in report and report == (tmp_path / "ev" / "report.md").read_text()
    with pytest.raises(UnigradError, match="dims"):
        run(tmp_path / "bad", dims=(16,))
