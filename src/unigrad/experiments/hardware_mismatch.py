"""The ``hardware-mismatch`` experiment: the training modes against the crossbar's mismatch level.

Accuracy against the mismatch level ``m``: fixed per-cell errors, a gain spread ``σ_m = m`` and a programming
error ``σ_p = m/2`` (relative to ``w_max``); node noise 0.05 (white), read noise 0.01. The device, the modes and
the report are those of :mod:`unigrad.experiments.crossbar_sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unigrad.experiments._common import runner
from unigrad.experiments.crossbar_sweep import SweepConfig, _Maker, _sweep, config


def run(out: str | Path, *, levels: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.4), **options: Any) -> str:
    """Accuracy of every mode against the mismatch level (module docs).

    ``options``: the ``seeds``, ``quick``, ``progress`` and ``jobs`` of ``crossbar_sweep._sweep``."""
    from unigrad.noise import WhiteGaussian

    def make(level: float, seed: int) -> tuple[_Maker, float]:
        return _Maker(config(mismatch=level, noise=0.05), WhiteGaussian(0.05, accessible=False), seed), 0.05

    return _sweep(out, "hardware-mismatch", levels, make, **options, label="mismatch m")


@dataclass(frozen=True)
class Config(SweepConfig):
    """Options of ``unigrad experiment hardware-mismatch``: the mismatch ``levels`` (with :class:`SweepConfig`'s)."""

    levels: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.4)

    NAME = "hardware-mismatch"


hardware_mismatch = runner(Config, run)
