"""MNIST-1D, generated locally (Greydanus & Kobak 2020, arXiv:2011.14439).

The ``mnist1d`` package's generator (``make_dataset``) is run with its default arguments: 5,000
sequences of length 40 from ten 1-D digit templates (padding, shear, translation, correlated and
i.i.d. noise), shuffled with seed 42 and split 4,000 / 1,000, already centred and scaled to unit
standard deviation. Nothing is downloaded (the package's ``get_dataset`` can fetch a pickle: it is
not used).

Generating takes a few seconds, so the arrays are cached as ``mnist1d-v1.npz`` under
``$UNIGRAD_CACHE`` (default ``~/.cache/unigrad``); a missing or unreadable cache is regenerated.
The generator seeds NumPy's and Python's global RNGs; their states are saved and restored around
it, so loading leaves them as they were.
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from unigrad.core.errors import UnigradError
from unigrad.core.io import atomic_path

CACHE_ENV = "UNIGRAD_CACHE"
CACHE_FILE = "mnist1d-v1.npz"
SHAPES = {"x_train": (4000, 40), "y_train": (4000,), "x_test": (1000, 40), "y_test": (1000,)}


def cache_dir() -> Path:
    """``$UNIGRAD_CACHE`` or ``~/.cache/unigrad``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "unigrad")


def generate() -> dict[str, np.ndarray]:
    """Run the package's generator with its default arguments (seed 42); global RNG states are restored."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise UnigradError(f"generating MNIST-1D needs the mnist1d package ({e}); pip install mnist1d") from None

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x_train": d["x"].astype(np.float32),
        "y_train": d["y"].astype(np.int64),
        "x_test": d["x_test"].astype(np.float32),
        "y_test": d["y_test"].astype(np.int64),
    }


def _read(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in SHAPES}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if any(arrays[k].shape != s for k, s in SHAPES.items()):
        return None
    return arrays


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Cache ``arrays`` at ``path`` atomically (concurrent loaders each write their own temporary file)."""
    try:
        with atomic_path(path, fsync=False, make_parents=True) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    except UnigradError:
        pass  # a read-only cache only costs regeneration next time


def load_mnist1d(cache: str | Path | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``: ``(4000, 40)`` / ``(1000, 40)`` float32, int64 labels."""
    path = Path(cache if cache is not None else cache_dir()) / CACHE_FILE
    arrays = _read(path)
    if arrays is None:
        arrays = generate()
        _write(path, arrays)
    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in SHAPES)  # type: ignore[return-value]
