"""The smoothing-rates experiment: iterations of Gaussian-smoothing random search against gradient
descent on strongly convex quadratics, as the dimension ``d`` grows at fixed condition number κ.

Problem: ``f(x) = ½ (x − x*)ᵀ A (x − x*)``, ``A = diag(λ)`` with ``λ`` spaced geometrically from
``μ = 1`` to ``L = κ`` (:func:`unigrad.data.classic.quadratic`), from ``x_0 = 0``. A run stops at the
first iteration ``k`` with ``f(x_k) − f* ≤ ε (f(x_0) − f*)`` (relative, so that ``f(x_0) ∝ d`` does
not add a ``log d`` to the counts).

Methods:

* zeroth order: ``rge`` with one Gaussian probe, central differences (exact on a quadratic, so σ
  plays no role beyond rounding), ``x ← x − η ĝ`` with the step of Nesterov & Spokoiny,
  ``η = 1/(4(d+4)L)`` ("Random gradient-free minimization of convex functions", Found. Comput.
  Math. 17:527–566, 2017, Section 5: their random gradient method with ``h = 1/(4(n+4)L₁)``).
* first order: gradient descent (``backprop``) with ``η = 1/L``.

Theory
======

Bound. With ``E‖ĝ‖² ≤ (d+4)‖∇f‖²`` (their Eq. 32; exactly ``(d+2)‖∇f‖²`` for a Gaussian probe as
σ → 0), ``∇fᵀ(x−x*) ≥ μ‖x−x*‖²`` and ``‖∇f‖² ≤ L ∇fᵀ(x−x*)``::

    E‖x_{k+1} − x*‖² ≤ ‖x_k − x*‖² − 2η ∇fᵀ(x_k−x*) (1 − η(d+4)L/2) ≤ (1 − 7μ/(16(d+4)L)) ‖x_k − x*‖²

at ``η = 1/(4(d+4)L)``; with ``f − f* ≤ (L/2)‖x − x*‖²`` that is at most
``ln(L‖x_0−x*‖²/(2ε f_0)) / −ln(1 − 7/(16(d+4)κ)) ≈ (16/7)(d+4)κ ln(·)`` iterations, against
``κ ln(·)`` for gradient descent at ``η = 1/L``, whose bound contracts by ``1 − μ/L``: a ratio of
``(16/7)(d+4)``, linear in ``d``. (Nesterov & Spokoiny's theorem for general smooth strongly convex
``f`` and a positive smoothing scale has a contraction of the same form, ``1 − c·μ/((n+4)L)``.)

Exact expectation on the quadratic. For ``ĝ = (∇f·u)u`` with ``u ~ N(0, I)`` and ``e = x − x*``,
``E[u_j²u_k²] = 1 + 2[j = k]`` gives, for ``s_j = E[e_j²]``, the closed linear recursion::

    s_j ← (1 − 2ηλ_j + 2η²λ_j²) s_j + η² Σ_k λ_k² s_k,        E f = ½ Σ_j λ_j s_j

so ``E f(x_k)`` is known exactly at every ``k`` (the "predicted" iterations are the first ``k`` with
``E f(x_k) ≤ ε f_0``; a single run's hitting time fluctuates around it by a few percent, and tends
to fall slightly below it since ``E f`` is pulled up by the unlucky runs). Its asymptotic rate is
the spectral radius ``ρ`` of that matrix: the slowest mode (λ = μ) contracts by ``1 − 2ημ + O(η²μ²)``,
the rank-one coupling term only perturbs this at ``O(η²)``, so::

    N_ZO ≈ ln(1/ε') / (2ημ) = 2(d+4) κ ln(1/ε')          (η = 1/(4(d+4)L))

Gradient descent at ``η = 1/L``: mode ``j`` of ``f`` contracts by ``(1 − λ_j/L)²``, the slowest by
``(1 − 1/κ)²``, so ``N_GD ≈ ln(1/ε')/(−2 ln(1 − 1/κ)) ≈ (κ/2) ln(1/ε')``, independent of ``d``
(``ε'`` is ε relative to the weight of the slow modes in ``f_0``, which depends weakly on ``d``).
The predicted ratio is therefore::

    N_ZO / N_GD → −2 ln(1 − 1/κ) / −ln ρ ≈ 4 (d+4) κ ln(κ/(κ−1))        (= 4.21 (d+4) at κ = 10)

linear in ``d + 4``: the exponent in ``d`` is 1 asymptotically, a little less on a grid that starts
at ``d = 4`` (the slope of ``log(d+4)`` against ``log d`` there). The report fits the exponents in
``d`` and in ``d + 4`` and compares them with the asymptotic value 1 and with the slope of the exact
expected iterations on the same grid.

Options (``run``): ``dims``, ``kappa``, ``eps``, ``sigma`` (the probe scale), ``seeds`` (zeroth-order
runs per dimension; gradient descent is deterministic), ``budget_factor`` (a run stops unreached
after ``budget_factor`` × the predicted iterations + 1000).

Outputs (in ``out``): ``smoothing-rates.png``, ``results.json`` and ``report.md``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.options import check_fraction, check_number, is_int
from unigrad.data.classic import quadratic
from unigrad.experiments import _common
from unigrad.experiments._common import (
    Progress,
    Settings,
    finish,
    fit_power,
    grid,
    output_dir,
    pyplot,
    runner,
    save_figure,
)
from unigrad.registry import make_estimator

TOLERANCE = 0.25


def spectrum(d: int, kappa: float) -> np.ndarray:
    """The eigenvalues of :func:`unigrad.data.classic.quadratic`: geometric from 1 to κ."""
    return np.logspace(0.0, math.log10(kappa), d) if d > 1 else np.ones(1)


def zo_step(d: int, kappa: float) -> float:
    """Nesterov & Spokoiny's step ``1/(4(d+4)L)`` (L = κ here)."""
    return 1.0 / (4.0 * (d + 4) * kappa)


