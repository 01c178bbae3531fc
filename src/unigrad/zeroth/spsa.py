"""SPSA — simultaneous perturbation stochastic approximation.

With Rademacher directions ``Δ_i ∈ {±1}^d`` (so ``1/Δ_ij = Δ_ij``)::

    g = (1/q) Σ_i [f(θ+σΔ_i) − f(θ−σΔ_i)] / (2σ) · Δ_i

Reference: J. C. Spall, "Multivariate stochastic approximation using a simultaneous perturbation
gradient approximation", IEEE Trans. Automatic Control 37(3), 1992. It is :class:`~unigrad.zeroth.rge.RGE`
with ``distribution="rademacher"`` and ``scheme="central"``; the options are RGE's otherwise.
"""

from __future__ import annotations

from unigrad.core.exchange import ProbeExchange
from unigrad.zeroth._probing import DEFAULT_MEMORY_BUDGET
from unigrad.zeroth.rge import RGE


class SPSA(RGE):
    name = "spsa"
    order = 0
    description = "simultaneous perturbation (Rademacher two-point RGE), Spall 1992"
    _options = ("probes", "sigma", "noise_source", "probe_batch")

    def __init__(
        self,
        probes: int = 1,
        sigma: float = 1e-3,
        noise_source: str = "auto",
        probe_batch: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        seed: int = 0,
        exchange: ProbeExchange | None = None,
    ) -> None:
        super().__init__(
            probes, sigma, "rademacher", "central", noise_source, probe_batch, memory_budget, seed, exchange
        )
