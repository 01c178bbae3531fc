"""The presentation of :mod:`unigrad.experiments.estimator_variance`: its figure and its markdown report.

Fitted exponents next to their theory, every grid point's measurement next to its exact formula, and a
verdict; six panels of the measured moments against ``d``, ``q`` and the network sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unigrad.experiments._common import grid, ok, pyplot, save_figure, table

QUANTITIES = (("cos2", "E[cos²]"), ("cos", "E[cos]"), ("rel", "‖ĝ−g‖²/‖g‖²"))
COLORS = {"rge": "tab:blue", "spsa": "tab:orange", "es": "tab:green", "forward-gradient": "tab:red",
          "np": "tab:purple", "wp": "tab:brown"}  # fmt: skip

FIT_HEADER = ("estimator", "sweep", "x", "quantity", "measured exponent ± SE", "theory (grid)", "asymptotic")
FIT_HEADER += ("deviation", "deviation from asymptotic", "within 25%")


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


# -- the report ---------------------------------------------------------------------------------
def report(results: dict[str, Any]) -> str:
    """Fitted exponents next to theory, then every grid point's measured value next to its formula."""
    n_total = results["estimates"] * results["seeds"]
    lines = [
        "# Estimator variance: alignment and error against dimension and probes",
        "",
        f"Estimates per grid point: {n_total} ({results['seeds']} seeds × {results['estimates']}; the q sweep uses "
        f"max({results['estimates']}/q, 40) per seed, at most {results['estimates']}); "
        f"σ = {results['sigma']:g} (float64); "
        f"run time {results['seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU.",
        "Theory: the exact formula's least-squares slope on the same grid (σ → 0; Gaussian "
        "E[cos²] = q/(d+q−1), E‖ĝ−g‖²/‖g‖² = (d+1)/q; see the module docstring); asymptotic: its d ≫ q limit "
        "(√(q/d) for cos). Within: relative deviation from the grid theory ≤ 25% (for a theory exponent near 0: "
        "absolute difference ≤ 0.25).",
        "",
        "## Fitted exponents",
        "",
        *table(
            FIT_HEADER,
            map(_fit_row, results["fits"]),
        ),
        "",
        "## Every grid point (measured ± SE, exact formula)",
        "",
        "### Dimension sweep (softmax regression, q = 1)",
        "",
        *_points(results["d_sweep"], "d"),
        f"### Probe sweep (softmax regression, d = {results['q_sweep'][0]['d']})",
        "",
        *_points(results["q_sweep"], "q"),
    ]
    for sweep in results["node_sweeps"].values():
        lines += [f"### NP and WP: {sweep['title']} (one sample, q = 1)", "", *_node_points(sweep["rows"])]
    lines += ["## Verdict", "", *_verdict(results["fits"], results["tolerance"]), ""]
    return "\n".join(lines)


def _fit_row(f: dict[str, Any]) -> tuple[Any, ...]:
    return (
        f["estimator"],
        f["sweep"],
        f["x"],
        dict(QUANTITIES)[f["quantity"]],
        f"{f['measured']:+.3f} ± {f['se']:.3f}",
        f"{f['theory']:+.3f}",
        _fmt(f["asymptotic"], "+.2f"),
        _pct(f["deviation"]),
        _pct(f["deviation_asymptotic"]),
        ok(f["within"]),
    )


def _points(rows: list[dict[str, Any]], key: str) -> list[str]:
    """A softmax sweep's grid points (``key``: ``d`` or ``q``), then a blank line."""
    cells = [
        (
            r["estimator"],
            r[key],
            f"{r['cos2']:.4g} ± {r['cos2_se']:.2g}",
            f"{r['cos2_theory']:.4g}",
            f"{r['cos']:.4g} ± {r['cos_se']:.2g}",
            _fmt(r["cos_theory"], ".4g"),
            "–" if r["rel_theory"] is None else f"{r['rel']:.4g} ± {r['rel_se']:.2g}",
            _fmt(r["rel_theory"], ".4g"),
            r["n"],
        )
        for r in rows
    ]
    header = ("estimator", key, "E[cos²]", "theory", "E[cos]", "theory", "‖ĝ−g‖²/‖g‖²", "theory", "n")
    return [*table(header, cells), ""]


def _node_points(rows: list[dict[str, Any]]) -> list[str]:
    """A node sweep's grid points, then a blank line."""
    cells = [
        (
            r["estimator"],
            "-".join(map(str, r["widths"])),
            r["d"],
            r["nodes"],
            _fmt(r.get("m_eff"), ".1f"),
            f"{r['cos2']:.4g} ± {r['cos2_se']:.2g}",
            f"{r['cos2_theory']:.4g}",
            f"{r['rel']:.4g} ± {r['rel_se']:.2g}",
            f"{r['rel_theory']:.4g}",
        )
        for r in rows
    ]
    header = ("estimator", "widths", "d (weights)", "M (nodes)", "M_eff", "E[cos²]", "theory", "‖ĝ−g‖²/‖g‖²")
    return [*table((*header, "theory"), cells), ""]


