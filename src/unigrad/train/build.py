"""What a training run is built from: the task's model (its trained parameters chosen, decorrelated, prepared by
the estimator) and a trainable estimator (a name with options or a built one; a decorrelated method split into its
estimator and its decorrelation; the probe exchange of a distributed run attached).
:func:`~unigrad.train.trainer.train`, :func:`~unigrad.train.peak_memory.measure_peak_memory` and the method specs
use these.

**Which parameters train** (:class:`ParameterChoice`): globs over ``model.named_parameters()`` of the parameters
that train (``train``, default every one) and of those that stay frozen (``freeze``), or the named sets of
:data:`unigrad.nn.text.PARAMETER_SETS` (``head``: the linear probe; ``no-embeddings``; ``linear``; ``lora``, which
first inserts LoRA adapters of rank 8, or ``lora-rN`` of rank N, :func:`unigrad.nn.text.add_lora`). The others get
``requires_grad=False`` right after the model is built, so the estimators neither perturb nor step them and the
optimizer is not given them. A glob that matches no parameter, or a choice that leaves none, is refused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.estimator import Estimator
from unigrad.core.exchange import ProbeExchange, check_exchange
from unigrad.data.tasks import Task, cast_inputs
from unigrad.nn.decorrelation import Decorrelated, decorrelate
from unigrad.nn.text import PARAMETER_SETS, add_lora, lora_rank, train_only
from unigrad.registry import make_estimator

GLOB_SEPARATOR = "|"
"""Separates the globs of one ``train=`` or ``freeze=`` key of a method spec (a comma separates methods)."""


@dataclass(frozen=True)
class ParameterChoice:
    """Which parameters of a model train: those matching a glob of ``train`` and none of ``freeze`` (module docs).

    ``train`` holds globs or names of :data:`~unigrad.nn.text.PARAMETER_SETS`, which expand to their globs.
    """

    train: tuple[str, ...] = ("*",)
    freeze: tuple[str, ...] = ()

    @classmethod
    def make(
        cls, train: str | Sequence[str] | None = None, freeze: str | Sequence[str] | None = None
    ) -> ParameterChoice | None:
        """The choice of ``train`` and ``freeze`` (globs as a sequence, or one string of them separated by
        :data:`GLOB_SEPARATOR`); ``None`` when neither is given (every parameter trains)."""
        if train is None and freeze is None:
            return None
        return cls(
            _globs("train", train) if train is not None else ("*",),
            _globs("freeze", freeze) if freeze is not None else (),
        )

    def globs(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(include, exclude)`` globs of :func:`~unigrad.nn.text.train_only`, the named sets expanded."""
        include: list[str] = []
        exclude = list(self.freeze)
        for item in self.train:
            inc, exc = PARAMETER_SETS.get("lora" if lora_rank(item) else item, ((item,), ()))
            include += inc
            exclude += exc
        return tuple(include), tuple(exclude)

    @property
    def lora(self) -> int | None:
        """The rank of the LoRA adapters the choice inserts (``train=lora``, ``train=lora-rN``), or None."""
        ranks = {r for item in self.train if (r := lora_rank(item))}
        if len(ranks) > 1:
            raise UnigradError(f"train= names LoRA adapters of several ranks ({sorted(ranks)}); give one")
        return ranks.pop() if ranks else None

    def apply(self, model: nn.Module, seed: int = 0) -> list[str]:
        """Insert the LoRA adapters the choice names (drawn from ``seed``), then freeze every parameter of ``model``
        outside the choice; the names of those that train."""
        if self.lora is not None:
            add_lora(model, self.lora, seed)
        include, exclude = self.globs()
        return train_only(model, include, exclude)

    def to_dict(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "freeze": list(self.freeze)}


def _globs(key: str, value: str | Sequence[str]) -> tuple[str, ...]:
    items = value.split(GLOB_SEPARATOR) if isinstance(value, str) else list(value)
    if not all(isinstance(g, str) for g in items):
        raise UnigradError(f"{key} takes parameter-name globs (strings), got {value!r}")
    globs = tuple(g.strip() for g in items)
    if not all(globs):
        raise UnigradError(
            f"{key}={value!r} has an empty glob; give globs separated by {GLOB_SEPARATOR!r}, e.g. {key}=head.*"
        )
    return globs


