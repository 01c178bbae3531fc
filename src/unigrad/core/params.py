"""Parameter views: which tensors an estimator sees and how it writes its direction."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` for every parameter with ``requires_grad``, in registration order.

    The position in this list is the ``tensor`` part of a noise key.
    """
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def numel(params: Sequence[tuple[str, Tensor]] | Sequence[Tensor]) -> int:
    """Total number of elements."""
    return sum((p[1] if isinstance(p, tuple) else p).numel() for p in params)


@torch.no_grad()
def write_grad(params: Sequence[tuple[str, nn.Parameter]], grads: Sequence[Tensor], *, owned: bool = False) -> None:
    """Set ``p.grad = g`` for every trainable parameter (replacing whatever was there).

    By default the values are copied (``g`` may be a view of a shared noise table, or another
    tensor someone else holds). With ``owned=True`` the caller hands over freshly computed tensors
    that nobody else references: where ``p.grad`` is unset they become ``.grad`` as they are,
    saving a copy.
    """
    for (_, p), g in zip(params, grads, strict=True):
        if g.requires_grad:
            g = g.detach()
        if g.dtype != p.dtype or g.device != p.device:
            g = g.to(dtype=p.dtype, device=p.device)
        if g.shape != p.shape:
            g = g.reshape(p.shape)
        if p.grad is None or p.grad.shape != p.shape:
            if owned and g.is_contiguous():
                p.grad = g
                continue
            p.grad = torch.empty_like(p)
        p.grad.copy_(g)


def snapshot(params: Sequence[tuple[str, Tensor]]) -> list[Tensor]:
    """Detached copies of the parameter values (for tests and diagnostics)."""
    return [p.detach().clone() for _, p in params]
