"""Random gradient estimation: the :class:`RGE` estimator (Gaussian smoothing / random directions)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unigrad.core.cost import Cost
from unigrad.core.errors import check_choice
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.exchange import ProbeExchange, check_exchange
from unigrad.core.objective import Objective, evaluate, reduce
from unigrad.core.params import write_grad
from unigrad.core.probe import DEFAULT_MEMORY_BUDGET, check_batching, probes_per_chunk
from unigrad.core.rng import ProbeNoise
from unigrad.zeroth._probing import check_probes, combine, gather_losses, probe_losses

SCHEMES = ("central", "forward", "one-point")


class RGE(Estimator):
    """RGE — random gradient estimation (Gaussian smoothing / random directions).

    With ``q`` directions ``u_i`` (Gaussian, uniform on the sphere of radius √d, or Rademacher) and
    smoothing scale σ::

        central      g = (1/q) Σ_i [f(θ+σu_i) − f(θ−σu_i)] / (2σ) · u_i
        forward      g = (1/q) Σ_i [f(θ+σu_i) − f(θ)]      / σ    · u_i
        one-point    g = (1/q) Σ_i  f(θ+σu_i)              / σ    · u_i

    In expectation (Gaussian u) ``g`` is the gradient of the smoothed loss
    ``f_σ(θ) = E_u f(θ+σu)`` (Nesterov & Spokoiny 2017, FoCM 17:527). For one Gaussian probe
    ``E‖g − ∇f‖² ≈ (d+1)‖∇f‖²``, so the cosine with the gradient is of order √(q/d). Rademacher
    directions with the central scheme are SPSA (Spall 1992; see ``spsa.py``, :class:`~unigrad.zeroth.spsa.SPSA`).
    The central scheme is the antithetic one: mirroring the forward or one-point probes (``±u_i``) gives
    exactly the central formula, whose pairs cancel the even terms of the Taylor expansion.

    Cost: ``2qB`` forward samples (central), ``(q+1)B`` (forward), ``qB`` (one-point), for a batch of B.

    Args:
        probes: number of directions q (≥ 1) (default: 1).
        sigma: smoothing scale σ (> 0) (default: 1e-3).
        distribution: ``"gaussian"``, ``"sphere"`` or ``"rademacher"`` (default: ``"gaussian"``).
        scheme: ``"central"``, ``"forward"`` or ``"one-point"`` (default: ``"central"``).
        noise_source: ``"auto"`` (the shared noise table for tensors that fit, else the generator),
            ``"generator"`` (exact RNG per key) or ``"table"`` (shared noise table); see ``core/rng.py``
            (default: ``"auto"``).
        probe_batch: probes whose noise is drawn as one block and evaluated together (one after another on
            the linear fast path of ``core/probe.py``, else stacked under ``vmap``); ``None``: as many as
            fit ``memory_budget`` (default: None).
        memory_budget: bytes of stacked perturbed parameters allowed at once (default: 256 MiB).
        seed: names the noise stream; each perturbation is keyed by (seed, step, probe, tensor) (default: 0).
        exchange: a :class:`~unigrad.core.exchange.ProbeExchange` to spread the probes over processes
            (``unigrad.distributed``); ``None`` evaluates them all here. Not an option of the
            method (the result does not depend on it), so it is not listed in ``options()`` (default: None).

    References:
        Y. Nesterov, V. Spokoiny, "Random gradient-free minimization of convex functions", Foundations of
        Computational Mathematics 17:527–566 (2017).
    """

    name = "rge"
    supports_exchange = True
    order = 0
    description = "random gradient estimate: one-point, forward or central differences, q probes"
    _options = ("probes", "sigma", "distribution", "scheme", "noise_source", "probe_batch")

    def __init__(
        self,
        probes: int = 1,
        sigma: float = 1e-3,
        distribution: str = "gaussian",
        scheme: str = "central",
        noise_source: str = "auto",
        probe_batch: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        seed: int = 0,
        exchange: ProbeExchange | None = None,
    ) -> None:
        super().__init__(seed)
        check_probes(probes, sigma)
        check_choice("scheme", scheme, SCHEMES)
        check_batching(probe_batch, memory_budget)
        self.noise = ProbeNoise(distribution, noise_source)
        self.probes, self.sigma, self.scheme = probes, float(sigma), scheme
        self.distribution, self.noise_source = distribution, noise_source
        self.probe_batch, self.memory_budget = probe_batch, memory_budget
        self.exchange = check_exchange(exchange)

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        cost = Cost()
        q, sigma = self.probes, self.sigma
        signs = (1.0, -1.0) if self.scheme == "central" else (1.0,)
        chunk = probes_per_chunk(params, len(signs), self.probe_batch, self.memory_budget)
        # probe: losses at θ ± σu_i, shape (len(signs), q)
        ex = self.exchange
        f = probe_losses(model, objective, params, self.noise, self.seed, self.step, q, sigma, signs, cost, chunk, ex)
        # measure: finite differences along each direction
        f0 = None
        if self.scheme == "forward":
            with torch.no_grad():
                f0 = float(reduce(evaluate(objective, model, cost)))
            if ex is not None and ex.data_parallel:  # each process saw a shard: average f(θ) too
                f0 = float(gather_losses(ex, torch.tensor([[f0]], dtype=torch.float64), 1, cost))
        if self.scheme == "central":
            coeffs = (f[0] - f[1]) / (2 * sigma)
        elif self.scheme == "forward":
            coeffs = (f[0] - f0) / sigma
        else:
            coeffs = f[0] / sigma
        # combine: g = (1/q) Σ c_i u_i, written into .grad
        write_grad(params, combine(params, self.noise, self.seed, self.step, coeffs / q, chunk), owned=True)
        loss = f0 if f0 is not None else float(f.mean())
        info: dict[str, Any] = {"projected_gradients": coeffs.float(), "probe_losses": f.float()}
        return Estimate(loss=loss, cost=cost, loss_is_probe_mean=f0 is None, info=info)