def trainable_parameters(params: Any) -> list[torch.Tensor]:
    """The parameters among ``params`` that train (``requires_grad``): what the optimizer is given."""
    return [p for p in params if p.requires_grad]


def build_model(
    task: Task,
    seed: int,
    dev: torch.device,
    dt: torch.dtype,
    decor: dict[str, Any] | None,
    estimator: Estimator | None = None,
    choice: ParameterChoice | None = None,
) -> nn.Module:
    """``task``'s model from ``seed`` on ``dev``/``dt``, its parameters outside ``choice`` frozen, decorrelated
    when ``decor`` is given, then prepared by ``estimator`` (:meth:`~unigrad.core.estimator.Estimator.prepare_model`:
    local heads for local losses)."""
    model = task.build_model(seed).to(device=dev, dtype=dt)
    if choice is not None:
        choice.apply(model, seed)
    if decor is not None:
        decorrelate(model, seed=seed, **decor)
    if estimator is not None:
        model = estimator.prepare_model(model, cast_inputs(task.data().x_train[:2], dev, dt), seed)
    return model


REPLAY = "replay-sgd"
"""The optimizer that steps MeZO's compressed direction (:class:`~unigrad.optim.ReplaySGD`): memory-lean MeZO-SGD."""


def check_trainable(estimator: Estimator, optimizer: str | None = None) -> Estimator:
    """Refuse an estimator and optimizer that would train nothing: the loop steps a ``torch.optim`` optimizer from
    ``.grad``, which MeZO with ``write_grad=False`` leaves empty (it returns its direction compressed), unless the
    optimizer is ``replay-sgd`` (:class:`~unigrad.optim.ReplaySGD`), which steps that direction and nothing else.
    ``optimizer=None``: not known yet (only ``write_grad=False`` with another optimizer is refused later)."""
    lean = estimator.write_grad is False
    if optimizer == REPLAY and not lean:
        raise UnigradError(
            f"optimizer {REPLAY} steps MeZO's compressed direction; give mezo:write_grad=false (with .grad, sgd takes "
            "the same steps)"
        )
    if lean and optimizer not in (REPLAY, None):
        raise UnigradError(
            f"option write_grad=false of {estimator.name} leaves .grad empty and {optimizer} steps from .grad, so "
            f"nothing would train; use the optimizer {REPLAY} (memory-lean MeZO-SGD: --optimizer {REPLAY}, or "
            f"optimizer={REPLAY} in a method spec) or drop the option"
        )
    return estimator


def build_estimator(
    method: Estimator | str, seed: int, options: dict[str, Any] | None, optimizer: str | None = None
) -> Estimator:
    """The estimator of a run (a name with options, or a built one), checked against its ``optimizer``."""
    if isinstance(method, Estimator):
        if options:
            raise UnigradError("estimator options were given for an already built estimator")
        return check_trainable(method, optimizer)
    return check_trainable(make_estimator(method, **{"seed": seed, **(options or {})}), optimizer)


def split_decorrelated(estimator: Estimator, decor: dict[str, Any] | None) -> tuple[Estimator, dict[str, Any] | None]:
    """A decorrelated method (``make_estimator("danp")``, a :class:`~unigrad.nn.decorrelation.Decorrelated`) as
    its estimator and its decorrelation options, which the loop applies as it does ``decorrelation=``."""
    if not isinstance(estimator, Decorrelated):
        return estimator, decor
    if decor is not None:
        raise UnigradError(
            f"method {estimator.name} brings its own decorrelation; drop the decorrelation option or set it with "
            "decor_* estimator options"
        )
    return estimator.base, dict(estimator.decorrelation)


def attach_exchange(
    estimator: Estimator,
    exchange: ProbeExchange,
    diagnostics: Sequence[str],
    decor: dict[str, Any] | None,
    check_every: int | None,
) -> None:
    """Hand ``exchange`` to ``estimator``; refuse what cannot run on several processes."""
    if not estimator.supports_exchange:
        raise UnigradError(
            f"method {estimator.name} cannot spread its work over processes; use one of es, mezo, np, rge, spsa"
        )
    if diagnostics:
        raise UnigradError("diagnostics cannot run on several processes; drop them or train in one process")
    if decor is not None:
        raise UnigradError("decorrelation cannot run on several processes; drop it or train in one process")
    if check_every is not None:
        check_positive("exchange_check_every", check_every, integer=True)
    estimator.exchange = check_exchange(exchange)  # type: ignore[attr-defined]
