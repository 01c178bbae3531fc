"""FZOO: the :class:`FZOO` estimator (one-sided Rademacher probes, the step normalised by the spread of the losses)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.rng import ProbeNoise
from unigrad.zeroth._structured import StructuredZO, check_flag


class FZOO(StructuredZO):
    """FZOO — fast zeroth-order optimisation: N one-sided Rademacher probes, normalised by the losses' spread.

    With ``N`` = ``probes`` Rademacher directions ``u_i ∈ {±1}^d`` keyed by ``(seed, step, i, tensor)``, losses
    ``l_i = f(θ + εu_i)`` and ``l_0 = f(θ)`` on the same batch, and ``s`` the standard deviation (population,
    ``ddof = 0``) of ``l_1 … l_N`` (``l_0`` excluded)::

        normalize=True     g = 1/(N·s) · Σ_i (l_i − l_0) · u_i
        normalize=False    g = 1/(N·ε) · Σ_i (l_i − l_0) · u_i

    The unnormalised form is the one-sided SPSA estimate, ``E[g] = ∇f + O(ε)``. The normalised one is the
    authors' code: since ``l_i − l_0 ≈ ε·u_iᵀ∇f`` and ``s ≈ ε·‖∇f‖`` for large d, it is the unnormalised one
    times ``ε/s ≈ 1/‖∇f‖``: a normalised-gradient step whose length is set by the learning rate alone, whatever
    ε and the scale of the loss (the paper's "Adam-scale" steps at the cost of plain SGD; use it with
    ``torch.optim.SGD``). If every probe sees the same loss (``s = 0``), the direction is zero. The paper
    evaluates the N probes as one batched forward; here they run one after another (the same result).

    Cost: ``(N + 1)·B`` forward samples for a batch of B (the paper's N = 8: 9 forwards per step).

    Args:
        probes: number of one-sided probes N (≥ 1; the normalisation needs ≥ 2) (default: 8).
        sigma: perturbation radius ε (> 0) (default: 1e-3).
        normalize: divide by the spread of the losses (True, the paper's step) or by ε (False) (default: True).
        noise_source: ``"generator"``, ``"table"`` or ``"auto"``; see ``core/rng.py`` (default: ``"generator"``).
        write_grad: write ``g`` into ``.grad`` (True) or return it compressed for
            :class:`~unigrad.optim.ReplaySGD` (False) (default: True).
        seed: names the noise stream (default: 0).
        perturb: ``"forward"`` (θ read perturbed where the forward uses it: memory-lean), ``"dense"`` (the
            directions formed and evaluated through the batched probe path: faster on small models) or
            ``"auto"`` (dense up to 2²² direction entries); see :mod:`unigrad.zeroth._structured`
            (default: ``"auto"``).

    References:
        "FZOO: Fast Zeroth-Order Optimizer for Fine-Tuning Large Language Models towards Adam-Scale Speed",
        ICLR 2026, arXiv:2506.09034.
    """

    name = "fzoo"
    description = "FZOO: one-sided Rademacher probes, step normalised by the losses' spread (arXiv 2506.09034)"
    _options = ("probes", "sigma", "normalize", "noise_source", "write_grad", "perturb")

    def __init__(
        self,
        probes: int = 8,
        sigma: float = 1e-3,
        normalize: bool = True,
        noise_source: str = "generator",
        write_grad: bool = True,
        seed: int = 0,
        perturb: str = "auto",
    ) -> None:
        super().__init__(probes, sigma, "forward", write_grad, seed, perturb)
        self.normalize = check_flag("normalize", normalize)
        self.noise_source = noise_source
        self.noise = ProbeNoise("rademacher", noise_source)

    def _direction(self, step: int, k: int, p: Tensor, probe: int) -> Tensor:
        return self.noise.raw(self.seed, step, probe, k, p.shape, p.dtype, p.device)

    def _rows(self, step: int, k: int, p: Tensor, probe: int, ids: Tensor) -> Tensor:
        return self.noise.rows(self.seed, step, probe, k, p.shape, ids).to(p.dtype)

    def _weights(self, coeffs: Tensor, losses: Tensor, f0: float | None) -> Tensor:
        """``(l_i − l_0)/(N·s)`` (``coeffs`` are ``(l_i − l_0)/ε``), or ``coeffs / N`` unnormalised."""
        if not self.normalize:
            return coeffs / self.probes
        spread = float(losses[0].std(correction=0))
        if spread == 0.0:
            return torch.zeros_like(coeffs)
        return coeffs * (self.sigma / (self.probes * spread))

    def _end(self, params: list[tuple[str, nn.Parameter]], losses: Tensor, f0: float | None) -> dict[str, Any]:
        return {"loss_spread": float(losses[0].std(correction=0))}
