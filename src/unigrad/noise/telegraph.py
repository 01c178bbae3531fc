"""Stochastic magnetic tunnel junction noise: Gaussian noise plus a random telegraph offset plus a constant.

Definition (Koenders et al. 2025, "Noise-based local learning using stochastic magnetic tunnel junctions",
Phys. Rev. Applied 23:054035, their simulated sMTJ node noise)
    ``ξ_t = c + a·s_t + σ·ε_t`` independently for every entry, with ``ε_t`` i.i.d. standard normal and a
    telegraph sign ``s_t ∈ {−1, +1}``: ``s_0`` is a fair coin (the stationary law of the chain) and
    ``s_t = −s_{t−1}`` with probability ``p``, else ``s_t = s_{t−1}``, at every step, independently of the
    past. So every ``ξ_t`` has mean ``c`` and variance ``σ² + a²`` from the first step on (no transient),
    and the telegraph part has autocorrelation ``E[s_t s_{t+k}] = (1 − 2p)^k``: a correlation time of about
    ``1/(2p)`` steps for small ``p``, white for ``p = 1/2``, alternating for ``p > 1/2``, frozen for
    ``p = 0`` (a per-trial ``±a`` offset). Published values of the simulated junctions: ``a = 0.0059``,
    ``p = 0.0809``, ``c = 0.042``; they are the defaults. The Gaussian part's σ is not among the published
    device values, so the default is ``σ = 0`` (the telegraph-plus-offset device alone); give the σ of the
    node noise being modelled to add a white component.

    ``p`` is a probability per step; ``dt`` is ignored (the device is read once per step). Device noise is
    intrinsic, so ``accessible`` defaults to ``False``: a learning rule sees it only through activity (as in
    activity-based node perturbation), and :attr:`spec` always writes ``accessible`` explicitly.

Options
    ``sigma``: standard deviation σ >= 0 of the white Gaussian part (default 0).
    ``amplitude``: telegraph amplitude a >= 0 (default 0.0059). σ and a cannot both be 0.
    ``flip``: probability p in [0, 1] that the telegraph sign flips at a step (default 0.0809).
    ``offset``: the constant c, any finite number (default 0.042).
    ``accessible``: whether a learning rule may read the noise (see :mod:`unigrad.noise.base`; default False).

Spec: ``smtj:sigma=0:amplitude=0.0059:flip=0.0809:offset=0.042:accessible=false``. Cost: one uniform draw
per entry and step (the coin and the flips), one normal draw per entry and step when σ > 0, and a cumulative
sum over the steps. The uniforms are drawn first, so the telegraph part of a key does not depend on σ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unigrad.core.errors import UnigradError
from unigrad.noise.base import Draw, NoiseProcess, check_accessible, check_number

AMPLITUDE = 0.0059
"""Telegraph amplitude ``a`` of the simulated junctions of Koenders et al. (2025)."""
FLIP = 0.0809
"""Flip probability per step ``p`` of the simulated junctions of Koenders et al. (2025)."""
OFFSET = 0.042
"""Constant offset ``c`` of the simulated junctions of Koenders et al. (2025)."""


def _check_nonnegative(name: str, value: object) -> float:
    v = check_number(name, value)
    if v < 0:
        raise UnigradError(f"option {name} must be a number >= 0, got {value!r}")
    return v


class StochasticMTJ(NoiseProcess):
    """``c + a·s_t + σ·ε_t``: a ±a telegraph sign flipping with probability p per step, plus N(0, σ²), plus c."""

    name = "smtj"
    tag = 0x4E5A0101
    options = ("sigma", "amplitude", "flip", "offset")
    example = "smtj:sigma=0:amplitude=0.0059:flip=0.0809:offset=0.042"
    writes_accessible = True

    def __init__(
        self,
        sigma: float = 0.0,
        amplitude: float = AMPLITUDE,
        flip: float = FLIP,
        offset: float = OFFSET,
        *,
        accessible: bool = False,
    ) -> None:
        self.sigma = _check_nonnegative("sigma", sigma)
        self.amplitude = _check_nonnegative("amplitude", amplitude)
        self.flip = check_number("flip", flip)
        if not 0 <= self.flip <= 1:
            raise UnigradError(f"option flip must be a probability in [0, 1], got {flip!r}")
        self.offset = check_number("offset", offset)
        if self.sigma == 0 and self.amplitude == 0:
            raise UnigradError("options sigma and amplitude of noise smtj are both 0: give one of them a value > 0")
        self.accessible = check_accessible(accessible)

    @property
    def mean(self) -> float:
        return self.offset

    @property
    def variance(self) -> float:
        return self.sigma**2 + self.amplitude**2

    def correlation(self, lag: int) -> float:
        """``(1 − 2p)^lag``: the autocorrelation of the telegraph sign at ``lag`` steps."""
        return (1 - 2 * self.flip) ** lag

    def _sample(self, draw: Draw) -> Tensor:
        u = draw.uniform()
        # row 0: the fair initial coin (u < 1/2 → s_0 = −1); rows 1..: a flip where u < p
        odd = u < self.flip
        odd[0] = u[0] < 0.5
        parity = torch.cumsum(odd, dim=0, dtype=torch.int32) & 1  # s_t = −1 where parity is 1
        out = parity.to(draw.work).mul_(-2 * self.amplitude).add_(self.amplitude + self.offset)
        if self.sigma > 0:
            out.add_(draw.normal().to(draw.work), alpha=self.sigma)
        return out
