"""Joining the process group that torchrun describes, and the exchange of scalar losses over it.

``init(backend="auto", timeout=300)`` reads the variables ``torchrun`` (``python -m
torch.distributed.run``) sets for every process (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``; ``LOCAL_RANK`` picks the GPU under NCCL) and joins the default process group
with a timeout: a collective that does not complete within ``timeout`` seconds (a process hung) or
whose peer went away (a process died) fails, and :class:`TorchExchange` turns that failure into a
one-line :class:`~unigrad.core.errors.UnigradError` that names the rank and the timeout, so no
process waits forever. After such a failure the process group cannot be torn down safely (Gloo may
abort the process while its pending operation is destroyed), so :func:`shutdown` leaves it alone and
a program should end with :func:`exit_process` (flush, then ``os._exit``) once it reported the error.

Backends: ``"gloo"`` (CPU tensors; the default on CPU), ``"nccl"`` (CUDA tensors, one GPU per
process) and ``"auto"`` (NCCL when CUDA is available, else Gloo). The exchange only moves a few
float64 scalars per step, so Gloo is a fine choice even on GPU machines.

:class:`TorchExchange` implements :class:`~unigrad.core.exchange.ProbeExchange` with
``torch.distributed.all_gather_single`` (``all_gather_into_tensor`` in older PyTorch); see
:mod:`unigrad.core.exchange` for what it exchanges and how its bytes are counted.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import Tensor

from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.exchange import ProbeExchange

BACKENDS = ("auto", "gloo", "nccl")
ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT = 300.0

_FAILED = False  # a collective failed: the process group is broken


def _all_gather_single(out: Tensor, value: Tensor, group: dist.ProcessGroup | None) -> None:
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, value, group=group)


def launched() -> bool:
    """Whether this process was started by torchrun (the rendezvous variables are set)."""
    return all(k in os.environ for k in ENV)


def init(backend: str = "auto", timeout: float = DEFAULT_TIMEOUT) -> tuple[int, int]:
    """Join the default process group from torchrun's variables (once); return ``(rank, world_size)``.

    Args:
        backend: ``"gloo"``, ``"nccl"`` or ``"auto"`` (NCCL if CUDA is available, else Gloo).
        timeout: seconds a collective may wait for the other processes before it fails (> 0).
    """
    check_choice("backend", backend, BACKENDS)
    check_positive("timeout", timeout)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if not dist.is_available():
        raise UnigradError("this PyTorch build has no torch.distributed; install one that does")
    missing = [k for k in ENV if k not in os.environ]
    if missing:
        raise UnigradError(
            f"not started by torchrun ({', '.join(missing)} unset); launch with "
            f"python -m torch.distributed.run --nproc_per_node N ..."
        )
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise UnigradError("backend nccl needs CUDA, which is not available here; use backend gloo")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout)))
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnigradError(f"cannot join the process group (backend {backend}): {first}") from None
    return dist.get_rank(), dist.get_world_size()


def failed() -> bool:
    """Whether a collective of this process failed (a peer died or hung)."""
    return _FAILED


def shutdown() -> None:
    """Leave the default process group if this process joined one and no collective failed."""
    if dist.is_available() and dist.is_initialized() and not _FAILED:
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """Flush stdout and stderr and end the process with ``code`` at once, without tearing down a broken
    process group (whose teardown may abort the process). Checkpoints are already on disk (written
    synchronously), so nothing is lost."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class TorchExchange(ProbeExchange):
    """:class:`~unigrad.core.exchange.ProbeExchange` over a ``torch.distributed`` process group.

    Args:
        data_parallel: every process evaluates all probes on its shard of the batch (see
            :mod:`unigrad.core.exchange`) instead of its block of probes on the whole batch.
        group: the process group (default: the default group, joined with :func:`init`).
        timeout: the group's timeout in seconds, quoted in the error when a collective fails.
    """

    def __init__(
        self, data_parallel: bool = False, group: dist.ProcessGroup | None = None, timeout: float | None = None
    ) -> None:
        if not dist.is_initialized():
            raise UnigradError("no process group: call unigrad.distributed.init() first (under torchrun)")
        super().__init__(dist.get_rank(group), dist.get_world_size(group), data_parallel)
        self.group, self.timeout = group, timeout
        backend = dist.get_backend(group)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def all_gather(self, value: Tensor) -> Tensor:
        """``(world_size, *value.shape)`` on the CPU; a dead or silent peer raises :class:`UnigradError`."""
        flat = value.detach().to(self.device).contiguous().view(-1)
        out = torch.empty(self.world_size * flat.numel(), dtype=value.dtype, device=self.device)
        try:
            _all_gather_single(out, flat, self.group)
        except (RuntimeError, dist.DistError) as e:
            global _FAILED
            _FAILED = True
            raise UnigradError(f"rank {self.rank}: the all-gather failed: {self._why(e)}") from None
        return out.view(self.world_size, *value.shape).cpu()

    def _why(self, error: BaseException) -> str:
        """A short reason for a failed collective."""
        text = str(error).strip()
        detail = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[-1]) if text else type(error).__name__
        detail = detail.split(". ")[0].rstrip(".")[:160]  # the first sentence, without the source location
        low = text.lower()
        if "timed out" in low or "timeout" in low:
            within = f" within the {self.timeout:g} s timeout" if self.timeout is not None else " in time"
            return f"another process did not answer{within} ({detail})"
        if any(w in low for w in ("connection reset", "connection closed", "broken pipe", "eof", "peer")):
            return f"another process died (connection lost: {detail})"
        return detail
