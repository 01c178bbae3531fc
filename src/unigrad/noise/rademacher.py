"""Rademacher noise: ``ξ_t = ±σ`` with equal probability, independent across entries and steps.

Definition
    ``ξ_t = σ·s_t`` with ``s_t ∈ {−1, +1}`` fair coin flips: mean 0, variance σ², and ``|ξ| = σ`` always.
    The perturbation of SPSA (Spall 1992) and of one-bit (Bernoulli, centred) node noise in hardware
    (e.g. stochastic magnetic tunnel junctions); among zero-mean distributions of variance σ² it has the
    smallest fourth moment, hence the smallest variance of perturbation-based gradient estimates.

Options
    ``sigma``: the amplitude σ > 0.
    ``accessible``: whether a learning rule may read the noise (see :mod:`unigrad.noise.base`).

Spec: ``rademacher:sigma=0.1``. Cost: one random bit per entry and step.
"""

from __future__ import annotations

from torch import Tensor

from unigrad.noise.base import CenteredNoise, Draw


class Rademacher(CenteredNoise):
    """I.i.d. ``±σ`` entries at every step."""

    name = "rademacher"
    tag = 0x4E5A0003
    options = ("sigma",)
    example = "rademacher:sigma=0.1"

    def _sample(self, draw: Draw) -> Tensor:
        return draw.bits().to(draw.work).mul_(2 * self.sigma).sub_(self.sigma)
