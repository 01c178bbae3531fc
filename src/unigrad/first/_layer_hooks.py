"""A context manager that puts a forward pre-hook and a forward hook on each of a list of layers.

Subclasses give ``_pre(i)`` and ``_post(i)``, the hooks of layer ``i``; entering registers them on every layer (and
removes what was registered if a registration fails), leaving removes them all. Used by the feedback-alignment and
direct-feedback-alignment estimators, which reroute the backward pass layer by layer.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch
from torch import nn


class LayerHooks:
    """Register ``_pre(i)``/``_post(i)`` on ``layers[i]`` for the duration of a ``with`` block."""

    def __init__(self, layers: list[tuple[str, nn.Module]]) -> None:
        self.layers = layers
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def _pre(self, i: int) -> Callable[..., Any]:
        raise NotImplementedError

    def _post(self, i: int) -> Callable[..., Any]:
        raise NotImplementedError

    def __enter__(self) -> LayerHooks:
        try:
            for i, (_, layer) in enumerate(self.layers):
                self.handles.append(layer.register_forward_pre_hook(self._pre(i)))
                self.handles.append(layer.register_forward_hook(self._post(i)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
