"""Ornstein–Uhlenbeck noise: Gaussian noise with stationary standard deviation σ and correlation time τ.

Definition (Uhlenbeck & Ornstein 1930, "On the theory of the Brownian motion", Phys. Rev. 36:823)
    ``dξ = −ξ/τ dt + σ·√(2/τ) dW``, whose stationary law is ``N(0, σ²)`` with autocorrelation
    ``E[ξ(t) ξ(t+s)] = σ²·e^{−|s|/τ}``.

Exact discretisation (no Euler error, any ``dt``)
    ``ξ_0 = σ·ε_0`` and ``ξ_{t+1} = a·ξ_t + σ·√(1 − a²)·ε_{t+1}`` with ``a = e^{−dt/τ}`` and ``ε_t`` i.i.d.
    standard normal. The first sample is drawn from the stationary distribution, so every ``ξ_t`` is
    ``N(0, σ²)`` and ``corr(ξ_t, ξ_{t+k}) = a^k = e^{−k·dt/τ}`` from the first step on (no transient).
    ``τ → 0`` (``dt ≫ τ``) gives white Gaussian noise; ``τ ≫ T·dt`` a per-trial constant offset.
    Temporally correlated exploration noise is what slow, smooth biological fluctuations look like to a
    network, and what reinforcement learners use for exploration in continuous control.

Options
    ``sigma``: stationary standard deviation σ > 0.
    ``tau``: correlation time τ > 0, in the unit of ``dt`` (e.g. ms).
    ``accessible``: whether a learning rule may read the noise (see :mod:`unigrad.noise.base`).

Spec: ``ou:sigma=0.1:tau=50``. Cost: one normal draw per entry and step, and one fused multiply-add per
step (a loop over ``steps``).
"""

from __future__ import annotations

import math

from torch import Tensor

from unigrad.noise.base import CenteredNoise, Draw, check_positive_finite


class OrnsteinUhlenbeck(CenteredNoise):
    """Stationary OU noise, ``ξ_{t+1} = a ξ_t + σ√(1−a²) ε``, ``a = e^{−dt/τ}``, ``ξ_0 ~ N(0, σ²)``."""

    name = "ou"
    tag = 0x4E5A0002
    options = ("sigma", "tau")
    example = "ou:sigma=0.1:tau=50"

    def __init__(self, sigma: float, tau: float, *, accessible: bool = True) -> None:
        super().__init__(sigma, accessible=accessible)
        self.tau = check_positive_finite("tau", tau)

    def decay(self, dt: float) -> float:
        """``a = e^{−dt/τ}``: the one-step autocorrelation at step ``dt``."""
        return math.exp(-dt / self.tau)

    def _sample(self, draw: Draw) -> Tensor:
        a = self.decay(draw.dt)
        innovation = self.sigma * math.sqrt(-math.expm1(-2 * draw.dt / self.tau))  # σ√(1 − a²), accurate for small dt/τ
        out = draw.normal().to(draw.work)
        out[0].mul_(self.sigma)
        out[1:].mul_(innovation)
        for t in range(1, draw.steps):
            out[t].add_(out[t - 1], alpha=a)
        return out
