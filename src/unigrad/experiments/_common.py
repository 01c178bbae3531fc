"""The pieces several experiments share: writing ``results.json`` and ``report.md``, figures, and fits.

``results.json`` is ``json.dumps(results, indent=1)`` plus a final newline (non-finite floats stay ``NaN`` and
``Infinity``, as the experiments have always written them); both files are written atomically with
:func:`unigrad.core.io.atomic_write`, so a run stopped while writing leaves the previous file whole.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unigrad.core.io import atomic_write


def write_results(out: Path, results: Any) -> None:
    """Write ``results`` to ``out/results.json`` (one-space indent, final newline)."""
    atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n")


def write_report(out: Path, text: str) -> str:
    """Write ``text`` to ``out/report.md`` and return it."""
    atomic_write(out / "report.md", text)
    return text


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (figures are only saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Lay ``fig`` out tightly, save it to ``path`` at ``dpi`` and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def fit_power(x: Sequence[float], y: Sequence[float], se: Sequence[float] | None = None) -> tuple[float, float]:
    """Least-squares slope of ``log y`` on ``log x`` and its standard error, propagating the
    standard errors ``se`` of the ``y`` (``Var(log y) ≈ (se/y)²``); 0 without them."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    dx = lx - lx.mean()
    w = dx / (dx**2).sum()
    slope = float(w @ (ly - ly.mean()))
    if se is None:
        return slope, 0.0
    var = (np.asarray(se, float) / np.asarray(y, float)) ** 2
    return slope, float(math.sqrt(float(w**2 @ var)))


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of ``y`` against ``x``."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


def mean_sd(values: Sequence[float | None], fmt: str, *, none: str, missing: Callable[[int, int], str]) -> str:
    """``mean ± sd`` of the values that exist (``fmt`` formats each), ``none`` when none does, and
    ``missing(present, total)`` appended when some are missing."""
    have = [v for v in values if v is not None]
    if not have:
        return none
    text = fmt.format(statistics.fmean(have))
    if len(have) > 1:
        text += " ± " + fmt.format(statistics.stdev(have))
    if len(have) < len(values):
        text += missing(len(have), len(values))
    return text
