"""The presentation of :mod:`unigrad.experiments.sharpness`: its figure and its markdown report.

The main table (mean ± sd over seeds per method), ``λ_max`` at matched training loss, and the large- against
small-batch verdict; the figure shows sharpness along training and test accuracy against final sharpness.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unigrad.experiments._common import grid, mean_sd, pyplot, save_figure, table

SMALL, LARGE = "bp, batch 32", "bp, batch 1024"
"""The labels the large-batch verdict compares."""


def level_value(run: dict[str, Any], level: float) -> float | None:
    """``λ_max`` of ``run`` at the loss ``level``, ``None`` if it never reached it."""
    return next((a["lambda_max"] for a in run["at_levels"] if a["level"] == level), None)


def plot(results: dict[str, Any], path: Path) -> None:
    """``λ_max`` against the training loss at the levels crossed (left); test accuracy against the final
    ``λ_max`` (right). One colour per method, one point per seed."""
    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.0, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, m in enumerate(results["methods"]):
        c = colors[k % len(colors)]
        for i, r in enumerate(m["runs"]):
            pts = [(a["loss"], a["lambda_max"]) for a in r["at_levels"]]
            if not pts or pts[-1][0] != r["train_loss"]:
                pts.append((r["train_loss"], r["lambda_max"]))
            label = m["label"] if i == 0 else None
            ax1.plot(
                [p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, color=c, alpha=0.8, label=label
            )
            ax2.scatter([r["lambda_max"]], [r["test_acc"]], color=c, label=label, s=25)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.invert_xaxis()
    ax1.set_xlabel("training loss (sharpness set), decreasing →")
    ax1.set_ylabel("λ_max of the Hessian")
    ax1.set_title("sharpness along training (at the loss levels crossed)", fontsize=10)
    ax2.set_xscale("log")
    ax2.set_xlabel("final λ_max")
    ax2.set_ylabel("test accuracy")
    ax2.set_title("test accuracy against final sharpness", fontsize=10)
    grid((ax1, ax2))
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{results['dataset']} ({results['n_train']:,} train), MLP {results['features']}-{results['hidden']}-10; "
        f"curvature on {results['n_sharpness']:,} training images",
        fontsize=10,
    )
    save_figure(fig, path)


def _stat(values: Sequence[float | None], fmt: str = "{:.3g}") -> str:
    return mean_sd(values, fmt, none="–", missing=lambda have, n: f" ({have} of {n})")


def report(results: dict[str, Any]) -> str:
    """Markdown: the main table, the matched-loss table and the large-batch verdict."""
    seeds = results["seeds"]
    lines = [
        "# Sharpness of the minima found by each method",
        "",
        f"{results['dataset']}, a fixed random subset of {results['n_train']:,} training images, MLP "
        f"{results['features']}-{results['hidden']}-10 (ReLU, {results['parameters']:,} parameters), cross-entropy; "
        f"test accuracy on all {results['n_test']:,} test images. Each method trains until the loss on the "
        f"sharpness set (the first {results['n_sharpness']:,} training images) is ≤ {results['target']:g} "
        "or its epoch cap. "
        f"λ_max: Lanczos, at most {results['lanczos_iters']} Hessian-vector products; trace: Hutchinson, "
        f"{results['trace_probes']} Rademacher probes; both of the mean loss on the sharpness set. "
        f"Mean ± sd over {seeds} seed{'s' if seeds > 1 else ''} (initial weights and data order).",
        "",
        *table(MAIN_HEADER, map(_main_row, results["methods"])),
        "",
        "## λ_max at matched training loss",
        "",
        "λ_max measured the first time (checked after every epoch) the sharpness-set loss fell below each level, "
        "and after `@` the mean loss it had then (an epoch can cross several levels at once); (k of n) counts the "
        "seeds that reached the level.",
        "",
        *table(("method", *(f"loss ≤ {lv:g}" for lv in results["levels"])), _level_rows(results)),
        "",
        "## Large against small batch (Keskar et al. 2017)",
        "",
        *_verdict_lines(results.get("verdict")),
        "",
        f"Total time: {results['seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU (process time, as the "
        "CPU s/run column, which includes the curvature measurements: less sensitive than wall time to other "
        "load on the machine).",
        "",
    ]
    return "\n".join(lines)


MAIN_HEADER = ("method", "order", "optimizer", "batch", "epochs", "FE", "final train loss", "reached target")
MAIN_HEADER += ("test acc", "λ_max", "Hessian trace", "‖θ‖", "CPU s/run")


def _main_row(m: dict[str, Any]) -> tuple[Any, ...]:
    """One method's mean ± sd over its seeds."""
    runs = m["runs"]
    batch = "full" if m["batch"] is None else f"{m['batch']:,}"
    reached = sum(r["reached_target"] for r in runs)
    return (
        m["label"],
        m["order"],
        f"{m['optimizer']} {m['lr']:g}",
        batch,
        _stat([r["epochs"] for r in runs], "{:.0f}"),
        _stat([r["fe"] for r in runs], "{:.2e}"),
        _stat([r["train_loss"] for r in runs], "{:.3f}"),
        f"{reached} of {len(runs)}",
        _stat([r["test_acc"] for r in runs], "{:.4f}"),
        _stat([r["lambda_max"] for r in runs]),
        _stat([r["trace"] for r in runs]),
        _stat([r["weight_norm"] for r in runs]),
        _stat([r["cpu_seconds"] for r in runs], "{:.0f}"),
    )


def _level_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """Per method, ``λ_max`` at each loss level (and ``@`` the mean loss when it was measured)."""
    rows = []
    for m in results["methods"]:
        cells = []
        for lv in results["levels"]:
            cell = _stat([level_value(r, lv) for r in m["runs"]])
            at = [a["loss"] for r in m["runs"] for a in r["at_levels"] if a["level"] == lv]
            cells.append(f"{cell} @{statistics.fmean(at):.2f}" if at else cell)
        rows.append((m["label"], *cells))
    return rows


def _verdict_lines(v: dict[str, Any] | None) -> list[str]:
    """The large-batch claim, seed by seed."""
    if v is None:
        return [f"Not run: needs both `{SMALL}` and `{LARGE}`."]
    ratios = ", ".join(f"{r:.2f}" for r in v["lambda_ratio"])
    trs = ", ".join(f"{r:.2f}" for r in v["trace_ratio"])
    gaps = ", ".join(f"{g:+.4f}" for g in v["test_acc_gap"])
    caveat = " (not every run reached the target loss: compare at matched loss)"
    lines = [
        f"- λ_max(batch 1024) / λ_max(batch 32), per seed: {ratios}. The claim (ratio > 1) "
        f"{'holds in every seed' if v['holds'] else 'does not hold in every seed'}"
        f"{'' if v['both_reached_target'] else caveat}.",
        f"- Hessian trace ratio, per seed: {trs}.",
        f"- Test accuracy, large minus small batch, per seed: {gaps}.",
    ]
    for level, r in v["lambda_ratio_at_levels"].items():
        lines.append(f"- at loss ≤ {level}: λ_max ratio {', '.join(f'{x:.2f}' for x in r)}.")
    return lines
