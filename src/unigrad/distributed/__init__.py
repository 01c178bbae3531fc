"""Zeroth-order training over ``torch.distributed`` with scalar-only communication.

Seeded perturbations are regenerated on every process from their keys, so processes exchange only
the scalar probe losses (:mod:`unigrad.core.exchange`). :func:`init` joins torchrun's process group
with a timeout, :class:`TorchExchange` all-gathers the losses, :func:`distributed_train` runs
:func:`unigrad.train.train` on every process. See ``docs/distributed.md``.
"""

from unigrad.distributed.group import (
    BACKENDS,
    DEFAULT_TIMEOUT,
    TorchExchange,
    exit_process,
    failed,
    init,
    launched,
    shutdown,
)
from unigrad.distributed.train import METHODS, distributed_train, is_lead, world_size

__all__ = [
    "BACKENDS",
    "DEFAULT_TIMEOUT",
    "METHODS",
    "TorchExchange",
    "distributed_train",
    "exit_process",
    "failed",
    "init",
    "is_lead",
    "launched",
    "shutdown",
    "world_size",
]
