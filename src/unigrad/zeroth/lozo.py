"""LOZO: the :class:`LOZO` estimator (low-rank perturbations ``U·Vᵀ`` with a lazily refreshed ``V``; LOZO-M)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.options import check_number
from unigrad.core.replay import StructuredDirection
from unigrad.core.rng import ProbeNoise, generator
from unigrad.zeroth._structured import StructuredZO

_V_TAG = 0x1020  # names the stream of the lazy factors V


def matrix_shape(p: Tensor) -> tuple[int, int] | None:
    """``(m, n)``: a tensor of two or more dimensions as the matrix of its first dimension against the rest."""
    return (p.shape[0], p.numel() // p.shape[0]) if p.dim() >= 2 else None


class LOZO(StructuredZO):
    """LOZO — low-rank zeroth-order SPSA: ``u = U·Vᵀ/√r`` per weight matrix, ``V`` refreshed every ν steps.

    For every parameter of two or more dimensions, viewed as ``W ∈ R^{m×n}``, probe ``i`` of step ``t`` perturbs
    along ``u_i = U_{t,i} V_eᵀ / √r``: ``U_{t,i} ∈ R^{m×r}`` is fresh Gaussian noise keyed
    ``(seed, t, i, tensor)``; ``V_e ∈ R^{n×r}`` is Gaussian noise keyed by the *epoch* ``e = ⌊t/ν⌋`` and the tensor,
    so it changes only every ν steps (``lazy``). Biases, norms and other tensors of fewer dimensions get plain
    Gaussian noise. With ``c_i = [f(θ+σu_i) − f(θ−σu_i)]/(2σ)``::

        g = (1/q) Σ_i c_i u_i                             (LOZO)
        N ← β·N + (1−β)·(1/q) Σ_i c_i U_i,   g = N·Vᵀ/√r    (LOZO-M, momentum β > 0, per matrix)

    When ``V`` is refreshed, LOZO-M carries its momentum into the new subspace, ``N ← β·N·(V_oldᵀV_new)/n +
    (1−β)·…`` (``E[VᵀV] = n·I``), and the first step starts from ``N = (1/q)Σ c_i U_i``; tensors of fewer
    dimensions keep a full momentum ``m ← β·m + (1−β)·(1/q)Σ c_i z_i``. With momentum, ``.grad`` holds the
    momentum direction: step it with plain ``torch.optim.SGD``.

    Given ``V``, every direction, and so ``g``, lies in the subspace ``{M·V_eᵀ}`` of the matrices whose rows are
    in the span of ``V_e`` (``r·m`` dimensions instead of ``m·n``). Over ``U`` and ``V`` together
    ``E[u uᵀ] = I``, so ``E[g] = ∇f + O(σ²)`` when ``V`` is fresh at every step (ν = 1). The authors' code scales
    ``u`` by 1 instead of ``1/√r``: its learning rates are this one's times ``r``.

    Cost: ``2qB`` forward samples for a batch of B. Memory: nothing is stored but the momentum (``m·r`` per
    matrix and the size of the small tensors); ``V`` is regenerated from its key (and cached, ``n·r`` floats
    per matrix, reported in ``Estimate.info["state_bytes"]``). θ is never written
    (:mod:`unigrad.zeroth._structured`).

    Args:
        probes: number of directions q (≥ 1) (default: 1).
        sigma: perturbation scale σ (> 0) (default: 1e-3).
        rank: rank r of each matrix's perturbation (≥ 1) (default: 2).
        lazy: refresh ``V`` every ν steps (≥ 1) (default: 50).
        momentum: β of LOZO-M in [0, 1); 0 is LOZO (default: 0.0).
        noise_source: ``"generator"``, ``"table"`` or ``"auto"``, for ``U`` and the small tensors' noise; see
            ``core/rng.py`` (default: ``"generator"``).
        write_grad: write ``g`` into ``.grad`` (True) or return it compressed for
            :class:`~unigrad.optim.ReplaySGD` (False) (default: True).
        seed: names the noise streams (default: 0).
        perturb: ``"forward"`` (θ read perturbed where the forward uses it: memory-lean), ``"dense"`` (the
            directions formed and evaluated through the batched probe path: faster on small models) or
            ``"auto"`` (dense up to 2²² direction entries); see :mod:`unigrad.zeroth._structured`
            (default: ``"auto"``).

    References:
        "Enhancing Zeroth-order Fine-tuning for Language Models with Low-rank Structures" (LOZO, LOZO-M),
        ICLR 2025, arXiv:2410.07698.
    """

    name = "lozo"
    description = "LOZO: low-rank perturbations U·Vᵀ with a lazily refreshed V; LOZO-M momentum (arXiv 2410.07698)"
    _options = ("probes", "sigma", "rank", "lazy", "momentum", "noise_source", "write_grad", "perturb")

    def __init__(
        self,
        probes: int = 1,
        sigma: float = 1e-3,
        rank: int = 2,
        lazy: int = 50,
        momentum: float = 0.0,
        noise_source: str = "generator",
        write_grad: bool = True,
        seed: int = 0,
        perturb: str = "auto",
    ) -> None:
        super().__init__(probes, sigma, "central", write_grad, seed, perturb)
        check_positive("rank", rank, integer=True)
        check_positive("lazy", lazy, integer=True)
        momentum = check_number("momentum", momentum, low=0, high=1, high_inclusive=False)
        self.rank, self.lazy, self.momentum, self.noise_source = rank, lazy, momentum, noise_source
        self.noise = ProbeNoise("gaussian", noise_source)
        self._v: dict[int, tuple[int, Tensor]] = {}  # tensor -> (epoch, V): the cache of the lazy factors
        self._m: dict[int, Tensor] = {}  # LOZO-M: tensor -> N (m×r) for matrices, m (its shape) for the others
        self._m_epoch = -1  # the epoch of V the momentum lives in

    def factor(self, step: int, k: int, p: Tensor) -> Tensor:
        """``V_e`` (``n×r``) of tensor ``k`` for the epoch of ``step``."""
        epoch, (_, n) = step // self.lazy, matrix_shape(p)  # type: ignore[misc]
        hit = self._v.get(k)
        if hit is None or hit[0] != epoch:
            g = generator(_V_TAG, self.seed, epoch, k, device=p.device)
            hit = self._v[k] = (epoch, torch.randn((n, self.rank), generator=g, device=p.device).to(p.dtype))
        return hit[1]

    def _u(self, step: int, k: int, p: Tensor, probe: int) -> Tensor:
        m, _ = matrix_shape(p)  # type: ignore[misc]
        return self.noise.raw(self.seed, step, probe, k, (m, self.rank), p.dtype, p.device)

    def _direction(self, step: int, k: int, p: Tensor, probe: int) -> Tensor:
        if matrix_shape(p) is None:
            return self.noise.raw(self.seed, step, probe, k, p.shape, p.dtype, p.device)
        return (self._u(step, k, p, probe) @ self.factor(step, k, p).T).mul_(1 / math.sqrt(self.rank)).view(p.shape)

    def _rows(self, step: int, k: int, p: Tensor, probe: int, ids: Tensor) -> Tensor:
        if p.dim() != 2:
            return self.noise.rows(self.seed, step, probe, k, p.shape, ids).to(p.dtype)
        u = F.embedding(ids, self._u(step, k, p, probe))
        return (u @ self.factor(step, k, p).T).mul_(1 / math.sqrt(self.rank))

    # -- LOZO-M ----------------------------------------------------------------------------------------------
    def _weights(self, coeffs: Tensor, losses: Tensor, f0: float | None) -> Tensor:
        weights = coeffs / self.probes
        if self.momentum:
            self._advance_momentum([float(w) for w in weights])
        return weights

    def _advance_momentum(self, weights: list[float]) -> None:
        beta, step, epoch = self.momentum, self.step, self.step // self.lazy
        for k, p in enumerate(self._params):
            shape = matrix_shape(p)
            term = torch.zeros((shape[0], self.rank) if shape else p.shape, dtype=p.dtype, device=p.device)
            for i, w in enumerate(weights):
                term.add_(self._u(step, k, p, i) if shape else self._direction(step, k, p, i), alpha=w)
            old = self._m.get(k)
            if old is None:
                self._m[k] = term
                continue
            if shape and epoch != self._m_epoch:  # a new V: carry N into its subspace
                v_old = self._v_at(self._m_epoch, k, p)
                old = old @ (v_old.T @ self.factor(step, k, p)) / shape[1]
            self._m[k] = old.mul(beta).add_(term, alpha=1 - beta)
        self._m_epoch = epoch

    def _v_at(self, epoch: int, k: int, p: Tensor) -> Tensor:
        g = generator(_V_TAG, self.seed, epoch, k, device=p.device)
        return torch.randn((matrix_shape(p)[1], self.rank), generator=g, device=p.device).to(p.dtype)  # type: ignore[index]

    def _momentum_direction(self, states: dict[int, Tensor], step: int, k: int, p: Tensor) -> Tensor:
        if matrix_shape(p) is None:
            return states[k].clone()
        return (states[k] @ self.factor(step, k, p).T).mul_(1 / math.sqrt(self.rank)).view(p.shape)

    def _combined(self, k: int, p: Tensor, weights: list[float]) -> Tensor:
        if not self.momentum:
            return super()._combined(k, p, weights)
        return self._momentum_direction(self._m, self.step, k, p)

    def _compressed(self, weights: list[float], tensors: list[Tensor]) -> StructuredDirection:
        if not self.momentum:
            return super()._compressed(weights, tensors)
        states, step = dict(self._m), self.step

        def rows(k: int, p: Tensor, i: int, ids: Tensor) -> Tensor:
            if p.dim() != 2:
                return F.embedding(ids, states[k])
            return (F.embedding(ids, states[k]) @ self.factor(step, k, p).T).mul_(1 / math.sqrt(self.rank))

        return StructuredDirection(
            lambda k, p, i: self._momentum_direction(states, step, k, p), (1.0,), tuple(tensors), rows
        )

    def _begin(self, params: list[tuple[str, nn.Parameter]]) -> None:
        self._params = [p for _, p in params]

    def state_bytes(self) -> int:
        return sum(v.nbytes for _, v in self._v.values()) + sum(m.nbytes for m in self._m.values())

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "momentum_state": {k: m.clone() for k, m in self._m.items()},
            "momentum_epoch": self._m_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        moments = state["momentum_state"]
        if not isinstance(moments, dict) or not all(isinstance(m, Tensor) for m in moments.values()):
            raise UnigradError("lozo state: momentum_state must map tensor positions to tensors")
        self._m = {int(k): m.clone() for k, m in moments.items()}
        self._m_epoch = int(state["momentum_epoch"])
