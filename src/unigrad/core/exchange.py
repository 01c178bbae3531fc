"""Probe exchange: how probe-parallel estimators share their scalar losses between processes.

Every perturbation of a seeded zeroth-order estimator is named by ``(seed, step, probe, tensor)``
(:mod:`unigrad.core.rng`), so any process can regenerate any probe's direction. To spread the ``q``
probes of a step over ``W`` processes it is therefore enough to exchange the *losses*: each process
evaluates its share of the probes, the ``(signs, q)`` table of mean losses is all-gathered, and every
process combines **all** ``q`` probes exactly as a single process would, regenerating every direction
from its key (Salimans et al. 2017, arXiv:1703.03864, §2.1). The parameters never travel.

Estimators only see this small interface, never ``torch.distributed`` (the distributed package
implements it over a process group):

``local_probes(q)``
    The probe ids this process evaluates: the contiguous block ``[⌊r·q/W⌋, ⌊(r+1)·q/W⌋)`` of rank
    ``r`` (blocks differ in size by at most one; a contiguous block keeps the noise table's probes
    one strided view).
``gather(local, q)``
    The full ``(signs, q)`` float64 loss table in probe order, on every process, from each process's
    ``(signs, len(local_probes(q)))`` block.
``all_gather(value)``
    The ``(W, *value.shape)`` stack of one small tensor from every process (for checks and totals).
``bytes_sent``
    Bytes this process has sent, counted with the ring model below; estimators add the increase of
    one step to their :class:`~unigrad.core.cost.Cost` (``Cost.bytes``).

**Bytes counted.** Blocks are padded to ``m = ⌈q/W⌉`` probes so that all processes send equal
blocks. In a ring all-gather each process sends ``W − 1`` blocks (its own, then the ones it
forwards), so one step's gather costs every process::

    bytes per step = (W − 1) · signs · ⌈q/W⌉ · 8          (→ signs·q·8 as W grows)

which depends on the number of probes only, never on the parameter count ``d``. For comparison, a
data-parallel backprop step (DDP) all-reduces the fp32 gradient; a ring all-reduce sends
``2·(W − 1)/W · 4·d`` bytes per process (:func:`ddp_bytes`): for the 269,322-parameter Fashion-MNIST
MLP and ``W = 2``, 1.08 MB per step, against 16·⌈q/2⌉ bytes for ``q`` antithetic probes.

**Data-parallel variant** (``data_parallel=True``). Every process evaluates all the probes
(``local_probes(q) = range(q)``) on its own shard of the batch (``shard(B)``: the contiguous rows
``[⌊r·B/W⌋, ⌊(r+1)·B/W⌋)``), and ``gather`` all-gathers the ``(signs, q)`` tables with the shard
sizes and returns their shard-size-weighted mean: the full-batch mean losses up to floating-point
rounding (a mean of shard means is not bitwise the mean of the batch), so this variant equals a
single-process run only to rounding. It sends ``(W − 1)·(signs·q + 1)·8`` bytes per step, still
independent of ``d``; the forward passes per process are divided by ``W`` through the batch instead of
the probes.

With :class:`LocalExchange` (one process) every estimator computes bit for bit what it computes
without an exchange.
"""

from __future__ import annotations

import abc
import hashlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from unigrad.core.errors import UnigradError

LOSS_BYTES = 8
"""Bytes per exchanged loss (float64)."""


