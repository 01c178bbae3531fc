"""Learning curves of a comparison: test accuracy against epochs, forward-pass equivalents and seconds.

One line per method, the mean over seeds. Seeds whose evaluation points share the same x values
(an epoch or step budget) are averaged point by point; otherwise each seed's curve is interpolated
onto a common grid and averaged where it is defined. Forward-pass equivalents use a log axis: the
methods' costs per step differ by orders of magnitude.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

AXES = {
    "epoch": ("epochs", "accuracy_vs_epochs.png", False),
    "forward_equivalents": ("forward-pass equivalents (samples)", "accuracy_vs_forwards.png", True),
    "seconds": ("training wall time (s)", "accuracy_vs_seconds.png", False),
}


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray]], log: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of curves ``(x, y)`` (module docs)."""
    if log:
        curves = [(x[x > 0], y[x > 0]) for x, y in curves]
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        return np.empty(0), np.empty(0)
    x0 = curves[0][0]
    if all(len(x) == len(x0) and np.allclose(x, x0) for x, _ in curves):
        return x0, np.mean([y for _, y in curves], axis=0)
    lo, hi = min(x.min() for x, _ in curves), max(x.max() for x, _ in curves)
    grid = np.geomspace(lo, hi, 100) if log and lo > 0 else np.linspace(lo, hi, 100)
    ys = []
    for x, y in curves:
        yi = np.interp(grid, x, y)
        yi[(grid < x.min()) | (grid > x.max())] = np.nan
        ys.append(yi)
    with np.errstate(invalid="ignore"):
        stacked = np.array(ys)
        count = np.sum(~np.isnan(stacked), axis=0)
        mean = np.where(count > 0, np.nansum(stacked, axis=0) / np.maximum(count, 1), np.nan)
    return grid, mean


def write_plots(folder: Path, results: dict[str, Any]) -> list[Path]:
    """Write the three PNGs into ``folder``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from unigrad.train.report import write_atomic

    task = results["config"]["task"]
    paths = []
    for key, (label, filename, log) in AXES.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        for method, entry in results["methods"].items():
            curves = [
                (
                    np.array([p[key] for p in r["history"]], dtype=float),
                    np.array([p["test_accuracy"] for p in r["history"]], dtype=float),
                )
                for r in entry["runs"]
            ]
            x, y = mean_curve(curves, log)
            if len(x):
                ax.plot(x, y, marker="o" if len(x) <= 30 else None, markersize=3, label=method)
        if log:
            ax.set_xscale("log")
        n_seeds = len(results["config"]["seeds"])
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy" + (f" (mean of {n_seeds} seeds)" if n_seeds > 1 else ""))
        ax.set_title(f"{task}, budget {results['config']['budget']}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no line at all (a run that diverged at once): no legend
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / filename
        try:
            write_atomic(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        finally:
            plt.close(fig)
        paths.append(path)
    return paths
