"""The presentation of :mod:`unigrad.experiments.werfel`: its figure and its markdown report.

Measured learning times and slowdowns against GD next to the closed forms of
:mod:`unigrad.experiments.werfel_theory`, the fits of their scaling, and the library's estimators.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unigrad.experiments._common import grid, ok, pyplot, save_figure, steps, table
from unigrad.experiments.werfel_theory import METHODS, TOLERANCE, theory_rate, theory_time

LABELS = {"gd": "GD (backprop)", "np": "NP", "wp": "WP"}
COLORS = {"gd": "tab:blue", "np": "tab:orange", "wp": "tab:green"}
SLOWDOWN_HEADER = ("M", "N", "NP/GD measured", "theory", "leading order M", "ok")
SLOWDOWN_HEADER += ("WP/GD measured", "theory", "leading order MN", "ok")


# -- the figure ---------------------------------------------------------------------------------
def plot(results: dict[str, Any], path: Path) -> None:
    """Learning curves, learning time against η, and the two ratio sweeps against theory."""
    plt = pyplot()

    sweeps = results["sweeps"]
    m0, n0 = results["m_fixed"], results["n_fixed"]
    key = (m0, n0) if f"gd:{m0}:{n0}" in sweeps else (results["rows"][0]["m"], results["rows"][0]["n"])
    at = {method: sweeps[f"{method}:{key[0]}:{key[1]}"] for method in METHODS}
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    _plot_curves(axes[0][0], at, key, results["factor"])
    _plot_etas(axes[0][1], at, key, results["factor"])
    for ax, axis in ((axes[1][0], "m"), (axes[1][1], "n")):
        _plot_slowdown(ax, results, axis)
    grid(axes.flat)
    save_figure(fig, path)


def _plot_curves(ax: Any, at: dict[str, dict[str, Any]], key: tuple[int, int], factor: float) -> None:
    """Mean error against steps at the best η, with the theory's geometric decay (dotted)."""
    for method, s in at.items():
        ax.plot(
            s["curve_steps"],
            [max(v, 1e-12) for v in s["curve"]],
            color=COLORS[method],
            label=f"{LABELS[method]}, η = {s['best_eta']:.3g}",
        )
        r = theory_rate(method, key[0], key[1], s["best_eta"])
        ax.plot(s["curve_steps"], [r**t for t in s["curve_steps"]], color=COLORS[method], linestyle=":")
    ax.axhline(1.0 / factor, color="gray", linewidth=0.8)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="step (samples)",
        ylabel="⟨E_t⟩ / ⟨E_0⟩",
        ylim=(0.3 / factor, 1.5),
        title=f"learning curves at the optimal η (M = {key[0]}, N = {key[1]}); dotted: (1−2η+Kη²)^t",
    )
    ax.legend(fontsize=8)


def _plot_etas(ax: Any, at: dict[str, dict[str, Any]], key: tuple[int, int], factor: float) -> None:
    """Measured learning time against η/η* (points) and the theory's (lines)."""
    fine = [2 ** (k / 40) for k in range(-30, 31)]
    for method, s in at.items():
        x = [eta / s["eta_theory"] for eta in s["etas"]]
        times = [v if v is not None else float("nan") for v in s["median_times"]]
        ax.plot(x, times, "o", color=COLORS[method], label=f"{LABELS[method]} measured")
        theory = [theory_time(method, key[0], key[1], c * s["eta_theory"], factor) for c in fine]
        ax.plot(fine, theory, color=COLORS[method], linewidth=0.8)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="η / η*  (η* = 1/K)",
        ylabel=f"steps to reduce ⟨E⟩ {factor:g}×",
        title="learning time against η (lines: theory)",
    )
    ax.legend(fontsize=8)


def _plot_slowdown(ax: Any, results: dict[str, Any], axis: str) -> None:
    """NP/GD and WP/GD against ``axis`` (``m`` or ``n``) at the other's fixed value: measured, theory, leading."""
    fixed = "n" if axis == "m" else "m"
    value = results[f"{fixed}_fixed"]
    rows = [r for r in results["rows"] if r[fixed] == value and r[axis] in results[f"{axis}_values"]]
    xs = [r[axis] for r in rows]
    for k, label in (("np", "NP/GD"), ("wp", "WP/GD")):
        color = COLORS[k]
        ax.plot(xs, [r[f"{k}_gd"] or float("nan") for r in rows], "o", color=color, label=f"{label} measured")
        ax.plot(xs, [r[f"{k}_gd_theory"] for r in rows], "-", color=color, label=f"{label} theory")
        leading = f"{label} leading order ({'M' if k == 'np' else 'MN'})"
        ax.plot(xs, [r[f"{k}_gd_leading"] for r in rows], ":", color=color, label=leading)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel=axis.upper(),
        ylabel="T_method / T_GD at optimal η",
        title=f"slowdown against {axis.upper()} at {fixed.upper()} = {value}",
    )
    ax.legend(fontsize=7)


