"""HiZOO: the :class:`HiZOO` estimator (two-point probes preconditioned by a diagonal Hessian estimated from them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.errors import UnigradError
from unigrad.core.options import check_number
from unigrad.core.rng import ProbeNoise
from unigrad.zeroth._structured import StructuredZO


class HiZOO(StructuredZO):
    """HiZOO — Hessian-informed zeroth-order SPSA: probes shaped by a diagonal curvature estimate ``H``.

    ``H`` (one entry per parameter, starting at 1) is the inverse covariance of the probes: with ``z_i ~ N(0, I)``
    keyed ``(seed, step, i, tensor)``, probe ``i`` moves along ``u_i = z_i/√H``. Each step also evaluates the
    unperturbed ``L_0 = f(θ)``, so the second difference along ``u_i`` is known, and::

        L_i^± = f(θ ± σu_i)
        H ← (1 − α)·H + α·(1/q) Σ_i |L_i^+ + L_i^− − 2L_0| / (2σ²) · H ⊙ z_i²
        g = (1/q) Σ_i (L_i^+ − L_i^−)/(2σ) · z_i/√H          (with the updated H)

    ``|L^+ + L^− − 2L_0|/σ² ≈ |u_iᵀ ∇²f u_i|``, and ``H ⊙ z_i² = diag(H^{1/2} z_i z_iᵀ H^{1/2})``: ``H`` tracks a
    running estimate of the diagonal of the Hessian (up to the known bias of a single second difference: for
    ``H = 1`` and a diagonal Hessian ``A``, the new term's mean is ``(2·a_jj + tr A)/2`` per entry, since
    ``E[z_j⁴] = 3``). The update follows the authors' code: ``H`` is updated before it preconditions ``g``.
    For a fixed ``H`` (α = 0) ``E[g] = H⁻¹∇f + O(σ²)``: a diagonally preconditioned gradient, MeZO's at ``H = 1``.

    Cost: ``(2q + 1)·B`` forward samples for a batch of B (one more than MeZO). Memory: ``H``, as much as the
    parameters (``Estimate.info["state_bytes"]``), kept in ``state_dict`` for an exact resume. θ is never written
    (:mod:`unigrad.zeroth._structured`).

    Args:
        probes: number of directions q (≥ 1) (default: 1).
        sigma: perturbation scale σ (> 0) (default: 1e-3).
        hessian_smooth: α, the weight of each step's curvature in the running ``H``, in [0, 1]; the authors use
            1e-6 to 1e-10 on billion-parameter models (default: 1e-6).
        noise_source: ``"generator"``, ``"table"`` or ``"auto"``; see ``core/rng.py`` (default: ``"generator"``).
        write_grad: write ``g`` into ``.grad`` (True) or return it compressed for
            :class:`~unigrad.optim.ReplaySGD` (False) (default: True).
        seed: names the noise stream (default: 0).
        perturb: ``"forward"`` (θ read perturbed where the forward uses it: memory-lean), ``"dense"`` (the
            directions formed and evaluated through the batched probe path: faster on small models) or
            ``"auto"`` (dense up to 2²² direction entries); see :mod:`unigrad.zeroth._structured`
            (default: ``"auto"``).

    References:
        "Second-Order Fine-Tuning without Pain for LLMs: A Hessian Informed Zeroth-Order Optimizer" (HiZOO),
        ICLR 2025, arXiv:2402.15173.
    """

    name = "hizoo"
    description = "HiZOO: probes preconditioned by a diagonal Hessian from the same probes + f(θ) (arXiv 2402.15173)"
    _options = ("probes", "sigma", "hessian_smooth", "noise_source", "write_grad", "perturb")
    needs_loss_at_theta = True
    directions_fixed = False  # H is updated between the probes and the combination

    def __init__(
        self,
        probes: int = 1,
        sigma: float = 1e-3,
        hessian_smooth: float = 1e-6,
        noise_source: str = "generator",
        write_grad: bool = True,
        seed: int = 0,
        perturb: str = "auto",
    ) -> None:
        super().__init__(probes, sigma, "central", write_grad, seed, perturb)
        self.hessian_smooth = check_number("hessian_smooth", hessian_smooth, low=0, high=1)
        self.noise_source = noise_source
        self.noise = ProbeNoise("gaussian", noise_source)
        self.hessian: list[Tensor] = []  # H, one tensor per trainable parameter (created on the first step)

    def _begin(self, params: list[tuple[str, nn.Parameter]]) -> None:
        if len(self.hessian) != len(params) or any(h.shape != p.shape for h, (_, p) in zip(self.hessian, params)):
            if self.hessian:
                raise UnigradError("hizoo: the trainable parameters changed shape since H was made; use a new one")
            self.hessian = [torch.ones_like(p, memory_format=torch.contiguous_format) for _, p in params]
        self._params = [p for _, p in params]

    def _z(self, step: int, k: int, p: Tensor, probe: int) -> Tensor:
        return self.noise.raw(self.seed, step, probe, k, p.shape, p.dtype, p.device)

    def _scaled(self, hessian: list[Tensor], step: int, k: int, p: Tensor, probe: int) -> Tensor:
        return self._z(step, k, p, probe) / hessian[k].sqrt()

    def _direction(self, step: int, k: int, p: Tensor, probe: int) -> Tensor:
        return self._scaled(self.hessian, step, k, p, probe)

    def _weights(self, coeffs: Tensor, losses: Tensor, f0: float | None) -> Tensor:
        """Update ``H`` from the second differences (before it preconditions ``g``); weights ``c_i/q``."""
        assert f0 is not None
        alpha, q = self.hessian_smooth, self.probes
        if alpha:
            curv = [abs(float(losses[0, i] + losses[1, i] - 2 * f0)) / (2 * self.sigma**2) / q for i in range(q)]
            for k, (p, h) in enumerate(zip(self._params, self.hessian, strict=True)):  # in place, tensor by tensor
                term = torch.zeros_like(h)
                for i, c in enumerate(curv):
                    term.add_(self._z(self.step, k, p, i).square(), alpha=c)
                term.mul_(h)  # H ⊙ z² with the H of the probes, before H changes
                h.mul_(1 - alpha).add_(term, alpha=alpha)
        return coeffs / q

    def _frozen_direction(self) -> Callable[[int, Tensor, int], Tensor]:
        hessian, step = list(self.hessian), self.step  # H changes in place at the next step, not before
        return lambda k, p, i: self._scaled(hessian, step, k, p, i)

    def _scaled_rows(self, hessian: list[Tensor], step: int, k: int, p: Tensor, probe: int, ids: Tensor) -> Tensor:
        z = self.noise.rows(self.seed, step, probe, k, p.shape, ids).to(p.dtype)
        return z / F.embedding(ids, hessian[k]).sqrt()

    def _rows(self, step: int, k: int, p: Tensor, probe: int, ids: Tensor) -> Tensor:
        return self._scaled_rows(self.hessian, step, k, p, probe, ids)

    def _frozen_rows(self) -> Callable[[int, Tensor, int, Tensor], Tensor]:
        hessian, step = list(self.hessian), self.step
        return lambda k, p, i, ids: self._scaled_rows(hessian, step, k, p, i, ids)

    def state_bytes(self) -> int:
        return sum(h.nbytes for h in self.hessian)

    def _end(self, params: list[tuple[str, nn.Parameter]], losses: Tensor, f0: float | None) -> dict[str, Any]:
        return {"hessian_mean": float(torch.stack([h.double().mean() for h in self.hessian]).mean())}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "hessian": [h.clone() for h in self.hessian]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        hessian = state["hessian"]
        if not isinstance(hessian, list | tuple) or not all(isinstance(h, Tensor) for h in hessian):
            raise UnigradError("hizoo state: hessian must be a list of tensors, one per trainable parameter")
        self.hessian = [h.clone() for h in hessian]
