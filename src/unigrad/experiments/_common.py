"""The skeleton every experiment shares: its declared configuration and runner, its output folder,
``results.json`` and ``report.md``, markdown tables, figures and fits.

An experiment module reads as its configuration (a :class:`Config` subclass: its own options and their full
and ``--quick`` defaults), its science (``run(out, ...)``: what it trains and measures; it returns a ``results``
dict) and its presentation (``report(results) -> str`` and ``plot(results, path)``); :func:`finish` writes the
three outputs in one place and :func:`runner` turns the configuration and ``run`` into the
``unigrad experiment NAME`` runner, ``run_experiment(out, **options) -> str``.

``results.json`` is ``json.dumps(results, indent=1)`` plus a final newline (non-finite floats stay ``NaN`` and
``Infinity``, as the experiments have always written them); both files are written atomically with
:func:`unigrad.core.io.atomic_write`, so a run stopped while writing leaves the previous file whole.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.io import atomic_write
from unigrad.core.options import check_number

Progress = Callable[[str], None] | None
"""The progress callback every runner takes: called with one line per stage, or ``None`` for silence."""


def output_dir(out: str | Path) -> Path:
    """``out`` as a :class:`~pathlib.Path`, created (with its parents) if it does not exist."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_results(out: Path, results: Any) -> None:
    """Write ``results`` to ``out/results.json`` (one-space indent, final newline)."""
    atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n")


def write_report(out: Path, text: str) -> str:
    """Write ``text`` to ``out/report.md`` and return it."""
    atomic_write(out / "report.md", text)
    return text


def check_positive_all(*, integer: bool = False, **values: Any) -> None:
    """:func:`~unigrad.core.errors.check_positive` on every named value, in order."""
    for name, v in values.items():
        check_positive(name, v, integer=integer)


def check_positive_each(name: str, values: Iterable[Any], *, integer: bool = False) -> None:
    """:func:`~unigrad.core.errors.check_positive` on every element of the option ``name``."""
    for v in values:
        check_positive(name, v, integer=integer)


def check_factor(factor: float) -> None:
    """Refuse an error-reduction factor that is not a finite number above 1."""
    check_number("factor", factor, low=1, low_inclusive=False, what="a number > 1 (the error reduction)")


def finish(
    out: Path,
    results: Any,
    report: Callable[[Any], str],
    plot: Callable[[Any, Path], None] | None = None,
    figure: str | None = None,
) -> str:
    """Write ``results.json``, the figure ``out/figure`` drawn by ``plot`` (if given) and ``report.md``;
    return the report's text."""
    write_results(out, results)
    if plot is not None and figure is not None:
        plot(results, out / figure)
    return write_report(out, report(results))


_SHARED = ("seeds", "quick", "progress")

Settings = Mapping[str, Any]
"""Keyword settings of an experiment's ``run``, by name."""


def check_options(experiment: str, options: dict[str, Any], allowed: set[str]) -> None:
    """Refuse any key of ``options`` not in ``allowed``, naming the valid ones."""
    unknown = set(options) - allowed
    if unknown:
        raise UnigradError(
            f"unknown {experiment} options: {', '.join(sorted(unknown))}; valid: {', '.join(sorted(allowed))}"
        )


@dataclass(frozen=True)
class Config:
    """The options of one experiment's runner: those every experiment shares, and (in a subclass) its own.

    Shared: ``seeds`` (seeds per configuration), ``quick`` (tiny budgets: a smoke test of the pipeline, its
    numbers are not results) and ``progress`` (called with one line per stage, or ``None``).

    A subclass declares its own options as fields (``None``: the mode's default) and, as class attributes,
    ``FULL`` and ``QUICK``: the settings of its ``run`` in a full and in a ``--quick`` run (its options'
    defaults and any budget that is not an option); ``QUICK_SEEDS`` caps the seeds of a quick run and
    ``USES_SEEDS`` says whether ``run`` takes ``seeds``. :meth:`settings` resolves them for ``run``.
    """

    seeds: int = 3
    quick: bool = False
    progress: Progress = None

    NAME: ClassVar[str] = "experiment"
    FULL: ClassVar[Settings] = {}
    QUICK: ClassVar[Settings] = {}
    QUICK_SEEDS: ClassVar[int | None] = None
    USES_SEEDS: ClassVar[bool] = True

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> Config:
        """The configuration of the keyword ``options``; an unknown one is refused, naming the valid ones."""
        check_options(cls.NAME, dict(options), {f.name for f in dataclasses.fields(cls)})
        return cls(**options)

    def own(self) -> dict[str, Any]:
        """The experiment's own options that were given (not ``None``), by name."""
        fields = (f.name for f in dataclasses.fields(self) if f.name not in _SHARED)
        return {k: v for k in fields if (v := getattr(self, k)) is not None}

    def settings(self) -> dict[str, Any]:
        """The keyword arguments of ``run``: the mode's settings (``QUICK`` or ``FULL``) overridden by the given
        options, then ``seeds`` (at most ``QUICK_SEEDS`` in a quick run) and ``progress``."""
        settings = {**(self.QUICK if self.quick else self.FULL), **self.own()}
        if self.USES_SEEDS:
            cap = self.QUICK_SEEDS if self.quick else None
            settings["seeds"] = self.seeds if cap is None else min(self.seeds, cap)
        return {**settings, "progress": self.progress}


def runner(config: type[Config], run: Callable[..., Any]) -> Callable[..., str]:
    """The ``unigrad experiment NAME`` runner ``run_experiment(out, **options) -> str``: build ``config`` from the
    keyword options, call ``run(out, **config.settings())`` and return the ``report.md`` it wrote."""

    def run_experiment(out: str | Path, **options: Any) -> str:
        run(out, **config.of(options).settings())
        return (Path(out) / "report.md").read_text()

    run_experiment.__doc__ = f"The ``unigrad experiment {config.NAME}`` runner (``options``: the fields of its Config)."
    return run_experiment


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table as lines: ``| h₁ | h₂ |``, the ``|---|---|`` rule, then one line per row (cells
    are written with ``str``)."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def ok(flag: bool) -> str:
    """A table cell for a check: ``yes``, or a bold ``**no**`` that stands out."""
    return "yes" if flag else "**no**"


def steps(v: float | None, digits: int = 0) -> str:
    """A step count or time with thousands separators, ``not reached`` for ``None``."""
    return "not reached" if v is None else f"{v:,.{digits}f}"


def rounded(value: Any) -> Any:
    """``value`` with every finite float rounded to 6 significant digits (a compact ``results.json``)."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value


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


def grid(axes: Iterable[Any]) -> None:
    """Light grid lines at the major ticks of every axes."""
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)


def median_curve(per_run: Sequence[Sequence[float]]) -> list[float]:
    """The median over runs at every record (a diverged run counts as ``inf``)."""
    return [statistics.median(v) for v in zip(*per_run)]


def smooth(values: Sequence[float], width: int) -> list[float]:
    """Trailing moving average over ``width`` records (shorter at the start)."""
    return [statistics.fmean(values[max(0, i - width + 1) : i + 1]) for i in range(len(values))]


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