# -- the report ---------------------------------------------------------------------------------
def report(results: dict[str, Any]) -> str:
    """The markdown report: measured figures next to theory, within-25% flags, fits."""
    f = results["factor"]
    st = results.get("settings", {})
    lines = [
        "# Werfel, Xie & Seung (2005): learning time of GD, NP and WP",
        "",
        f"Linear student y = Wx learns a linear teacher online (one sample x ~ N(0, I) per step); learning time "
        f"= steps for the mean generalization error ⟨½‖W − W*‖²⟩ over the students to fall {f:g}×; each "
        f"method at its measured optimal η (sweep η*·2^(k/4), k = −2…2, η* = 1/K). "
        f"Median over {st.get('seeds', '?')} seeds of {st.get('students', '?')} students each. "
        f"Theory: T = ln F / −ln(1 − 2η + Kη²), K = N+2 (GD), (M+2)(N+2) (NP), (MN+2)(N+2) (WP), so "
        f"T_NP/T_GD ≈ M + 2 and T_WP/T_GD ≈ MN + 2 (→ M and MN, the paper's statement, for large M, N). "
        f"'ok' = within {TOLERANCE:.0%} of theory.",
        "",
        "## Optimal learning times",
        "",
        *table(
            ("M", "N", "GD", "theory", "NP", "theory", "WP", "theory", "ok (GD/NP/WP)", "η_best/η* (GD/NP/WP)"),
            map(_times_row, results["rows"]),
        ),
        "",
        "## Slowdown against GD",
        "",
        *table(
            SLOWDOWN_HEADER,
            map(_slowdown_row, results["rows"]),
        ),
        "",
        "## Fits",
        "",
        *table(
            ("quantity", "measured", "theory (same fit, exact finite-size times)", "leading order", "ok"),
            map(_fit_row, results["fits"].values()),
        ),
    ]
    if results["library"]:
        lines += _report_library(results["library"], st)
    n_ok = sum(r["np_gd_ok"] + r["wp_gd_ok"] for r in results["rows"])
    lines += [
        "",
        f"Ratios within {TOLERANCE:.0%} of theory: {n_ok} of {2 * len(results['rows'])}; "
        f"fits within tolerance: {sum(f['ok'] for f in results['fits'].values())} of {len(results['fits'])}.",
    ]
    if "seconds" in st:
        lines.append(f"Wall time: {st['seconds']:.0f} s.")
    lines.append("")
    return "\n".join(lines)


def _times_row(r: dict[str, Any]) -> tuple[Any, ...]:
    t, th = r["times"], r["theory_times"]
    flags = "/".join("y" if r["time_ok"][k] else "**n**" for k in METHODS)
    eta = "/".join(f"{r['eta_ratio'][k]:.2f}" for k in METHODS)
    cells = [c for k in METHODS for c in (steps(t[k]), f"{th[k]:,.0f}")]
    return (r["m"], r["n"], *cells, flags, eta)


def _slowdown_row(r: dict[str, Any]) -> tuple[Any, ...]:
    np_cells = (steps(r["np_gd"], 2), f"{r['np_gd_theory']:.2f}", r["np_gd_leading"], ok(r["np_gd_ok"]))
    wp_cells = (steps(r["wp_gd"], 1), f"{r['wp_gd_theory']:.1f}", r["wp_gd_leading"], ok(r["wp_gd_ok"]))
    return (r["m"], r["n"], *np_cells, *wp_cells)


def _fit_row(fit: dict[str, Any]) -> tuple[Any, ...]:
    tol = " (±0.25 absolute)" if fit.get("absolute") else ""
    return (fit["what"], f"{fit['measured']:.3f}", f"{fit['theory']:.3f}{tol}", f"{fit['leading']:g}", ok(fit["ok"]))


def _report_library(library: list[dict[str, Any]], st: dict[str, Any]) -> list[str]:
    """The library's estimators at the measured optimal η, next to the batched sweep and theory."""
    rows = [
        (
            e["estimator"],
            e["m"],
            e["n"],
            f"{e['eta']:.4g}",
            steps(e["time"]),
            steps(e["batched_time"]),
            f"{e['theory_time']:,.0f}",
            ok(e["ok"]),
            f"{e['seconds']:.1f}",
        )
        for e in library
    ]
    return [
        "",
        "## The library's estimators",
        "",
        f"`backprop` / `np` / `wp` (σ = {st.get('sigma', '?')}, one probe) with `torch.optim.SGD` on "
        f"`nn.Linear(N, M, bias=False)`, at the measured optimal η, mean error of "
        f"{st.get('library_runs', '?')} students (few students: expect ±15–25% scatter at small K).",
        "",
        *table(
            ("estimator", "M", "N", "η", "learning time", "batched sweep", "theory at this η", "ok", "s"),
            rows,
        ),
    ]
