"""Seeded noise streams: every perturbation is named by ``(seed, step, probe, tensor)``.

The noise for a key can be regenerated bit for bit at any time, on the same device type, without
storing it and without touching the global RNG (``torch.manual_seed`` is never called). That buys
MeZO's inference-sized memory (perturb in place, restore and update by regenerating), scalar-only
distributed training (ranks exchange losses and regenerate the noise) and exact resume.

Two sources produce the same distributions:

``"generator"``
    A fresh ``torch.Generator`` per key and per chunk of :data:`CHUNK` elements, seeded with a
    SplitMix64 hash of the key. The canonical stream of a tensor is the concatenation of its chunks,
    so an in-place consumer can stream a large tensor chunk by chunk (see :meth:`ProbeNoise.chunks`).
    Gaussian entries cost one RNG draw each; Rademacher entries are the bits of 32-bit random words,
    32 per draw (``benchmarks/noise_speed.py`` measures both against a forward pass; the figures are in
    ``docs/benchmarks.md``, Noise generation).

``"table"``
    A shared table of ``table_size`` standard normals, generated once from ``table_seed`` (as in
    OpenAI-ES, Salimans et al. 2017, arXiv:1703.03864). Probes of a tensor of ``n`` elements come in
    groups of ``G = min(GROUP, table_size // n)``; probe ``p`` is the slice of ``n`` entries starting
    at ``hash(seed, step, tensor, p // G) mod (table_size − G·n + 1) + (p mod G)·n``: a free view,
    and the probes of a group are consecutive slices, so a block of probes within a group is one
    strided view (a block spanning groups is one copy). Values repeat across keys (a slice is a
    window into a finite table), which is the usual price of this trick.
    A tensor larger than the table (an embedding matrix, say) is read row by row: with ``w`` the
    elements per row (``numel // shape[0]``, at most half the table), row ``r`` of probe ``p`` is the
    window of ``w`` entries at ``(h + r·a) mod P``, where ``P`` is the largest prime ``<= table_size − w + 1``
    and ``h`` and the stride ``a ∈ [1, P)`` are hashes of ``(seed, step, tensor, p)``. A single direction
    repeats table values across rows, but since ``P`` is prime and ``a`` is drawn afresh for every key, two
    given entries of different rows share a table value for a fraction ``≈ 1/P`` of keys, never for all: no
    pair is tied, and E[zzᵀ] = I holds over keys up to the table's own sample statistics. The tensor may
    have at most ``P`` rows.
    That buys a small table for a model with a large embedding (see :class:`~unigrad.zeroth.mezo.MeZO`).
    Rademacher entries are the signs of the same table (cached once as a second table), so they are
    free views too.

``"auto"``
    The table for every tensor that fits in it, the generator for larger ones (per tensor, so a key
    still names exactly one stream). The default of the probing estimators: the table's noise is far
    cheaper than drawing it (``benchmarks/noise_speed.py``; ``docs/benchmarks.md``, Noise generation), at
    the price of the table's memory (4·``table_size`` bytes, 16 MiB by default, twice that if Rademacher
    signs are used too).

Distributions: ``"gaussian"`` (N(0, 1) entries), ``"rademacher"`` (±1 entries) and ``"sphere"``
(uniform on the sphere of radius √d over *all* tensors of a probe, so E[uuᵀ] = I like the others).

Tensors returned by :class:`ProbeNoise` may be views of the shared table: never modify them in place.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from unigrad.core.errors import UnigradError, check_choice, check_positive

CHUNK = 1 << 14
"""Elements per generator chunk of the canonical ``"generator"`` stream."""

SPAN = 1 << 20
"""Elements per piece for consumers that need no chunk alignment, where the noise is read from the table
(:meth:`ProbeNoise.span`): one operation per 4 MiB of float32 instead of one per :data:`CHUNK`."""

WINDOW_SPAN = 1 << 16
"""Elements per piece of a tensor read in row windows (:meth:`ProbeNoise.span`): each piece is a gathered copy, so
pieces of :data:`SPAN` would add 4 MiB temporaries (12% of inference memory for all-MiniLM-L6-v2's replayed step)."""

GROUP = 64
"""At most this many consecutive probes of a tensor are consecutive slices of the noise table."""

DISTRIBUTIONS = ("gaussian", "rademacher", "sphere")
SOURCES = ("auto", "generator", "table")

_MASK = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def key_hash(*parts: int) -> int:
    """A 64-bit hash of integer key parts (SplitMix64 chained); equal keys give equal hashes."""
    h = 0x6A09E667F3BCC909
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK))
    return h


