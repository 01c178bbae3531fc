"""What a training run is built from: the task's model (decorrelated, prepared by the estimator) and a
trainable estimator (a name with options or a built one; a decorrelated method split into its estimator and its
decorrelation; the probe exchange of a distributed run attached). :func:`~unigrad.train.trainer.train`,
:func:`~unigrad.train.peak_memory.measure_peak_memory` and the method specs use these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.estimator import Estimator
from unigrad.core.exchange import ProbeExchange, check_exchange
from unigrad.data.tasks import Task, cast_inputs
from unigrad.nn.decorrelation import Decorrelated, decorrelate
from unigrad.registry import make_estimator


def build_model(
    task: Task,
    seed: int,
    dev: torch.device,
    dt: torch.dtype,
    decor: dict[str, Any] | None,
    estimator: Estimator | None = None,
) -> nn.Module:
    """``task``'s model from ``seed`` on ``dev``/``dt``, decorrelated when ``decor`` is given, then prepared by
    ``estimator`` (:meth:`~unigrad.core.estimator.Estimator.prepare_model`: local heads for local losses)."""
    model = task.build_model(seed).to(device=dev, dtype=dt)
    if decor is not None:
        decorrelate(model, seed=seed, **decor)
    if estimator is not None:
        model = estimator.prepare_model(model, cast_inputs(task.data().x_train[:2], dev, dt), seed)
    return model


def check_trainable(estimator: Estimator) -> Estimator:
    """Refuse an estimator that would leave ``.grad`` empty: the loop steps a ``torch.optim`` optimizer from
    ``.grad``, so it would report success and train nothing (MeZO with ``write_grad=False`` returns its
    direction compressed, for :class:`~unigrad.optim.ReplaySGD` in a loop of one's own)."""
    if estimator.write_grad is False:
        raise UnigradError(
            f"option write_grad=false of {estimator.name} leaves .grad empty and the training loop steps from .grad, "
            "so nothing would train; drop the option (memory-lean MeZO-SGD: unigrad.optim.ReplaySGD in your "
            "own loop, see examples/quickstart.py)"
        )
    return estimator


def build_estimator(method: Estimator | str, seed: int, options: dict[str, Any] | None) -> Estimator:
    if isinstance(method, Estimator):
        if options:
            raise UnigradError("estimator options were given for an already built estimator")
        return check_trainable(method)
    return check_trainable(make_estimator(method, **{"seed": seed, **(options or {})}))


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
