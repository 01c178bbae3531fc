"""White Gaussian noise: ``ξ_t ~ N(0, σ²)``, independent across entries and steps.

Definition
    ``ξ_t = σ·ε_t`` with ``ε_t`` i.i.d. standard normal. It is the discrete-time version of a white noise
    whose per-step variance is ``σ²`` whatever ``dt`` is (``dt`` is ignored): a continuous-time white noise
    of intensity ``q`` integrated over a step would give ``σ² = q·dt``, so pass that ``σ`` if that is what
    is meant. The classic probe of node and weight perturbation (Williams 1992; Fiete & Seung 2006).

Options
    ``sigma``: the standard deviation σ > 0 of each entry.
    ``accessible``: whether a learning rule may read the noise (see :mod:`unigrad.noise.base`).

Spec: ``gaussian:sigma=0.1``. Cost: one normal draw per entry and step.
"""

from __future__ import annotations

from torch import Tensor

from unigrad.noise.base import CenteredNoise, Draw


class WhiteGaussian(CenteredNoise):
    """I.i.d. ``N(0, σ²)`` entries at every step."""

    name = "gaussian"
    tag = 0x4E5A0001
    options = ("sigma",)
    example = "gaussian:sigma=0.1"

    def _sample(self, draw: Draw) -> Tensor:
        return draw.normal().to(draw.work).mul_(self.sigma)
