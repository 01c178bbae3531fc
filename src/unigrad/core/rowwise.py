"""Which models and objectives treat every sample on its own and draw nothing at random.

A model is *row-wise* when each row of a batch goes through it independently of the other rows and no random
number is drawn on the way: then ``k`` stacked copies of a batch give ``k`` copies of its outputs, and two calls
give the same result. :func:`rowwise` says so for a model and an objective when that can be proven from their
types alone:

* every module is of a type in :data:`ROWWISE_MODULES` (exact types: a subclass may change ``forward``; softmax,
  flatten and unflatten away from the batch dimension, embeddings without ``max_norm``),
  of a type in :data:`EVAL_ONLY` in eval mode (dropout masks and batch statistics otherwise), or of a class
  that vouches for itself with the class attribute ``rowwise = True``;
* no module has forward hooks (and no global hooks are set): a hook may do anything;
* the objective is a :func:`~unigrad.core.objective.supervised` one whose loss is row-wise
  (:data:`~unigrad.core.objective.ROWWISE_LOSSES`, or a callable with the attribute ``rowwise = True``).

Two things use it. Node perturbation stacks its noisy passes into one batch (:mod:`unigrad.nn.perturbation`),
and an estimator step skips the bookkeeping of the global random generators, which such a step never draws
from (:mod:`unigrad.core.step_state`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from unigrad.core.objective import Objective, Supervised

ROWWISE_MODULES: frozenset[type[nn.Module]] = frozenset(
    {
        nn.Sequential,
        nn.Identity,
        nn.Flatten,
        nn.Unflatten,
        nn.Linear,
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.Embedding,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.ReLU,
        nn.ReLU6,
        nn.Tanh,
        nn.Sigmoid,
        nn.GELU,
        nn.SiLU,
        nn.ELU,
        nn.LeakyReLU,
        nn.Softplus,
        nn.Hardtanh,
        nn.Softmax,
        nn.LogSoftmax,
        nn.MaxPool1d,
        nn.MaxPool2d,
        nn.AvgPool1d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool1d,
        nn.AdaptiveAvgPool2d,
    }
)
"""Module types that treat the rows of a batch independently and draw no random numbers."""

EVAL_ONLY: frozenset[type[nn.Module]] = frozenset(
    {nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d}
)
"""Module types that are row-wise and draw nothing in eval mode only."""

_CONDITIONS: dict[type[nn.Module], Callable[[Any], bool]] = {
    nn.Softmax: lambda m: m.dim is not None and m.dim >= 1,  # dim 0, or a negative one, may be the batch
    nn.LogSoftmax: lambda m: m.dim is not None and m.dim >= 1,
    nn.Flatten: lambda m: m.start_dim >= 1,
    nn.Unflatten: lambda m: isinstance(m.dim, int) and m.dim >= 1,
    nn.Embedding: lambda m: m.max_norm is None,  # max_norm renormalises the looked-up rows in place
}
"""Settings under which a type of :data:`ROWWISE_MODULES` is row-wise (only those listed depend on settings)."""


def _hooked(module: nn.Module, allow: type | None = None) -> bool:
    """Whether ``module`` has forward hooks (other than pre-hooks bound to an instance of ``allow``)."""
    if not module._forward_pre_hooks:
        return bool(module._forward_hooks)
    pre = [
        h
        for h in module._forward_pre_hooks.values()
        if allow is None or not isinstance(getattr(h, "__self__", None), allow)
    ]
    return bool(pre or module._forward_hooks)


def rowwise_model(model: nn.Module, allow_hooks_of: type | None = None) -> bool:
    """Whether every module of ``model`` is known to be row-wise and to draw nothing (see the module docstring).

    ``allow_hooks_of``: a class whose instances' bound methods may be forward pre-hooks (the step's own
    bookkeeping, :class:`~unigrad.core.step_state.StepState`).
    """
    glob = torch.nn.modules.module
    if glob._global_forward_hooks or glob._global_forward_pre_hooks:
        return False
    for m in model.modules():
        kind = type(m)
        if kind in ROWWISE_MODULES:
            condition = _CONDITIONS.get(kind)
            known = condition is None or condition(m) or getattr(kind, "rowwise", False) is True
        else:
            known = getattr(kind, "rowwise", False) is True or (kind in EVAL_ONLY and not m.training)
        if not known or ((m._forward_pre_hooks or m._forward_hooks) and _hooked(m, allow_hooks_of)):
            return False
    return True


def rowwise_objective(objective: Objective) -> bool:
    """Whether ``objective`` is a supervised objective with a row-wise loss that draws nothing."""
    return type(objective) is Supervised and objective.rowwise


def rowwise(model: nn.Module, objective: Objective, allow_hooks_of: type | None = None) -> bool:
    """Whether ``objective(model)`` is provably row-wise and free of random draws (see the module docstring)."""
    return rowwise_objective(objective) and rowwise_model(model, allow_hooks_of)
