"""Training a network on a temporal task with any estimator: the loop the biology experiments share.

A :class:`~unigrad.train.loop.TrainingLoop`: each update draws a fresh batch of trials
``task.sample(batch, seed=seed, step=k)``, hands ``task.objective(trials)`` to the estimator (which writes
``.grad``) and lets the optimizer step. Every ``eval_every`` updates the network is scored, without noise and
without learning, on ``eval_batch`` held-out trials drawn from another seed (the same trials at every
evaluation). A non-finite loss or parameter stops the run with ``status="diverged"`` and restores the
parameters of the last evaluation point, as :func:`unigrad.train.train` does for the supervised tasks.

A "trial" in the records counts trials *seen* (updates × batch); the trial counts of the learning-rule
literature (Miconi 2017 counts one trial per update) read the same way with ``batch=1``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unigrad.bio.tasks.base import TemporalTask
from unigrad.core.cost import Cost
from unigrad.core.errors import check_positive
from unigrad.core.estimator import Estimator
from unigrad.core.options import check_seed
from unigrad.registry import make_estimator
from unigrad.train.hooks import Report
from unigrad.train.loop import Batch, Every, Hook, RunRecord, StepRecord, TrainingLoop
from unigrad.train.trainer import make_optimizer

EVAL_SEED_OFFSET = 1_000_003
"""Held-out trials are drawn with ``seed + EVAL_SEED_OFFSET``, never used for training."""


@dataclass
class BioRun(RunRecord):
    """One training run: its evaluation history and how it ended."""

    method: str
    task: str
    seed: int
    status: str
    message: str
    history: list[dict[str, float]] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)
    seconds: float = 0.0


@torch.no_grad()
def evaluate(model: nn.Module, task: TemporalTask, trials: Any) -> tuple[float, float]:
    """``(score, mean loss)`` of ``model`` on a fixed batch of trials, without noise."""
    outputs = model(trials.inputs)
    return task.score(outputs, trials), float(task.loss(outputs, trials).mean())


class _BioHooks(Hook):
    """What :func:`train_temporal` adds to the loop: the cost of the updates, the check that the parameters stay
    finite, and the state of the last evaluation point, which a divergence restores."""

    def __init__(self, model: nn.Module, run: BioRun) -> None:
        self.model, self.run = model, run
        self.good: dict[str, Any] = {}

    def after_step(self, loop: TrainingLoop, record: StepRecord) -> None:
        self.run.cost += record.estimate.cost

    def on_step_end(self, loop: TrainingLoop, record: StepRecord) -> None:
        if not all(math.isfinite(float(p.detach().abs().max())) for p in self.model.parameters()):
            loop.diverge("parameters became non-finite", loop.step)

    def on_evaluate(self, loop: TrainingLoop, point: dict[str, Any]) -> None:
        self.good = copy.deepcopy(self.model.state_dict())


def train_temporal(
    task: TemporalTask,
    model: nn.Module,
    method: Estimator | str,
    *,
    optimizer: str = "adam",
    lr: float = 1e-3,
    options: dict[str, Any] | None = None,
    optimizer_options: dict[str, Any] | None = None,
    updates: int = 1000,
    batch: int = 16,
    seed: int = 0,
    eval_every: int = 100,
    eval_batch: int = 256,
    on_eval: Callable[[dict[str, float]], None] | None = None,
) -> BioRun:
    """Train ``model`` on ``task`` for ``updates`` steps of ``batch`` trials (module docs)."""
    for name, value in (("updates", updates), ("batch", batch), ("eval_every", eval_every), ("eval_batch", eval_batch)):
        check_positive(name, value, integer=True)
    check_seed("seed", seed)
    est = make_estimator(method, seed=seed, **(options or {})) if isinstance(method, str) else method
    opt = make_optimizer(optimizer, model.parameters(), lr, **(optimizer_options or {}))
    held_out = task.sample(eval_batch, seed=seed + EVAL_SEED_OFFSET, step=0)
    run = BioRun(method=est.name, task=task.name, seed=seed, status="ok", message="")
    bio = _BioHooks(model, run)

    def point(loop: TrainingLoop) -> dict[str, Any]:
        score, loss = evaluate(model, task, held_out)
        return {
            "update": loop.step,
            "trials": loop.step * batch,
            "score": score,
            "loss": loss,
            "train_loss": loop.train_loss(),
            "forward_equivalents": run.cost.forward_equivalents,
            "seconds": loop.seconds,
        }

    loop = TrainingLoop(
        model,
        est,
        opt,
        lambda loop: Batch(task.objective(task.sample(batch, seed=seed, step=loop.step))),
        spent=lambda loop: loop.step / updates,
        evaluate=point,
        schedule=Every(eval_every, updates),
        hooks=[bio, *([Report(on_eval)] if on_eval is not None else [])],
        set_to_none=False,
    ).run()
    if loop.status == "diverged":
        run.status, run.message = "diverged", f"update {loop.failed_step}: {loop.message}"
        model.load_state_dict(bio.good)
    run.history, run.seconds = loop.history, loop.seconds
    return run
