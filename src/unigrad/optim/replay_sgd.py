"""MeZO-SGD: the SGD step that replays a direction stored as noise keys.

:class:`ReplaySGD` applies

    θ ← θ − η·(g + λ·θ)

for a :class:`~unigrad.core.replay.ReplayDirection` ``g = Σ_i a_i·z_i`` by regenerating ``z_i`` chunk
by chunk, so no ``d``-sized tensor ever exists: this is the MeZO-SGD update of Malladi et al. 2023
("Fine-Tuning Language Models with Just Forward Passes", arXiv:2305.17333, Algorithm 1), where the
update re-draws ``z`` from the same seed instead of storing it. It applies the same elementwise
operations as ``torch.optim.SGD`` (``d = g + λθ; θ ← θ − η·d``), so with ``mezo``'s replayed direction
it ends bitwise where ``torch.optim.SGD`` on ``mezo``'s dense ``.grad`` does. Momentum and Adam need
``d``-sized state of their own, so they are deliberately absent here: use the dense ``.grad`` with any
``torch.optim`` optimizer instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.replay import ReplayDirection, StructuredDirection, flat_view


class ReplaySGD(torch.optim.Optimizer):
    """Plain SGD with weight decay, ``θ ← θ − lr·(g + weight_decay·θ)``, for a :class:`ReplayDirection` (or a
    :class:`~unigrad.core.replay.StructuredDirection` of the structured estimators).

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
    def step(self, direction: ReplayDirection | StructuredDirection | None = None) -> None:  # type: ignore[override]
        """Apply ``direction`` (the ``Estimate.info["direction"]`` of a ``write_grad=False`` estimate)."""
        if not isinstance(direction, ReplayDirection | StructuredDirection):
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
