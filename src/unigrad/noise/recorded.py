"""Recorded noise: replay windows of a measured trace (e.g. a device's voltage), keyed like every process.

Definition (Koenders et al. 2025, "Noise-based local learning using stochastic magnetic tunnel junctions",
Phys. Rev. Applied 23:054035, where the node noise is a measured voltage trace summed over n devices)
    The trace ``x`` holds ``T`` samples of each of ``D`` recorded devices, ``x[r, d]``. For a key
    ``(seed, trial, stream)`` and a request ``(steps, *shape)`` every entry ``e`` draws ``n`` (= ``devices``)
    start positions ``j_{e,k}`` uniformly from the ``D·T`` samples (device ``d = j // T``, row
    ``r = j mod T``), independently, from the key's generator, and

        ``ξ_t[e] = Σ_k x[(r_{e,k} + t) mod T, d_{e,k}]``,

    ``steps`` consecutive samples of a recorded device starting at the drawn row, wrapping around at the end
    of the trace (``steps > T`` repeats it). The start positions do not depend on ``steps``, so a longer
    request of the same key extends a shorter one; :meth:`RecordedNoise.starts` returns them.

Moments (exact over keys, for the fixed trace)
    Because the start is uniform and the read wraps, every ``ξ_t`` of a single read is uniform over all
    ``D·T`` samples: mean ``μ`` and variance ``v`` are the trace's own (population, ``ddof=0``) moments, and
    the lag-``k`` covariance of a read is the trace's circular autocovariance at lag ``k``, so the trace's
    temporal correlations are kept. The ``n`` reads of an entry are independent random variables (their
    starts are), so ``mean = n·μ`` and ``variance = n·v``, with ``μ`` and ``v`` taken after ``center``,
    ``normalize`` and ``scale``. What is an approximation is the physics: windows of one recording stand in
    for ``n`` different devices (windows of the same recorded device can overlap and then share samples),
    and a finite recording's moments stand in for the device's.

Files
    ``.npy`` (``numpy.save``) or ``.csv`` (comma separated, one optional header line). A 1-D array is one
    device. A 2-D array has time along axis 0 (rows) and recorded devices along axis 1 (columns): in a CSV
    each column is one device's trace; a CSV of a single line is read as one 1-D trace. The file is read once,
    at construction, into a float64 tensor (:attr:`RecordedNoise.trace`, shape ``(T, D)``).

Options
    ``path``: the ``.npy`` or ``.csv`` file (str or ``pathlib.Path``; kept as a string). A spec splits on
        ``:``, so a path written in a spec must not contain one.
    ``devices``: n >= 1, the number of independent reads summed per entry (default 1).
    ``scale``: factor > 0 applied to the trace (default 1), after ``center`` and ``normalize``.
    ``center``: subtract each recorded device's mean (default True).
    ``normalize``: divide by the standard deviation of all the (centred) samples, so that one read has
        standard deviation ``scale`` (default False).
    ``accessible``: whether a learning rule may read the noise (see :mod:`unigrad.noise.base`; default False,
        recorded device noise being intrinsic); :attr:`spec` always writes it.

One trace sample per step: ``dt`` is ignored (resample the recording to the network's step before saving
it). Spec: ``replay:path=trace.npy:devices=4:scale=1:center=true:normalize=false:accessible=false``; the
string values are read by :meth:`RecordedNoise.parse_option`. Cost per call: one integer draw per entry and
device, and a gather of ``steps·n`` samples per entry.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unigrad.core.errors import UnigradError
from unigrad.core.rng import generator
from unigrad.noise.base import (
    Draw,
    NoiseProcess,
    check_accessible,
    check_number,
    check_positive_finite,
    checked_key,
    parse_flag,
)

SUFFIXES = (".npy", ".csv")
"""File types a trace can be read from."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _is_numeric_row(line: str) -> bool:
    try:
        [float(v) for v in line.split(",")]
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> np.ndarray:
    with path.open() as f:
        first = f.readline()
    skip = 0 if not first.strip() or first.lstrip().startswith("#") or _is_numeric_row(first) else 1  # a header
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy warns about an empty file; checked by the caller
            data = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise UnigradError(f"trace file {path} holds non-numeric values or ragged rows: {_one_line(exc)}") from None
    return data[0] if data.shape[0] == 1 else data


