"""Run folders and the machine facts recorded with every run.

:func:`run_dir` makes the output folder of a command (``runs/<prefix>-<task>-<YYYYmmdd-HHMMSS>`` unless one is
given) and :func:`environment` lists the versions and machine facts that ``results.json`` and the experiment store
keep. The comparison runner (:mod:`unigrad.train.compare`), the benchmark suite (:mod:`unigrad.suite`) and
``train --distributed`` all use them; they depend on ``core/`` only, not on the runner.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unigrad.core.errors import UnigradError


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and machine facts for ``results.json``."""
    import unigrad

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "unigrad": unigrad.__version__,
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def run_dir(task: str | None, out: str | Path | None, prefix: str = "compare") -> Path:
    """``out`` if given, else a fresh ``runs/<prefix>-<task>-<YYYYmmdd-HHMMSS>`` folder (``runs/<prefix>-<time>``
    without a task)."""
    if out is not None:
        if str(out) == "" or "\x00" in str(out):  # Path("") is the current folder
            raise UnigradError(f"the output folder must be a non-empty path without NUL characters, got {str(out)!r}")
        path = Path(out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{prefix}-{stamp}" if task is None else f"{prefix}-{task}-{stamp}"
        path, k = Path("runs") / name, 2
        while path.exists():
            path, k = Path("runs") / f"{name}-{k}", k + 1
    if path.exists() and not path.is_dir():
        raise UnigradError(f"output path {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnigradError(f"cannot create the output folder {path}: {e.strerror}") from None
    return path


__all__ = ["environment", "run_dir"]
