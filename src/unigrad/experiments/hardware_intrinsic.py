"""The ``hardware-intrinsic`` experiment: in-situ ANP/DANP learning from stochastic-MTJ telegraph noise.

In-situ ANP/DANP when the only perturbation is a stochastic magnetic tunnel junction's telegraph noise
(:class:`unigrad.noise.StochasticMTJ`, the published offset ±0.0059 flipping with probability 0.0809 per step
plus 0.042, no Gaussian part), against white Gaussian node noise of the same variance; mismatch 0.1. The
device, the modes and the report are those of :mod:`unigrad.experiments.crossbar_sweep`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unigrad.experiments._common import runner
from unigrad.experiments.crossbar_sweep import SweepConfig, _Maker, _sweep, config


def run(out: str | Path, **options: Any) -> str:
    """In-situ learning when the only perturbation is the junctions' telegraph noise (module docs).

    ``options``: the ``seeds``, ``quick``, ``progress`` and ``jobs`` of ``crossbar_sweep._sweep``."""
    from unigrad.noise import StochasticMTJ, WhiteGaussian

    mtj = StochasticMTJ(sigma=0.0, amplitude=0.0059, flip=0.0809, offset=0.042)

    def make(level: float, seed: int) -> tuple[_Maker, float]:
        noise = mtj if level == 1 else WhiteGaussian(math.sqrt(mtj.variance), accessible=False)
        return _Maker(config(mismatch=0.1, noise=0.0), noise, seed), 0.0

    return _sweep(
        out,
        "hardware-intrinsic",
        (1.0, 2.0),
        make,
        **options,
        modes=("in-situ-anp", "in-situ-danp"),
        label="node noise (1: sMTJ, 2: Gaussian)",
    )


@dataclass(frozen=True)
class Config(SweepConfig):
    """Options of ``unigrad experiment hardware-intrinsic``: those of :class:`SweepConfig`."""

    NAME = "hardware-intrinsic"


hardware_intrinsic = runner(Config, run)
