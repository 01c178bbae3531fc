"""Hiratani et al.: the batched NP/WP updates are unbiased, NP's best learning time does not grow with
width, NP's weights drift under student–teacher mismatch while row normalization holds them, and the
experiment writes its files."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from unigrad import UnigradError
from unigrad.core.rng import generator
from unigrad.experiments import hiratani
from unigrad.experiments.hiratani import (
    diffusion_check,
    directions,
    library_runs,
    normalize_rows_,
    row_rms,
    stability,
    student,
    sweep,
)


@pytest.mark.parametrize("method", ["np", "wp"])
def test_batched_directions_are_unbiased_estimates_of_the_backprop_gradient(method: str) -> None:
    lx, lh, ly, runs = 3, 5, 2, 100_000
    g = torch.Generator().manual_seed(0)
    model, a = student(g, lx, lh, ly)
    x = torch.randn(lx, generator=g, dtype=torch.float64)
    loss = 0.5 * ((model(x) - a @ x) ** 2).sum()
    grads = torch.autograd.grad(loss, [model[0].weight, model[1].weight])
    w1 = model[0].weight.detach().expand(runs, lh, lx)
    w2 = model[1].weight.detach().expand(runs, ly, lh)
    xs = x.expand(runs, lx)[:, :, None]
    g1, g2 = directions(method, w1, w2, a.expand(runs, ly, lx), xs, g, 1e-4)
    gd1, gd2 = directions("gd", w1[:1], w2[:1], a[None], xs[:1], g, 1e-4)
    for est, exact, gd in ((g1, grads[0], gd1[0]), (g2, grads[1], gd2[0])):
        # the batched GD direction is the backprop gradient: float64 products of ≤ 5 terms, ≲ 10·eps64 relative,
        # far inside assert_close's float64 defaults (rtol 1e-7; measured identical)
        torch.testing.assert_close(gd, exact)
        # 5 SE per entry (SE from the 1e5 runs; 25 entries, so ≈ 1e-5 false alarms), plus 1e-10 for rounding of the
        # mean of 1e5 float64 terms (≲ 1e5·eps64·|g| ≈ 1e-11); measured max |z| 1.0 (NP) and 1.9 (WP)
        se = est.std(0) / math.sqrt(runs)
        assert bool(((est.mean(0) - exact).abs() <= 5 * se + 1e-10).all())
        assert float(se.max()) < 0.1 * float(exact.abs().max())  # the check has power (measured 0.006–0.011)


def test_row_normalization_restores_every_row_norm() -> None:
    model, _ = student(generator(0), 4, 6, 3)
    targets = [row_rms(m.weight.detach()).clone() for m in model]
    with torch.no_grad():
        for m in model:
            m.weight.mul_(torch.linspace(0.5, 3.0, m.weight.shape[1], dtype=torch.float64))
            m.weight.add_(0.1)
    assert not torch.allclose(row_rms(model[0].weight.detach()), targets[0])
    normalize_rows_(model, targets)
    for m, t in zip(model, targets):  # a rescale and an RMS of ≤ 6 float64 terms: ≲ 10·eps64 ≪ rtol 1e-7
        torch.testing.assert_close(row_rms(m.weight.detach()), t)


def test_np_best_learning_time_does_not_grow_with_width() -> None:
    times = {}
    for lh in (8, 64):
        r = sweep("np", 4, lh, 2, seeds=1, students=8, factor=10.0, sigma=1e-3, seed=0)
        assert r["time"] is not None
        times[lh] = r["time"]
    # 8× wider: the perturbation dimension grows 6×, the best learning time stays within ±50% (measured 52 and 52
    # steps). Every draw comes from seeded generators, so another machine changes only rounding, which can move an
    # integer learning time (the median first step below the target) by a step at most: ±2% of 52. Other seeds are
    # another experiment: seeds 0–9 give ratios 0.57–1.68 (8 students), so the claim is this seed's, not a bound
    assert 0.5 < times[64] / times[8] < 1.5, times


def test_under_label_noise_np_weights_drift_and_normalized_np_stays_put() -> None:
    rules = ("gd", "np", "npwn")
    res = library_runs(
        rules, 4, 16, 2, dict.fromkeys(rules, 0.01), runs=2, steps=250, label_noise=0.5, seed=1, every=10
    )
    stab = {rule: stability(res["curves"][rule], res["diverged"][rule]) for rule in rules}
    # These figures are fixed by seed 1 (every draw is seeded, in a fixed order) and insensitive to rounding: scaling
    # the initial weights by 1 ± 1e-13 moves each by ≤ 2e-11 relative (± 1e-8: ≤ 4e-8), far inside every margin
    # below. Measured at seed 1 (over seeds 1–10 in brackets, i.e. what a different experiment would give):
    # NP growth 3.34 [1.34–3.34], NP final/lowest error 3.25 > 2 [8 of 10 unstable], GD growth 1.12 [0.97–1.15],
    # GD final/lowest 1.44 < 2 [7 of 10 stable], NP + norm final/initial error 0.027 [0.027–0.20]
    # NP: the weight norm grows; GD's barely moves. 1.5 is the experiment's own "norm grows" test (was 3.0: within
    # 10% of the seed-1 figure and above every other seed's)
    assert stab["np"]["alpha_growth"] > 1.5
    assert stab["np"]["unstable"]
    assert 0.8 < stab["gd"]["alpha_growth"] < 1.2 and not stab["gd"]["unstable"]
    # NP + row normalization: the norm is held exactly (renormalized every step: each α is a float64 sum of 64
    # rescaled squares, ≲ 64·eps64 ≈ 1e-14 from the target; measured max/min − 1 ≤ 7e-16) and the error stays
    # finite and learned
    for alpha in res["curves"]["npwn"]["alpha"]:
        assert max(alpha) == pytest.approx(min(alpha), rel=1e-9)
    assert res["diverged"]["npwn"] == [None, None]
    assert stab["npwn"]["final_error"] < 0.5 * res["curves"]["npwn"]["error"][0][0]


def test_diffusion_check_integrates_the_drift_law_over_the_stationary_window() -> None:
    eta, lx, lh, ly, noise = 0.01, 4, 16, 2, 0.5
    steps = list(range(0, 1001, 10))
    err = [0.01] * 60 + [0.01 * 1.2**k for k in range(1, 42)]  # flat, then rising past 3× the lowest
    beta = [1.5] * len(steps)
    alpha = [1.0]
    for i in range(len(steps) - 1):  # α grows exactly by the law's diffusion term
        alpha.append(alpha[-1] + eta**2 * lh * ly * (1 + beta[i]) * (lx * err[i] + noise**2) * 10)
    curve = {"steps": steps, "error": [err], "alpha": [alpha], "beta": [beta]}
    res = diffusion_check(curve, eta=eta, lx=lx, lh=lh, ly=ly, noise=noise, start=100)
    start, end = res["windows"][0]
    assert start == 100 and 500 <= end < 660  # ends before the error has risen 3× (1.2⁶ = 2.99, 1.2⁷ = 3.58: no tie)
    # α was built from the law itself: both sides sum the same ≤ 100 float64 terms, ≲ 100·eps64 ≈ 2e-14 apart
    assert res["measured"] == pytest.approx(res["predicted"], rel=1e-9) and res["ok"]
    curve["alpha"] = [[2 * v for v in alpha]]  # twice the law's drift
    assert not diffusion_check(curve, eta=eta, lx=lx, lh=lh, ly=ly, noise=noise, start=100)["ok"]


def test_quick_experiment_writes_its_files(tmp_path) -> None:
    out = tmp_path / "hiratani"
    text = hiratani.run_experiment(out, quick=True)
    assert (out / "hiratani.png").stat().st_size > 10_000
    assert (out / "report.md").read_text() == text
    assert "exponent of learning time in Lh" in text and "claim of [1]" in text
    results = json.loads((out / "results.json").read_text())
    assert set(results["fits"]) == {"gd", "np", "wp"}
    assert set(results["mismatch"]["curves"]) == {"gd", "np", "npwn", "gdwn", "npwn_half"}
    assert results["mismatch"]["claims"]["np_norm_grows"]


def test_bad_options_are_user_errors(tmp_path) -> None:
    with pytest.raises(UnigradError, match="widths"):
        hiratani.run(tmp_path, widths=(16,))
    with pytest.raises(UnigradError, match="label_noise"):
        hiratani.run(tmp_path, label_noise=0.0)
    with pytest.raises(UnigradError, match="unknown method"):
        hiratani.eta_centre("sgd", 4, 8, 2)
    assert isinstance(student(generator(0), 2, 3, 1)[0], nn.Sequential)
