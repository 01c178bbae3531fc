"""Run independent calls in order, in this process or in a pool of fresh processes.

``run_calls([(fn, args), ...], jobs)`` yields ``fn(*args)`` for each call in the given order. With ``jobs = 1`` the
calls run here, one after another, as the results are consumed; with ``jobs > 1`` they run in ``jobs`` processes
started with ``spawn`` (no state inherited from this one), each limited to one torch thread. Every call must be
picklable and keyed by its arguments (seeds), so the results do not depend on ``jobs``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from unigrad.core.errors import check_positive


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_calls(calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]], jobs: int = 1) -> Iterator[Any]:
    """``fn(*args)`` for every ``(fn, args)`` of ``calls``, in order (module docs)."""
    check_positive("jobs", jobs, integer=True)
    if jobs == 1:
        for fn, args in calls:
            yield fn(*args)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_one_thread) as pool:
        futures = [pool.submit(fn, *args) for fn, args in calls]
        for future in futures:
            yield future.result()