def _verdict(fits: list[dict[str, Any]], tolerance: float) -> list[str]:
    """Which exponents miss their theory, which their asymptotic value, and why NP's width sweep does."""
    qnames = dict(QUANTITIES)
    bad = [f for f in fits if not f["within"]]
    if bad:
        lines = [
            f"{len(bad)} of {len(fits)} fitted exponents deviate from theory by more than 25%: "
            + "; ".join(f"{f['estimator']} {f['sweep']} {qnames[f['quantity']]}" for f in bad)
            + "."
        ]
    else:
        lines = [f"All {len(fits)} fitted exponents are within 25% of theory."]
    off = [f for f in fits if (f["deviation_asymptotic"] or 0.0) > tolerance]
    if off:
        lines += [
            "",
            "More than 25% from the asymptotic (or naive) exponent: "
            + "; ".join(
                f"{f['estimator']} {f['sweep']} {qnames[f['quantity']]} ({f['measured']:+.2f} vs "
                f"{f['asymptotic']:+.2f})"
                for f in off
            )
            + ".",
        ]
    if any(f["estimator"] == "np" and f["sweep"].startswith("width") for f in off):
        lines += [
            "",
            "NP on the two-layer network does not scale like 1/M with M = h + 4 perturbed nodes: the nodes of "
            "layer l count with the weight a_l = ‖x̃_l‖² (the squared norm of the layer's input) and the size of "
            "its error δ_l, and as the width h grows the output layer, whose inputs tanh(h_1) grow with h, "
            "carries most of the gradient while it has only 4 nodes. The effective dimension M_eff (table above) "
            "therefore levels off, and the per-instance formula, not the node count, predicts the measurements.",
        ]
    return lines


# -- the figure ---------------------------------------------------------------------------------
def plot(results: dict[str, Any], path: Path) -> None:
    """Six panels: E[cos²] against d and q, the relative error against d, and NP/WP's three sweeps."""
    plt = pyplot()

    fig, axes = plt.subplots(2, 3, figsize=(16.0, 9.5))
    node = results["node_sweeps"]
    panels = (
        (axes[0][0], results["d_sweep"], "d", "cos2", "dimension d", "E[cos²]", "q = 1 (lines: exact formulas)"),
        (axes[0][1], results["q_sweep"], "q", "cos2", "probes q", "E[cos²]", f"d = {results['q_sweep'][0]['d']}"),
        (axes[0][2], results["d_sweep"], "d", "rel", "dimension d", "E‖ĝ − g‖² / ‖g‖²", "relative error, q = 1"),
        (axes[1][0], node["nodes"]["rows"], "nodes", "cos2", "perturbed nodes N", "E[cos²]", node["nodes"]["title"]),
        (axes[1][1], node["inputs"]["rows"], "d", "cos2", "weights d", "E[cos²]", node["inputs"]["title"]),
        (axes[1][2], node["width"]["rows"], "nodes", "cos2", "perturbed nodes M = h + 4", "E[cos²]",
         node["width"]["title"] + " (NP line: 1/M_eff)"),
    )  # fmt: skip
    for ax, rows, xkey, qty, xlabel, ylabel, title in panels:
        _draw(ax, rows, xkey, qty)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    rows = [r for r in node["width"]["rows"] if r["estimator"] == "np"]
    axes[1][2].plot([r["nodes"] for r in rows], [1.0 / r["nodes"] for r in rows], ":", color="black", label="1/M")
    axes[1][2].legend(fontsize=8)
    save_figure(fig, path)


def _draw(ax: Any, rows: list[dict[str, Any]], xkey: str, qty: str) -> None:
    """Measured ``qty`` (±2 SE) against ``xkey`` per estimator, with its exact formula as a line."""
    for name in dict.fromkeys(r["estimator"] for r in rows):
        rs = [r for r in rows if r["estimator"] == name]
        if rs[0].get(f"{qty}_theory") is None:
            continue
        x = [r[xkey] for r in rs]
        ax.errorbar(x, [r[qty] for r in rs], yerr=[2 * r[f"{qty}_se"] for r in rs], fmt="o", ms=4,
                    color=COLORS[name], label=name, capsize=2)  # fmt: skip
        ax.plot(x, [r[f"{qty}_theory"] for r in rs], "-", color=COLORS[name], alpha=0.6, lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    grid([ax])
    ax.legend(fontsize=8)
