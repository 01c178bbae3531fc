"""Werfel, Xie & Seung: the batched updates have the theory's moments, learning times follow
ln F / −ln(1 − 2η + Kη²), NP slows with M while GD does not, the library's NP agrees, and the
experiment writes its files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from unigrad import UnigradError
from unigrad.experiments import werfel
from unigrad.experiments.werfel import direction, learning_times, library_time
from unigrad.experiments.werfel_theory import optimal_eta, theory_k, theory_time


@pytest.mark.parametrize("method", ["gd", "np", "wp"])
def test_directions_are_unbiased_with_second_moment_k(method: str) -> None:
    # one fixed D and x replicated over many runs: E[g] = e xᵀ and E‖g‖² = (d + 2)‖e‖²‖x‖² with d the
    # perturbation dimension (M for NP, MN for WP; 1 for GD, whose g is exact)
    m, n, runs = 3, 4, 200_000
    g = torch.Generator().manual_seed(0)
    d0 = torch.randn(m, n, generator=g, dtype=torch.float64)
    x0 = torch.randn(n, generator=g, dtype=torch.float64)
    d = d0.expand(runs, m, n)
    x = x0.expand(runs, n)
    out = direction(method, d, x, g, 1e-4)
    e = d0 @ x0
    grad = torch.outer(e, x0)
    mean_sq = float((out**2).sum((1, 2)).mean())
    dim = {"gd": None, "np": m, "wp": m * n}[method]
    expected_sq = float((e**2).sum() * (x0**2).sum()) * (1 if dim is None else dim + 2)
    # the mean of 2e5 squared norms has a relative SE of 0.0058 (NP) and 0.0041 (WP), so 0.03 is ≥ 5 SE (measured
    # −0.5% and −0.1%); GD's is exact up to float64 rounding (measured 6e-16)
    assert mean_sq == pytest.approx(expected_sq, rel=0.03)
    # the mean's error shrinks as 1/√runs: compare against the per-entry standard error (5 SE over 12 entries,
    # measured max 2.1 and 2.4). GD's rows are identical (SE 0): its mean differs from e xᵀ by the rounding of a
    # float64 sum of 2e5 equal terms, ≲ 18·eps64·|g| ≈ 4e-15 (|g| ≤ 1.1; measured 8e-16) against 1e-12
    se = out.std(0) / math.sqrt(runs)
    assert bool(((out.mean(0) - grad).abs() <= 5 * se + 1e-12).all())
    # theory_k is this second moment averaged over x ~ N(0, I): E[‖x‖² (x·a)²] = (N + 2)‖a‖²
    assert theory_k(method, m, n) == (n + 2) * (1 if dim is None else dim + 2)


@pytest.mark.parametrize("method", ["gd", "np", "wp"])
def test_learning_time_at_the_optimum_matches_theory(method: str) -> None:
    m, n, factor = 2, 4, 10.0
    res = learning_times(method, m, n, [optimal_eta(method, m, n)], seeds=1, students=400, factor=factor, seed=1)
    measured = res["times"][0][0]
    # measured / theory over seeds 0–5: GD 1.03–1.11 (an integer step past 12.6: 13, at times 14), NP 0.96–1.02,
    # WP 0.98–1.04 (seed-to-seed SD 0.03, 0.02, 0.02): 0.15 is ≥ 3.4 SD off GD's mean 1.04 and ≥ 6 SD off the others';
    # GD's 15 steps (1.19) needs its mean error at step 14 29% above the mean, ≈ 4 SD of its fluctuation
    assert measured == pytest.approx(theory_time(method, m, n, optimal_eta(method, m, n), factor), rel=0.15)


def test_np_slows_down_with_outputs_and_gd_does_not() -> None:
    n, factor = 6, 10.0
    times = {}
    for method in ("gd", "np"):
        for m in (1, 8):
            res = learning_times(method, m, n, [optimal_eta(method, m, n)], seeds=1, students=64, factor=factor)
            times[method, m] = res["times"][0][0]
    # over seeds 0–7 (64 students): GD's ratio 0.94–1.13 (SD 0.07), so rel=0.3 (was 0.2: 2.9 SD); measured 1.06
    assert times["gd", 8] == pytest.approx(times["gd", 1], rel=0.3)
    # theory: (8 + 2)/(1 + 2) = 3.3 times slower. Over seeds 0–7: 2.76–4.04, log SD 0.11 about ln 3.28, so 4 SD is
    # (2.1, 5.0): bounds (2, 5) (were (2.5, 4.5): 1.8 SD below); measured 3.29. NP/GD at M = 8: 9.9–11.1 vs 5
    assert 2.0 < times["np", 8] / times["np", 1] < 5.0
    assert times["np", 8] > 5 * times["gd", 8]


def test_a_learning_rate_past_two_over_k_does_not_learn() -> None:
    # 1 − 2η + Kη² > 1: the mean error grows (K large enough that a typical run follows the mean)
    m, n = 4, 10
    eta = 2.5 / theory_k("np", m, n)
    res = learning_times("np", m, n, [eta], seeds=1, students=64, factor=10.0, max_steps=600)
    assert res["times"] == [[None]]  # the mean grows by 1 + 1.25/K per step; no learning over seeds 0–5 either
    assert math.isinf(theory_time("np", m, n, eta, 10.0))


def test_library_np_learns_at_the_theoretical_rate() -> None:
    m, n, factor = 3, 4, 10.0
    eta = optimal_eta("np", m, n)
    res = library_time("np", m, n, eta, runs=16, factor=factor, sigma=1e-3, seed=3, max_steps=400)
    assert res["estimator"] == "np"
    # measured / theory over seeds 0–4: 0.87–1.06 (mean 0.95, SD 0.07), so rel=0.35 is ≥ 4 SD off the mean (was 0.3:
    # 3.6 SD on the low side); measured 0.96 at seed 3
    assert res["time"] == pytest.approx(theory_time("np", m, n, eta, factor), rel=0.35)


def test_quick_experiment_writes_its_files_and_reports_against_theory(tmp_path) -> None:
    out = tmp_path / "werfel"
    text = werfel.run_experiment(out, quick=True)
    assert (out / "werfel.png").stat().st_size > 10_000
    assert (out / "report.md").read_text() == text
    assert "theory" in text and "NP/GD measured" in text
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert {(r["m"], r["n"]) for r in rows} == {(1, 4), (3, 4), (2, 3), (2, 6)}
    for r in rows:  # exact finite-size theory against its leading order M + 2: 5–9% apart here (no randomness)
        assert r["np_gd_theory"] == pytest.approx(r["m"] + 2, rel=0.15)
        assert r["times"]["gd"] is not None and r["times"]["np"] > r["times"]["gd"]  # NP/GD measured 1.7–4.6
    assert {e["estimator"] for e in results["library"]} == {"backprop", "np", "wp"}


def test_bad_options_are_user_errors(tmp_path) -> None:
    with pytest.raises(UnigradError, match="factor"):
        werfel.run(tmp_path, factor=1.0)
    with pytest.raises(UnigradError, match="m_values"):
        werfel.run(tmp_path, m_values=())
    with pytest.raises(UnigradError, match="unknown method"):
        theory_k("sgd", 1, 1)