def expected_zo_errors(lam: np.ndarray, e0_sq: np.ndarray, lr: float, iterations: int) -> np.ndarray:
    """``E f(x_k)`` for ``k = 0 … iterations`` of ``x ← x − η (∇f·u)u`` (exact recursion on ``E[e_j²]``)."""
    diag = 1.0 - 2.0 * lr * lam + 2.0 * lr**2 * lam**2
    w = lr**2 * lam**2
    s = e0_sq.astype(float).copy()
    out = np.empty(iterations + 1)
    out[0] = 0.5 * float(lam @ s)
    for k in range(1, iterations + 1):
        s = diag * s + float(w @ s)
        out[k] = 0.5 * float(lam @ s)
    return out


def expected_zo_iterations(lam: np.ndarray, e0_sq: np.ndarray, lr: float, target: float, limit: int) -> int | None:
    """First ``k`` with ``E f(x_k) ≤ target`` (None if not within ``limit``)."""
    diag = 1.0 - 2.0 * lr * lam + 2.0 * lr**2 * lam**2
    w = lr**2 * lam**2
    s = e0_sq.astype(float).copy()
    for k in range(limit + 1):
        if 0.5 * float(lam @ s) <= target:
            return k
        s = diag * s + float(w @ s)
    return None


def zo_rate(lam: np.ndarray, lr: float) -> float:
    """Spectral radius of the expected-error recursion: the asymptotic contraction of ``E f`` per step."""
    m = np.diag(1.0 - 2.0 * lr * lam + 2.0 * lr**2 * lam**2) + lr**2 * np.outer(np.ones_like(lam), lam**2)
    return float(np.max(np.abs(np.linalg.eigvals(m))))


def gd_iterations(lam: np.ndarray, e0_sq: np.ndarray, lr: float, target: float, limit: int) -> int | None:
    """First ``k`` with ``½ Σ λ_j (1 − ηλ_j)^{2k} e_j² ≤ target`` (exact for gradient descent)."""
    c = (1.0 - lr * lam) ** 2
    v = 0.5 * lam * e0_sq
    for k in range(limit + 1):
        if float(v.sum()) <= target:
            return k
        v = v * c
    return None


