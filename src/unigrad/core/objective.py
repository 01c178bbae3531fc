"""Objectives: what an estimator measures.

An objective is a callable ``objective(model) -> losses``. It returns per-sample losses of shape
``(B,)`` (the estimators minimise their mean), or a 0-d scalar where no batch exists (an RL return,
a black-box device), as a floating-point tensor. Estimators may call it many times, under perturbed
parameters; every call's result passes :func:`check_losses`, which refuses anything else with a one-line
:class:`~unigrad.core.errors.UnigradError`.

:func:`supervised` builds the common case ``loss_fn(model(x), y)``. Wrap any other callable with
:func:`objective` to state how many samples one call costs, so cost accounting stays honest.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import NonFiniteLossError, UnigradError


@runtime_checkable
class Objective(Protocol):
    """``objective(model)`` returns per-sample losses ``(B,)`` or a scalar loss."""

    def __call__(self, model: nn.Module) -> Tensor: ...


class Supervised:
    """Per-sample ``loss_fn(model(inputs), targets)`` on one batch.

    ``loss_fn`` may be a loss module (its ``reduction`` is switched to ``'none'``), a functional loss
    that accepts ``reduction='none'`` (``F.cross_entropy``, ``F.mse_loss``), or any callable that
    already returns per-sample losses. Elementwise losses (``(B, k)`` from ``F.mse_loss``) are averaged
    per sample, so the result is ``(B,)``. A loss that only returns a scalar still works, but
    per-sample statistics are then unavailable.

    ``rowwise`` says whether each sample's loss depends on that sample's output and target alone, with no
    random number drawn: true for the standard losses of :data:`ROWWISE_LOSSES` and for any callable with an
    attribute ``rowwise = True`` (a promise of both). Estimators may then evaluate several passes as one batch
    of stacked copies (:meth:`repeat`) and skip the bookkeeping of the random generators
    (:mod:`unigrad.core.rowwise`).
    """

    def __init__(self, loss_fn: Callable[..., Tensor], inputs: Tensor, targets: Tensor) -> None:
        if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
            raise UnigradError("supervised(loss_fn, inputs, targets) needs tensors for inputs and targets")
        if inputs.shape[0] != targets.shape[0]:
            raise UnigradError(
                f"inputs and targets disagree on the batch size: {inputs.shape[0]} vs {targets.shape[0]}"
            )
        self.rowwise = _rowwise(loss_fn)
        self.loss_fn = _per_sample(loss_fn)
        self.inputs = inputs
        self.targets = targets
        self.n_samples = int(inputs.shape[0])

    def repeat(self, copies: int) -> Supervised:
        """The same objective on ``copies`` stacked copies of the batch (rows ``k·B … (k+1)·B − 1`` are copy ``k``)."""
        out = Supervised.__new__(Supervised)
        out.rowwise, out.loss_fn = self.rowwise, self.loss_fn
        out.inputs = self.inputs.repeat(copies, *([1] * (self.inputs.dim() - 1)))
        out.targets = self.targets.repeat(copies, *([1] * (self.targets.dim() - 1)))
        out.n_samples = copies * self.n_samples
        return out

    def __call__(self, model: nn.Module) -> Tensor:
        return self.score(model(self.inputs))

    def score_copies(self, outputs: Tensor, copies: int) -> Tensor:
        """Per-sample losses of ``outputs`` for ``copies`` stacked copies of the batch (as :meth:`repeat` would score
        them, without repeating the inputs)."""
        targets = self.targets.repeat(copies, *([1] * (self.targets.dim() - 1)))
        losses = check_losses(self.loss_fn(outputs, targets), "the loss function", elementwise=True)
        if losses.dim() > 1:
            losses = losses.reshape(losses.shape[0], -1).mean(dim=1)
        return losses

    def score(self, outputs: Tensor) -> Tensor:
        """Per-sample losses of ``outputs`` against this batch's targets (also used by local heads)."""
        losses = check_losses(self.loss_fn(outputs, self.targets), "the loss function", elementwise=True)
        if losses.dim() > 1:  # elementwise losses (F.mse_loss on (B, k) outputs): the mean of each sample
            losses = losses.reshape(losses.shape[0], -1).mean(dim=1)
        return losses


ROWWISE_LOSSES: tuple[Callable[..., Tensor] | type[nn.Module], ...] = (
    nn.functional.cross_entropy,
    nn.functional.nll_loss,
    nn.functional.mse_loss,
    nn.functional.l1_loss,
    nn.functional.smooth_l1_loss,
    nn.functional.huber_loss,
    nn.functional.binary_cross_entropy,
    nn.functional.binary_cross_entropy_with_logits,
    nn.CrossEntropyLoss,
    nn.NLLLoss,
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
)
"""Loss functions (and loss module classes) whose per-sample losses depend on each sample alone."""


def _rowwise(loss_fn: Callable[..., Tensor]) -> bool:
    if getattr(loss_fn, "rowwise", False) is True:
        return True
    if isinstance(loss_fn, nn.Module):
        return type(loss_fn) in ROWWISE_LOSSES
    return any(loss_fn is f for f in ROWWISE_LOSSES)


def _per_sample(loss_fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    if isinstance(loss_fn, nn.Module) and hasattr(loss_fn, "reduction"):
        loss_fn.reduction = "none"
        return loss_fn
    try:
        params = inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):
        return loss_fn
    if "reduction" in params:
        return lambda out, tgt: loss_fn(out, tgt, reduction="none")
    return loss_fn


