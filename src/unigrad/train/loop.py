"""The training loop every trainer of a network shares: one step, evaluation points, and named hook points.

A :class:`TrainingLoop` owns the inner step — the part that must be the same wherever a network is
trained — and calls :class:`Hook` objects at named points for everything else (evaluation bookkeeping,
checkpoints, diagnostics, a probe exchange, decorrelation, a progress bar). One step::

    batch = batches(loop)                                  # the step's objective (and its inputs)
    hook.before_step(loop, batch)
    ┌ timed (loop.seconds) ──────────────────────────────────────────────────────────────────────┐
    │ optimizer.zero_grad()              (and the model's .grad when float32 masters step)        │
    │ estimate = estimator.estimate(model, batch.objective)          # writes .grad                │
    │ a non-finite estimate.loss raises NonFiniteLossError                                         │
    │ hook.after_estimate(loop, batch, estimate)    # .grad written, parameters not stepped yet   │
    │ masters.grads_in(); optimizer.step(); masters.weights_out()                                  │
    │   (step(closure) for an optimizer with needs_closure: its batch losses count as forwards)     │
    │ hook.after_update(loop, batch)                # parameters stepped                          │
    └────────────────────────────────────────────────────────────────────────────────────────────┘
    hook.after_step(loop, record)        # may change record.seconds / record.forward_equivalents
    loop.seconds += record.seconds; loop.step += 1; loop.forward_equivalents += record.forward_equivalents
    loop.losses.append(estimate.loss)
    hook.on_step_end(loop, record)
    if schedule.due(loop): evaluate                        # see below

The loop runs while ``spent(loop) < 1`` (the fraction of the budget used) and no hook asked it to stop
(:meth:`TrainingLoop.stop`, :meth:`TrainingLoop.diverge`). A :class:`~unigrad.core.errors.NonFiniteLossError`
of the step ends it with ``status="diverged"`` (the time of the failed step is counted).

**Evaluation points.** With an ``evaluate`` function, a run that starts without history is evaluated first;
after each step it is evaluated when ``schedule.due(loop)`` (:class:`Fractions`: every ``1/points`` of the
budget; :class:`Every`: every ``k`` steps and the last). ``evaluate(loop)`` returns the point (a dict), or
``None`` when the model's score is not finite: the run diverges with ``score_error`` (at the start,
``start_error`` is raised). A
point is appended to ``loop.history``, ``loop.losses`` (the training losses since the last point) is cleared,
the schedule advances and ``hook.on_evaluate(loop, point)`` is called.

**Hooks** (methods of :class:`Hook`, all no-ops there; a hook overrides the ones it needs, and hooks are
called in the order given):

``on_start(loop)``
    before the first step (and before the initial evaluation).
``before_step(loop, batch)``
    the batch is drawn, nothing of the step has run; not timed.
``after_estimate(loop, batch, estimate)``
    inside the timed step, after the estimate wrote ``.grad``, before the optimizer steps. Work a hook does
    here that the training time must not count is added to ``loop.excluded``; forward passes it runs are
    added to ``loop.forward_equivalents``.
``after_update(loop, batch)``
    inside the timed step, after the optimizer stepped (and the masters were rounded into the model).
``after_step(loop, record)``
    after the timed step, before the loop adds ``record`` (a :class:`StepRecord`) to its counters.
``on_step_end(loop, record)``
    after the counters were updated (``loop.step`` counts this step), before the evaluation check.
``on_evaluate(loop, point)``
    after an evaluation point was recorded (the initial one included).
``on_end(loop)``
    when the loop ends, however it ends (also on an exception).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from unigrad.core.errors import NonFiniteLossError, UnigradError
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, evaluate, reduce
from unigrad.optim.replay_sgd import ReplaySGD
from unigrad.train.state import MasterWeights

Point = dict[str, Any]


class Estimates(Protocol):
    """What the loop asks of its estimator: ``estimate(model, objective)`` writes ``.grad`` and returns the
    :class:`~unigrad.core.estimator.Estimate`. Every :class:`~unigrad.core.estimator.Estimator` is one, and so is a
    wrapper that runs one in a context (a device's dither port). Hooks that save or restore the estimator's state
    (:class:`~unigrad.train.hooks.LastGood`, checkpoints, diagnostics) need an ``Estimator``."""

    def estimate(self, model: nn.Module, objective: Objective) -> Estimate: ...


@dataclass
class Batch:
    """One step's work: the ``objective`` handed to the estimator, the ``inputs`` it reads (for hooks that run
    the model once more) and ``size``, the samples it counts (``0`` when none are counted)."""

    objective: Objective
    inputs: Tensor | None = None
    size: int = 0


@dataclass
class StepRecord:
    """What a finished step adds to the loop's counters: its ``estimate``, the training ``seconds`` and the
    ``forward_equivalents`` it spent (a hook may change the two, e.g. to agree with other processes)."""

    batch: Batch
    estimate: Estimate
    seconds: float
    forward_equivalents: float


class Hook:
    """A concern of a training run, called by :class:`TrainingLoop` at the points of the module docs."""

    def on_start(self, loop: TrainingLoop) -> None:
        """Before the first step."""

    def before_step(self, loop: TrainingLoop, batch: Batch) -> None:
        """The batch is drawn; the step has not started."""

    def after_estimate(self, loop: TrainingLoop, batch: Batch, estimate: Estimate) -> None:
        """``.grad`` is written, the optimizer has not stepped (timed)."""

    def after_update(self, loop: TrainingLoop, batch: Batch) -> None:
        """The optimizer stepped (timed)."""

    def after_step(self, loop: TrainingLoop, record: StepRecord) -> None:
        """The step is done; its record is not counted yet."""

    def on_step_end(self, loop: TrainingLoop, record: StepRecord) -> None:
        """The step is counted."""

    def on_evaluate(self, loop: TrainingLoop, point: Point) -> None:
        """An evaluation point was recorded."""

    def on_end(self, loop: TrainingLoop) -> None:
        """The loop ended."""


class Schedule(Protocol):
    """When the loop evaluates after a step."""

    def due(self, loop: TrainingLoop) -> bool: ...

    def advance(self, loop: TrainingLoop) -> None: ...


class Fractions:
    """Evaluate every ``1/points`` of the budget and when it is spent: after a step with ``f = spent(loop)``,
    when ``f ≥ 1`` or ``f·points ≥ next``; an evaluation sets ``next = ⌊f·points⌋ + 1``."""

    def __init__(self, points: int, next_point: int = 1) -> None:
        self.points, self.next = points, next_point

    def due(self, loop: TrainingLoop) -> bool:
        frac = loop.spent()
        return frac >= 1.0 or frac * self.points >= self.next

    def advance(self, loop: TrainingLoop) -> None:
        self.next = math.floor(loop.spent() * self.points) + 1


class Every:
    """Evaluate every ``k`` steps and after step ``last``."""

    def __init__(self, k: int, last: int) -> None:
        self.k, self.last = k, last

    def due(self, loop: TrainingLoop) -> bool:
        return loop.step % self.k == 0 or loop.step == self.last

    def advance(self, loop: TrainingLoop) -> None:
        pass


class TrainingLoop:
    """Train ``model`` with ``estimator`` and ``optimizer`` on the batches of ``batches`` (module docs).

    Args:
        model, estimator, optimizer: what trains (the estimator: any :class:`Estimates`); with ``masters``
            (:class:`~unigrad.train.state.MasterWeights`) the optimizer steps the float32 masters of a half-precision
            model.
        batches: ``batches(loop) -> Batch``, the next step's batch.
        spent: ``spent(loop)``, the fraction of the budget used (the loop runs while it is below 1).
        evaluate: ``evaluate(loop) -> point or None`` (module docs); ``None``: no evaluation points.
        schedule: when to evaluate after a step (:class:`Fractions`, :class:`Every`).
        hooks: the :class:`Hook` objects, called in this order.
        start_error: the message of the error raised when the initial evaluation is not finite.
        score_error: the divergence message when a later evaluation is not finite.
        describe: the divergence message of a :class:`NonFiniteLossError` raised in a step.
        set_to_none: how ``optimizer.zero_grad`` clears the gradients.

    Counters: ``step``, ``forward_equivalents``, ``seconds`` (training wall time), ``losses`` (the step losses
    since the last evaluation point), ``history`` (the points); ``status`` (``"ok"`` or ``"diverged"``),
    ``message`` and ``failed_step`` say how it ended.
    """

    def __init__(
        self,
        model: nn.Module,
        estimator: Estimator | Estimates,
        optimizer: torch.optim.Optimizer,
        batches: Callable[[TrainingLoop], Batch],
        *,
        spent: Callable[[TrainingLoop], float],
        evaluate: Callable[[TrainingLoop], Point | None] | None = None,
        schedule: Schedule | None = None,
        hooks: Sequence[Hook] = (),
        masters: MasterWeights | None = None,
        start_error: str = "the initial model gives a non-finite score",
        score_error: str = "the score became non-finite",
        describe: Callable[[NonFiniteLossError], str] = str,
        set_to_none: bool = True,
    ) -> None:
        if evaluate is not None and schedule is None:
            raise UnigradError("a training loop that evaluates needs a schedule")
        if masters is not None and getattr(optimizer, "needs_closure", False):
            raise UnigradError(
                f"optimizer {type(optimizer).__name__} evaluates the model between its moves, which a half-precision "
                f"model with float32 masters does not see; train in float32"
            )
        self.model, self.estimator, self.optimizer, self.masters = model, estimator, optimizer, masters
        self.batches, self.evaluate, self.schedule, self.hooks = batches, evaluate, schedule, list(hooks)
        self._spent, self.describe, self.set_to_none = spent, describe, set_to_none
        self.start_error, self.score_error = start_error, score_error
        self.step, self.forward_equivalents, self.seconds, self.excluded = 0, 0.0, 0.0, 0.0
        self.losses: list[float] = []
        self.history: list[Point] = []
        self.status, self.message, self.failed_step, self.stopped = "ok", "", 0, False

    def spent(self) -> float:
        """The fraction of the budget used so far."""
        return self._spent(self)

    def train_loss(self) -> float | None:
        """The mean training loss of the steps since the last evaluation point (``None`` if none)."""
        return sum(self.losses) / len(self.losses) if self.losses else None

    def stop(self) -> None:
        """End the loop after the current hook point."""
        self.stopped = True

    def diverge(self, message: str, failed_step: int) -> None:
        """End the loop with ``status="diverged"``: ``message`` says what, ``failed_step`` at which step."""
        self.status, self.message, self.failed_step = "diverged", message, failed_step
        self.stop()

    def run(self) -> TrainingLoop:
        """Evaluate the initial model (when there is no history yet), then step until the budget is spent or a
        hook stops the loop; returns the loop."""
        try:
            self._call("on_start")
            if self.evaluate is not None and not self.history and not self.stopped and not self.record():
                raise UnigradError(self.start_error)
            while not self.stopped and self.spent() < 1.0 and self._advance():
                if self.evaluate is not None and not self.stopped and self.schedule.due(self):  # type: ignore[union-attr]
                    if not self.record():
                        self.diverge(self.score_error, self.step)
        finally:
            self._call("on_end")
        return self

    def record(self) -> bool:
        """Make an evaluation point (module docs); False if the score is not finite (nothing is recorded)."""
        assert self.evaluate is not None and self.schedule is not None
        point = self.evaluate(self)
        if point is None:
            return False
        self.history.append(point)
        self.losses.clear()
        self.schedule.advance(self)
        self._call("on_evaluate", point)
        return True

    def _advance(self) -> bool:
        """Take one step and count it (module docs); False if it diverged. Nothing of the step (its batch, its
        estimate) outlives the call, so the next step's memory does not hold it."""
        record = self._step(self.batches(self))
        if record is None:
            return False
        self._call("after_step", record)
        self.seconds += record.seconds
        self.step += 1
        self.forward_equivalents += record.forward_equivalents
        self.losses.append(record.estimate.loss)
        self._call("on_step_end", record)
        return True

    def _step(self, batch: Batch) -> StepRecord | None:
        """One timed step (module docs); ``None`` if its loss was not finite (the loop then diverged)."""
        self._call("before_step", batch)
        t0 = time.perf_counter()
        self.excluded = 0.0
        try:
            self.optimizer.zero_grad(set_to_none=self.set_to_none)
            if self.masters is not None:  # the optimizer holds the masters: the model's .grad is cleared here
                self.model.zero_grad(set_to_none=True)
            estimate = self.estimator.estimate(self.model, batch.objective)
            if not math.isfinite(estimate.loss):
                raise NonFiniteLossError(f"loss became {estimate.loss}")
            self._call("after_estimate", batch, estimate)
            if self.masters is not None:
                self.masters.grads_in()
            if isinstance(self.optimizer, ReplaySGD):  # memory-lean MeZO-SGD: no .grad, the compressed direction
                self.optimizer.step(estimate.info.get("direction"))
            elif getattr(self.optimizer, "needs_closure", False):  # it evaluates the batch loss: counted as forwards
                self.optimizer.step(self._closure(batch, estimate))
            else:
                self.optimizer.step()
            if self.masters is not None:
                self.masters.weights_out()
            self._call("after_update", batch)
        except NonFiniteLossError as e:
            self.seconds += time.perf_counter() - t0 - self.excluded
            self.diverge(self.describe(e), self.step + 1)
            return None
        took = time.perf_counter() - t0 - self.excluded
        return StepRecord(batch, estimate, took, estimate.cost.forward_equivalents)

    def _closure(self, batch: Batch, estimate: Any) -> Callable[[], float]:
        """The batch's mean loss at the current parameters, for an optimizer that evaluates it (``needs_closure``);
        each call's forward samples are added to the step's cost."""

        def closure() -> float:
            with torch.no_grad():
                return float(reduce(evaluate(batch.objective, self.model, estimate.cost)))

        return closure

    def _call(self, point: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, point)(self, *args)


class RunRecord:
    """The record of a finished run, for a dataclass with a ``history`` of evaluation points: ``final`` is the last
    point and :meth:`to_dict` the fields in order, as plain data (a field with a ``to_dict`` gives that)."""

    history: list[Any]

    @property
    def final(self) -> Any:
        """The last evaluation point."""
        return self.history[-1]

    def to_dict(self) -> dict[str, Any]:
        """The fields by name, in order; one with a ``to_dict`` method (a cost, operation counts) as its dict."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return out
