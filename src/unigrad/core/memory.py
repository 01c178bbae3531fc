"""Peak tensor memory of a piece of work, measured with the PyTorch profiler.

``peak_memory(fn)`` runs ``fn()`` under ``torch.profiler`` with memory profiling and replays the
allocation events in time order: the result is the largest number of bytes held at once by tensors
*allocated during* ``fn`` (CPU, or the accelerator for CUDA tensors). Memory that existed before
``fn`` started is not counted, so to compare, say, training with inference, build the model (and
optimizer) inside ``fn``. Python objects and the interpreter are not counted: only tensor storage.

On CUDA the caching allocator's own statistics are used instead (``max_memory_allocated`` minus what
was allocated before ``fn``): the profiler's allocation events miss frees there and overcount.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(fn: Callable[[], Any], device_type: str = "cpu") -> int:
    """Peak bytes of tensor storage allocated during ``fn()`` on ``device_type`` ("cpu" or "cuda")."""
    if device_type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - before)
    gc.collect()  # garbage of earlier work freed now, not inside the measurement (where it would offset fn's)
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # the profiler's C++ start/stop chatter
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation:
            f = e.extra_fields
            if f.device.type == device_type:
                events.append((e.start_time_ns, f.alloc_size))
        stack.extend(e.children)
    events.sort()
    held = peak = 0
    for _, size in events:
        held += size
        peak = max(peak, held)
    return peak
