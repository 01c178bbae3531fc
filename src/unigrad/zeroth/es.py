"""OpenAI evolution strategies: the :class:`ES` estimator (antithetic Gaussian pairs with fitness shaping)."""

from __future__ import annotations

from typing import Any

from torch import nn

from unigrad.core.cost import Cost
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.exchange import ProbeExchange, check_exchange
from unigrad.core.objective import Objective
from unigrad.core.params import write_grad
from unigrad.core.probe import DEFAULT_MEMORY_BUDGET, check_batching, probes_per_chunk
from unigrad.core.rng import ProbeNoise
from unigrad.core.shaping import shaper
from unigrad.zeroth._probing import check_probes, combine, probe_losses


class ES(Estimator):
    """ES — OpenAI evolution strategies (antithetic Gaussian pairs with fitness shaping).

    With ``q`` antithetic pairs ``±ε_i`` (ε_i ~ N(0, I)), scale σ and a shaping ``F̃`` applied jointly to
    all ``2q`` losses (Salimans et al. 2017, Algorithm 1 with mirrored sampling)::

        g = 1/(2qσ) Σ_i [F̃(θ+σε_i) − F̃(θ−σε_i)] · ε_i

    ``g`` estimates the gradient of the *loss*, so ``torch.optim`` descends by ``θ ← θ − η·g``.

    Shaping (``fitness_shaping``):

    - ``"centered_ranks"`` (default): ranks scaled into [−0.5, 0.5]. The direction is invariant to
      any monotone transform of the loss and robust to outliers, but its size no longer scales with
      the loss: ``‖g‖`` is of order ``√d/σ`` whatever the gradient. Choose the learning rate for that
      (or use a scale-free optimizer such as Adam).
    - ``"zscore"``: losses minus their mean, divided by their standard deviation (also scale-free).
    - ``"raw"``: no shaping. ``g`` is then exactly the central Gaussian RGE with ``q`` probes
      (:class:`~unigrad.zeroth.rge.RGE`, same key, same noise, same bits), whose mean is the gradient
      of the smoothed loss ``f_σ(θ) = E f(θ+σε)``.

    Cost: ``2qB`` forward samples for a batch of B. ``Estimate.loss`` is the mean of the 2q probe
    losses (``loss_is_probe_mean=True``): the unperturbed loss is never evaluated.

    Args:
        probes: number of antithetic pairs q (≥ 1); 2q evaluations per step (default: 8).
        sigma: noise scale σ (> 0); 0.02 as in the reference (default: 0.02).
        fitness_shaping: ``"centered_ranks"``, ``"zscore"`` or ``"raw"`` (default: ``"centered_ranks"``).
        noise_source: ``"auto"`` (the shared noise table, as in the reference, for tensors that fit; else
            the generator), ``"generator"`` or ``"table"``; see ``core/rng.py`` (default: ``"auto"``).
        probe_batch: pairs whose noise is drawn as one block and evaluated together (one after another on
            the linear fast path of ``core/probe.py``, else stacked under ``vmap``); ``None``: as many as
            fit ``memory_budget`` (default: None).
        memory_budget: bytes of stacked perturbed parameters allowed at once (default: 256 MiB).
        seed: names the noise stream; each perturbation is keyed by (seed, step, probe, tensor) (default: 0).
        exchange: a :class:`~unigrad.core.exchange.ProbeExchange` to spread the pairs over processes
            (``unigrad.distributed``); the shaping and the combination always see all 2q losses.
            ``None`` evaluates them all here; not listed in ``options()`` (default: None).

    References:
        T. Salimans, J. Ho, X. Chen, S. Sidor, I. Sutskever, "Evolution strategies as a scalable
        alternative to reinforcement learning", arXiv:1703.03864 (2017).
    """

    name = "es"
    supports_exchange = True
    order = 0
    description = "OpenAI evolution strategies: antithetic pairs, fitness shaping"
    _options = ("probes", "sigma", "fitness_shaping", "noise_source", "probe_batch")

    def __init__(
        self,
        probes: int = 8,
        sigma: float = 0.02,
        fitness_shaping: str = "centered_ranks",
        noise_source: str = "auto",
        probe_batch: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        seed: int = 0,
        exchange: ProbeExchange | None = None,
    ) -> None:
        super().__init__(seed)
        check_probes(probes, sigma)
        self._shape = shaper(fitness_shaping)
        check_batching(probe_batch, memory_budget)
        self.noise = ProbeNoise("gaussian", noise_source)
        self.probes, self.sigma, self.fitness_shaping = probes, float(sigma), fitness_shaping
        self.noise_source, self.probe_batch, self.memory_budget = noise_source, probe_batch, memory_budget
        self.exchange = check_exchange(exchange)

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        cost = Cost()
        q, sigma = self.probes, self.sigma
        chunk = probes_per_chunk(params, 2, self.probe_batch, self.memory_budget)
        # probe: losses at θ ± σε_i, shape (2, q)
        ex, signs = self.exchange, (1.0, -1.0)
        f = probe_losses(model, objective, params, self.noise, self.seed, self.step, q, sigma, signs, cost, chunk, ex)
        # measure: shape all 2q losses together, then difference each pair
        shaped = self._shape(f)
        coeffs = (shaped[0] - shaped[1]) / (2 * sigma)
        # combine: g = (1/q) Σ c_i ε_i, written into .grad
        write_grad(params, combine(params, self.noise, self.seed, self.step, coeffs / q, chunk), owned=True)
        info: dict[str, Any] = {"probe_losses": f.float(), "shaped_losses": shaped.float(), "pair_differences": coeffs}
        return Estimate(loss=float(f.mean()), cost=cost, loss_is_probe_mean=True, info=info)
