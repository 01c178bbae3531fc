"""Estimator variance: the exact alignment and error formulas against the library's estimators."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from unigrad.core.errors import UnigradError
from unigrad.dynamics.estimator_variance import (
    fit_power,
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
    return abs(mean - expected) <= k * se


@pytest.mark.parametrize(("d", "q"), [(2, 1), (50, 1), (50, 4), (1000, 64)])
def test_gaussian_moments_are_those_of_beta(d: int, q: int) -> None:
    beta = stats.beta(q / 2, (d - 1) / 2)
    assert gaussian_cos2(d, q) == pytest.approx(beta.mean(), rel=1e-12)
    assert gaussian_cos(d, q) == pytest.approx(beta.expect(math.sqrt), rel=1e-7)
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
    if q == 1:  # and distinguishably not 2/(d+2), which a (q+1)/(d+q+1) rule of thumb would give
        assert abs(c2.mean() - 2 / (d + 2)) > 4 * se


def test_spsa_relative_error_is_d_minus_one() -> None:
    model, obj = softmax_problem(40, seed=1)
    cos, rel = sample("spsa", {"probes": 1, "sigma": 1e-6, "noise_source": "generator"}, model, obj, seed=0, n=400)
    assert _within(rel.mean(), rel.std(ddof=1) / math.sqrt(rel.size), 39.0)
    assert _within((cos**2).mean(), (cos**2).std(ddof=1) / math.sqrt(cos.size), 1 / 40)


def test_rank_statistic_limits_and_es_alignment() -> None:
    t1 = rank_statistics(1, 100_000, seed=0)
    assert t1.mean() == pytest.approx(1.0, abs=0.02)  # q = 1: T = z²
    t64 = rank_statistics(64, 20_000, seed=0)
    assert t64.mean() / 64 == pytest.approx(3 / math.pi, abs=0.01)  # linear scores on half-normal quantiles
    d, q = 64, 8
    model, obj = softmax_problem(d, seed=2)
    opts = {"probes": q, "sigma": 1e-6, "fitness_shaping": "centered_ranks", "noise_source": "generator"}
    cos, _ = sample("es", opts, model, obj, seed=5, n=300)
    expected, expected_cos = ranks_moments(d, rank_statistics(q, 100_000, seed=1))
    assert expected < gaussian_cos2(d, q)  # ranks lose a little alignment
    assert _within((cos**2).mean(), (cos**2).std(ddof=1) / math.sqrt(cos.size), expected)
    assert _within(cos.mean(), cos.std(ddof=1) / math.sqrt(cos.size), expected_cos)


def test_node_theory_reproduces_the_gradient_norm_and_single_layer_counts() -> None:
    for widths in [(6, 16), (8, 12, 3)]:
        model, obj = mlp_problem(widths, seed=0)
        g = true_gradient(model, obj)
        th = node_theory(model, obj)
        assert th.grad_sq == pytest.approx(float(g @ g), rel=1e-10)
        assert th.nodes == sum(widths[1:])
        assert all(p.grad is None for p in model.parameters())
    th = node_theory(*mlp_problem((6, 16), seed=0))
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
    se = c2.std(ddof=1) / math.sqrt(c2.size)
    assert abs(c2.mean() - th.cos2) <= 4 * se + 0.05 * th.cos2, (c2.mean(), th.cos2)
    d = sum(p.numel() for p in model.parameters())
    assert th.cos2 > 3.0 / d  # NP searches far fewer dimensions than WP's d


def test_fit_power_recovers_exponents_and_propagates_errors() -> None:
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    slope, se = fit_power(x, 3.0 * x**-0.5, 0.01 * 3.0 * x**-0.5)
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
