"""Peak memory of a method: the peak bytes of tensor storage while a fresh model, estimator and optimizer take two
training steps on one batch (what is counted and what is not: the "Peak memory" entry of
:mod:`unigrad.train.trainer`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from unigrad.core.errors import NonFiniteLossError
from unigrad.core.memory import peak_memory
from unigrad.core.objective import supervised
from unigrad.data.tasks import Task, cast_inputs, get_task
from unigrad.nn.decorrelation import check_decorrelation
from unigrad.train.build import ParameterChoice, build_estimator, build_model, split_decorrelated, trainable_parameters
from unigrad.train.hooks import DecorrelationUpdates
from unigrad.train.loop import Batch, TrainingLoop
from unigrad.train.plan import make_optimizer, resolve_device, resolve_dtype
from unigrad.train.state import HALF_DTYPES, MasterWeights


def measure_peak_memory(
    task: Task | str,
    method: str,
    *,
    optimizer: str = "adam",
    lr: float = 1e-3,
    estimator_options: dict[str, Any] | None = None,
    optimizer_options: dict[str, Any] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    decorrelation: dict[str, Any] | None = None,
    train_only: str | Sequence[str] | None = None,
    freeze: str | Sequence[str] | None = None,
) -> int:
    """Peak bytes of tensor storage for two training steps of a fresh model (see module docs), training the
    parameters ``train_only`` and ``freeze`` choose (as in :func:`~unigrad.train.train`)."""
    task = get_task(task) if isinstance(task, str) else task
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    decor = check_decorrelation(decorrelation)
    choice = ParameterChoice.make(train_only, freeze)
    data = task.data()
    xb = cast_inputs(data.x_train[:batch_size], dev, dt)
    yb = data.y_train[:batch_size].to(device=dev)

    first, decor = split_decorrelated(build_estimator(method, seed, estimator_options, optimizer), decor)

    def two_steps() -> None:
        model = build_model(task, seed, dev, dt, decor, first, choice)
        est = split_decorrelated(build_estimator(method, seed, estimator_options, optimizer), None)[0]
        masters = MasterWeights(model) if dt in HALF_DTYPES else None
        params = trainable_parameters(masters.params if masters is not None else model.parameters())
        opt = make_optimizer(optimizer, params, lr, **(optimizer_options or {}))
        loop = TrainingLoop(
            model,
            est,
            opt,
            lambda loop: Batch(supervised(task.loss_fn, xb, yb), xb),
            spent=lambda loop: loop.step / 2,
            hooks=[DecorrelationUpdates()] if decor is not None else [],
            masters=masters,
        )
        if loop.run().status == "diverged":
            raise NonFiniteLossError(loop.message)

    # one unmeasured step first builds what lives for the whole process (a shared noise table)
    split_decorrelated(build_estimator(method, seed, estimator_options, optimizer), None)[0].estimate(
        build_model(task, seed, dev, dt, decor, first, choice), supervised(task.loss_fn, xb, yb)
    )
    return peak_memory(two_steps, dev.type)
