"""Learning curves of a comparison: test accuracy against epochs, forward-pass equivalents and seconds.

One line per method, the mean over seeds, in a band from the lowest to the highest seed. Seeds whose
evaluation points share the same x values (an epoch or step budget) are averaged point by point;
otherwise each seed's curve is interpolated onto a common grid and averaged where it is defined.
Forward-pass equivalents use a log axis: the methods' costs per step differ by orders of magnitude.

When the runs recorded diagnostics (:mod:`unigrad.dynamics.diagnostics`), :func:`write_diagnostic_plots`
draws ``diagnostics_<name>.png`` per diagnostic: one panel per recorded value against the training
step, one line per method (mean over seeds, as above), a log axis for values that are positive
scales (norms, variances, step sizes) when every value is positive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from unigrad.core.io import atomic_path

AXES = {
    "epoch": ("epochs", "accuracy_vs_epochs.png", False),
    "forward_equivalents": ("forward-pass equivalents (samples)", "accuracy_vs_forwards.png", True),
    "seconds": ("training wall time (s)", "accuracy_vs_seconds.png", False),
}


def curve_band(
    curves: list[tuple[np.ndarray, np.ndarray]], log: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, lowest and highest over seeds of curves ``(x, y)``: ``(x, mean, low, high)`` (module docs).

    Where the seeds' x values differ, each curve is interpolated onto a common grid and the statistics are taken
    over the seeds defined at each grid point."""
    if log:
        curves = [(x[x > 0], y[x > 0]) for x, y in curves]
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        return np.empty(0), np.empty(0), np.empty(0), np.empty(0)
    x0 = curves[0][0]
    if all(len(x) == len(x0) and np.allclose(x, x0) for x, _ in curves):
        ys = np.array([y for _, y in curves])
        return x0, np.mean(ys, axis=0), np.min(ys, axis=0), np.max(ys, axis=0)
    lo, hi = min(x.min() for x, _ in curves), max(x.max() for x, _ in curves)
    grid = np.geomspace(lo, hi, 100) if log and lo > 0 else np.linspace(lo, hi, 100)
    rows = []
    for x, y in curves:
        yi = np.interp(grid, x, y)
        yi[(grid < x.min()) | (grid > x.max())] = np.nan
        rows.append(yi)
    with np.errstate(invalid="ignore"):
        stacked = np.array(rows)
        count = np.sum(~np.isnan(stacked), axis=0)
        defined = count > 0
        mean = np.where(defined, np.nansum(stacked, axis=0) / np.maximum(count, 1), np.nan)
        low = np.where(defined, np.nanmin(np.where(np.isnan(stacked), np.inf, stacked), axis=0), np.nan)
        high = np.where(defined, np.nanmax(np.where(np.isnan(stacked), -np.inf, stacked), axis=0), np.nan)
    return grid, mean, low, high


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray]], log: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of curves ``(x, y)`` (module docs; :func:`curve_band` with the spread)."""
    x, mean, _, _ = curve_band(curves, log)
    return x, mean


def write_plots(folder: Path, results: dict[str, Any]) -> list[Path]:
    """Write the three PNGs into ``folder``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

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
            x, y, low, high = curve_band(curves, log)
            if len(x):
                (line,) = ax.plot(x, y, marker="o" if len(x) <= 30 else None, markersize=3, label=method)
                if len(curves) > 1:  # the spread over seeds: lowest to highest
                    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.18, linewidth=0)
        if log:
            ax.set_xscale("log")
        n_seeds = len(results["config"]["seeds"])
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        spread = f"\nmean of {n_seeds} seeds, band from the lowest to the highest" if n_seeds > 1 else ""
        ax.set_title(f"{task}, budget {results['config']['budget']}{spread}", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no line at all (a run that diverged at once): no legend
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / filename
        _save_png(fig, path)
        paths.append(path)
    return paths


# values drawn on a log axis when all are positive (norms, relative variances, step sizes)
LOG_VALUES = frozenset(
    {"variance", "bias", "estimate_norm", "gradient_norm", "norm_ratio", "step_norm", "effective_lr"}
)


def diagnostic_groups(results: dict[str, Any]) -> list[str]:
    """The diagnostics (names of :data:`unigrad.dynamics.diagnostics.VALUES`) some run recorded, in registry order."""
    from unigrad.dynamics.diagnostics import VALUES

    seen: set[str] = set()
    for entry in results["methods"].values():
        for r in entry["runs"]:
            for d in r.get("diagnostics") or []:
                seen.update(d)
    return [name for name, keys in VALUES.items() if any(k in seen for k in keys)]


def diagnostic_filename(name: str) -> str:
    return f"diagnostics_{name}.png"


def write_diagnostic_plots(folder: Path, results: dict[str, Any]) -> list[Path]:
    """Write ``diagnostics_<name>.png`` for every diagnostic some run recorded (module docs); returns the paths."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from unigrad.dynamics.diagnostics import VALUES

    task = results["config"]["task"]
    n_seeds = len(results["config"]["seeds"])
    paths = []
    for name in diagnostic_groups(results):
        keys = [k for k in VALUES[name] if not k.endswith("_se")]
        fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys) + 1.0, 3.8), dpi=120, squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            values: list[float] = []
            for method, entry in results["methods"].items():
                curves = []
                for r in entry["runs"]:
                    points = [d for d in r.get("diagnostics") or [] if key in d]
                    x = np.array([d["step"] for d in points], dtype=float)
                    y = np.array([np.nan if d[key] is None else d[key] for d in points], dtype=float)
                    keep = np.isfinite(y)
                    curves.append((x[keep], y[keep]))
                    values += list(y[keep])
                x, y = mean_curve(curves)
                if len(x):
                    ax.plot(x, y, marker="o" if len(x) <= 30 else None, markersize=3, label=method)
            if key in LOG_VALUES and values and min(values) > 0:
                ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_ylabel(key.replace("_", " ") + (f" (mean of {n_seeds} seeds)" if n_seeds > 1 else ""))
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.suptitle(f"{task}: {name}")
        fig.tight_layout()
        path = folder / diagnostic_filename(name)
        _save_png(fig, path)
        paths.append(path)
    return paths


def _save_png(fig: Any, path: Path) -> None:
    """Write ``fig`` to ``path`` as PNG atomically (:func:`unigrad.core.io.atomic_path`), then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, fsync=False, unique=False) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
