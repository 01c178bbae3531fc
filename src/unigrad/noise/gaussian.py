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

import torch
from torch import Tensor

from unigrad.noise.base import NoiseProcess, check_accessible, check_positive_finite


class WhiteGaussian(NoiseProcess):
    """I.i.d. ``N(0, σ²)`` entries at every step."""

    name = "gaussian"
    tag = 0x4E5A0001
    options = ("sigma",)
    example = "gaussian:sigma=0.1"

    def __init__(self, sigma: float, *, accessible: bool = True) -> None:
        self.sigma = check_positive_finite("sigma", sigma)
        self.accessible = check_accessible(accessible)

    @property
    def mean(self) -> float:
        return 0.0

    @property
    def variance(self) -> float:
        return self.sigma**2

    def _sample(
        self, steps: int, shape: tuple[int, ...], g: torch.Generator, dt: float, work: torch.dtype, device: torch.device
    ) -> Tensor:
        eps = torch.randn((steps, *shape), generator=g, device=device)
        return eps.to(work).mul_(self.sigma)