def generator(*key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator seeded from ``key``; for randomness that is not a perturbation direction
    (coordinate blocks, data order)."""
    g = torch.Generator(device=device)
    g.manual_seed(key_hash(*key))
    return g


def _generator_stream(
    kind: str, key: tuple[int, ...], start: int, stop: int, total: int, device: torch.device
) -> Tensor:
    """Elements ``start:stop`` of the canonical chunked stream of ``key`` for a tensor of ``total``
    elements (float32). Chunk ``c`` always holds elements ``[c·CHUNK, min(total, (c+1)·CHUNK))``."""
    pieces = []
    for c in range(start // CHUNK, (stop - 1) // CHUNK + 1):
        lo, hi = c * CHUNK, min(total, (c + 1) * CHUNK)
        block = _generator_chunk(kind, key, c, total, device)
        pieces.append(block[max(start, lo) - lo : min(stop, hi) - lo])
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _generator_chunk(kind: str, key: tuple[int, ...], c: int, total: int, device: torch.device) -> Tensor:
    """Chunk ``c`` of the canonical stream of ``key``: elements ``[c·CHUNK, min(total, (c+1)·CHUNK))``."""
    n = min(total, (c + 1) * CHUNK) - c * CHUNK
    g = generator(*key, c, device=device)
    if kind == "rademacher":
        # 32 fair signs per draw: the bits of uniform 32-bit words (7× faster than bernoulli_)
        words = torch.randint(0, 1 << 32, ((n + 31) // 32, 1), generator=g, device=device)
        bits = (words >> torch.arange(32, device=device)) & 1
        return bits.view(-1)[:n].to(torch.float32).mul_(2).sub_(1)
    return torch.randn(n, generator=g, device=device)


@functools.lru_cache(maxsize=64)
def _prime_at_most(n: int) -> int:
    """The largest prime ``<= n`` (``n >= 2``): the modulus of row windows, so that every stride is a unit."""
    for m in range(n, 1, -1):
        if all(m % d for d in range(2, math.isqrt(m) + 1)):
            return m
    raise ValueError(f"no prime <= {n}")


_TABLES: dict[tuple[int, int, str, str], Tensor] = {}


def noise_table(size: int, seed: int = 0, device: torch.device | str = "cpu", kind: str = "gaussian") -> Tensor:
    """The shared table of ``size`` standard normals for ``seed`` (built once per process).

    ``kind="rademacher"`` gives the signs of the same table (``+1`` where the normal is ``>= 0``, else
    ``−1``), cached as well, so Rademacher probes are free views too.
    """
    dev = torch.device(device)
    k = (size, seed, dev.type, kind)
    if k not in _TABLES:
        if kind == "rademacher":
            t = noise_table(size, seed, dev)
            _TABLES[k] = torch.where(t >= 0, 1.0, -1.0).to(t.dtype)
        else:
            _TABLES[k] = _generator_stream("gaussian", (seed, 0x7AB1E), 0, size, size, dev)
    return _TABLES[k]


class LazyProbe:
    """One probe's noise for one tensor, drawn only when it is used: whole (:meth:`tensor`, kept once drawn) or
    only some rows of a 2-D tensor (:meth:`rows`, the same bits as the whole one's rows). A part of
    :class:`ProbeViews` for tensors whose noise is not a free view (read in row windows, or from the generator)."""

    def __init__(
        self, noise: ProbeNoise, key: tuple[int, int, int, int], shape: torch.Size, dtype: torch.dtype, device: Any
    ) -> None:
        self.noise, self.key, self.shape, self.dtype, self.device = noise, key, torch.Size(shape), dtype, device
        self._whole: Tensor | None = None

    def tensor(self) -> Tensor:
        """The whole noise, shaped like the tensor."""
        if self._whole is None:
            self._whole = self.noise.raw(*self.key, self.shape, self.dtype, self.device)
        return self._whole

    def rows(self, ids: Tensor) -> Tensor:
        """``tensor()[ids]`` for a 2-D tensor, drawing only those rows (:meth:`ProbeNoise.rows`)."""
        if self._whole is not None:
            return self._whole[ids]
        return self.noise.rows(*self.key, self.shape, ids).to(self.dtype)


def dense(u: Tensor | LazyProbe) -> Tensor:
    """A probe's noise as a tensor (drawing a :class:`LazyProbe` whole)."""
    return u if isinstance(u, Tensor) else u.tensor()


class ProbeViews:
    """Consecutive probes of one tensor without stacking them into one tensor.

    ``u[i]`` is probe ``i``'s noise (a view of the table, or a :class:`LazyProbe`), ``len(u)`` the number of probes
    and ``u.shape`` the shape the stacked tensor would have; :meth:`stacked` makes that tensor (a copy). For a
    consumer that takes the probes one at a time (the fast path of :mod:`unigrad.core.probe`), a block of probes
    that spans several of a tensor's groups of the table then costs no copy, and a tensor larger than the table
    (a word embedding) is drawn only where it is used.
    """

    def __init__(self, parts: Sequence[Tensor | LazyProbe]) -> None:
        self.parts = list(parts)
        self._where = [
            (k, j)
            for k, part in enumerate(self.parts)
            for j in (range(part.shape[0]) if isinstance(part, Tensor) else [None])
        ]
        first = self.parts[0]
        self.shape = torch.Size((len(self._where), *(first.shape[1:] if isinstance(first, Tensor) else first.shape)))

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, i: int) -> Tensor | LazyProbe:
        k, j = self._where[i]
        part = self.parts[k]
        return part if j is None else part[j]

    def blocks(self) -> Iterator[Tensor]:
        """The parts in order as ``(n, *shape)`` tensors, one drawn at a time."""
        for part in self.parts:
            yield part if isinstance(part, Tensor) else part.tensor().unsqueeze(0)

    def stacked(self) -> Tensor:
        """The probes stacked into one ``(P, *shape)`` tensor."""
        return torch.cat(list(self.blocks()))


def stacked(block: Tensor | ProbeViews) -> Tensor:
    """``block`` as one stacked tensor (copying a :class:`ProbeViews`)."""
    return block if isinstance(block, Tensor) else block.stacked()


class ProbeNoise:
    """Seeded perturbation directions: the probes an estimator draws (not a noise *process* of
    :mod:`unigrad.noise`, which models a network's or a device's own noise in time).

    Args:
        distribution: ``"gaussian"``, ``"rademacher"`` or ``"sphere"``.
        source: ``"generator"`` (exact per-key RNG, streamable), ``"table"`` (shared table, free) or
            ``"auto"`` (the table for tensors that fit in it, else the generator).
        table_size: entries in the shared table (``source="table"``). A tensor larger than the table is read
            in row windows (see the module docstring); its rows must hold at most half the table.
        table_seed: seed of the shared table.
    """

    def __init__(
        self,
        distribution: str = "gaussian",
        source: str = "generator",
        table_size: int = 1 << 22,
        table_seed: int = 0,
    ) -> None:
        check_choice("distribution", distribution, DISTRIBUTIONS)
        check_choice("noise_source", source, SOURCES)
        check_positive("table_size", table_size, integer=True)
        self.distribution = distribution
        self.source = source
        self.table_size = table_size
        self.table_seed = table_seed
        self._hashes: dict[tuple[int, ...], int] = {}  # memo of key_hash(seed, step, tensor, group)
        self._tables: dict[torch.device, Tensor] = {}

    def __repr__(self) -> str:
        return f"ProbeNoise({self.distribution!r}, source={self.source!r})"

    def __getstate__(self) -> dict[str, Any]:
        # the memo and the shared table are rebuilt where the object is unpickled, never shipped with it
        return {**self.__dict__, "_hashes": {}, "_tables": {}}

    # -- raw per-tensor streams (before the sphere's joint scaling) ---------------------------
    def _raw_kind(self) -> str:
        return "rademacher" if self.distribution == "rademacher" else "gaussian"

    def _uses_table(self, n: int) -> bool:
        """Whether a tensor of ``n`` elements reads the table (``"auto"``: when it fits)."""
        return self.source == "table" or (self.source == "auto" and n <= self.table_size)

    def _table(self, device: torch.device) -> Tensor:
        table = self._tables.get(device)
        if table is None:  # the shared table (built once per process), remembered per device
            table = self._tables[device] = noise_table(self.table_size, self.table_seed, device, self._raw_kind())
        return table

    def _group(self, n: int) -> int:
        """Probes per contiguous group of a tensor of ``n`` elements (see :data:`GROUP`)."""
        return max(1, min(GROUP, self.table_size // n))

    def _windowed(self, n: int) -> bool:
        """Whether a tensor of ``n`` elements is read from the table in row windows (larger than the table)."""
        return self._uses_table(n) and n > self.table_size

    def _windows(
        self,
        seed: int,
        step: int,
        probe: int,
        index: int,
        shape: Sequence[int],
        device: torch.device,
        which: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The table as overlapping row windows, ``(span, w)``, and the window of each row in ``which`` (row
        indices of any shape; ``None``: every row of the tensor, in order)."""
        rows = shape[0] if len(shape) > 0 else 1
        width = math.prod(shape) // max(rows, 1)
        if len(shape) < 2 or 2 * width > self.table_size:
            raise UnigradError(
                f"a tensor of shape {tuple(shape)} exceeds the noise table ({self.table_size} entries) and cannot be "
                f"read in row windows (rows of at most {self.table_size // 2} elements); raise table_size or use "
                f"noise_source='generator'"
            )
        span = self.table_size - width + 1
        prime = _prime_at_most(span)
        if rows > prime:
            raise UnigradError(
                f"a tensor of shape {tuple(shape)} has more rows than the noise table has windows ({prime}); raise "
                f"table_size or use noise_source='generator'"
            )
        start = key_hash(seed, step, index, probe, 0x5700) % prime
        stride = 1 + key_hash(seed, step, index, probe, 0x5701) % (prime - 1)
        if which is None:
            which = torch.arange(rows, dtype=torch.int64, device=device)
        offsets = (which.to(torch.int64) * stride + start) % prime
        return self._table(device).as_strided((span, width), (1, 1)), offsets

    def _offset(self, seed: int, step: int, probe: int, index: int, n: int) -> int:
        group = self._group(n)
        key = (seed, step, index, probe // group)
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) > 4096:
                self._hashes.clear()
            h = self._hashes[key] = key_hash(*key)
        return h % (self.table_size - group * n + 1) + (probe % group) * n

    def raw(
        self,
        seed: int,
        step: int,
        probe: int,
        index: int,
        shape: torch.Size | Sequence[int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """The raw stream of one tensor of one probe (Gaussian or ±1), shaped ``shape``."""
        n = math.prod(shape)
        dev = device if isinstance(device, torch.device) else torch.device(device)
        if self._windowed(n):
            windows, offsets = self._windows(seed, step, probe, index, shape, dev)
            out = windows[offsets]
        elif self._uses_table(n):
            off = self._offset(seed, step, probe, index, n)
            out = self._table(dev)[off : off + n]
        else:
            out = _generator_stream(self._raw_kind(), (seed, step, probe, index), 0, n, n, dev)
        return out.view(tuple(shape)).to(dtype)

    def raw_block(
        self,
        seed: int,
        step: int,
        probes: range,
        index: int,
        shape: torch.Size | Sequence[int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        views: bool = False,
    ) -> Tensor | ProbeViews:
        """Raw streams of consecutive ``probes`` of one tensor, stacked ``(len(probes), *shape)``.

        From the table this is a single strided view whenever the probes' slices are contiguous; where they are
        not (the block spans groups), ``views=True`` returns a :class:`ProbeViews` instead of a stacked copy, and
        for a tensor of more than :data:`SPAN` entries not read as table slices, one of :class:`LazyProbe` parts.
        """
        n = math.prod(shape)
        if self._uses_table(n) and not self._windowed(n) and len(probes) > 0:
            table, group = self._table(torch.device(device)), self._group(n)
            parts = []
            for _, run in itertools.groupby(probes, key=lambda p: p // group):
                run = list(run)
                off = self._offset(seed, step, run[0], index, n)
                parts.append(table[off : off + n * len(run)].view(len(run), *shape).to(dtype))
            if len(parts) == 1:
                return parts[0]
            return ProbeViews(parts) if views else torch.cat(parts)
        if views and n > SPAN and len(probes) > 0:  # a large tensor: each probe drawn only when (and where) used
            return ProbeViews(
                [LazyProbe(self, (seed, step, p, index), torch.Size(shape), dtype, device) for p in probes]
            )
        out = torch.empty((len(probes), *shape), dtype=dtype, device=device)
        for k, p in enumerate(probes):
            out[k] = self.raw(seed, step, p, index, shape, dtype, device)
        return out

    def span(self, numel: int) -> int:
        """The piece size for :meth:`chunks` when the consumer needs no chunk alignment: :data:`SPAN` where a
        tensor of ``numel`` elements reads the table as slices (its pieces are free views), :data:`WINDOW_SPAN`
        where it reads row windows (each piece is a gathered copy: small pieces keep the memory of inference),
        else :data:`CHUNK` (each generator chunk is drawn on its own anyway)."""
        if not self._uses_table(numel):
            return CHUNK
        return WINDOW_SPAN if self._windowed(numel) else SPAN

    def chunks(
        self,
        seed: int,
        step: int,
        probe: int,
        index: int,
        numel: int,
        device: torch.device | str = "cpu",
        shape: Sequence[int] | None = None,
        span: int = CHUNK,
    ) -> Iterator[tuple[int, Tensor]]:
        """Stream the raw flat noise of one tensor as ``(start, values)`` pieces of ≤ ``span`` elements.

        The values do not depend on ``span``. ``shape`` is needed only for a tensor larger than the noise
        table (read in row windows)."""
        dev = torch.device(device)
        if self._windowed(numel):
            yield from self._window_chunks(seed, step, probe, index, shape, numel, dev, span)
            return
        for start in range(0, numel, span):
            stop = min(numel, start + span)
            if self._uses_table(numel):
                off = self._offset(seed, step, probe, index, numel)
                piece = self._table(dev)[off + start : off + stop]
            else:
                piece = _generator_stream(self._raw_kind(), (seed, step, probe, index), start, stop, numel, dev)
            yield start, piece

    def _window_chunks(
        self,
        seed: int,
        step: int,
        probe: int,
        index: int,
        shape: Sequence[int] | None,
        numel: int,
        dev: torch.device,
        span: int = CHUNK,
    ) -> Iterator[tuple[int, Tensor]]:
        if shape is None or math.prod(shape) != numel:
            raise UnigradError(
                f"a tensor of {numel} elements exceeds the noise table ({self.table_size}); its shape is needed to "
                f"read it in row windows"
            )
        windows, offsets = self._windows(seed, step, probe, index, shape, dev)
        width = numel // shape[0]
        for start in range(0, numel, span):
            stop = min(numel, start + span)
            lo, hi = start // width, (stop - 1) // width + 1
            yield start, windows[offsets[lo:hi]].view(-1)[start - lo * width : stop - lo * width]

    def rows(self, seed: int, step: int, probe: int, index: int, shape: Sequence[int], ids: Tensor) -> Tensor:
        """``raw(...).view(shape)[ids]`` for a 2-D tensor (an embedding table): the raw stream of the rows
        ``ids`` only, shaped ``(*ids.shape, shape[1])``. From the generator, only the chunks that hold those
        rows are drawn; the values are the same bits as the full stream's."""
        rows, width = shape
        n, dev = rows * width, ids.device
        if self._windowed(n):
            windows, offsets = self._windows(seed, step, probe, index, shape, dev, ids)  # the looked-up rows only
            return windows[offsets]
        if self._uses_table(n):
            off = self._offset(seed, step, probe, index, n)
            return self._table(dev)[off : off + n].view(rows, width)[ids]
        used, inverse = torch.unique(ids, return_inverse=True)
        key, chunks = (seed, step, probe, index), {}
        out = torch.empty(used.numel(), width, device=dev)
        for j, r in enumerate(used.tolist()):
            start, stop = r * width, (r + 1) * width
            pieces = []
            for c in range(start // CHUNK, (stop - 1) // CHUNK + 1):
                if c not in chunks:
                    chunks[c] = _generator_chunk(self._raw_kind(), key, c, n, dev)
                lo = c * CHUNK
                pieces.append(chunks[c][max(start, lo) - lo : min(stop, lo + CHUNK) - lo])
            torch.cat(pieces, out=out[j])
        return out[inverse]

    # -- full directions --------------------------------------------------------------------
    def scale(
        self, seed: int, step: int, probe: int, shapes: Sequence[torch.Size], device: torch.device | str = "cpu"
    ) -> float:
        """Factor applied to the raw streams of a probe: √d/‖z‖ for the sphere, else 1."""
        if self.distribution != "sphere":
            return 1.0
        d = sum(math.prod(s) for s in shapes)
        sq = 0.0
        for i, s in enumerate(shapes):
            for _, piece in self.chunks(seed, step, probe, i, math.prod(s), device, s):
                sq += float(piece.double().square().sum())
        return math.sqrt(d / sq)

    def direction(self, seed: int, step: int, probe: int, tensors: Sequence[Tensor]) -> list[Tensor]:
        """The full direction of one probe, one tensor per entry of ``tensors`` (like-shaped)."""
        raws = [self.raw(seed, step, probe, i, t.shape, t.dtype, t.device) for i, t in enumerate(tensors)]
        if self.distribution == "sphere":
            d = sum(r.numel() for r in raws)
            norm = torch.sqrt(sum(r.double().square().sum() for r in raws))
            s = float(math.sqrt(d) / norm)
            raws = [r * s for r in raws]
        return raws

    def block(
        self, seed: int, step: int, probes: range, tensors: Sequence[Tensor], views: bool = False
    ) -> list[Tensor] | list[Tensor | ProbeViews]:
        """Directions of consecutive ``probes``: one ``(P, *shape)`` tensor per entry of ``tensors`` (or, with
        ``views=True``, a :class:`ProbeViews` where stacking would copy)."""
        views = views and self.distribution != "sphere"  # the sphere's scaling needs the stacked tensors
        blocks = [
            self.raw_block(seed, step, probes, i, t.shape, t.dtype, t.device, views) for i, t in enumerate(tensors)
        ]
        if self.distribution == "sphere":
            d = sum(t.numel() for t in tensors)
            sq = sum(b.double().square().flatten(1).sum(1) for b in blocks)
            s = torch.sqrt(d / sq)
            blocks = [b * s.to(b.dtype).view(-1, *([1] * (b.dim() - 1))) for b in blocks]
        return blocks


def __getattr__(name: str) -> Any:
    # the probe noise was called ``Noise`` before; the old name still works, with a warning
    if name == "Noise":
        warnings.warn(
            "unigrad Noise is now called ProbeNoise (the probes an estimator draws; unigrad.noise holds noise "
            "processes); use ProbeNoise",
            DeprecationWarning,
            stacklevel=2,
        )
        return ProbeNoise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
