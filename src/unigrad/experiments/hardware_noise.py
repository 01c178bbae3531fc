"""The ``hardware-noise`` experiment: the training modes against the crossbar's noise level.

Accuracy against the noise level ``s``: the device's node noise ``σ_n = s`` (white Gaussian, per sample and
unit) and read noise ``σ_r = s/5``; mismatch ``m = 0.1``. The device, the modes and the report are those of
:mod:`unigrad.experiments.crossbar_sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unigrad.experiments._common import runner
from unigrad.experiments.crossbar_sweep import SweepConfig, _Maker, _sweep, config


def run(out: str | Path, *, levels: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3), **options: Any) -> str:
    """Accuracy of every mode against the device's noise level (module docs).

    ``options``: the ``seeds``, ``quick``, ``progress`` and ``jobs`` of ``crossbar_sweep._sweep``."""
    from unigrad.noise import WhiteGaussian

    def make(level: float, seed: int) -> tuple[_Maker, float]:
        return _Maker(config(mismatch=0.1, noise=level), WhiteGaussian(level, accessible=False), seed), level

    return _sweep(out, "hardware-noise", levels, make, **options, label="noise s")


@dataclass(frozen=True)
class Config(SweepConfig):
    """Options of ``unigrad experiment hardware-noise``: the noise ``levels`` (with :class:`SweepConfig`'s)."""

    levels: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)

    NAME = "hardware-noise"


hardware_noise = runner(Config, run)