def hitting_time(
    method: str, d: int, kappa: float, lr: float, eps: float, budget: int, seed: int = 0, sigma: float = 1e-6,
    every: int = 1,
) -> tuple[int | None, list[tuple[int, float]]]:  # fmt: skip
    """Run ``method`` (``"rge"`` or ``"backprop"``) with SGD(lr) from ``x_0 = 0``; return the first
    ``k`` with ``f(x_k) ≤ eps·f(x_0)`` (None if not within ``budget``) and ``(k, f(x_k)/f(x_0))``
    every ``every`` iterations. ``f(x_k)`` is the estimate's loss at ``x_k``: exact for backprop,
    ``f + (σ²/2)uᵀAu`` (the mean of the two probes) for rge, a relative excess below 1e-9 here."""
    model, obj = quadratic(d, kappa)
    if method == "rge":
        est = make_estimator("rge", seed=seed, probes=1, sigma=sigma, noise_source="generator")
    else:
        est = make_estimator(method, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with torch.no_grad():
        f0 = float(obj(model).sum())
    target = eps * f0
    trace: list[tuple[int, float]] = []
    for k in range(budget + 1):
        opt.zero_grad()
        f = est.estimate(model, obj).loss
        if k % every == 0:
            trace.append((k, float(f"{f / f0:.4g}")))
        if f <= target:
            if k % every:
                trace.append((k, float(f"{f / f0:.4g}")))
            return k, trace
        if not math.isfinite(f):
            break
        opt.step()
    return None, trace


def run(
    out: str | Path,
    *,
    dims: Sequence[int] = (4, 8, 16, 32, 64, 128, 256),
    kappa: float = 10.0,
    eps: float = 1e-4,
    sigma: float = 1e-6,
    seeds: int = 3,
    budget_factor: float = 3.0,
    progress: Progress = None,
) -> dict[str, Any]:
    """Run gradient descent and ``seeds`` random-search runs per dimension; write the figure,
    ``results.json`` and ``report.md`` to ``out``."""
    if len(dims) < 2 or any(not is_int(v) or v < 2 for v in dims):
        raise UnigradError(f"dims must list at least two integers >= 2, got {dims!r}")
    check_number("kappa", kappa, low=1, low_inclusive=False, what="a number > 1")
    check_fraction("eps", eps, low_inclusive=False, what="in (0, 1)")
    check_positive("sigma", sigma)
    check_positive("seeds", seeds, integer=True)
    check_positive("budget_factor", budget_factor)
    out = output_dir(out)
    start, cpu = time.perf_counter(), time.process_time()
    rows = [dimension(d, kappa, eps, sigma, seeds, budget_factor, progress) for d in dims]
    results: dict[str, Any] = {"kappa": kappa, "eps": eps, "sigma": sigma, "seeds": seeds, "rows": rows}
    results["fits"] = fits(rows)
    results["seconds"] = time.perf_counter() - start
    results["cpu_seconds"] = time.process_time() - cpu
    finish(out, results, report, plot, "smoothing-rates.png")
    return results


def dimension(
    d: int, kappa: float, eps: float, sigma: float, seeds: int, budget_factor: float, progress: Progress
) -> dict[str, Any]:
    """One dimension: gradient descent and ``seeds`` random-search runs to ``eps·f₀``, next to the predictions."""
    lam = spectrum(d, kappa)
    e0_sq = np.ones(d)  # x_0 = 0, x* = 1
    f0 = 0.5 * float(lam @ e0_sq)
    target = eps * f0
    lr = zo_step(d, kappa)
    rho = zo_rate(lam, lr)
    asym = math.log(1.0 / eps) / (-math.log(rho))
    limit = int(20 * asym) + 10_000
    zo_pred = expected_zo_iterations(lam, e0_sq, lr, target, limit)
    gd_pred = gd_iterations(lam, e0_sq, 1.0 / kappa, target, 1_000_000)
    if zo_pred is None or gd_pred is None:
        raise UnigradError(f"d = {d}: the predicted iterations exceed {limit}")
    budget = int(budget_factor * zo_pred) + 1000
    if progress:
        progress(f"d = {d}: gradient descent")
    gd, gd_trace = hitting_time("backprop", d, kappa, 1.0 / kappa, eps, int(budget_factor * gd_pred) + 1000)
    zo, traces = [], []
    for s in range(seeds):
        if progress:
            progress(f"d = {d}: rge seed {s} (predicted {zo_pred} iterations)")
        k, tr = hitting_time("rge", d, kappa, lr, eps, budget, seed=s, sigma=sigma, every=max(1, zo_pred // 300))
        zo.append(k)
        traces.append(tr)
    reached = [k for k in zo if k is not None]
    median = float(np.median(reached)) if len(reached) == len(zo) else None
    stride = max(1, zo_pred // 300)
    expected = expected_zo_errors(lam, e0_sq, lr, zo_pred)[::stride] / f0
    bound_rate = 1.0 - 7.0 / (16.0 * (d + 4) * kappa)
    return {
        "d": d,
        "lr": lr,
        "f0": f0,
        "gd": gd,
        "gd_predicted": gd_pred,
        "zo": zo,
        "zo_median": median,
        "zo_predicted": zo_pred,
        "zo_asymptotic": asym,
        "zo_leading": 2.0 * (d + 4) * kappa * math.log(1.0 / eps),
        "zo_bound": math.log(kappa * float(e0_sq.sum()) / (2.0 * eps * f0)) / -math.log(bound_rate),
        "rho": rho,
        "ratio": None if median is None or not gd else median / gd,
        "ratio_predicted": zo_pred / gd_pred,
        "ratio_asymptotic": -2.0 * math.log(1.0 - 1.0 / kappa) / -math.log(rho),
        "ratio_leading": 4.0 * (d + 4) * kappa * math.log(kappa / (kappa - 1.0)),
        "traces": traces,
        "gd_trace": gd_trace,
        "expected": [(i * stride, float(f"{v:.4g}")) for i, v in enumerate(expected)],
    }  # fmt: skip


def _fit(
    x: list[float], y: list[float], theory_y: list[float], asymptotic: float, se: list[float] | None = None
) -> dict[str, Any]:
    slope, slope_se = fit_power(x, y, se)
    theory, _ = fit_power(x, theory_y)
    dev = abs(slope - theory) / abs(theory) if abs(theory) > 0.05 else None
    return {
        "measured": slope,
        "se": slope_se,
        "theory": theory,
        "asymptotic": asymptotic,
        "deviation": dev,
        "deviation_asymptotic": abs(slope - asymptotic) / abs(asymptotic) if asymptotic else None,
        # an exponent of (about) zero has no relative deviation: judged against 25% of a unit exponent
        "within": dev <= TOLERANCE if dev is not None else abs(slope - theory) <= TOLERANCE,
    }


def median_se(values: Sequence[float]) -> float:
    """Standard error of a median, ``1.2533·sd/√n`` (normal approximation); 0 for one value."""
    v = np.asarray(values, float)
    return 0.0 if v.size < 2 else float(1.2533 * v.std(ddof=1) / math.sqrt(v.size))


def fits(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Exponents of the median zeroth-order iterations, of gradient descent's and of their ratio."""
    ok = [r for r in rows if r["zo_median"] is not None and r["gd"]]
    if len(ok) < 2:
        return []
    d = [r["d"] for r in ok]
    d4 = [r["d"] + 4 for r in ok]
    zo, zo_pred = [r["zo_median"] for r in ok], [r["zo_predicted"] for r in ok]
    zo_se = [median_se(r["zo"]) for r in ok]
    ratio, ratio_pred = [r["ratio"] for r in ok], [r["ratio_predicted"] for r in ok]
    ratio_se = [s / r["gd"] for s, r in zip(zo_se, ok)]  # gradient descent is deterministic
    gd, gd_pred = [r["gd"] for r in ok], [r["gd_predicted"] for r in ok]
    return [
        {"quantity": "zeroth-order iterations", "x": "d", **_fit(d, zo, zo_pred, 1.0, zo_se)},
        {"quantity": "zeroth-order iterations", "x": "d + 4", **_fit(d4, zo, zo_pred, 1.0, zo_se)},
        {"quantity": "gradient-descent iterations", "x": "d", **_fit(d, gd, gd_pred, 0.0, [0.0] * len(ok))},
        {"quantity": "ratio ZO / GD", "x": "d", **_fit(d, ratio, ratio_pred, 1.0, ratio_se)},
        {"quantity": "ratio ZO / GD", "x": "d + 4", **_fit(d4, ratio, ratio_pred, 1.0, ratio_se)},
    ]


def _f(v: float | None, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def report(results: dict[str, Any]) -> str:
    """Iterations and ratios per dimension next to their predictions, then the fitted exponents."""
    kappa, eps = results["kappa"], results["eps"]
    lines = [
        "# Smoothing rates: Gaussian-smoothing random search against gradient descent",
        "",
        f"Quadratic, κ = {kappa:g} (eigenvalues geometric from 1 to κ), from x = 0 to f − f* ≤ {eps:g}·(f(x_0) − f*). "
        f"rge: 1 Gaussian probe, central differences, σ = {results['sigma']:g}, step 1/(4(d+4)L) (Nesterov & "
        f"Spokoiny 2017); gradient descent: step 1/L. {results['seeds']} rge runs per d (median); run time "
        f"{results['seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU.",
        "",
        "Predicted: the first k with E f(x_k) ≤ ε f_0 from the exact expected-error recursion; asymptotic: "
        "ln(1/ε)/(−ln ρ) with ρ the recursion's spectral radius; leading: 2(d+4)κ ln(1/ε); bound: the "
        "(1 − 7μ/(16(d+4)L)) contraction of E‖x − x*‖² (see the module docstring). The asymptotic and leading "
        "counts charge all of f_0 to the slowest mode; most of f_0 sits in the stiff modes, which both methods remove "
        "early, so the runs (and the exact recursion) need fewer iterations than they do.",
        "",
        "| d | rge runs | rge median | predicted (exact E) | median / predicted | asymptotic | leading | bound | "
        "GD | GD predicted | ratio ZO/GD | predicted | 4(d+4)κ ln(κ/(κ−1)) | ratio/(d+4) | predicted | "
        "4κ ln(κ/(κ−1)) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        runs = ", ".join("not reached" if k is None else str(k) for k in r["zo"])
        rel = None if r["zo_median"] is None else r["zo_median"] / r["zo_predicted"]
        lines.append(
            f"| {r['d']} | {runs} | {_f(r['zo_median'], '.0f')} | {r['zo_predicted']} | {_f(rel, '.3f')} | "
            f"{r['zo_asymptotic']:.0f} | {r['zo_leading']:.0f} | {r['zo_bound']:.0f} | {r['gd']} | "
            f"{r['gd_predicted']} | {_f(r['ratio'], '.1f')} | {r['ratio_predicted']:.1f} | {r['ratio_leading']:.1f} | "
            f"{_f(None if r['ratio'] is None else r['ratio'] / (r['d'] + 4), '.3f')} | "
            f"{r['ratio_predicted'] / (r['d'] + 4):.3f} | {r['ratio_leading'] / (r['d'] + 4):.3f} |"
        )
    lines += [
        "",
        "## Fitted exponents (least squares in log-log; SE propagated from the medians' standard errors)",
        "",
        "| quantity | against | measured exponent ± SE | theory (exact E, same grid) | asymptotic | deviation | "
        "deviation from asymptotic | within 25% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in results["fits"]:
        lines.append(
            f"| {f['quantity']} | {f['x']} | {f['measured']:+.3f} ± {f['se']:.3f} | {f['theory']:+.3f} | "
            f"{f['asymptotic']:+.2f} | {_pct(f['deviation'])} | {_pct(f['deviation_asymptotic'])} | "
            f"{'yes' if f['within'] else '**no**'} |"
        )
    bad = [f for f in results["fits"] if not f["within"]]
    lines += ["", "## Verdict", ""]
    if not results["fits"]:
        lines.append("Too few dimensions reached the target to fit exponents.")
    elif bad:
        lines.append(
            f"{len(bad)} fitted exponent(s) deviate from theory by more than 25%: "
            + "; ".join(f"{f['quantity']} vs {f['x']}" for f in bad)
            + "."
        )
    else:
        lines.append(f"All {len(results['fits'])} fitted exponents are within 25% of theory.")
    lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """f/f₀ against iteration (rge runs and E f), iterations against d, and the ratio against d."""
    plt = pyplot()

    rows = results["rows"]
    fig, axes = plt.subplots(1, 3, figsize=(17.0, 5.2))
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(rows):
        c = cmap(i / max(1, len(rows) - 1))
        for j, tr in enumerate(r["traces"]):
            if tr:
                k, v = zip(*tr)
                axes[0].plot(
                    [i + 1 for i in k], v, color=c, alpha=0.5, lw=0.8, label=f"rge, d = {r['d']}" if j == 0 else None
                )
        k, v = zip(*r["expected"])
        axes[0].plot(
            [i + 1 for i in k], v, color="black", lw=0.6, ls="--", label="E f (exact recursion)" if i == 0 else None
        )
        if r["gd_trace"]:
            k, v = zip(*r["gd_trace"])
            axes[0].plot([i + 1 for i in k], v, color="tab:red", lw=0.8, label="gradient descent" if i == 0 else None)
    axes[0].axhline(results["eps"], color="gray", lw=0.5)
    axes[0].set(xscale="log", yscale="log", xlabel="iteration + 1", ylabel="(f − f*) / (f₀ − f*)",
                title=f"κ = {results['kappa']:g}")  # fmt: skip
    axes[0].legend(fontsize=7)
    d = [r["d"] for r in rows]
    for r in rows:
        axes[1].scatter([r["d"]] * len([k for k in r["zo"] if k]), [k for k in r["zo"] if k], s=8, color="tab:blue",
                        alpha=0.4)  # fmt: skip
    axes[1].plot(d, [r["zo_median"] for r in rows], "o", color="tab:blue", label="rge (median)")
    axes[1].plot(d, [r["zo_predicted"] for r in rows], "-", color="tab:blue", label="rge predicted (exact E)")
    axes[1].plot(d, [r["zo_bound"] for r in rows], ":", color="tab:blue", label="rge bound")
    axes[1].plot(d, [r["gd"] for r in rows], "s", color="tab:red", label="gradient descent")
    axes[1].plot(d, [r["gd_predicted"] for r in rows], "-", color="tab:red", label="GD predicted")
    axes[1].set(xscale="log", yscale="log", xlabel="dimension d", ylabel=f"iterations to {results['eps']:g}·f₀")
    axes[1].legend(fontsize=8)
    axes[2].plot(d, [r["ratio"] for r in rows], "o", color="tab:purple", label="measured (median rge / GD)")
    axes[2].plot(d, [r["ratio_predicted"] for r in rows], "-", color="tab:purple", label="predicted (exact)")
    axes[2].plot(d, [r["ratio_leading"] for r in rows], "--", color="gray", label="4(d+4)κ ln(κ/(κ−1))")
    axes[2].set(xscale="log", yscale="log", xlabel="dimension d", ylabel="iterations ZO / GD")
    axes[2].legend(fontsize=8)
    grid(axes)
    save_figure(fig, path)


@dataclass(frozen=True)
class Config(_common.Config):
    """Options of ``unigrad experiment smoothing-rates``: ``kappa`` (condition number: 10) and ``eps`` (the target
    error: 1e-4; quick 5e-2). A quick run uses d = 4 and 8 and one seed."""

    kappa: float | None = None
    eps: float | None = None

    NAME = "smoothing-rates"
    FULL: ClassVar[Settings] = {"eps": 1e-4, "kappa": 10.0}
    QUICK: ClassVar[Settings] = {"dims": (4, 8), "eps": 5e-2, "kappa": 10.0}
    QUICK_SEEDS = 1


run_experiment = runner(Config, run)
