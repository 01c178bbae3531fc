"""Coordinate-wise gradient estimation: the :class:`CGE` estimator (finite differences along the coordinate axes)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import check_choice, check_positive
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, evaluate, reduce
from unigrad.core.params import write_grad
from unigrad.core.precision import warn_if_sigma_too_small
from unigrad.core.probe import DEFAULT_MEMORY_BUDGET, batched_losses, check_batching, probe_means, probes_per_chunk
from unigrad.core.rng import generator

SCHEMES = ("forward", "central")
_BLOCK_KEY = 0xC0041  # names the coordinate-block stream, apart from the noise streams


class CGE(Estimator):
    """CGE — coordinate-wise gradient estimation (finite differences along the coordinate axes).

    With the unit vectors ``e_j`` and step σ::

        forward      g = (d/k) Σ_{j∈S} [f(θ+σe_j) − f(θ)]        / σ  · e_j
        central      g = (d/k) Σ_{j∈S} [f(θ+σe_j) − f(θ−σe_j)] / (2σ) · e_j

    where ``S`` is the set of ``k`` coordinates probed this step. By default ``S`` holds all ``d``
    coordinates and ``g`` is the deterministic finite-difference gradient (DeepZero's CGE, which beats
    random directions at equal query budget on pruned networks). With ``block=k < d``, ``S`` is drawn
    uniformly without replacement from the key ``(seed, step)``; each coordinate is then in ``S`` with
    probability ``k/d``, so the factor ``d/k`` makes ``g`` an unbiased estimate of the full
    finite-difference gradient (and its cosine with the gradient is about ``√(k/d)``).

    Cost: ``(k+1)B`` forward samples (forward), ``2kB`` (central), for a batch of B.

    Args:
        sigma: finite-difference step σ (> 0) (default: 1e-3).
        scheme: ``"forward"`` (DeepZero's choice) or ``"central"`` (default: ``"forward"``).
        block: coordinates probed per step, k ≥ 1; ``None`` or any k ≥ d probes all d (default: None).
        probe_batch: coordinates evaluated together under ``vmap``; ``None``: as many as fit
            ``memory_budget`` (default: None).
        memory_budget: bytes of stacked perturbed parameters allowed at once; each probed coordinate holds
            one full copy of the parameters (two for ``"central"``) (default: 256 MiB).
        seed: names the stream that draws the coordinate blocks (default: 0).

    References:
        A. Chen, Y. Zhang, J. Jia, J. Diffenderfer, K. Parasyris, Y. Zhao, Z. Zhang, B. Kailkhura, S. Liu,
        "DeepZero: Scaling up zeroth-order optimization for deep model training", ICLR 2024,
        arXiv:2310.02025.
    """

    name = "cge"
    order = 0
    description = "coordinate-wise finite differences, optionally on a random block"
    _options = ("sigma", "scheme", "block", "probe_batch")

    def __init__(
        self,
        sigma: float = 1e-3,
        scheme: str = "forward",
        block: int | None = None,
        probe_batch: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_positive("sigma", sigma)
        check_choice("scheme", scheme, SCHEMES)
        if block is not None:
            check_positive("block", block, integer=True)
        check_batching(probe_batch, memory_budget)
        self.sigma, self.scheme, self.block = float(sigma), scheme, block
        self.probe_batch, self.memory_budget = probe_batch, memory_budget

    def coordinates(self, d: int, step: int, device: torch.device | str = "cpu") -> Tensor:
        """The sorted flat indices probed at ``step`` (all ``d`` unless ``block < d``)."""
        if self.block is None or self.block >= d:
            return torch.arange(d, device=device)
        perm = torch.randperm(d, generator=generator(self.seed, step, _BLOCK_KEY))
        return perm[: self.block].sort().values.to(device)

    @torch.no_grad()
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        cost = Cost()
        if self.step == 0:
            warn_if_sigma_too_small(params, self.sigma)
        values = [p.detach() for _, p in params]
        sizes = [v.numel() for v in values]
        d = sum(sizes)
        idx = self.coordinates(d, self.step, values[0].device)
        k = idx.numel()
        signs = (1.0, -1.0) if self.scheme == "central" else (1.0,)
        chunk = probes_per_chunk(params, len(signs), self.probe_batch, self.memory_budget)
        # probe: losses at θ ± σe_j for the chosen coordinates, shape (len(signs), k)
        f = torch.empty(len(signs), k, dtype=torch.float64)
        for lo in range(0, k, chunk):
            j = idx[lo : lo + chunk]
            stacked = _coordinate_stacks(values, j, self.sigma, signs)
            losses = probe_means(batched_losses(model, objective, stacked, cost, probe_batch=len(stacked[0])))
            f[:, lo : lo + len(j)] = losses.view(len(signs), len(j)).double()
        # measure: finite differences along each chosen axis
        f0 = None
        if self.scheme == "forward":
            f0 = float(reduce(evaluate(objective, model, cost)))
            coeffs = (f[0] - f0) / self.sigma
        else:
            coeffs = (f[0] - f[1]) / (2 * self.sigma)
        # combine: g = (d/k) Σ_{j∈S} c_j e_j, written into .grad
        flat = torch.zeros(d, dtype=values[0].dtype, device=idx.device)
        flat[idx] = (coeffs * (d / k)).to(flat)
        write_grad(params, flat.split(sizes))
        loss = f0 if f0 is not None else float(f.mean())
        info: dict[str, Any] = {"coordinates": idx, "projected_gradients": coeffs.float(), "probe_losses": f.float()}
        return Estimate(loss=loss, cost=cost, loss_is_probe_mean=f0 is None, info=info)


def _coordinate_stacks(values: list[Tensor], coords: Tensor, sigma: float, signs: tuple[float, ...]) -> list[Tensor]:
    """One ``(len(signs)·m, *shape)`` stack per tensor: row ``a·m + r`` is θ with ``signs[a]·σ`` added
    at flat coordinate ``coords[r]``."""
    m = coords.numel()
    rows = torch.arange(m, device=coords.device)
    stacked, offset = [], 0
    for v in values:
        n = v.numel()
        s = v.reshape(1, n).repeat(len(signs) * m, 1)
        inside = (coords >= offset) & (coords < offset + n)
        r, c = rows[inside], coords[inside] - offset
        for a, sign in enumerate(signs):
            s[a * m + r, c] += sign * sigma
        stacked.append(s.view(len(signs) * m, *v.shape))
        offset += n
    return stacked
