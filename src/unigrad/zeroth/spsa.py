"""Simultaneous perturbation stochastic approximation: the :class:`SPSA` estimator."""

from __future__ import annotations

from unigrad.core.exchange import ProbeExchange
from unigrad.core.probe import DEFAULT_MEMORY_BUDGET
from unigrad.zeroth.rge import RGE


class SPSA(RGE):
    """SPSA — simultaneous perturbation stochastic approximation.

    With Rademacher directions ``Δ_i ∈ {±1}^d`` (so ``1/Δ_ij = Δ_ij``)::

        g = (1/q) Σ_i [f(θ+σΔ_i) − f(θ−σΔ_i)] / (2σ) · Δ_i

    It is :class:`~unigrad.zeroth.rge.RGE` with ``distribution="rademacher"`` and ``scheme="central"``;
    the options are RGE's otherwise.

    Cost: ``2qB`` forward samples for a batch of B.

    Args:
        probes: number of directions q (≥ 1) (default: 1).
        sigma: perturbation scale σ (> 0) (default: 1e-3).
        noise_source: ``"auto"`` (the shared noise table for tensors that fit, else the generator),
            ``"generator"`` (exact RNG per key) or ``"table"`` (shared noise table); see ``core/rng.py``
            (default: ``"auto"``).
        probe_batch: probes whose noise is drawn as one block and evaluated together (as in RGE);
            ``None``: as many as fit ``memory_budget`` (default: None).
        memory_budget: bytes of stacked perturbed parameters allowed at once (default: 256 MiB).
        seed: names the noise stream; each perturbation is keyed by (seed, step, probe, tensor) (default: 0).
        exchange: a :class:`~unigrad.core.exchange.ProbeExchange` to spread the probes over processes
            (``unigrad.distributed``); ``None`` evaluates them all here; not listed in ``options()``
            (default: None).

    References:
        J. C. Spall, "Multivariate stochastic approximation using a simultaneous perturbation
        gradient approximation", IEEE Trans. Automatic Control 37(3):332–341 (1992).
    """

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
