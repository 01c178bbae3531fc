"""Fashion-MNIST from local IDX files (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747).

Nothing is downloaded: the four gzipped IDX files are read from ``/usr/share/datasets/fashion-mnist``
(Debian's ``dataset-fashion-mnist`` package) or from the folder named by ``$UNIGRAD_FASHION_MNIST``.
Images are scaled to [0, 1] and then standardised with the mean and standard deviation of the
training pixels (one scalar each), shape ``(N, 1, 28, 28)`` float32; labels are int64.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from unigrad.core.errors import UnigradError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV = "UNIGRAD_FASHION_MNIST"
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


DEBIAN_PACKAGE = "dataset-fashion-mnist"
"""Debian's package of the four IDX files (installed in :data:`DEFAULT_DIR`)."""


def available(root: str | Path | None = None) -> bool:
    """Whether the four IDX files are in ``root`` (default :func:`data_dir`)."""
    folder = Path(root) if root is not None else data_dir()
    return all((folder / name).is_file() for name in FILES.values())


def data_dir() -> Path:
    """Where the IDX files are looked for: ``$UNIGRAD_FASHION_MNIST`` or the Debian location."""
    return Path(os.environ.get(ENV) or DEFAULT_DIR)


def read_idx(path: Path) -> np.ndarray:
    """Parse a (possibly gzipped) IDX file: big-endian magic ``0 0 type ndim``, ``ndim`` uint32 sizes, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UnigradError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UnigradError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) != header + int(np.prod(shape)):
        raise UnigradError(f"{path} is truncated or corrupt: header says {shape}, file has {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(root: str | Path | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``: 60,000 and 10,000 images ``(N, 1, 28, 28)``."""
    folder = Path(root) if root is not None else data_dir()
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise UnigradError(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}); "
            f"install it with: sudo apt-get install -y dataset-fashion-mnist (or set {ENV} to its folder)"
        )
    arrays = {key: read_idx(folder / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise UnigradError(f"Fashion-MNIST {split} files in {folder} disagree: images {x.shape}, labels {y.shape}")
    x_train, x_test = (arrays[k].astype(np.float32) for k in ("x_train", "x_test"))
    for x in (x_train, x_test):
        x /= 255.0  # in place: the same float32 operations as out of place, without the copies
    mean, std = float(x_train.mean()), float(x_train.std())

    def images(x: np.ndarray) -> Tensor:
        x -= mean
        x /= std
        return torch.from_numpy(x).unsqueeze(1)

    def labels(y: np.ndarray) -> Tensor:
        return torch.from_numpy(y.astype(np.int64))

    return images(x_train), labels(arrays["y_train"]), images(x_test), labels(arrays["y_test"])
