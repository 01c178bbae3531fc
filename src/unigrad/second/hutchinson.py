"""Hutchinson's estimates of the diagonal and the trace of a symmetric operator, from keyed probes.

**Hutchinson** (:func:`hutchinson_diagonal`, :func:`hutchinson_trace`; Hutchinson 1989, "A stochastic
estimator of the trace of the influence matrix for Laplacian smoothing splines"; Bekas, Kokiopoulou &
Saad 2007, "An estimator for the diagonal of a matrix"). For probes ``z`` with ``E[zzᵀ] = I``::

    diag A ≈ (1/q) Σ_i z_i ⊙ (A z_i),       tr A ≈ (1/q) Σ_i z_iᵀ A z_i

both unbiased (``E[z_j (Az)_j] = Σ_k A_jk E[z_j z_k] = A_jj``). With Rademacher ``z`` (±1 entries) the
diagonal estimate has variance ``(1/q) Σ_{k≠j} A_jk²`` (exact for a diagonal ``A``) and the trace
``(2/q) Σ_{j≠k} A_jk²``, the smallest among probes with ``E[zzᵀ] = I``; Gaussian ``z`` adds ``2A_jj²/q``
to the first and ``(2/q) Σ_j A_jj²`` to the second. Probe ``i`` comes from a keyed stream
(:func:`keyed_probes`), never the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from unigrad.core.errors import check_positive
from unigrad.core.rng import ProbeNoise


def keyed_probes(noise: ProbeNoise, seed: int, step: int, like: Sequence[Tensor]) -> Callable[[int], Tensor]:
    """``i ↦`` probe ``i``: ``noise``'s direction keyed ``(seed, step, i, tensor)`` for tensors shaped
    like ``like``, concatenated flat (a single flat tensor in ``like`` is one stream)."""

    def probe(i: int) -> Tensor:
        return torch.cat([t.reshape(-1) for t in noise.direction(seed, step, i, like)])

    return probe


def hutchinson_diagonal(matvec: Callable[[Tensor], Tensor], probe: Callable[[int], Tensor], probes: int) -> Tensor:
    """Hutchinson's estimate ``(1/q) Σ_i z_i ⊙ (A z_i)`` of ``diag A`` from ``q = probes`` probes
    ``z_i = probe(i)``, in their dtype (module docs). Cost: ``probes`` products."""
    check_positive("probes", probes, integer=True)
    total: Tensor | None = None
    for i in range(probes):
        z = probe(i)
        if total is None:
            total = torch.zeros_like(z)
        total += z * matvec(z)
    assert total is not None
    return total / probes


def hutchinson_trace(
    matvec: Callable[[Tensor], Tensor], probe: Callable[[int], Tensor], probes: int
) -> tuple[float, float]:
    """Hutchinson's estimate of ``tr A``: the mean of the ``q = probes`` samples ``z_iᵀ A z_i``
    (``z_i = probe(i)``, each dot product in float64) and its standard error ``sd/√q`` (NaN for
    ``q = 1``). Cost: ``probes`` products."""
    check_positive("probes", probes, integer=True)
    samples = []
    for i in range(probes):
        z = probe(i)
        samples.append(float(z.to(torch.float64) @ matvec(z).to(torch.float64)))
    s = torch.tensor(samples, dtype=torch.float64)
    return float(s.mean()), float(s.std(correction=1) / math.sqrt(probes))


__all__ = ["hutchinson_diagonal", "hutchinson_trace", "keyed_probes"]
