"""Directions stored as noise keys, and the SGD step that replays them (MeZO-SGD).

A seeded zeroth-order direction is ``g = Σ_i a_i·z_i`` where every ``z_i`` is regenerated from its
key ``(seed, step, probe i, tensor)`` (see :mod:`unigrad.core.rng`). :class:`ReplayDirection` keeps
only the keys and the ``q`` coefficients ``a_i``: a few bytes instead of ``d`` floats.
:class:`ReplaySGD` applies

    θ ← θ − η·(g + λ·θ)

by regenerating ``z_i`` chunk by chunk, so no ``d``-sized tensor ever exists: this is the MeZO-SGD
update of Malladi et al. 2023 ("Fine-Tuning Language Models with Just Forward Passes",
arXiv:2305.17333, Algorithm 1), where the update re-draws ``z`` from the same seed instead of
storing it.

Why this departs from the ``.grad`` contract: every estimator writes its direction into ``.grad``
so that any ``torch.optim`` optimizer can consume it, but ``.grad`` costs ``d`` floats, i.e. as much
as the model, which breaks MeZO's "memory of inference". An estimator built with
``write_grad=False`` (``mezo``) therefore leaves ``.grad`` alone and returns a
:class:`ReplayDirection` in ``Estimate.info["direction"]``; pass it to :meth:`ReplaySGD.step`.
Momentum and Adam need ``d``-sized state of their own, so they are deliberately absent here: use
the dense ``.grad`` with any ``torch.optim`` optimizer instead.

Exactness: :meth:`ReplayDirection.chunks` accumulates ``Σ_i a_i·z_i`` per chunk of
:data:`~unigrad.core.rng.CHUNK` elements, in probe order, starting from zeros, with the same
elementwise operations that ``mezo`` uses to build the dense ``.grad``; the replayed direction is
therefore bitwise equal to that ``.grad``, and :class:`ReplaySGD` applies the same elementwise
operations as ``torch.optim.SGD`` (``d = g + λθ; θ ← θ − η·d``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.rng import ProbeNoise


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
        """``(start, g[start:start+n])`` for parameter ``index``, chunk by chunk, in its dtype and device."""
        p = self.params[index]
        streams = [
            self.noise.chunks(self.seed, self.step, i, index, p.numel(), p.device) for i in range(len(self.coeffs))
        ]
        for pieces in zip(*streams, strict=True):
            start = pieces[0][0]
            g = torch.zeros(pieces[0][1].numel(), dtype=p.dtype, device=p.device)
            for (_, z), a in zip(pieces, self.coeffs, strict=True):
                g.add_(z.to(p.dtype), alpha=a)
            yield start, g

    def materialize(self) -> list[Tensor]:
        """The dense direction, one tensor per parameter (``d`` floats: for inspection and tests)."""
        out = []
        for k, p in enumerate(self.params):
            g = torch.empty(p.numel(), dtype=p.dtype, device=p.device)
            for start, piece in self.chunks(k):
                g[start : start + piece.numel()] = piece
            out.append(g.view(p.shape))
        return out


class ReplaySGD(torch.optim.Optimizer):
    """Plain SGD with weight decay, ``θ ← θ − lr·(g + weight_decay·θ)``, for a :class:`ReplayDirection`.

    Call ``optimizer.step(estimate.info["direction"])``. Parameters of the groups that the direction
    does not cover are left alone (as ``torch.optim`` skips parameters whose ``.grad`` is None).
    Learning-rate schedulers work as with any ``torch.optim`` optimizer. Extra memory: a few chunks.

    Args:
        params: parameters or parameter groups, as for ``torch.optim.SGD``.
        lr: learning rate η (> 0).
        weight_decay: L2 coefficient λ (≥ 0).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        check_positive("lr", lr)
        if not weight_decay >= 0:
            raise UnigradError(f"option weight_decay must be a number >= 0, got {weight_decay!r}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, direction: ReplayDirection | None = None) -> None:  # type: ignore[override]
        """Apply ``direction`` (the ``Estimate.info["direction"]`` of a ``write_grad=False`` estimate)."""
        if not isinstance(direction, ReplayDirection):
            raise UnigradError(
                "ReplaySGD.step needs the compressed direction: optimizer.step(estimate.info['direction'])"
            )
        index = {id(p): k for k, p in enumerate(direction.params)}
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                k = index.get(id(p))
                if k is None:
                    continue
                flat = flat_view(p)
                for start, g in direction.chunks(k):
                    x = flat[start : start + g.numel()]
                    if wd != 0:
                        g = g.add(x, alpha=wd)
                    x.add_(g, alpha=-lr)
