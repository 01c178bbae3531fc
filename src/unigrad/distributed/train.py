"""``distributed_train``: :func:`unigrad.train.train` on every process that torchrun started.

Run the same command on ``W`` processes, e.g.::

    python -m torch.distributed.run --nproc_per_node 2 script.py      # script calls distributed_train(...)

Every process builds the same model from the seed, draws the same batches and calls the estimator
with a :class:`~unigrad.distributed.group.TorchExchange`: it evaluates its block of the ``q``
probes, all-gathers the ``(signs, q)`` float64 losses and combines all ``q`` probes by regenerating
each direction from its key, so all processes take the same step and the parameters never travel
(Salimans et al. 2017, arXiv:1703.03864). With ``data_parallel=True`` each process evaluates all
probes on its shard of the batch instead and the per-probe losses are averaged (equal to the
one-process run up to rounding). Only rank 0 writes the checkpoint; a run resumes from it with any
world size and ends where an uninterrupted run ends. ``check_every=k`` compares a hash of the
parameters across processes every ``k`` steps. A process that dies or hangs makes the others fail
with a one-line :class:`~unigrad.core.errors.UnigradError` within ``timeout`` seconds.

Probe-parallel methods: ``rge``, ``spsa``, ``es``, ``mezo`` and ``np`` (see :mod:`unigrad.core.exchange`).
"""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist

from unigrad.core.errors import check_positive
from unigrad.core.estimator import Estimator
from unigrad.data.tasks import Task
from unigrad.distributed.group import DEFAULT_TIMEOUT, TorchExchange, init, launched, shutdown
from unigrad.train.trainer import RunResult, train

METHODS = ("es", "mezo", "np", "rge", "spsa")


def is_lead() -> bool:
    """Whether this process writes results: rank 0 (also after the group was left), or the only process when
    none was launched."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return not launched() or int(os.environ["RANK"]) == 0


def world_size() -> int:
    """Processes in this launch (torchrun's ``WORLD_SIZE``; 1 when none was launched)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ["WORLD_SIZE"]) if launched() else 1


def distributed_train(
    task: Task | str,
    method: Estimator | str,
    *,
    backend: str = "auto",
    timeout: float = DEFAULT_TIMEOUT,
    data_parallel: bool = False,
    check_every: int | None = None,
    **train_options: Any,
) -> RunResult:
    """:func:`~unigrad.train.train` spread over the processes of a torchrun launch (module docs).

    Args:
        backend, timeout: passed to :func:`~unigrad.distributed.group.init` (seconds a collective may wait).
        data_parallel: shard each batch over the processes instead of the probes.
        check_every: every this many steps, check that all processes hold bitwise equal parameters.
        train_options: the keyword options of :func:`~unigrad.train.train` (``device="cpu"`` for Gloo).

    The process group is left as it was found: joined here, it is left again on return or failure
    (unless a collective failed: then end the program with :func:`~unigrad.distributed.exit_process`
    after reporting the error).
    """
    if check_every is not None:
        check_positive("check_every", check_every, integer=True)
    joined = not (dist.is_available() and dist.is_initialized())
    init(backend, timeout)
    try:
        exchange = TorchExchange(data_parallel=data_parallel, timeout=timeout)
        return train(task, method, exchange=exchange, exchange_check_every=check_every, **train_options)
    finally:
        if joined:
            shutdown()