def load_trace(path: str | Path) -> np.ndarray:
    """The trace in ``path`` (``.npy`` or ``.csv``) as a float64 array of shape ``(T, D)``, checked."""
    if not isinstance(path, str | Path):
        raise UnigradError(f"option path must be a file path (str or Path), got {type(path).__name__}")
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise UnigradError(f"trace file {str(path)!r} must be {' or '.join(SUFFIXES)}, got suffix {p.suffix!r}")
    if not p.is_file():
        raise UnigradError(f"trace file {str(path)!r} does not exist")
    if p.suffix.lower() == ".csv":
        try:
            raw = _read_csv(p)
        except (OSError, UnicodeDecodeError) as exc:
            raise UnigradError(f"could not read trace file {p}: {_one_line(exc)}") from None
    else:
        try:
            raw = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise UnigradError(f"could not read trace file {p} as .npy: {_one_line(exc)}") from None
    if not isinstance(raw, np.ndarray) or raw.dtype.kind not in "iuf":
        kind = raw.dtype if isinstance(raw, np.ndarray) else type(raw).__name__
        raise UnigradError(f"trace file {p} must hold real numbers, got {kind}")
    if raw.ndim not in (1, 2):
        raise UnigradError(f"trace file {p} must hold a 1-D or 2-D (time × devices) array, got shape {raw.shape}")
    if raw.size == 0:
        raise UnigradError(f"trace file {p} holds an empty trace")
    data = raw.astype(np.float64)
    if not np.isfinite(data).all():
        raise UnigradError(f"trace file {p} holds {int((~np.isfinite(data)).sum())} NaN or infinite values")
    return data.reshape(data.shape[0], -1)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UnigradError(f"option {name} must be True or False, got {value!r}")
    return value


class RecordedNoise(NoiseProcess):
    """Windows of a recorded trace at keyed random starts, wrapping around; ``devices`` reads summed."""

    name = "replay"
    tag = 0x4E5A0102
    options = ("path", "devices", "scale", "center", "normalize")
    example = "replay:path=trace.npy:devices=1:scale=1:center=true:normalize=false"
    writes_accessible = True

    def __init__(
        self,
        path: str | Path,
        devices: int = 1,
        scale: float = 1.0,
        center: bool = True,
        normalize: bool = False,
        *,
        accessible: bool = False,
    ) -> None:
        n = check_number("devices", devices)
        if not (n.is_integer() and n >= 1):
            raise UnigradError(f"option devices must be an integer >= 1, got {devices!r}")
        self.devices = int(n)
        self.scale = check_positive_finite("scale", scale)
        self.center = _check_bool("center", center)
        self.normalize = _check_bool("normalize", normalize)
        self.accessible = check_accessible(accessible)
        data = load_trace(path)
        self.path = str(path)
        if self.center:
            data = data - data.mean(axis=0)
        if self.normalize:
            std = float(data.std())
            if not std > 0:
                raise UnigradError(f"trace file {self.path} is constant: it cannot be normalized")
            data = data / std
        data = data * self.scale
        if not float(data.var()) > 0:
            raise UnigradError(f"trace file {self.path} is constant{' after centring' if self.center else ''}")
        self.trace: Tensor = torch.from_numpy(np.ascontiguousarray(data))
        """The processed trace (after ``center``, ``normalize``, ``scale``): float64, shape ``(T, D)``."""

    # -- moments ------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """``T``: samples per recorded device."""
        return self.trace.shape[0]

    @property
    def recorded(self) -> int:
        """``D``: the number of recorded devices (columns of the trace)."""
        return self.trace.shape[1]

    @property
    def mean(self) -> float:
        return self.devices * float(self.trace.mean())

    @property
    def variance(self) -> float:
        return self.devices * float(self.trace.var(correction=0))

    def autocovariance(self, lag: int) -> float:
        """``n·`` the trace's circular autocovariance at ``lag`` steps (per device, averaged): the exact
        lag-``lag`` covariance of the replayed noise over keys."""
        x = self.trace - self.trace.mean()
        return self.devices * float((x * torch.roll(x, -lag, dims=0)).mean())

    # -- sampling -----------------------------------------------------------------------------
    def _draw_starts(self, shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> Tensor:
        return torch.randint(0, self.length * self.recorded, (self.devices, *shape), generator=g, device=device)

    def starts(
        self,
        shape: tuple[int, ...] | torch.Size | int,
        *,
        seed: int,
        trial: int,
        stream: int = 0,
        device: torch.device | str = "cpu",
    ) -> tuple[Tensor, Tensor]:
        """``(rows, columns)``, each ``(devices, *shape)``: where each read of each entry starts in the trace."""
        shape = self._check_shape(shape)
        key = checked_key(seed, trial, stream)
        dev = torch.device(device)
        j = self._draw_starts(shape, generator(self.tag, *key, device=dev), dev)
        return j % self.length, j // self.length

    def _sample(self, draw: Draw) -> Tensor:
        j = self._draw_starts(draw.shape, draw.g, draw.device)
        rows, cols = j % self.length, j // self.length
        flat = self.trace.to(device=draw.device, dtype=draw.work).reshape(-1)  # x[r, d] = flat[r·D + d]
        t = torch.arange(draw.steps, device=draw.device).view(draw.steps, *([1] * j.dim()))
        index = (rows + t).remainder_(self.length).mul_(self.recorded).add_(cols)  # (steps, n, *shape)
        return flat[index].sum(dim=1)

    # -- description --------------------------------------------------------------------------
    @staticmethod
    def parse_option(key: str, value: str) -> Any:
        """The typed value of option ``key`` from its spec string ``value`` (for ``make_noise``)."""
        if key == "path":
            return value
        if key in ("center", "normalize", "accessible"):
            return parse_flag("replay", key, value)
        try:
            number = float(value)
        except ValueError:
            raise UnigradError(f"option {key} of noise replay must be a number, got {value!r}") from None
        if key == "devices" and math.isfinite(number) and number.is_integer():
            return int(number)
        return number
