"""Shared machinery for seeded multi-probe estimators (rge, spsa, es; ``check_probes`` for every probing one).
How many probes run at once under the memory budget is :func:`unigrad.core.probe.probes_per_chunk`.

``probe_losses`` evaluates the objective at ``θ + s·σ·u_i`` for blocks of probes (``s = +1`` and,
for antithetic schemes, ``s = −1``), batching probes with ``vmap`` in chunks that respect the
memory budget (see :func:`~unigrad.core.probe.perturbed_losses`, whose linear fast path makes an
antithetic pair cost little more than one forward in layers whose input is unperturbed).
``combine`` forms ``Σ_i c_i u_i`` per tensor, regenerating ``u_i`` from its key (one product per contiguous run of
probes in the noise table: a block that spans several of a tensor's groups is never copied into one tensor).

With a :class:`~unigrad.core.exchange.ProbeExchange` (several processes), ``probe_losses`` evaluates
only this process's probes and all-gathers the scalar losses (``gather_losses`` adds the bytes sent to
the cost); ``combine`` then runs over all ``q`` probes on every process, exactly as in one process.
Probe blocks follow the same grid of ``chunk`` probes whatever the split, so each probe is evaluated
by the same operations as in a single process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import check_positive
from unigrad.core.exchange import ProbeExchange
from unigrad.core.objective import Objective
from unigrad.core.precision import warn_if_sigma_too_small
from unigrad.core.probe import perturbed_losses, probe_means
from unigrad.core.rng import ProbeNoise, ProbeViews


def check_probes(probes: int, sigma: float) -> None:
    """The two options every probing estimator has: ``probes`` directions q ≥ 1 of scale ``sigma`` σ > 0."""
    check_positive("probes", probes, integer=True)
    check_positive("sigma", sigma)


@torch.no_grad()
def probe_losses(
    model: nn.Module,
    objective: Objective,
    params: Sequence[tuple[str, Tensor]],
    noise: ProbeNoise,
    seed: int,
    step: int,
    probes: int,
    sigma: float,
    signs: Sequence[float],
    cost: Cost,
    chunk: int,
    exchange: ProbeExchange | None = None,
) -> Tensor:
    """Mean losses at ``θ + s·σ·u_i``: a ``(len(signs), probes)`` tensor.

    Runs :func:`~unigrad.core.probe.perturbed_losses` on blocks of ``chunk`` directions, so with
    two signs the linear fast path shares each layer's unperturbed-input products across a pair.
    With an ``exchange``, only ``exchange.local_probes(probes)`` are evaluated here and the table is
    all-gathered (:func:`gather_losses`).
    """
    if step == 0:
        warn_if_sigma_too_small(params, sigma)  # once, on the first step: perturbations that round away
    ids = range(probes) if exchange is None else exchange.local_probes(probes)
    values = [p.detach() for _, p in params]
    scales = torch.tensor([s * sigma for s in signs], dtype=values[0].dtype, device=values[0].device)
    out = torch.empty(len(signs), len(ids), dtype=torch.float64)
    for lo in range(ids.start - ids.start % chunk, ids.stop, chunk):  # the grid of one process, clipped to ids
        block = range(max(lo, ids.start), min(ids.stop, lo + chunk))
        if not block:  # more processes than probes: this one has none
            continue
        dirs = noise.block(seed, step, block, values, views=True)  # probe by probe: no stacked copy needed
        losses = perturbed_losses(model, objective, values, dirs, scales, cost)
        out[:, block.start - ids.start : block.stop - ids.start] = probe_means(losses, probe_dims=2).double()
    return out if exchange is None else gather_losses(exchange, out, probes, cost)


def gather_losses(exchange: ProbeExchange, local: Tensor, probes: int, cost: Cost) -> Tensor:
    """The full ``(signs, probes)`` loss table from this process's block; adds the bytes sent to ``cost``."""
    before = exchange.bytes_sent
    table = exchange.gather(local, probes)
    cost.bytes += exchange.bytes_sent - before
    return table


@torch.no_grad()
def combine(
    params: Sequence[tuple[str, Tensor]], noise: ProbeNoise, seed: int, step: int, coeffs: Tensor, chunk: int
) -> list[Tensor]:
    """``Σ_i coeffs[i]·u_i`` for every tensor, regenerating the directions from their keys."""
    values = [p.detach() for _, p in params]
    grads: list[Tensor] = []
    q = coeffs.numel()
    for lo in range(0, q, chunk):
        block = range(lo, min(q, lo + chunk))
        c = coeffs[lo : block.stop]
        dirs = noise.block(seed, step, block, values, views=True)
        parts = [_weighted_sum(c, u) for u in dirs]
        grads = parts if not grads else [g.add_(p) for g, p in zip(grads, parts)]
    return grads


def _weighted_sum(c: Tensor, u: Tensor | ProbeViews) -> Tensor:
    """``Σ_i c_i·u_i`` over the probes of one tensor: one product for a stacked block, one per contiguous part of
    a :class:`~unigrad.core.rng.ProbeViews` (no stacked copy; a lazily drawn part is drawn here, one at a time)."""
    parts = [u] if isinstance(u, Tensor) else u.blocks()
    out, lo = None, 0
    for part in parts:
        n = part.shape[0]
        term = c[lo : lo + n].to(device=part.device, dtype=part.dtype) @ part.reshape(n, -1)
        out = term if out is None else out.add_(term)
        lo += n
    assert out is not None
    return out.view(u.shape[1:])
