"""Directions stored as noise keys: the compressed form that MeZO-SGD replays.

A seeded zeroth-order direction is ``g = Σ_i a_i·z_i`` where every ``z_i`` is regenerated from its
key ``(seed, step, probe i, tensor)`` (see :mod:`unigrad.core.rng`). :class:`ReplayDirection` keeps
only the keys and the ``q`` coefficients ``a_i``: a few bytes instead of ``d`` floats. The optimizer
that applies it without ever holding ``d`` floats, :class:`unigrad.optim.ReplaySGD`, lives with the
optimizers (``unigrad.optim``).

Why this departs from the ``.grad`` contract: every estimator writes its direction into ``.grad``
so that any ``torch.optim`` optimizer can consume it, but ``.grad`` costs ``d`` floats, i.e. as much
as the model, which breaks MeZO's "memory of inference". An estimator built with
``write_grad=False`` (``mezo``) therefore leaves ``.grad`` alone and returns a
:class:`ReplayDirection` in ``Estimate.info["direction"]``.

Exactness: :meth:`ReplayDirection.chunks` accumulates ``Σ_i a_i·z_i`` piece by piece (the sums are
elementwise, so the piece size does not matter), in probe order, starting from zeros, with the same
elementwise operations that ``mezo`` uses to build the dense ``.grad``; the replayed direction is
therefore bitwise equal to that ``.grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from unigrad.core.errors import UnigradError
from unigrad.core.rng import SPAN, WINDOW_SPAN, ProbeNoise


def flat_view(p: Tensor) -> Tensor:
    """A flat, writable view of a parameter's storage (the noise stream runs over it in row-major order)."""
    if not p.is_contiguous():
        raise UnigradError(f"in-place perturbation needs contiguous parameters; got one of shape {tuple(p.shape)}")
    return p.detach().view(-1)


@dataclass(frozen=True)
class ReplayDirection:
    """``g = Σ_i coeffs[i]·z_i`` with ``z_i`` keyed by ``(seed, step, i, tensor)``; never stored densely.

    Attributes:
        noise: the :class:`~unigrad.core.rng.ProbeNoise` that generates ``z_i``.
        seed, step: the key of the estimate that produced the direction.
        coeffs: the weight ``a_i`` of each probe (for MeZO, ``c_i/q``).
        params: the parameters the direction is for, by identity; position = ``tensor`` part of the key.
    """

    noise: ProbeNoise
    seed: int
    step: int
    coeffs: tuple[float, ...]
    params: tuple[Tensor, ...] = field(repr=False)

    @property
    def nbytes(self) -> int:
        """Bytes of the compressed form: the coefficients and the key (not the shared parameters)."""
        return 8 * (len(self.coeffs) + 2)

    def chunks(self, index: int) -> Iterator[tuple[int, Tensor]]:
        """``(start, g[start:start+n])`` for parameter ``index``, piece by piece (:meth:`ProbeNoise.span
        <unigrad.core.rng.ProbeNoise.span>` elements), in its dtype and device."""
        p = self.params[index]
        span = self.noise.span(p.numel())  # the elementwise sums do not depend on the piece size
        streams = [
            self.noise.chunks(self.seed, self.step, i, index, p.numel(), p.device, p.shape, span)
            for i in range(len(self.coeffs))
        ]
        for pieces in zip(*streams, strict=True):
            start = pieces[0][0]
            g = torch.zeros(pieces[0][1].numel(), dtype=p.dtype, device=p.device)
            for (_, z), a in zip(pieces, self.coeffs, strict=True):
                g.add_(z.to(p.dtype), alpha=a)
            yield start, g

    def materialize(self) -> list[Tensor]:
        """The dense direction, one tensor per parameter (``d`` floats: for inspection and tests)."""
        return _materialize(self)


@dataclass(frozen=True)
class StructuredDirection:
    """``g = Σ_i coeffs[i]·u_i`` for structured directions ``u_i`` (low-rank, masked, …) that ``direction(k, p, i)``
    regenerates from their keys; never stored densely, replayed tensor by tensor.

    The structured estimators of :mod:`unigrad.zeroth._structured` return one with ``write_grad=False``;
    :class:`~unigrad.optim.ReplaySGD` applies it as it applies a :class:`ReplayDirection`, before the estimator's
    next step (the directions read the estimator's state: factors, masks, preconditioner). Each parameter's
    direction is formed whole, one tensor at a time, or, for a large 2-d parameter whose rows the method can
    draw alone, in blocks of rows.

    Attributes:
        direction: ``direction(k, p, i)``, the direction of probe ``i`` for parameter ``k`` (``p``), shaped like ``p``.
        coeffs: the weight ``a_i`` of each probe.
        params: the parameters the direction is for, by identity.
    """

    direction: Callable[[int, Tensor, int], Tensor] = field(repr=False)
    coeffs: tuple[float, ...]
    params: tuple[Tensor, ...] = field(repr=False)
    rows: Callable[[int, Tensor, int, Tensor], Tensor | None] | None = field(default=None, repr=False)
    """``rows(k, p, i, ids)``: the rows ``ids`` of a 2-d parameter's direction without forming the rest, or
    ``None`` where the method cannot (then, and without ``rows``, a parameter is replayed whole)."""

    @property
    def nbytes(self) -> int:
        """Bytes of the compressed form: the coefficients (the factors it reads belong to the estimator)."""
        return 8 * len(self.coeffs)

    def chunks(self, index: int) -> Iterator[tuple[int, Tensor]]:
        """``(start, g[start:start+n])`` for parameter ``index``, flat, in its dtype and device: a 2-d parameter of
        more than :data:`~unigrad.core.rng.SPAN` entries whose rows can be drawn alone (``rows``) in blocks of rows
        of about :data:`~unigrad.core.rng.WINDOW_SPAN` entries, else the whole direction at once."""
        p = self.params[index]
        rows = self.rows
        if rows is not None and p.dim() == 2 and p.numel() > SPAN and self.coeffs:
            if rows(index, p, 0, torch.zeros(1, dtype=torch.long, device=p.device)) is not None:
                block = max(1, WINDOW_SPAN // p.shape[1])
                for lo in range(0, p.shape[0], block):
                    ids = torch.arange(lo, min(p.shape[0], lo + block), device=p.device)
                    g = torch.zeros(ids.numel(), p.shape[1], dtype=p.dtype, device=p.device)
                    for i, a in enumerate(self.coeffs):
                        g.add_(rows(index, p, i, ids).to(p.dtype), alpha=a)  # type: ignore[union-attr]
                    yield lo * p.shape[1], g.view(-1)
                return
        g = torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
        for i, a in enumerate(self.coeffs):
            g.add_(self.direction(index, p, i).reshape(-1).to(p.dtype), alpha=a)
        yield 0, g

    def materialize(self) -> list[Tensor]:
        """The dense direction, one tensor per parameter (for inspection and tests)."""
        return _materialize(self)


def _materialize(direction: ReplayDirection | StructuredDirection) -> list[Tensor]:
    """A compressed direction assembled densely from its :meth:`chunks`, one tensor per parameter."""
    out = []
    for k, p in enumerate(direction.params):
        g = torch.empty(p.numel(), dtype=p.dtype, device=p.device)
        for start, piece in direction.chunks(k):
            g[start : start + piece.numel()] = piece
        out.append(g.view(p.shape))
    return out


Replayable = ReplayDirection | StructuredDirection
"""A direction :class:`~unigrad.optim.ReplaySGD` can apply without a dense ``.grad``."""
