"""Sparse kicks: rare, uniformly distributed perturbations of single units (Miconi 2017).

Definition (Miconi 2017, "Biologically plausible learning in recurrent neural networks reproduces neural
dynamics observed during cognitive tasks", eLife 6:e20899)
    Independently for every entry and step, ``ξ_t = u_t`` with probability ``p`` and ``ξ_t = 0`` otherwise,
    where ``u_t`` is uniform on ``[−σ, σ]``. Mean 0, variance ``p·σ²/3``. In the paper each unit of a
    chaotic rate network receives such a kick at about 3 Hz; with a step of ``dt`` ms that is
    ``p = 0.003·dt``. The network's learning rule never reads the kicks: it sees them only through the
    deviation of each unit's activity from its running average, so Miconi's setting uses
    ``accessible=False``.

Options
    ``p``: probability of a kick per entry and step, in (0, 1] (``p = rate·dt`` for a kick rate).
    ``sigma``: half-width σ > 0 of the uniform kick amplitude.
    ``accessible``: whether a learning rule may read the noise (see :mod:`unigrad.noise.base`).

Spec: ``sparse-kicks:p=0.003:sigma=1`` (add ``:accessible=false`` for Miconi's setting). Cost: two uniform
draws per entry and step.
"""

from __future__ import annotations

from torch import Tensor

from unigrad.noise.base import CenteredNoise, Draw, check_probability


class SparseKicks(CenteredNoise):
    """With probability ``p`` per entry and step a kick uniform in ``[−σ, σ]``, else 0."""

    name = "sparse-kicks"
    tag = 0x4E5A0004
    options = ("p", "sigma")
    example = "sparse-kicks:p=0.003:sigma=1"

    def __init__(self, p: float, sigma: float, *, accessible: bool = True) -> None:
        self.p = check_probability("p", p)
        super().__init__(sigma, accessible=accessible)

    @property
    def variance(self) -> float:
        return self.p * self.sigma**2 / 3

    def _sample(self, draw: Draw) -> Tensor:
        kick = draw.uniform() < self.p
        amp = draw.uniform().to(draw.work).mul_(2 * self.sigma).sub_(self.sigma)
        return amp.masked_fill_(~kick, 0.0)
