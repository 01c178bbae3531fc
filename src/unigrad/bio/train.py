"""Training a network on a temporal task with any estimator: the loop the biology experiments share.

Each update draws a fresh batch of trials ``task.sample(batch, seed=seed, step=k)``, hands
``task.objective(trials)`` to the estimator (which writes ``.grad``) and lets the optimizer step. Every
``eval_every`` updates the network is scored, without noise and without learning, on ``eval_batch``
held-out trials drawn from another seed (the same trials at every evaluation). A non-finite loss stops
the run with ``status="diverged"`` and restores the parameters of the last evaluation point, as
:func:`unigrad.train.train` does for the supervised tasks.

A "trial" in the records counts trials *seen* (updates × batch); the trial counts of the learning-rule
literature (Miconi 2017 counts one trial per update) read the same way with ``batch=1``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unigrad.bio.tasks.base import TemporalTask
from unigrad.core.cost import Cost
from unigrad.core.errors import NonFiniteLossError, check_positive
from unigrad.core.estimator import Estimator
from unigrad.core.options import check_seed
from unigrad.registry import make_estimator
from unigrad.train.trainer import make_optimizer

EVAL_SEED_OFFSET = 1_000_003
"""Held-out trials are drawn with ``seed + EVAL_SEED_OFFSET``, never used for training."""


@dataclass
class BioRun:
    """One training run: its evaluation history and how it ended."""

    method: str
    task: str
    seed: int
    status: str
    message: str
    history: list[dict[str, float]] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)
    seconds: float = 0.0

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "task": self.task,
            "seed": self.seed,
            "status": self.status,
            "message": self.message,
            "history": self.history,
            "cost": self.cost.to_dict(),
            "seconds": self.seconds,
        }


@torch.no_grad()
def evaluate(model: nn.Module, task: TemporalTask, trials: Any) -> tuple[float, float]:
    """``(score, mean loss)`` of ``model`` on a fixed batch of trials, without noise."""
    outputs = model(trials.inputs)
    return task.score(outputs, trials), float(task.loss(outputs, trials).mean())


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
    seconds = 0.0

    def record(k: int, train_loss: float | None) -> None:
        score, loss = evaluate(model, task, held_out)
        point = {
            "update": k,
            "trials": k * batch,
            "score": score,
            "loss": loss,
            "train_loss": train_loss,
            "forward_equivalents": run.cost.forward_equivalents,
            "seconds": seconds,
        }
        run.history.append(point)
        if on_eval is not None:
            on_eval(dict(point))

    record(0, None)
    good = copy.deepcopy(model.state_dict())
    losses: list[float] = []
    for k in range(1, updates + 1):
        start = time.perf_counter()
        trials = task.sample(batch, seed=seed, step=k - 1)
        opt.zero_grad(set_to_none=False)
        try:
            e = est.estimate(model, task.objective(trials))
        except NonFiniteLossError as err:
            run.status, run.message = "diverged", f"update {k}: {err}"
            model.load_state_dict(good)
            break
        opt.step()
        seconds += time.perf_counter() - start
        run.cost += e.cost
        losses.append(e.loss)
        if not all(math.isfinite(float(p.detach().abs().max())) for p in model.parameters()):
            run.status, run.message = "diverged", f"update {k}: parameters became non-finite"
            model.load_state_dict(good)
            break
        if k % eval_every == 0 or k == updates:
            record(k, sum(losses) / len(losses))
            losses.clear()
            good = copy.deepcopy(model.state_dict())
    run.seconds = seconds
    return run
