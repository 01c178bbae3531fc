"""SubZero: the :class:`SubZero` estimator (perturbations ``P·Z·Qᵀ`` in random subspaces refreshed every T steps)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from unigrad.core.errors import check_positive
from unigrad.core.rng import ProbeNoise, generator
from unigrad.zeroth._structured import StructuredZO
from unigrad.zeroth.lozo import matrix_shape

_BASIS_TAG = 0x5B0  # names the stream of the subspace bases P, Q


class SubZero(StructuredZO):
    """SubZero — random-subspace zeroth-order SPSA: ``u = √(mn)/r · P·Z·Qᵀ`` per weight matrix.

    For every parameter of two or more dimensions, viewed as ``W ∈ R^{m×n}``, two orthonormal bases ``P ∈ R^{m×r}``
    and ``Q ∈ R^{n×r}`` (the Q factors of the QR decompositions of Gaussian matrices keyed by the *epoch*
    ``e = ⌊t/T⌋`` and the tensor) span the subspace of the epoch; probe ``i`` of step ``t`` perturbs along::

        u_i = √(m·n)/r · P Z_{t,i} Qᵀ,      Z_{t,i} ∈ R^{r×r} Gaussian, keyed (seed, t, i, tensor)

    scaled so that ``E‖u‖² = m·n``, as for full Gaussian noise. Biases, norms and other tensors of fewer
    dimensions get plain Gaussian noise. ``g = (1/q) Σ_i c_i u_i`` with ``c_i = [f(θ+σu_i) − f(θ−σu_i)]/(2σ)``.

    Within an epoch every direction, and ``g``, lies in ``{P M Qᵀ}`` (``r²`` dimensions per matrix), and
    ``E[g | P, Q] = (mn/r²)·P Pᵀ ∇f Q Qᵀ``: the gradient projected on the subspace, scaled. Over random bases
    (``E[P Pᵀ] = (r/m)·I``, ``E[Q Qᵀ] = (r/n)·I``) ``E[g] = ∇f + O(σ²)``.

    Cost: ``2qB`` forward samples for a batch of B, and two QR decompositions per matrix every T steps. Memory:
    ``P`` and ``Q``, ``(m + n)·r`` floats per matrix (``Estimate.info["state_bytes"]``); θ is never written
    (:mod:`unigrad.zeroth._structured`).

    Args:
        probes: number of directions q (≥ 1) (default: 1).
        sigma: perturbation scale σ (> 0) (default: 1e-3).
        rank: dimension r of each subspace's sides (≥ 1; at most min(m, n) is used) (default: 8).
        refresh: new bases every T steps (≥ 1) (default: 2000).
        noise_source: ``"generator"``, ``"table"`` or ``"auto"`` for ``Z`` and the small tensors' noise; see
            ``core/rng.py`` (default: ``"generator"``).
        write_grad: write ``g`` into ``.grad`` (True) or return it compressed for
            :class:`~unigrad.optim.ReplaySGD` (False) (default: True).
        seed: names the noise streams (default: 0).
        perturb: ``"forward"`` (θ read perturbed where the forward uses it: memory-lean), ``"dense"`` (the
            directions formed and evaluated through the batched probe path: faster on small models) or
            ``"auto"`` (dense up to 2²² direction entries); see :mod:`unigrad.zeroth._structured`
            (default: ``"auto"``).

    References:
        "SubZero: Random Subspace Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning",
        arXiv:2410.08989.
    """

    name = "subzero"
    description = "SubZero: perturbations P·Z·Qᵀ in random subspaces refreshed every T steps (arXiv 2410.08989)"
    _options = ("probes", "sigma", "rank", "refresh", "noise_source", "write_grad", "perturb")

    def __init__(
        self,
        probes: int = 1,
        sigma: float = 1e-3,
        rank: int = 8,
        refresh: int = 2000,
        noise_source: str = "generator",
        write_grad: bool = True,
        seed: int = 0,
        perturb: str = "auto",
    ) -> None:
        super().__init__(probes, sigma, "central", write_grad, seed, perturb)
        check_positive("rank", rank, integer=True)
        check_positive("refresh", refresh, integer=True)
        self.rank, self.refresh, self.noise_source = rank, refresh, noise_source
        self.noise = ProbeNoise("gaussian", noise_source)
        self._bases: dict[int, tuple[int, Tensor, Tensor]] = {}  # tensor -> (epoch, P, Q)

    def bases(self, step: int, k: int, p: Tensor) -> tuple[Tensor, Tensor]:
        """``(P, Q)`` of tensor ``k`` for the epoch of ``step`` (orthonormal columns)."""
        epoch, (m, n) = step // self.refresh, matrix_shape(p)  # type: ignore[misc]
        hit = self._bases.get(k)
        if hit is None or hit[0] != epoch:
            r = min(self.rank, m, n)
            g = generator(_BASIS_TAG, self.seed, epoch, k, device=p.device)
            a = torch.randn((m, r), generator=g, device=p.device, dtype=torch.float32)
            b = torch.randn((n, r), generator=g, device=p.device, dtype=torch.float32)
            hit = self._bases[k] = (epoch, torch.linalg.qr(a)[0].to(p.dtype), torch.linalg.qr(b)[0].to(p.dtype))
        return hit[1], hit[2]

    def _direction(self, step: int, k: int, p: Tensor, probe: int) -> Tensor:
        shape = matrix_shape(p)
        if shape is None:
            return self.noise.raw(self.seed, step, probe, k, p.shape, p.dtype, p.device)
        P, Q = self.bases(step, k, p)
        r = P.shape[1]
        z = self.noise.raw(self.seed, step, probe, k, (r, r), p.dtype, p.device)
        return (P @ z @ Q.T).mul_(math.sqrt(shape[0] * shape[1]) / r).view(p.shape)

    def _rows(self, step: int, k: int, p: Tensor, probe: int, ids: Tensor) -> Tensor:
        if p.dim() != 2:
            return self.noise.rows(self.seed, step, probe, k, p.shape, ids).to(p.dtype)
        P, Q = self.bases(step, k, p)
        r = P.shape[1]
        z = self.noise.raw(self.seed, step, probe, k, (r, r), p.dtype, p.device)
        return (F.embedding(ids, P) @ z @ Q.T).mul_(math.sqrt(p.shape[0] * p.shape[1]) / r)

    def state_bytes(self) -> int:
        return sum(P.nbytes + Q.nbytes for _, P, Q in self._bases.values())
