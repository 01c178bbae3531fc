"""Weight perturbation: the :class:`WP` estimator (RGE's forward Gaussian scheme, written as the perturbation rule)."""

from __future__ import annotations

from unigrad.core.probe import DEFAULT_MEMORY_BUDGET
from unigrad.zeroth.rge import RGE


class WP(RGE):
    """WP — weight perturbation: perturb all weights at once, correlate the noise with the change in loss.

    With ``q`` probes ``ξ_i ~ N(0, σ²I)`` over all trainable parameters and ``δL_i = L(θ+ξ_i) − L(θ)``
    (batch-mean losses)::

        g = (1/q) Σ_i (δL_i/σ²) ξ_i

    and the optimizer descends along ``g`` (the rule ``ΔW = −η(δL/σ²)ξ`` of [1]). Writing ``ξ_i = σu_i``
    with ``u_i ~ N(0, I)`` gives ``g = (1/q) Σ_i [L(θ+σu_i) − L(θ)]/σ · u_i``: exactly
    :class:`~unigrad.zeroth.rge.RGE` with ``scheme="forward"`` and ``distribution="gaussian"``, so
    ``WP`` is that estimator with those two options fixed (same noise keys, bitwise the same estimate
    for the same seed). WP searches the space of all weights, so it is slower than gradient descent by
    about M·N (M outputs, N inputs) where node perturbation is slower by about M [2].

    Cost: ``(q + 1)·B`` forward samples for a batch of B. ``Estimate.loss`` is the clean (exact) loss.

    Args:
        probes: number of perturbations q (≥ 1), sharing one clean pass (default: 1).
        sigma: weight noise scale σ (> 0) (default: 1e-3).
        noise_source: ``"auto"``, ``"generator"`` or ``"table"``; see ``core/rng.py`` (default: ``"auto"``).
        probe_batch: probes evaluated together (see ``rge.py``); ``None``: as many as fit ``memory_budget``
            (default: None).
        memory_budget: bytes of stacked perturbed parameters allowed at once (default: 256 MiB).
        seed: names the noise stream; each perturbation is keyed by (seed, step, probe, tensor) (default: 0).

    References:
        [1] N. Dalm, M. van Gerven, N. Ahmad, "Effective Learning with Node Perturbation in Deep Neural
            Networks", arXiv:2310.00965.
        [2] J. Werfel, X. Xie, H. S. Seung, "Learning Curves for Stochastic Gradient Descent in Linear
            Feedforward Networks", Neural Computation 17(12), 2005.
    """

    name = "wp"
    order = 0
    description = "weight perturbation: Gaussian ξ on all weights, (δL/σ²)ξ"
    _options = ("probes", "sigma", "noise_source", "probe_batch")

    def __init__(
        self,
        probes: int = 1,
        sigma: float = 1e-3,
        noise_source: str = "auto",
        probe_batch: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        seed: int = 0,
    ) -> None:
        super().__init__(
            probes=probes,
            sigma=sigma,
            distribution="gaussian",
            scheme="forward",
            noise_source=noise_source,
            probe_batch=probe_batch,
            memory_budget=memory_budget,
            seed=seed,
        )
