"""The ``hardware-mismatch`` experiment: the training modes against the crossbar's mismatch level.

Accuracy against the mismatch level ``m``: fixed per-cell errors, a gain spread ``σ_m = m`` and a programming
error ``σ_p = m/2`` (relative to ``w_max``); node noise 0.05 (white), read noise 0.01. The device, the modes and
the report are those of :mod:`unigrad.experiments.crossbar_sweep`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from unigrad.experiments.crossbar_sweep import _Maker, _sweep, config


def hardware_mismatch(
    out: str | Path,
    *,
    seeds: int = 1,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
    jobs: int = 1,
    levels: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.4),
) -> str:
    """Accuracy of every mode against the mismatch level (module docs)."""
    from unigrad.noise import WhiteGaussian

    def make(level: float, seed: int) -> tuple[_Maker, float]:
        return _Maker(config(mismatch=level, noise=0.05), WhiteGaussian(0.05, accessible=False), seed), 0.05

    return _sweep(
        out,
        "hardware-mismatch",
        levels,
        make,
        seeds=seeds,
        quick=quick,
        progress=progress,
        jobs=jobs,
        label="mismatch m",
    )