def probe_block(probes: int, rank: int, world_size: int) -> range:
    """The contiguous block of probe ids of ``rank`` among ``world_size`` processes."""
    return range(rank * probes // world_size, (rank + 1) * probes // world_size)


def gather_bytes(probes: int, signs: int, world_size: int) -> int:
    """Bytes one process sends in one step's ring all-gather of a ``(signs, probes)`` loss table."""
    return (world_size - 1) * signs * math.ceil(probes / world_size) * LOSS_BYTES


def ddp_bytes(parameters: int, world_size: int, bytes_per_value: int = 4) -> float:
    """Bytes one process sends per step in a ring all-reduce of a ``parameters``-sized gradient (DDP)."""
    return 2 * (world_size - 1) / world_size * bytes_per_value * parameters


class ProbeExchange(abc.ABC):
    """Shares the scalar probe losses of one step between ``world_size`` processes (module docs).

    Subclasses implement :meth:`all_gather`; ``rank`` and ``world_size`` are set at construction.
    """

    def __init__(self, rank: int, world_size: int, data_parallel: bool = False) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise UnigradError(f"rank must lie in [0, world_size), got rank {rank} of world size {world_size}")
        self.rank, self.world_size, self.data_parallel = rank, world_size, bool(data_parallel)
        self.bytes_sent = 0
        self._weight = 1.0  # this process's shard size (data-parallel)

    def __repr__(self) -> str:
        mode = ", data_parallel=True" if self.data_parallel else ""
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}{mode})"

    @abc.abstractmethod
    def all_gather(self, value: Tensor) -> Tensor:
        """``(world_size, *value.shape)``: ``value`` from every process, in rank order (not counted in bytes)."""

    def local_probes(self, probes: int) -> range:
        """The probe ids this process evaluates (all of them in the data-parallel variant)."""
        if self.data_parallel:
            return range(probes)
        return probe_block(probes, self.rank, self.world_size)

    def shard(self, batch: int) -> range:
        """The rows of a batch of ``batch`` samples this process evaluates (all of them unless data-parallel).

        The data-parallel variant remembers the shard's size to weight this process's losses in :meth:`gather`.
        """
        if not self.data_parallel:
            return range(batch)
        rows = probe_block(batch, self.rank, self.world_size)
        if batch < self.world_size:
            raise UnigradError(f"a batch of {batch} cannot be split over {self.world_size} processes; raise batch_size")
        self._weight = float(len(rows))
        return rows

    def gather(self, local: Tensor, probes: int) -> Tensor:
        """The ``(signs, probes)`` float64 table from each process's block ``(signs, len(local_probes))``."""
        signs, mine = local.shape[0], self.local_probes(probes)
        if local.shape != (signs, len(mine)):
            raise UnigradError(f"local losses of shape {tuple(local.shape)} do not match probes {mine}")
        if self.world_size == 1:
            return local.to(torch.float64)
        if self.data_parallel:
            weight = torch.tensor([self._weight], dtype=torch.float64)
            payload = torch.cat([local.to(torch.float64).reshape(-1), weight])
            stacked = self.all_gather(payload)
            self.bytes_sent += (self.world_size - 1) * payload.numel() * LOSS_BYTES
            weights = stacked[:, -1]
            tables = stacked[:, :-1].view(self.world_size, signs, probes)
            return (tables * weights.view(-1, 1, 1)).sum(0) / weights.sum()
        m = math.ceil(probes / self.world_size)
        block = torch.full((signs, m), math.nan, dtype=torch.float64)
        block[:, : len(mine)] = local
        stacked = self.all_gather(block)
        self.bytes_sent += gather_bytes(probes, signs, self.world_size)
        out = torch.empty(signs, probes, dtype=torch.float64)
        for r in range(self.world_size):
            ids = probe_block(probes, r, self.world_size)
            out[:, ids.start : ids.stop] = stacked[r, :, : len(ids)]
        return out

    def check_identical(self, tensors: Sequence[Tensor], step: int) -> None:
        """Raise :class:`UnigradError` unless ``tensors`` are bitwise equal on every process (a 64-bit hash
        of their bytes is all-gathered; not counted in ``bytes_sent``)."""
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        mine = torch.tensor([int.from_bytes(h.digest()[:8], "little", signed=True)], dtype=torch.int64)
        hashes = self.all_gather(mine).view(-1).tolist()
        bad = [r for r, v in enumerate(hashes) if v != hashes[0]]
        if bad:
            raise UnigradError(
                f"parameters differ between processes at step {step} (rank {', '.join(map(str, bad))} against "
                f"rank 0); the processes no longer compute the same run (nondeterministic kernels or different data)"
            )


def check_exchange(exchange: object) -> ProbeExchange | None:
    """``exchange`` when it is a :class:`ProbeExchange` or ``None``; anything else is a one-line error."""
    if exchange is not None and not isinstance(exchange, ProbeExchange):
        raise UnigradError(
            f"option exchange must be a ProbeExchange (unigrad.core.exchange) or None, got {type(exchange).__name__}; "
            "unigrad train --distributed builds it"
        )
    return exchange


class LocalExchange(ProbeExchange):
    """One process: every probe is local and gathering is the identity."""

    def __init__(self) -> None:
        super().__init__(0, 1)

    def all_gather(self, value: Tensor) -> Tensor:
        return value.unsqueeze(0).clone()
