"""EGGROLL: the :class:`EGGROLL` estimator (evolution strategies with rank-r perturbations, one batched forward)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import check_positive
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, Supervised, n_samples
from unigrad.core.params import write_grad
from unigrad.core.probe import DEFAULT_MEMORY_BUDGET, check_batching, perturbed_losses, probe_means
from unigrad.core.rng import ProbeNoise
from unigrad.core.rowwise import rowwise
from unigrad.core.shaping import shaper
from unigrad.zeroth._probing import check_probes

BATCHED = True
"""Set to False to evaluate every population through the generic path (for benchmarks and tests)."""


class EGGROLL(Estimator):
    """EGGROLL — evolution strategies with low-rank perturbations, the population evaluated in one batched forward.

    For every weight matrix ``W ∈ R^{m×n}`` (a parameter of two or more dimensions, its first dimension against
    the rest), pair ``i`` of step ``t`` draws ``A_i ∈ R^{m×r}`` and ``B_i ∈ R^{n×r}`` (one Gaussian ``(m+n)×r``
    draw keyed ``(seed, t, i, tensor)``) and perturbs along the rank-r matrix ``E_i = A_i B_iᵀ/√r``; biases and
    other tensors get full Gaussian noise ``E_i``. The ``2q`` members ``θ ± σE_i`` are scored together, the losses
    shaped jointly (``F̃``), and::

        g = 1/(2qσ) Σ_i [F̃(L_i^+) − F̃(L_i^−)] · E_i

    ``g`` estimates the gradient of the loss (``torch.optim`` descends along it). With ``fitness_shaping="raw"``
    it is the central two-point estimate along low-rank directions; ``E[E_i ⊗ E_i] = I`` (the ``1/√r``), so it is
    unbiased for the smoothed gradient as for full-rank ES, and the sum of the ``q`` rank-r terms has rank up to
    ``q·r``. Combining costs one ``(m × qr)·(qr × n)`` product per matrix.

    Batched forward: on a plain ``nn.Sequential`` (or a single ``nn.Linear``) of ``nn.Linear`` layers and
    row-wise modules under a supervised objective (:func:`~unigrad.core.rowwise.rowwise`), every member's output of
    a linear layer is ``x·Wᵀ + b ± σ·(x·B_i)·A_iᵀ/√r ± σ·e_i``: the shared product ``x·Wᵀ`` (computed once while
    the input is still shared, then once over all members' rows) plus a rank-r correction, so no member's weights
    are ever formed. Members are evaluated in groups of pairs within ``memory_budget``. Any other model is
    evaluated through the generic probe path (:func:`~unigrad.core.probe.perturbed_losses`, dense ``E_i``);
    ``Estimate.info["batched"]`` says which ran.

    Cost: ``2qB`` forward samples for a batch of B. ``Estimate.loss`` is the mean of the ``2q`` member losses.

    Args:
        probes: number of antithetic pairs q (≥ 1); a population of 2q (default: 8).
        sigma: noise scale σ (> 0) (default: 0.02).
        rank: rank r of each matrix's perturbation (≥ 1) (default: 1).
        fitness_shaping: ``"zscore"`` (the authors'), ``"centered_ranks"`` or ``"raw"`` (default: ``"zscore"``).
        noise_source: ``"generator"``, ``"table"`` or ``"auto"``; see ``core/rng.py`` (default: ``"auto"``).
        probe_batch: pairs evaluated together; ``None``: as many as fit ``memory_budget`` (default: None).
        memory_budget: bytes of activations (batched path) or perturbed parameters (generic path) at once
            (default: 256 MiB).
        seed: names the noise stream (default: 0).

    References:
        "Evolution Strategies at the Hyperscale" (EGGROLL), arXiv:2511.16652.
        T. Salimans, J. Ho, X. Chen, S. Sidor, I. Sutskever, "Evolution strategies as a scalable alternative to
        reinforcement learning", arXiv:1703.03864 (2017).
    """

    name = "eggroll"
    order = 0
    description = "EGGROLL: ES with rank-r perturbations A·Bᵀ, the population in one batched forward (arXiv 2511.16652)"
    _options = ("probes", "sigma", "rank", "fitness_shaping", "noise_source", "probe_batch")

    def __init__(
        self,
        probes: int = 8,
        sigma: float = 0.02,
        rank: int = 1,
        fitness_shaping: str = "zscore",
        noise_source: str = "auto",
        probe_batch: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_probes(probes, sigma)
        check_positive("rank", rank, integer=True)
        check_batching(probe_batch, memory_budget)
        self._shape = shaper(fitness_shaping)
        self.probes, self.sigma, self.rank, self.fitness_shaping = probes, float(sigma), rank, fitness_shaping
        self.noise_source, self.probe_batch, self.memory_budget = noise_source, probe_batch, memory_budget
        self.noise = ProbeNoise("gaussian", noise_source)

    # -- the noise -------------------------------------------------------------------------------------------
    def factors(self, pair: int, k: int, p: Tensor) -> tuple[Tensor, Tensor] | Tensor:
        """``(A, B)`` of pair ``pair`` for matrix ``k``, or the full noise of a tensor of fewer dimensions."""
        if p.dim() < 2:
            return self.noise.raw(self.seed, self.step, pair, k, p.shape, p.dtype, p.device)
        m = p.shape[0]
        n = p.numel() // m
        f = self.noise.raw(self.seed, self.step, pair, k, (m + n, self.rank), p.dtype, p.device)
        return f[:m], f[m:]

    def direction(self, pair: int, k: int, p: Tensor) -> Tensor:
        """``E_i`` of pair ``pair`` for parameter ``k``, dense."""
        f = self.factors(pair, k, p)
        if isinstance(f, Tensor):
            return f
        a, b = f
        return (a @ b.T).mul_(1 / math.sqrt(self.rank)).view(p.shape)

    # -- the step --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        cost, q, sigma = Cost(), self.probes, self.sigma
        chain = _linear_chain(model, objective, params) if BATCHED else None
        f = torch.empty(2, q, dtype=torch.float64)
        tensors = [p for _, p in params]
        chunk = self._pairs_per_chunk(objective, chain, tensors)
        for lo in range(0, q, chunk):
            pairs = range(lo, min(q, lo + chunk))
            if chain is not None:
                assert isinstance(objective, Supervised)
                losses = self._population(chain, objective, tensors, pairs)
                cost.forwards += 2 * len(pairs) * n_samples(objective, losses[0])
            else:
                dirs = [torch.stack([self.direction(i, k, p) for i in pairs]) for k, p in enumerate(tensors)]
                scales = torch.tensor([sigma, -sigma], dtype=tensors[0].dtype, device=tensors[0].device)
                losses = probe_means(perturbed_losses(model, objective, tensors, dirs, scales, cost), probe_dims=2)
            f[:, lo : pairs.stop] = losses.double().reshape(2, len(pairs))
        shaped = self._shape(f)
        weights = (shaped[0] - shaped[1]) / (2 * sigma * q)
        write_grad(params, [self._combine(k, p, weights) for k, p in enumerate(tensors)], owned=True)
        info: dict[str, Any] = {"probe_losses": f.float(), "shaped_losses": shaped.float()}
        info["batched"] = chain is not None
        return Estimate(loss=float(f.mean()), cost=cost, loss_is_probe_mean=True, info=info)

    def _combine(self, k: int, p: Tensor, weights: Tensor) -> Tensor:
        """``Σ_i w_i E_i``: for a matrix one product ``[w_i A_i]·[B_i]ᵀ/√r`` over all pairs."""
        w = weights.to(p.dtype)
        if p.dim() < 2:
            out = torch.zeros_like(p)
            for i in range(w.numel()):
                out.add_(self.factors(i, k, p), alpha=float(w[i]))  # type: ignore[arg-type]
            return out
        a, b = zip(*(self.factors(i, k, p) for i in range(w.numel())), strict=True)  # type: ignore[misc]
        a_cat = torch.cat([ai * wi for ai, wi in zip(a, w, strict=True)], dim=1)
        return (a_cat @ torch.cat(b, dim=1).T).mul_(1 / math.sqrt(self.rank)).view(p.shape)

    def _pairs_per_chunk(self, objective: Objective, chain: list | None, tensors: list[Tensor]) -> int:
        if self.probe_batch is not None:
            return self.probe_batch
        if chain is None:
            per_pair = 2 * sum(p.numel() * p.element_size() for p in tensors)
        else:
            assert isinstance(objective, Supervised)
            widths = objective.inputs[0].numel() + sum(m.out_features for m, _ in chain if isinstance(m, nn.Linear))
            per_pair = 2 * 4 * objective.inputs.shape[0] * max(1, widths)
        return max(1, self.memory_budget // max(1, per_pair))

    def _population(self, chain: list, objective: Supervised, tensors: list[Tensor], pairs: range) -> Tensor:
        """Mean losses ``(2, k)`` of the members ``θ ± σE_i`` of ``pairs``, in one batched pass (module docs)."""
        k, s = len(pairs), self.sigma / math.sqrt(self.rank)
        batch = objective.inputs.shape[0]
        x, shared = objective.inputs, True  # (B, n) while shared, then (2k, B, n): members +1…+k, −1…−k
        for child, slots in chain:
            if not slots:
                x = child(x) if shared else child(x.flatten(0, 1)).unflatten(0, x.shape[:2])
                continue
            wk, bk = slots.get("weight"), slots.get("bias")
            out = F.linear(x, child.weight, child.bias)  # the shared product: (B, m) or (2k, B, m)
            if shared:
                out = out.expand(2 * k, *out.shape).clone()
            if wk is not None:
                a, b = zip(*(self.factors(i, wk, tensors[wk]) for i in pairs), strict=True)  # type: ignore[misc]
                b_cat = torch.cat(b, dim=1)  # (n, k·r)
                if shared:  # one product for every member's x·B_i
                    low = (x @ b_cat).view(batch, k, self.rank).transpose(0, 1).repeat(2, 1, 1)  # (2k, B, r)
                else:
                    low = torch.bmm(x, b_cat.view(-1, k, self.rank).transpose(0, 1).repeat(2, 1, 1))
                a_t = torch.stack(a).transpose(1, 2)  # (k, r, m)
                out.baddbmm_(low, torch.cat([a_t * s, a_t * -s]))  # ± σ·(x·B_i)·A_iᵀ/√r
            if bk is not None:
                e = torch.stack([self.factors(i, bk, tensors[bk]) for i in pairs]).mul_(self.sigma)  # (k, m)
                out.add_(torch.cat([e, -e]).unsqueeze(1))
            x, shared = out, False
        if shared:  # nothing trainable ran: every member is θ
            x = x.expand(2 * k, *x.shape)
        losses = objective.score_copies(x.reshape(2 * k * batch, *x.shape[2:]), 2 * k)
        return losses.view(2, k, batch).mean(2)


def _linear_chain(model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> list | None:
    """``[(child, {"weight": k, "bias": k})]`` for the batched forward (module docs), or ``None`` where it does not
    apply: a model other than a plain ``nn.Sequential`` / ``nn.Linear``, a trainable tensor outside a
    ``nn.Linear`` child, or a model and objective that are not provably row-wise."""
    if type(model) is nn.Sequential:
        children = list(model)
    elif type(model) is nn.Linear:
        children = [model]
    else:
        return None
    if not rowwise(model, objective):
        return None
    where = {id(p): k for k, (_, p) in enumerate(params)}
    chain, found = [], 0
    for child in children:
        slots = {}
        if type(child) is nn.Linear:
            for attr in ("weight", "bias"):
                t = getattr(child, attr)
                if t is not None and id(t) in where:
                    slots[attr] = where[id(t)]
        elif any(p.requires_grad for p in child.parameters()):
            return None
        found += len(slots)
        chain.append((child, slots))
    return chain if found == len(params) else None
