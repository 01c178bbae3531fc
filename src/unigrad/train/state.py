"""The state a run carries between steps besides the model: float32 master weights of a half-precision
model, and the copy of everything a run restores or resumes from (:class:`Snapshot`, :func:`dump_state`).

The model's ``state_dict`` holds its parameters and buffers, the decorrelation matrices ``R`` and their update
counters (:class:`~unigrad.nn.decorrelation.Decorrelation` keeps its counter as extra state); with the
optimizer's and the estimator's state dicts and the masters, that is what a divergence restores and what a
checkpoint holds.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.errors import UnigradError
from unigrad.core.estimator import Estimator

HALF_DTYPES = (torch.float16, torch.bfloat16)
"""Dtypes whose models train through float32 master weights (:class:`MasterWeights`)."""


class MasterWeights:
    """Float32 master copies of a half-precision model's parameters, which the optimizer steps.

    The model computes in its own dtype and the estimator writes ``.grad`` in it; :meth:`grads_in` hands the
    gradients to the masters as float32, the ``torch.optim`` optimizer steps the masters (its state is float32
    too), and :meth:`weights_out` rounds the masters into the model. Half precision cannot hold what the
    optimizer needs: Adam's ``eps = 1e-8`` is zero in float16, so a coordinate with a zero gradient gives
    ``0/0`` at the first step, and updates smaller than half a unit in the last place of a weight (most of
    them, at learning rates around 1e-3) round away.
    """

    def __init__(self, model: nn.Module) -> None:
        self.pairs = [(p, p.detach().float().clone().requires_grad_(p.requires_grad)) for p in model.parameters()]

    @property
    def params(self) -> list[Tensor]:
        """The float32 masters, in the order of ``model.parameters()`` (what the optimizer steps)."""
        return [m for _, m in self.pairs]

    def grads_in(self) -> None:
        """Each master's ``.grad``: its parameter's ``.grad`` in float32 (``None`` stays ``None``)."""
        for p, m in self.pairs:
            m.grad = None if p.grad is None else p.grad.detach().float()

    @torch.no_grad()
    def weights_out(self) -> None:
        """Round the masters into the model's parameters."""
        for p, m in self.pairs:
            p.copy_(m)

    @torch.no_grad()
    def adopt_changes(self) -> None:
        """Take over parameters changed in the model since :meth:`weights_out` (a decorrelation update with
        weight compensation rewrites ``W``); the others keep their float32 values."""
        for p, m in self.pairs:
            if not torch.equal(p, m.to(p.dtype)):
                m.copy_(p)

    def state(self) -> list[Tensor]:
        """The masters (references), for a checkpoint or a snapshot."""
        return [m.detach() for _, m in self.pairs]

    @torch.no_grad()
    def load(self, tensors: Sequence[Tensor]) -> None:
        """Set the masters from :meth:`state`'s tensors (the model's parameters are left as they are)."""
        if len(tensors) != len(self.pairs):
            raise UnigradError(f"the checkpoint holds {len(tensors)} master weights, the model {len(self.pairs)}")
        for (_, m), t in zip(self.pairs, tensors):
            m.copy_(t)


class Snapshot:
    """An in-memory copy of parameters and buffers (decorrelation ``R`` included), master weights, optimizer and
    estimator state."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        estimator: Estimator,
        step: int,
        masters: MasterWeights | None = None,
    ) -> None:
        self.state = copy.deepcopy(dump_state(model, optimizer, estimator, masters))
        self.step = step

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        estimator: Estimator,
        masters: MasterWeights | None = None,
    ) -> None:
        load_state(copy.deepcopy(self.state), model, optimizer, estimator, masters)


def dump_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, estimator: Estimator, masters: MasterWeights | None = None
) -> dict[str, Any]:
    """Model (parameters, buffers, decorrelation counters), optimizer and estimator state (references, not
    copies), for a checkpoint or a snapshot; the float32 master weights of a half-precision model too."""
    return {
        "model": {k: v.detach() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "estimator": estimator.state_dict(),
        **({"masters": masters.state()} if masters is not None else {}),
    }


def load_state(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    estimator: Estimator,
    masters: MasterWeights | None = None,
) -> None:
    """Set model, optimizer, estimator and masters from :func:`dump_state`'s ``state`` (a snapshot or a checkpoint,
    also one written before the decorrelation counters were part of the model's ``state_dict``)."""
    model.load_state_dict(_with_decorrelation_counters(state))
    if masters is not None:
        masters.load(state["masters"])
    optimizer.load_state_dict(state["optimizer"])
    estimator.load_state_dict(state["estimator"])


def _with_decorrelation_counters(state: dict[str, Any]) -> dict[str, Any]:
    """The model state of ``state``; older checkpoints kept the decorrelation counters apart (``decor_steps``, by
    module name): they become the modules' extra state."""
    model = state["model"]
    steps = state.get("decor_steps") or {}
    if not steps:
        return model
    model = dict(model)
    for name, step in steps.items():
        model.setdefault(f"{name}._extra_state" if name else "_extra_state", torch.tensor(int(step)))
    return model
