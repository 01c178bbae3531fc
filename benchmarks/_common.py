"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU model, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.platform()


def interleaved(first: Callable[[], object], second: Callable[[], object], repeats: int, warmup: int = 3):
    """Median wall times of ``first()`` and ``second()``, timed one after the other ``repeats`` times (after
    ``warmup`` untimed rounds), so that load changes on a shared machine hit both alike."""
    for _ in range(warmup):
        first()
        second()
    a, b = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        t2 = time.perf_counter()
        a.append(t1 - t0)
        b.append(t2 - t1)
    return statistics.median(a), statistics.median(b)


def write_results(path: Path, benchmark: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` with the benchmark's name and the environment (torch, machine, CPU, threads) as JSON."""
    import torch

    out = {
        "benchmark": benchmark,
        **payload,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": cpu_name(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
