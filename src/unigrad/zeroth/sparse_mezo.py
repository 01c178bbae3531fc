"""Sparse MeZO: the :class:`SparseMeZO` estimator (two-point probes on a mask of small-magnitude parameters)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.options import check_number
from unigrad.core.rng import SPAN, ProbeNoise, generator
from unigrad.zeroth._structured import StructuredZO

SAMPLE = 1 << 16
"""Entries of a larger tensor sampled (from the step's key) to set its threshold."""
_SAMPLE_TAG = 0x5A3


class SparseMeZO(StructuredZO):
    """Sparse MeZO — MeZO's two-point estimate, perturbing only the small-magnitude parameters.

    At the start of each step, every parameter tensor ``θ_k`` gets a mask of its entries of smallest magnitude,
    ``m_k = 1[|θ_k| ≤ τ_k]`` with ``τ_k`` the ``(1 − sparsity)`` quantile of ``|θ_k|`` (for a tensor of more than
    65,536 entries, that of 65,536 entries drawn from the step's key: the kept fraction is then within about
    0.2% of its target, one standard deviation), so that a fraction ``sparsity`` of the entries (the largest) is
    never perturbed. With ``z_i ~ N(0, I)`` keyed by ``(seed, step, i, k)`` and ``u_i = m ⊙ z_i``::

        c_i = [f(θ + σu_i) − f(θ − σu_i)] / (2σ)        g = (1/q) Σ_i c_i u_i

    ``E[g] = m ⊙ ∇f(θ) + O(σ²)``: the estimate of the gradient restricted to the masked coordinates, with the
    variance of a two-point estimate in ``(1 − sparsity)·d`` dimensions instead of ``d``. The mask is a function
    of θ at the start of the step, so it replays exactly from θ and the keys; only the thresholds ``τ_k`` are
    held (one number per tensor). θ is never written (the probes are evaluated in the forward:
    :mod:`unigrad.zeroth._structured`).

    Cost: ``2qB`` forward samples for a batch of B, and one selection (``kthvalue``) per tensor per step.

    Args:
        probes: number of directions q (≥ 1) (default: 1).
        sigma: perturbation scale σ (> 0) (default: 1e-3).
        sparsity: fraction of each tensor's entries, the largest in magnitude, left unperturbed, in [0, 1)
            (default: 0.75).
        noise_source: ``"generator"``, ``"table"`` or ``"auto"``; see ``core/rng.py`` (default: ``"generator"``).
        write_grad: write ``g`` into ``.grad`` (True) or return it compressed for
            :class:`~unigrad.optim.ReplaySGD` (False) (default: True).
        seed: names the noise stream; the noise of tensor k in probe i is keyed by (seed, step, i, k) (default: 0).
        perturb: ``"forward"`` (θ read perturbed where the forward uses it: memory-lean), ``"dense"`` (the
            directions formed and evaluated through the batched probe path: faster on small models) or
            ``"auto"`` (dense up to 2²² direction entries); see :mod:`unigrad.zeroth._structured`
            (default: ``"auto"``).

    References:
        "Sparse MeZO: Less Parameters for Better Performance in Zeroth-Order LLM Fine-Tuning",
        arXiv:2402.15751. The mask rule here (a per-tensor magnitude quantile recomputed from θ at every step)
        is this implementation's reading of the paper's per-layer threshold.
    """

    name = "sparse-mezo"
    description = "MeZO on a mask of the small-magnitude parameters (Sparse MeZO, arXiv 2402.15751)"
    _options = ("probes", "sigma", "sparsity", "noise_source", "write_grad", "perturb")

    def __init__(
        self,
        probes: int = 1,
        sigma: float = 1e-3,
        sparsity: float = 0.75,
        noise_source: str = "generator",
        write_grad: bool = True,
        seed: int = 0,
        perturb: str = "auto",
    ) -> None:
        super().__init__(probes, sigma, "central", write_grad, seed, perturb)
        self.sparsity = check_number("sparsity", sparsity, low=0, high=1, high_inclusive=False)
        self.noise_source = noise_source
        self.noise = ProbeNoise("gaussian", noise_source)
        self._thresholds: list[float] = []

    def _begin(self, params: list[tuple[str, nn.Parameter]]) -> None:
        """τ_k: the magnitude below which (inclusive) tensor k's entries are perturbed: the ``(1 − sparsity)``
        quantile of ``|θ_k|``, exact for tensors of at most :data:`SAMPLE` entries, else that of :data:`SAMPLE`
        entries drawn from the key ``(seed, step, k)`` (no copy of a large tensor)."""
        self._thresholds = []
        for k, (_, p) in enumerate(params):
            flat = p.detach().reshape(-1)
            if flat.numel() > SAMPLE:
                g = generator(_SAMPLE_TAG, self.seed, self.step, k)
                flat = flat[torch.randint(0, flat.numel(), (SAMPLE,), generator=g).to(flat.device)]
            flat = flat.abs()
            keep = max(1, math.ceil((1.0 - self.sparsity) * flat.numel()))
            self._thresholds.append(float(flat.kthvalue(keep).values) if keep < flat.numel() else math.inf)

    def mask(self, k: int, p: Tensor) -> Tensor:
        """The mask ``m_k`` of this step for parameter ``k`` (``p``): True where ``|θ| ≤ τ_k``."""
        return p.detach().abs() <= self._thresholds[k]

    def _direction(self, step: int, k: int, p: Tensor, probe: int) -> Tensor:
        return self._masked(self._thresholds, step, k, p, probe)

    def _masked(self, thresholds: list[float], step: int, k: int, p: Tensor, probe: int) -> Tensor:
        z = self.noise.raw(self.seed, step, probe, k, p.shape, p.dtype, p.device)
        return z * (p.detach().abs() <= thresholds[k])

    def _frozen_direction(self) -> Callable[[int, Tensor, int], Tensor]:
        return functools.partial(self._masked, list(self._thresholds), self.step)

    def _rows(self, step: int, k: int, p: Tensor, probe: int, ids: Tensor) -> Tensor:
        return self._masked_rows(self._thresholds, step, k, p, probe, ids)

    def _masked_rows(self, thresholds: list[float], step: int, k: int, p: Tensor, probe: int, ids: Tensor) -> Tensor:
        z = self.noise.rows(self.seed, step, probe, k, p.shape, ids).to(p.dtype)
        return z * (F.embedding(ids, p.detach()).abs() <= thresholds[k])

    def _frozen_rows(self) -> Callable[[int, Tensor, int, Tensor], Tensor]:
        return functools.partial(self._masked_rows, list(self._thresholds), self.step)

    def state_bytes(self) -> int:
        return 8 * len(self._thresholds)

    def _end(self, params: list[tuple[str, nn.Parameter]], losses: Tensor, f0: float | None) -> dict[str, Any]:
        n = perturbed = 0
        for k, (_, p) in enumerate(params):  # counted piece by piece: no mask of a whole large tensor
            flat = p.detach().reshape(-1)
            for lo in range(0, flat.numel(), SPAN):
                perturbed += int((flat[lo : lo + SPAN].abs() <= self._thresholds[k]).sum())
            n += flat.numel()
        return {"perturbed_fraction": perturbed / max(1, n)}
