"""The concerns of :func:`unigrad.train.train` as hooks of the :class:`~unigrad.train.loop.TrainingLoop`.

* :class:`DataOrder`: the batches of a supervised task (a permutation per epoch keyed by ``(seed, epoch)``,
  regenerated on resume; a process's shard of each batch with a data-parallel exchange) and the data position;
* :class:`LastGood`: the snapshot of the last evaluation point, which a divergence restores;
* :class:`Diagnostics`: the diagnostics measured on the step after each evaluation point (or every ``k`` steps),
  timed apart from training;
* :class:`Exchange`: several processes agree on each step's work and time, and check their parameters;
* :class:`DecorrelationUpdates`: the statistics and the update of the decorrelation matrices after each step;
* :class:`Report`: ``on_record(point)`` with every evaluation point;
* :class:`ProgressBar`: the bar on the terminal;
* :class:`Checkpointing`: the run's whole state at every evaluation point, and resuming from it.

What each does and why is in :mod:`unigrad.train.trainer`'s docstring.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from unigrad.core.errors import UnigradError
from unigrad.core.estimator import Estimate
from unigrad.core.exchange import ProbeExchange
from unigrad.core.objective import supervised
from unigrad.core.params import trainable
from unigrad.core.rng import generator, key_hash
from unigrad.data.tasks import TaskData
from unigrad.dynamics.diagnostics import Pending, measure, measure_step
from unigrad.nn.decorrelation import Decorrelation, update_decorrelation
from unigrad.train.checkpoint import load_checkpoint, save_checkpoint
from unigrad.train.loop import Batch, Fractions, Hook, Point, StepRecord, TrainingLoop
from unigrad.train.state import Snapshot, dump_state, load_state

_DATA_TAG = 0xDA7A


class DataOrder(Hook):
    """The batches of ``data``'s training set: epoch ``e`` goes through ``randperm(n)`` drawn from the generator
    keyed by ``(seed, e)``, ``batch_size`` rows a step (the last batch of an epoch may be short). ``pos`` is the
    row of the epoch's permutation the next batch starts at, ``seen`` the samples stepped on so far. With a
    data-parallel ``exchange`` this process gets its shard of each batch."""

    def __init__(
        self, data: TaskData, loss_fn: Callable[..., Tensor], seed: int, batch_size: int, exchange: ProbeExchange | None
    ) -> None:
        self.data, self.loss_fn, self.seed, self.batch_size, self.exchange = data, loss_fn, seed, batch_size, exchange
        self.n = int(data.x_train.shape[0])
        self.pos, self.seen = 0, 0
        self.perm = torch.empty(0, dtype=torch.long)

    @property
    def epoch(self) -> float:
        """The fractional epoch: samples seen over the training set's size."""
        return self.seen / self.n

    def resume(self, pos: int, seen: int) -> None:
        """Continue at ``pos`` of the epoch that ``seen`` samples reach (its permutation is regenerated)."""
        self.pos, self.seen = pos, seen
        if pos != 0:
            self.perm = self._permutation()

    def _permutation(self) -> Tensor:
        g = generator(self.seed, self.seen // self.n, _DATA_TAG)
        return torch.randperm(self.n, generator=g).to(self.data.x_train.device)

    def __call__(self, loop: TrainingLoop) -> Batch:
        if self.pos == 0:
            self.perm = self._permutation()
        idx = self.perm[self.pos : self.pos + self.batch_size]
        rows = idx
        if self.exchange is not None:
            shard = self.exchange.shard(idx.shape[0])
            rows = idx[shard.start : shard.stop]
        xb, yb = self.data.x_train[rows], self.data.y_train[rows]
        return Batch(supervised(self.loss_fn, xb, yb), xb, int(idx.shape[0]))

    def on_step_end(self, loop: TrainingLoop, record: StepRecord) -> None:
        self.seen += record.batch.size
        self.pos = 0 if self.pos + self.batch_size >= self.n else self.pos + self.batch_size


class LastGood(Hook):
    """The in-memory copy of the state at the last evaluation point (:class:`~unigrad.train.state.Snapshot`)."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def take(self, loop: TrainingLoop, step: int) -> None:
        """Copy the loop's model, optimizer, estimator and masters as the state of ``step``."""
        self.snapshot = Snapshot(loop.model, loop.optimizer, loop.estimator, step, loop.masters)

    def on_evaluate(self, loop: TrainingLoop, point: Point) -> None:
        self.take(loop, loop.step)

    @property
    def step(self) -> int:
        """The step of the copy."""
        assert self.snapshot is not None
        return self.snapshot.step

    def restore(self, loop: TrainingLoop) -> None:
        """Put the copy back into the loop's model, optimizer, estimator and masters."""
        assert self.snapshot is not None
        self.snapshot.restore(loop.model, loop.optimizer, loop.estimator, loop.masters)


class Diagnostics(Hook):
    """Measure the diagnostics ``names`` on the step after each evaluation point (``every=None``) or on each step
    that starts from a step count divisible by ``every``; the entries go to ``records``, their time to
    ``seconds`` (not to the training time). ``initial`` is the initial parameters (for ``"drift"``)."""

    def __init__(
        self, names: tuple[str, ...], every: int | None, seed: int, initial: list[Tensor] | None, order: DataOrder
    ) -> None:
        self.names, self.every, self.seed, self.initial, self.order = names, every, seed, initial, order
        self.records: list[Point] = []
        self.seconds = 0.0
        self.after_point = True  # the default schedule: the step after each evaluation point
        self.due, self.at = False, (0, 0.0)
        self.pending: Pending | None = None
        self.state_before: dict[str, Any] | None = None

    def before_step(self, loop: TrainingLoop, batch: Batch) -> None:
        self.due = self.after_point if self.every is None else loop.step % self.every == 0
        self.pending, self.state_before, self.at = None, None, (loop.step, self.order.epoch)
        if self.due and "variance" in self.names:  # the repeated estimates start from the state this one starts from
            t1 = time.perf_counter()
            self.state_before = copy.deepcopy(loop.estimator.state_dict())
            self.seconds += time.perf_counter() - t1

    def after_estimate(self, loop: TrainingLoop, batch: Batch, estimate: Estimate) -> None:
        if not self.due:
            return
        t1 = time.perf_counter()
        self.pending = measure(
            self.names,
            loop.model,
            batch.objective,
            estimator=loop.estimator,
            state_before=self.state_before,
            initial=self.initial,
            seed=key_hash(self.seed, loop.step),
        )
        took = time.perf_counter() - t1
        self.seconds += took
        loop.excluded += took
        self.after_point = False

    def after_step(self, loop: TrainingLoop, record: StepRecord) -> None:
        if self.pending is not None:
            t1 = time.perf_counter()
            step, epoch = self.at
            self.records.append({"step": step, "epoch": epoch, **measure_step(self.pending, loop.model)})
            self.seconds += time.perf_counter() - t1

    def on_evaluate(self, loop: TrainingLoop, point: Point) -> None:
        self.after_point = True


class Exchange(Hook):
    """Processes sharing a :class:`~unigrad.core.exchange.ProbeExchange` agree on each step: its forward-pass
    equivalents are summed over them and its time is the slowest one's; ``sent`` counts the bytes this process
    sent in the estimators' exchanges. Every ``check_every`` steps the parameters are compared across them."""

    def __init__(self, exchange: ProbeExchange, check_every: int | None) -> None:
        self.exchange, self.check_every, self.sent = exchange, check_every, 0

    def on_start(self, loop: TrainingLoop) -> None:
        starts = self.exchange.all_gather(torch.tensor([loop.step], dtype=torch.int64)).view(-1).tolist()
        if len(set(starts)) > 1:
            raise UnigradError(
                f"the processes start from different steps {starts}; they must all see the same checkpoint file"
            )

    def after_step(self, loop: TrainingLoop, record: StepRecord) -> None:
        both = self.exchange.all_gather(torch.tensor([record.forward_equivalents, record.seconds], dtype=torch.float64))
        record.forward_equivalents, record.seconds = float(both[:, 0].sum()), float(both[:, 1].max())
        self.sent += record.estimate.cost.bytes

    def on_step_end(self, loop: TrainingLoop, record: StepRecord) -> None:
        if self.check_every is not None and loop.step % self.check_every == 0:
            self.exchange.check_identical([p for _, p in trainable(loop.model)], loop.step)


@torch.no_grad()
def record_decorrelation_inputs(model: nn.Module, inputs: Tensor) -> int:
    """Run one plain training-mode forward on ``inputs`` if some decorrelation of ``model`` recorded no
    statistics this step; return the forward passes it took, in samples (0 or the batch size).

    Estimators whose passes all run inside ``torch.func`` transforms (batched probes, forward-mode
    passes) leave no statistics (see :mod:`unigrad.nn.decorrelation`); this pass supplies them, and
    its cost is counted as forward passes.
    """
    decors = [m for m in model.modules() if isinstance(m, Decorrelation)]
    if not decors or all(d.last is not None for d in decors):
        return 0
    model(inputs)
    return int(inputs.shape[0])


class DecorrelationUpdates(Hook):
    """After each optimizer step, update the decorrelation matrices from the step's statistics (recorded by an
    extra forward, counted, when the estimator ran no plain training-mode pass); with float32 masters, the
    masters take over the weights a compensating update rewrote."""

    def after_estimate(self, loop: TrainingLoop, batch: Batch, estimate: Estimate) -> None:
        assert batch.inputs is not None
        loop.forward_equivalents += record_decorrelation_inputs(loop.model, batch.inputs)

    def after_update(self, loop: TrainingLoop, batch: Batch) -> None:
        update_decorrelation(loop.model)
        if loop.masters is not None:
            loop.masters.adopt_changes()


class Report(Hook):
    """Call ``on_record`` with a copy of every evaluation point."""

    def __init__(self, on_record: Callable[[Point], None]) -> None:
        self.on_record = on_record

    def on_evaluate(self, loop: TrainingLoop, point: Point) -> None:
        self.on_record(dict(point))


class ProgressBar(Hook):
    """A ``tqdm`` bar on stderr that counts what the budget counts, with the last point's loss and accuracy.

    An ``epochs`` or ``steps`` budget counts steps (``planned`` of them), a ``forwards`` budget forward-pass
    equivalents (samples) and a ``seconds`` budget training seconds; without a budget, the fraction spent in
    thousandths.
    """

    def __init__(self, label: str, quiet: bool, budget: Any = None, planned: float | None = None) -> None:
        self.label, self.quiet = label, quiet
        self.kind = budget.kind if budget is not None else None
        if self.kind in ("epochs", "steps") and planned is not None:
            self.total, self.unit = float(planned), "step"
        elif self.kind == "forwards":
            self.total, self.unit = float(budget.value), "FE"
        elif self.kind == "seconds":
            self.total, self.unit = float(budget.value), "s"
        else:
            self.kind, self.total, self.unit = None, 1000.0, "‰"
        self.bar: tqdm[Any] | None = None

    def on_start(self, loop: TrainingLoop) -> None:
        whole = self.unit == "step" and self.total < 1e15
        self.bar = tqdm(
            total=int(self.total) if whole else self.total,
            desc=self.label,
            unit=self.unit,
            unit_scale=self.unit == "FE",
            # training seconds against wall-clock seconds: no rate, which would read as seconds per second
            bar_format="{l_bar}{bar}| {n:.1f}/{total:g} s of training [{elapsed}]" if self.unit == "s" else None,
            leave=False,
            disable=self.quiet,
            file=sys.stderr,
        )

    def _done(self, loop: TrainingLoop) -> float:
        if self.kind in ("epochs", "steps"):
            return loop.step
        if self.kind == "forwards":
            return loop.forward_equivalents
        if self.kind == "seconds":
            return loop.seconds
        return int(loop.spent() * 1000)

    def on_step_end(self, loop: TrainingLoop, record: StepRecord) -> None:
        assert self.bar is not None
        self.bar.update(min(self.total, self._done(loop)) - self.bar.n)

    def on_evaluate(self, loop: TrainingLoop, point: Point) -> None:
        if self.bar is not None and point.get("train_loss") is not None:
            self.bar.set_postfix(loss=f"{point['train_loss']:.3g}", acc=f"{point['test_accuracy']:.3f}")

    def on_end(self, loop: TrainingLoop) -> None:
        if self.bar is not None:
            self.bar.close()


class Checkpointing(Hook):
    """The run's whole state in the checkpoint file ``path`` (:mod:`unigrad.train.checkpoint`), written at every
    evaluation point and at the end when ``write`` (the lead process), and read back by :meth:`resume`.

    The state: ``fingerprint`` (the run's configuration; a checkpoint of another is refused), the model,
    optimizer, estimator and masters (:func:`~unigrad.train.state.dump_state`), the loop's counters, losses and
    history, the data position, the next evaluation point, how the run ended, the last good step, and the
    diagnostics (when asked for) and bytes sent (with an exchange) so far.
    """

    def __init__(
        self,
        path: Path | None,
        write: bool,
        fingerprint: dict[str, Any],
        order: DataOrder,
        schedule: Fractions,
        last_good: LastGood,
        diagnostics: Diagnostics | None,
        exchange: Exchange | None,
    ) -> None:
        self.path, self.write, self.fingerprint = path, write, fingerprint
        self.order, self.schedule, self.last_good = order, schedule, last_good
        self.diagnostics, self.exchange = diagnostics, exchange
        self.resumed_at: int | None = None  # the step a resume continued from (None: the run did not resume)

    def on_evaluate(self, loop: TrainingLoop, point: Point) -> None:
        self.save(loop)

    def save(self, loop: TrainingLoop, done: bool = False) -> None:
        """Write the state (``done``: the run is over, a resume returns it as it is)."""
        if self.path is None or not self.write:
            return
        diag, ex = self.diagnostics, self.exchange
        state = {
            "fingerprint": self.fingerprint,
            **dump_state(loop.model, loop.optimizer, loop.estimator, loop.masters),
            "step": loop.step,
            "forward_equivalents": loop.forward_equivalents,
            "seconds": loop.seconds,
            "seen": self.order.seen,
            "pos": self.order.pos,
            "next_eval": self.schedule.next,
            "window": list(loop.losses),
            "history": loop.history,
            "status": loop.status,
            "message": loop.message,
            "finished": done,
            "last_good_step": self.last_good.step,
            **({"diagnostics": diag.records, "diagnostics_seconds": diag.seconds} if diag is not None else {}),
            **({"bytes": ex.sent} if ex is not None else {}),
        }
        save_checkpoint(self.path, state)

    def resume(self, loop: TrainingLoop) -> bool:
        """Continue from the checkpoint if there is one: set everything as it was saved; return whether that run
        had finished (``False`` too when there is no checkpoint)."""
        if self.path is None or not self.path.exists():
            return False
        state = load_checkpoint(self.path)
        self._check_fingerprint(state.get("fingerprint") or {})
        load_state(state, loop.model, loop.optimizer, loop.estimator, loop.masters)
        loop.step, loop.forward_equivalents = state["step"], state["forward_equivalents"]
        loop.seconds = state["seconds"]
        loop.losses, loop.history = list(state["window"]), [dict(h) for h in state["history"]]
        loop.status, loop.message = state["status"], state["message"]
        self.order.resume(state["pos"], state["seen"])
        self.schedule.next = state["next_eval"]
        if self.diagnostics is not None:
            self.diagnostics.records = [dict(d) for d in state.get("diagnostics", [])]
            self.diagnostics.seconds = float(state.get("diagnostics_seconds", 0.0))
        if self.exchange is not None:
            self.exchange.sent = int(state.get("bytes", 0))
        self.last_good.take(loop, state["last_good_step"])
        self.resumed_at = loop.step
        return bool(state["finished"])

    def _check_fingerprint(self, theirs: dict[str, Any]) -> None:
        mine = self.fingerprint
        if theirs != mine:
            diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            raise UnigradError(
                f"checkpoint {self.path} belongs to a different run (differs in {', '.join(diff)}); "
                f"use another checkpoint path or delete it"
            )


def train_hooks(*hooks: Hook | None) -> Sequence[Hook]:
    """The hooks given, without the ``None`` of the concerns a run does not have."""
    return [h for h in hooks if h is not None]