def supervised(loss_fn: Callable[..., Tensor], inputs: Tensor, targets: Tensor) -> Supervised:
    """The objective ``loss_fn(model(inputs), targets)``, per sample."""
    return Supervised(loss_fn, inputs, targets)


class _Counted:
    def __init__(self, fn: Callable[[nn.Module], Tensor], n_samples: int) -> None:
        self.fn = fn
        self.n_samples = n_samples

    def __call__(self, model: nn.Module) -> Tensor:
        return self.fn(model)


def objective(fn: Callable[[nn.Module], Tensor], n_samples: int) -> Objective:
    """Wrap ``fn(model) -> loss`` and declare that one call costs ``n_samples`` forward samples."""
    if n_samples < 1:
        raise UnigradError(f"n_samples must be >= 1, got {n_samples}")
    return _Counted(fn, n_samples)


def n_samples(objective: Objective, losses: Tensor | None = None) -> int:
    """Forward samples one call of ``objective`` costs: declared, else the number of losses."""
    declared = getattr(objective, "n_samples", None)
    if declared is not None:
        return int(declared)
    return 1 if losses is None else max(1, losses.numel())


def reduce(losses: Tensor) -> Tensor:
    """Mean of per-sample losses over the last axis (a scalar stays a scalar)."""
    return losses if losses.dim() == 0 else losses.mean(dim=-1)


_MUST = "must return per-sample losses of shape (B,) or a 0-d scalar, as a floating-point tensor"


def check_losses(losses: object, source: str = "the objective", *, elementwise: bool = False) -> Tensor:
    """Return ``losses`` if it is what an objective must return, else raise a one-line :class:`UnigradError`.

    An objective returns per-sample losses of shape ``(B,)`` or a 0-d scalar, as a floating-point tensor.
    ``elementwise`` also allows ``(B, k, …)`` (a loss function's elementwise losses, which
    :class:`Supervised` averages per sample). Only the type, shape and dtype are read, never the values,
    so the check holds under ``torch.func`` transforms (``vmap`` sees one probe's shape).
    """
    if not isinstance(losses, Tensor):
        raise UnigradError(
            f"{source} returned a {type(losses).__name__}, not a tensor: it {_MUST} (keep the loss a tensor: "
            f"no .item(), float() or numpy)"
        )
    if not losses.is_floating_point():
        raise UnigradError(f"{source} returned {losses.dtype} losses: it {_MUST} (e.g. losses.float())")
    if losses.dim() > 1 and not elementwise:
        raise UnigradError(
            f"{source} returned losses of shape {tuple(losses.shape)}, which is ambiguous: it {_MUST}; reduce "
            f"each sample's losses yourself (e.g. losses.mean(dim=1)), or use unigrad.supervised(loss_fn, x, y), "
            f"which averages elementwise losses per sample"
        )
    return losses


def losses_of(objective: Objective, model: nn.Module) -> Tensor:
    """``objective(model)``, checked by :func:`check_losses` (every estimator calls objectives through this)."""
    return check_losses(objective(model))


def check_differentiable(losses: Tensor, method: str, *, forward_mode: bool = False) -> None:
    """Raise if ``losses`` are cut off from what ``method`` differentiates them by.

    Reverse mode (``torch.autograd``): the losses must require grad. Forward mode (inside
    ``torch.func.jvp``): they must carry a tangent. A detached loss, or one rebuilt from ``.item()`` or
    numpy, would otherwise give an autograd error or, silently, a zero direction.
    """
    cut = fwAD.unpack_dual(losses).tangent is None if forward_mode else not losses.requires_grad
    if cut and (forward_mode or torch.is_grad_enabled()):
        raise UnigradError(
            f"{method} differentiates the objective, but its losses do not depend on the trainable parameters "
            f"through torch operations (a detached tensor, or one rebuilt from .item() or numpy); compute them "
            f"from the model's outputs with torch operations, or use a zeroth-order method"
        )


def evaluate(objective: Objective, model: nn.Module, cost: Cost, *, probes: int = 1) -> Tensor:
    """Call ``objective(model)``, add its forward samples to ``cost`` and return the per-sample losses."""
    losses = losses_of(objective, model)
    cost.forwards += probes * n_samples(objective, losses)
    return losses


def loss_and_gradient(
    objective: Objective, model: nn.Module, params: list[tuple[str, nn.Parameter]], cost: Cost, method: str
) -> tuple[float, list[Tensor]]:
    """``f(θ)`` and ``∇f(θ)`` by one forward and one backward: the mean loss and one gradient per parameter.

    ``f`` is the mean of the per-sample losses (:func:`reduce`); a parameter the loss does not reach gets a
    zero gradient. Adds the batch to ``cost`` as forwards and as backwards. Raises if the losses cannot be
    differentiated (:func:`check_differentiable`, naming ``method``).
    """
    with torch.enable_grad():
        losses = evaluate(objective, model, cost)
        check_differentiable(losses, method)
        loss = reduce(losses)
        grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    cost.backwards += n_samples(objective, losses)
    return float(loss.detach()), [torch.zeros_like(p) if g is None else g for (_, p), g in zip(params, grads)]


def check_finite(value: float | Tensor, what: str = "loss") -> float:
    """Return ``value`` as a float, raising :class:`NonFiniteLossError` if it is NaN or infinite."""
    v = float(value)
    if not math.isfinite(v):
        raise NonFiniteLossError(f"{what} became {v}; stopping")
    return v
