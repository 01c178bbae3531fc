"""The trainer: an estimator writes ``.grad``, any ``torch.optim`` optimizer takes the step.

``train(task, method, optimizer="adam", lr=1e-3, budget="epochs=5", batch_size=64, seed=0)``

* **Data order** is a permutation per epoch drawn from a local generator keyed by
  ``(seed, epoch)``; the model is initialised from ``seed`` and the estimator's noise stream is
  named by ``seed`` too, so a run is reproducible bit for bit and every method of a comparison
  sees the same batches in the same order.
* **Budget** (:class:`Budget`): ``epochs=N`` (⌈N·batches per epoch⌉ steps), ``steps=N``,
  ``forwards=N`` (forward-pass equivalents, the sum of ``Estimate.cost.forward_equivalents``) or
  ``seconds=N`` (wall time spent training, evaluation excluded). Training stops as soon as the
  budget is spent, so it overshoots by less than one step.
* **Evaluation points**: the initial model and every ``1/eval_points`` of the budget (20 by
  default, so curves have enough points), and the end. Each records the fractional epoch, step,
  forward-pass equivalents, training wall seconds, the running mean of ``Estimate.loss`` since the
  previous point, test accuracy and test loss, and, for a task with extra evaluation sets
  (:attr:`~unigrad.data.tasks.Task.extra_tests`, the text tasks' ``transfer``), ``<name>_loss`` and
  ``<name>_accuracy`` of each. The model is evaluated at most once a step: asking for
  more points than an ``epochs`` or ``steps`` budget has steps is refused (:func:`check_plan`), and a
  ``forwards`` or ``seconds`` budget that ends up with fewer steps than the points asked for warns
  after the run (:class:`PlanWarning`). The default (``eval_points=None``: 20) is neither refused nor
  warned about: a short run is simply evaluated after every step.
* **Plans that cannot be carried out** (:func:`check_plan`): a batch larger than the training set,
  more evaluation points than steps, and plans beyond any machine — more than :data:`MAX_STEPS` steps,
  a step of more than :data:`MAX_STEP_FORWARDS` forward samples, or more than :data:`MAX_FORWARDS`
  forward-pass equivalents in all — are refused before anything is built.
* **Divergence**: a NaN or infinite loss (the estimator raises :class:`~unigrad.NonFiniteLossError`;
  the trainer also checks the loss and the test loss itself) stops the run. The parameters, the
  optimizer state and the estimator state are restored from the copy taken at the last evaluation
  point, and the result has ``status="diverged"`` and a message saying where.
* **Half precision** (``dtype="float16"`` or ``"bfloat16"``): the model computes in its dtype and the
  estimator writes ``.grad`` in it, while the optimizer steps float32 master weights
  (:class:`MasterWeights`): the gradients are copied to the masters, the ``torch.optim`` optimizer and
  its state work in float32, and the model's weights are rounded from the masters after each step.
  Snapshots and checkpoints hold the masters (and the fingerprint says ``master_weights``), so a
  resumed run is bitwise exact. float32 and float64 runs have none.
* **Peak memory** (:func:`measure_peak_memory`): the peak bytes of tensor storage allocated while
  building a fresh model, estimator and optimizer and taking two training steps on one batch:
  parameters, gradients, optimizer state (allocated on the first step), activations and the
  method's perturbation and noise buffers. The dataset and the batch itself are not counted, nor
  Python objects (see :func:`unigrad.core.memory.peak_memory`), nor what lives for the whole
  process (a shared noise table, built by one unmeasured step beforehand).
* **Decorrelation** (``decorrelation={"rule": "cov-identity", "lr": 1e-4, ...}``): the freshly
  built model is transformed by :func:`unigrad.nn.decorrelation.decorrelate` (options ``rule``,
  ``lr``, ``sample``, ``compensate``, ``conv``; the subsample key is the run's seed) before the
  optimizer is made, and :func:`~unigrad.nn.decorrelation.update_decorrelation` runs after every
  optimizer step. This gives the decorrelated methods (decorrelated backprop with ``backprop``,
  DNP with ``np``; Ahmad, arXiv:2407.10780; Dalm et al., arXiv:2405.02385). A decorrelated method by name
  (``method="danp"``, or a :class:`~unigrad.nn.decorrelation.Decorrelated` estimator from
  ``make_estimator("danp")``) brings its options and runs exactly as its estimator with ``decorrelation=``
  them (the result names the estimator, ``anp``); giving ``decorrelation=`` as well is refused. The update's time is
  part of the training wall time, but it is not a forward pass, so forward-pass equivalents do not
  count it. The matrices ``R`` are buffers, so the last-good snapshot (the ``state_dict``) holds
  them and a divergence restores them with the parameters; the per-layer update counters (which key
  the subsample) are restored too. Peak memory is measured on the decorrelated model, updates
  included. The statistics of an update are those of the step's last plain training-mode forward;
  when an estimator runs none (all its passes are batched probes or forward-mode passes, e.g.
  ``spsa``, ``rge``, ``es``, ``forward-gradient``), one extra forward of the batch records them and
  is counted in the forward-pass equivalents (:func:`record_decorrelation_inputs`).
* **Checkpoints** (``checkpoint=PATH``): at every evaluation point (the initial one included) and
  at the end, the whole state — parameters and buffers, decorrelation counters, optimizer and
  estimator state (seed and step, which name every perturbation), the data position (the epoch's
  permutation is regenerated from its key), cost counters, the metrics so far and the last good
  step — is written atomically with a checksum (:mod:`unigrad.train.checkpoint`). With
  ``resume=True`` a run whose checkpoint exists continues from it; a killed run resumed this way
  ends with parameters bitwise equal to an uninterrupted run on CPU (same threads), and a finished
  run returns at once. A checkpoint of a different configuration is refused with the fields that
  differ. Wall time keeps counting from the saved value. ``on_record(point)`` is called with every
  evaluation point as it is made (the experiment store records progress this way), and
  ``on_resume(step, finished)`` once when a checkpoint was read back (the command line says so in one line).
* **Which parameters train** (``train_only=["encoder.*", "head.*"]``, ``freeze="*embeddings*"``, or a named
  set: ``train_only="head"`` is the linear probe; :class:`~unigrad.train.build.ParameterChoice`): globs over
  ``model.named_parameters()``, as a list or one string separated by ``|``. Right after the model is built every
  other parameter gets ``requires_grad=False``, so the estimators neither perturb nor step it, and only the
  parameters that train are given to the optimizer. A glob that matches nothing is refused. The choice is part
  of the fingerprint and of the result (``parameters``: the globs and the number of weights that train) only
  when given, so runs without one keep their checkpoints and results. Method specs give it with the keys
  ``train=`` and ``freeze=`` (``backprop:train=head``, :mod:`unigrad.train.methods`).
* **Local heads**: when the estimator trains with local losses (``activity-forward-gradient`` with
  ``local_losses=True``), the model is wrapped by :func:`unigrad.nn.local_heads.with_local_heads`
  (after any decorrelation, before the optimizer is made, so the optimizer trains the heads too).
  Evaluation uses the network's own output; the heads only serve the local losses.
* **Diagnostics** (``diagnostics=["alignment", "sharpness", ...]``, names of
  :data:`unigrad.dynamics.diagnostics.DIAGNOSTICS`): on the step after every evaluation point (or,
  with ``diagnostics_every=k``, on every step that starts from a step count divisible by ``k``), the
  chosen diagnostics are measured on that step's batch at the parameters it starts from (the
  update quantities of ``"step"`` describe the update it takes) and appended to
  ``RunResult.diagnostics`` as ``{"step": s, "epoch": e, <value>: ...}``, ``s`` the step count of
  those parameters (so the entry of an evaluation point has that point's step; the last point,
  which no step follows, has none). Their passes (true gradients, HVPs, repeated estimates) count
  neither in the forward-pass equivalents nor in the training wall time: they are timed apart
  (``RunResult.diagnostics_seconds``). They leave the parameters, ``.grad``, buffers, the
  estimator's state and the global RNG as the training step left them, so a run with diagnostics
  ends bitwise where the same run without them does. The checkpoint holds the entries so far (a
  resumed run continues the list), and the names and ``k`` are part of its fingerprint.
* **Several processes** (``exchange=``, a :class:`~unigrad.core.exchange.ProbeExchange`; see
  :mod:`unigrad.distributed`, which builds one over ``torch.distributed`` and calls this function on
  every process): the exchange is handed to the estimator (``rge``, ``spsa``, ``es``, ``mezo``, ``np``), which
  evaluates this process's probes and all-gathers the scalar losses. Every process sees the same
  batches (or, with a data-parallel exchange, its shard of each batch), takes the same step and so
  holds the same parameters. The forward-pass equivalents of a step are summed over the processes and
  the step's wall time is the slowest process's (one small all-gather per step), so every process
  takes the same budget decisions and the history equals the one-process run's (wall times aside);
  each evaluation point also records ``bytes``, what this process has sent in the estimators'
  exchanges so far. Only rank 0 writes checkpoints and calls ``on_record``; all processes read the
  checkpoint when resuming (the world size may differ from the run that wrote it: the split of the
  probes changes, the update does not). ``exchange_check_every=k`` all-gathers a hash of the
  parameters every ``k`` steps and raises :class:`~unigrad.core.errors.UnigradError` if they differ.
  Diagnostics and decorrelation are refused (their extra passes are local to a process). Without an
  exchange nothing changes: same fingerprint, same checkpoints.
* **Threads** (``threads=1`` by default): torch's intra-op thread count for the duration of the call,
  restored afterwards (``torch.set_num_threads`` is process-wide), as ``unigrad train --threads``
  defaults to 1. The small default models gain nothing from more threads and lose much when other
  processes share the cores: on a 2-core machine shared with other jobs, ``examples/quickstart.py``
  took 158 s with torch's default (a thread per core) and 8.4 s with one thread (median of 3), with
  the same accuracies. ``threads=None``
  leaves the process's setting alone (the command line, :func:`~unigrad.train.compare.compare` and
  the benchmark runner pass it: they have set the threads already). Bitwise resume needs the same
  thread count as the interrupted run.
* **TensorBoard** (``tensorboard=DIR``, with ``label``, the method's name there, by default the estimator's):
  the run's evaluation points and configuration also go to TensorBoard event files in
  ``DIR/<label>/seed-<seed>`` (:mod:`unigrad.train.tensorboard`: the tags, what a resumed run writes). The
  configuration is the method's label, the checkpoint's fingerprint (:func:`run_configuration`) and the
  environment. The points are written outside the timed steps and are only read, so the run's results are those
  of the same run without it; only the lead process of an exchange writes. Without the ``tensorboard`` package
  it is refused before anything is built.
* **MLflow** (``mlflow=URI``, a folder or ``sqlite:///PATH.db``, with ``label`` and ``mlflow_experiment``, by
  default the task's name): the same points and configuration as an MLflow run of ``label`` and ``seed`` in that
  experiment (:mod:`unigrad.train.mlflow`: the metrics, parameters and tags, what a resumed run logs); as for
  TensorBoard, only read, only the lead process, refused before anything is built without ``mlflow-skinny``.

**The loop.** A run is a :class:`~unigrad.train.loop.TrainingLoop` (the step every trainer of a network shares)
with the hooks of :mod:`unigrad.train.hooks`, one per concern above; the budget and plan checks are in
:mod:`unigrad.train.plan`, the master weights and snapshots in :mod:`unigrad.train.state`. Their public names
are importable from here too, as are what a run is built from (:mod:`unigrad.train.build`) and
:func:`~unigrad.train.peak_memory.measure_peak_memory`. (This module is longer than most: a third of it is this
reference of what a run does, kept next to the code that does it.)
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.errors import NonFiniteLossError, UnigradError, check_positive
from unigrad.core.estimator import Estimator
from unigrad.core.exchange import ProbeExchange
from unigrad.core.options import check_seed
from unigrad.core.params import trainable
from unigrad.data.tasks import Task, TaskData, get_task
from unigrad.dynamics.diagnostics import check_diagnostics
from unigrad.nn.decorrelation import check_decorrelation
from unigrad.train.build import (  # noqa: F401  (re-exported)
    REPLAY,
    ParameterChoice,
    attach_exchange,
    build_estimator,
    build_model,
    check_trainable,
    split_decorrelated,
    trainable_parameters,
)
from unigrad.train.hooks import (
    _DATA_TAG,  # noqa: F401  (re-exported: the data order's generator tag)
    Checkpointing,
    DataOrder,
    DecorrelationUpdates,
    Diagnostics,
    Exchange,
    LastGood,
    ProgressBar,
    Report,
    record_decorrelation_inputs,  # noqa: F401  (re-exported)
    train_hooks,
)
from unigrad.train.loop import Fractions, Hook, Point, TrainingLoop
from unigrad.train.mlflow import MLflow, check_tracking_uri
from unigrad.train.peak_memory import measure_peak_memory  # noqa: F401  (re-exported)
from unigrad.train.plan import (  # noqa: F401  (re-exported)
    BUDGET_KINDS,
    DEFAULT_EVAL_POINTS,
    DTYPES,
    MAX_FORWARDS,
    MAX_STEP_FORWARDS,
    MAX_STEPS,
    OPTIMIZERS,
    Budget,
    PlanWarning,
    check_plan,
    make_optimizer,
    planned_steps,
    resolve_device,
    resolve_dtype,
)
from unigrad.train.rundir import environment
from unigrad.train.state import HALF_DTYPES, MasterWeights, Snapshot  # noqa: F401  (re-exported)
from unigrad.train.tensorboard import TensorBoard, check_logdir, run_folder


@dataclass
class RunResult:
    """One training run: its history of evaluation points and how it ended."""

    method: str
    seed: int
    status: str
    message: str
    history: list[dict[str, float | None]]
    steps: int
    forward_equivalents: float
    train_seconds: float
    last_good_step: int
    model: nn.Module = field(repr=False)
    optimizer: torch.optim.Optimizer = field(repr=False)
    estimator: Estimator = field(repr=False)
    decorrelation: dict[str, Any] | None = None
    diagnostic_names: tuple[str, ...] = ()
    diagnostics: list[dict[str, float | None]] = field(default_factory=list)
    diagnostics_seconds: float = 0.0
    parameters: dict[str, Any] | None = None

    @property
    def final(self) -> dict[str, float | None]:
        """The last evaluation point (the last good one after a divergence)."""
        return self.history[-1]

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.diagnostic_names:  # only runs that asked for diagnostics carry the fields
            extra = {
                "diagnostic_names": list(self.diagnostic_names),
                "diagnostics_seconds": self.diagnostics_seconds,
                "diagnostics": self.diagnostics,
            }
        if self.parameters is not None:  # only runs that chose their parameters carry the field
            extra["parameters"] = self.parameters
        return {
            "method": self.method,
            "seed": self.seed,
            "status": self.status,
            "message": self.message,
            "steps": self.steps,
            "forward_equivalents": self.forward_equivalents,
            "train_seconds": self.train_seconds,
            "last_good_step": self.last_good_step,
            "decorrelation": self.decorrelation,
            "final": self.final,
            "history": self.history,
            **extra,
        }


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, x: Tensor, y: Tensor, batch: int = 2048) -> tuple[float, float]:
    """Mean loss and metric of ``model`` on ``(x, y)``, in eval mode, in chunks of ``batch``."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0.0
    for lo in range(0, x.shape[0], batch):
        out = model(x[lo : lo + batch])
        yb = y[lo : lo + batch]
        loss_sum += float(task.loss_fn(out.float(), yb, reduction="sum"))
        correct += task.metric(out, yb) * yb.shape[0]
    model.train(was_training)
    n = max(1, x.shape[0])
    return loss_sum / n, correct / n


def _what_to_try(estimator: Estimator, lr: float, decor: dict[str, Any] | None, dt: torch.dtype) -> str:
    """The settings a diverged run could change, without naming a cause the trainer does not know."""
    tries = [f"a learning rate below {lr:g}"]
    sigma = getattr(estimator, "sigma", None)
    if isinstance(sigma, float):
        tries.append(f"another sigma than {sigma:g}")
    if decor is not None:
        tries.append(f"a decorrelation lr below {decor['lr']:g}" if "lr" in decor else "a lower decorrelation lr")
    if dt in HALF_DTYPES:
        tries.append(f"float32 instead of {str(dt).removeprefix('torch.')}")
    return "the cause is not known; to try: " + ", ".join(tries)


def _with_threads(fn: Callable[..., RunResult]) -> Callable[..., RunResult]:
    """Run ``fn`` with torch's intra-op thread count set to its ``threads`` argument, restored afterwards."""

    @functools.wraps(fn)
    def run(*args: Any, threads: int | None = 1, **kwargs: Any) -> RunResult:
        if threads is None:
            return fn(*args, threads=None, **kwargs)
        check_positive("threads", threads, integer=True)
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
        except (RuntimeError, ValueError, OverflowError):  # beyond the C int torch takes
            raise UnigradError(
                f"option threads={threads} is more threads than torch can use; give a small count"
            ) from None
        try:
            return fn(*args, threads=threads, **kwargs)
        finally:
            torch.set_num_threads(before)

    return run


def _fingerprint(
    task: Task,
    estimator: Estimator,
    options: dict[str, Any],
    masters: bool,
    names: tuple[str, ...],
    diagnostics_every: int | None,
    exchange: ProbeExchange | None,
) -> dict[str, Any]:
    """The configuration a checkpoint belongs to: ``options`` (the run's settings) with the task, the estimator
    and what changes the state a checkpoint holds (masters, diagnostics, a data-parallel exchange)."""
    fingerprint = {"task": task.name, "estimator": estimator.name, "estimator_options": estimator.options(), **options}
    if masters:  # half-precision checkpoints hold the masters; those of older versions did not
        fingerprint["master_weights"] = "float32"
    if names:  # runs without diagnostics keep the fingerprint (and checkpoints) they always had
        fingerprint["diagnostics"] = list(names)
        fingerprint["diagnostics_every"] = diagnostics_every
    if exchange is not None and exchange.data_parallel:  # sharded batches round differently
        fingerprint["data_parallel"] = True
    return fingerprint


def _extra_tests(model: nn.Module, task: Task, data: TaskData) -> dict[str, float | None]:
    """``<name>_loss`` and ``<name>_accuracy`` of ``model`` on each of the task's extra evaluation sets
    (:attr:`TaskData.extra`, none for most tasks); a loss that is not finite is ``None``."""
    out: dict[str, float | None] = {}
    for name, (x, y) in data.extra.items():
        loss, metric = evaluate(model, task, x, y)
        out[f"{name}_loss"] = loss if math.isfinite(loss) else None
        out[f"{name}_{task.metric_name}"] = metric
    return out


def _test_point(task: Task, data: TaskData, order: DataOrder, exchange: Exchange | None) -> Callable[..., Point | None]:
    """The evaluation point of a run (module docs), or ``None`` when the test loss is not finite."""

    def point(loop: TrainingLoop) -> Point | None:
        test_loss, test_acc = evaluate(loop.model, task, data.x_test, data.y_test)
        if not math.isfinite(test_loss):
            return None
        return {
            "epoch": order.epoch,
            "step": loop.step,
            "forward_equivalents": loop.forward_equivalents,
            "seconds": loop.seconds,
            "train_loss": loop.train_loss(),
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            **_extra_tests(loop.model, task, data),
            **({"bytes": exchange.sent} if exchange is not None else {}),
        }

    return point


def _describe_divergence(error: NonFiniteLossError) -> str:
    """``"the training loss became nan"`` for a non-finite estimate, or the estimator's own words."""
    what = f"{error}".split(";")[0]
    return f"the training {what}" if what.startswith("loss became") else what


@_with_threads
def train(
    task: Task | str,
    method: Estimator | str,
    *,
    optimizer: str = "adam",
    lr: float = 1e-3,
    estimator_options: dict[str, Any] | None = None,
    optimizer_options: dict[str, Any] | None = None,
    budget: Budget | str = "epochs=1",
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    eval_points: int | None = None,
    progress: bool = False,
    desc: str | None = None,
    decorrelation: dict[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    on_record: Callable[[dict[str, float | None]], None] | None = None,
    on_resume: Callable[[int, bool], None] | None = None,
    diagnostics: Sequence[str] = (),
    diagnostics_every: int | None = None,
    exchange: ProbeExchange | None = None,
    exchange_check_every: int | None = None,
    threads: int | None = 1,
    train_only: str | Sequence[str] | None = None,
    freeze: str | Sequence[str] | None = None,
    tensorboard: str | Path | None = None,
    label: str | None = None,
    mlflow: str | Path | None = None,
    mlflow_experiment: str | None = None,
) -> RunResult:
    """Train ``task``'s model with ``method`` and ``optimizer`` until ``budget`` is spent (module docs).

    ``threads`` (default 1) is torch's intra-op thread count during the call, restored afterwards;
    ``None`` leaves the process's setting alone (see "Threads" in the module docs). ``train_only`` and ``freeze``
    choose the parameters that train ("Which parameters train"); by default every parameter trains.
    ``tensorboard=DIR`` logs the run to TensorBoard under ``DIR/<label>/seed-<seed>`` (``label`` defaults to the
    estimator's name; see "TensorBoard"). ``mlflow=URI`` logs it as an MLflow run in the experiment
    ``mlflow_experiment`` (default: the task's name; see "MLflow").
    """
    plan = _plan(
        task,
        method,
        estimator_options,
        optimizer=optimizer,
        lr=lr,
        optimizer_options=optimizer_options,
        budget=budget,
        batch_size=batch_size,
        seed=seed,
        device=device,
        dtype=dtype,
        eval_points=eval_points,
        decorrelation=decorrelation,
        diagnostics=diagnostics,
        diagnostics_every=diagnostics_every,
        choice=ParameterChoice.make(train_only, freeze),
    )
    logdir = check_logdir(tensorboard) if tensorboard is not None else None
    tracking = check_tracking_uri(mlflow) if mlflow is not None else None
    estimator, dev, dt, decor, names = plan.estimator, plan.device, plan.dtype, plan.decor, plan.names
    if exchange is not None:
        attach_exchange(estimator, exchange, names, decor, exchange_check_every)
    lead = exchange is None or exchange.rank == 0  # the process that writes checkpoints and reports progress
    data: TaskData = plan.task.data().to(dev, dt)
    model = build_model(plan.task, seed, dev, dt, decor, estimator, plan.choice)
    masters = MasterWeights(model) if dt in HALF_DTYPES else None  # the optimizer steps float32 copies
    params = trainable_parameters(masters.params if masters is not None else model.parameters())
    opt = make_optimizer(optimizer, params, lr, **(optimizer_options or {}))
    model.train()
    initial = [p.detach().clone() for _, p in trainable(model)] if "drift" in names else None

    order = DataOrder(data, plan.task.loss_fn, seed, batch_size, exchange)
    if getattr(estimator, "wants_anchor_data", False):  # variance reduction against a large anchor batch
        estimator.set_anchor_data(data.x_train, data.y_train, plan.task.loss_fn)
    run = _Concerns.make(plan, order, initial, masters, exchange, exchange_check_every, checkpoint, lead)
    quiet = not progress or not lead or not sys.stderr.isatty()
    board = None
    if logdir is not None and lead:
        name = label or estimator.name
        config = {"method": name, **run.checkpointing.fingerprint, "environment": environment(dev)}
        board = TensorBoard(run_folder(logdir, name, seed), config)
    logger = None
    if tracking is not None and lead:
        name = label or estimator.name
        config = {"method": name, **run.checkpointing.fingerprint, "environment": environment(dev)}
        logger = MLflow(tracking, mlflow_experiment or plan.task.name, name, seed, config)
    hooks = train_hooks(
        order,
        run.exchange,
        run.diagnostics,
        DecorrelationUpdates() if decor is not None else None,
        run.last_good,
        Report(on_record) if on_record is not None and lead else None,
        ProgressBar(
            desc or f"{estimator.name} seed {seed}",
            quiet,
            plan.budget,
            planned_steps(plan.budget, order.n, order.batch_size),
        ),
        run.checkpointing,
        board,
        logger,
    )
    loop = _loop(plan, model, opt, masters, order, run, hooks)
    finished = resume and run.checkpointing.resume(loop)
    if on_resume is not None and run.checkpointing.resumed_at is not None:
        on_resume(run.checkpointing.resumed_at, finished)
    loop.stopped = finished
    loop.run()
    _warn_if_short(plan, loop)
    if not finished:
        _finish(plan, loop, order, run)
    return _result(plan, loop, run)


def run_configuration(task: Task | str, method: Estimator | str, **options: Any) -> dict[str, Any]:
    """The configuration of the run ``train(task, method, **options)`` (its checkpoint's fingerprint: the task,
    the estimator and its options, the optimizer, learning rate, budget, batch size, seed, device, dtype,
    evaluation points, decorrelation, ...), checked as :func:`train` checks it, without building a model or
    training. TensorBoard shows it as the run's configuration."""
    bound = inspect.signature(train).bind(task, method, **options)
    bound.apply_defaults()
    a = bound.arguments
    plan = _plan(
        a["task"],
        a["method"],
        a["estimator_options"],
        optimizer=a["optimizer"],
        lr=a["lr"],
        optimizer_options=a["optimizer_options"],
        budget=a["budget"],
        batch_size=a["batch_size"],
        seed=a["seed"],
        device=a["device"],
        dtype=a["dtype"],
        eval_points=a["eval_points"],
        decorrelation=a["decorrelation"],
        diagnostics=a["diagnostics"],
        diagnostics_every=a["diagnostics_every"],
        choice=ParameterChoice.make(a["train_only"], a["freeze"]),
    )
    half = plan.dtype in HALF_DTYPES
    return _fingerprint(
        plan.task, plan.estimator, plan.settings, half, plan.names, plan.diagnostics_every, a["exchange"]
    )


@dataclass
class _Plan:
    """A run's settings, checked before anything is built: the task, the estimator (a decorrelated method split
    into its estimator and ``decor``), the budget, the evaluation points as ``asked`` (``None``: the default
    number) and as used, the device and dtype, the diagnostics, and ``settings``, the options of the fingerprint."""

    task: Task
    estimator: Estimator
    budget: Budget
    asked: int | None
    eval_points: int
    seed: int
    lr: float
    device: torch.device
    dtype: torch.dtype
    decor: dict[str, Any] | None
    names: tuple[str, ...]
    diagnostics_every: int | None
    settings: dict[str, Any]
    choice: ParameterChoice | None = None


def _plan(
    task: Task | str,
    method: Estimator | str,
    estimator_options: dict[str, Any] | None,
    *,
    optimizer: str,
    lr: float,
    optimizer_options: dict[str, Any] | None,
    budget: Budget | str,
    batch_size: int,
    seed: int,
    device: str | torch.device,
    dtype: str | torch.dtype,
    eval_points: int | None,
    decorrelation: dict[str, Any] | None,
    diagnostics: Sequence[str],
    diagnostics_every: int | None,
    choice: ParameterChoice | None,
) -> _Plan:
    """Check :func:`train`'s arguments and build its estimator (module docs: plans that cannot be carried out)."""
    task = get_task(task) if isinstance(task, str) else task
    budget = Budget.parse(budget)
    check_positive("batch_size", batch_size, integer=True)
    points = DEFAULT_EVAL_POINTS if eval_points is None else eval_points
    check_positive("eval_points", points, integer=True)
    check_seed("seed", seed)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    decor = check_decorrelation(decorrelation)
    names = check_diagnostics(diagnostics)
    if diagnostics_every is not None:
        check_positive("diagnostics_every", diagnostics_every, integer=True)
    estimator, decor = split_decorrelated(build_estimator(method, seed, estimator_options, optimizer), decor)
    if optimizer == REPLAY and dt in HALF_DTYPES:
        raise UnigradError(
            f"optimizer {REPLAY} steps the model's own weights, and half-precision runs step float32 masters; use "
            "float32 or sgd"
        )
    check_plan(task, estimator, budget=budget, batch_size=batch_size, eval_points=eval_points)
    settings = {"optimizer": optimizer, "lr": lr, "optimizer_options": dict(optimizer_options or {})}
    settings |= {"budget": str(budget), "batch_size": batch_size, "seed": seed, "device": dev.type}
    settings |= {"dtype": str(dt), "eval_points": points, "decorrelation": decor}
    if choice is not None:  # runs that train every parameter keep the fingerprint (and checkpoints) they had
        settings["parameters"] = choice.to_dict()
    return _Plan(
        task=task,
        estimator=estimator,
        budget=budget,
        asked=eval_points,
        eval_points=points,
        seed=seed,
        lr=lr,
        device=dev,
        dtype=dt,
        decor=decor,
        names=names,
        diagnostics_every=diagnostics_every,
        settings=settings,
        choice=choice,
    )


@dataclass
class _Concerns:
    """The hooks of a run that :func:`train` reads back after the loop: the last good state, the diagnostics, the
    exchange's agreement and the checkpoint."""

    last_good: LastGood
    diagnostics: Diagnostics | None
    exchange: Exchange | None
    checkpointing: Checkpointing
    schedule: Fractions

    @classmethod
    def make(
        cls,
        plan: _Plan,
        order: DataOrder,
        initial: list[Tensor] | None,
        masters: MasterWeights | None,
        exchange: ProbeExchange | None,
        check_every: int | None,
        checkpoint: str | Path | None,
        lead: bool,
    ) -> _Concerns:
        """The concerns of ``plan``'s run on ``order``'s batches; only the ``lead`` process writes the checkpoint."""
        schedule, last_good = Fractions(plan.eval_points), LastGood()
        diag = Diagnostics(plan.names, plan.diagnostics_every, plan.seed, initial, order) if plan.names else None
        ex = Exchange(exchange, check_every) if exchange is not None else None
        fingerprint = _fingerprint(
            plan.task, plan.estimator, plan.settings, masters is not None, plan.names, plan.diagnostics_every, exchange
        )
        path = None if checkpoint is None else Path(checkpoint)
        ckpt = Checkpointing(path, lead, fingerprint, order, schedule, last_good, diag, ex)
        return cls(last_good, diag, ex, ckpt, schedule)


def _loop(
    plan: _Plan,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    masters: MasterWeights | None,
    order: DataOrder,
    run: _Concerns,
    hooks: Sequence[Hook],
) -> TrainingLoop:
    """The loop of ``plan``'s run: ``order``'s batches until the budget is spent, evaluated on the test set."""
    budget = plan.budget
    planned = planned_steps(budget, order.n, order.batch_size)
    total = None if planned is None else int(planned)
    return TrainingLoop(
        model,
        plan.estimator,
        opt,
        order,
        spent=lambda loop: budget.spent(
            steps=loop.step, forwards=loop.forward_equivalents, seconds=loop.seconds, planned=total
        ),
        evaluate=_test_point(plan.task, order.data, order, run.exchange),
        schedule=run.schedule,
        hooks=hooks,
        masters=masters,
        start_error=f"the initial model of task {plan.task.name} gives a non-finite test loss",
        score_error="the test loss became non-finite",
        describe=_describe_divergence,
    )


def _warn_if_short(plan: _Plan, loop: TrainingLoop) -> None:
    """Warn (:class:`PlanWarning`) when a ``forwards`` or ``seconds`` budget allowed fewer steps than the evaluation
    points asked for (module docs)."""
    budget, points = plan.budget, plan.eval_points
    if plan.asked is not None and budget.kind in ("forwards", "seconds") and loop.step < points and loop.status == "ok":
        warnings.warn(
            f"{points} evaluation points were asked for, but budget {budget} allowed {plan.estimator.name} (seed "
            f"{plan.seed}) only {loop.step} step{'s' * (loop.step != 1)}: it was evaluated after every step",
            PlanWarning,
            stacklevel=3,  # the frame a warning from train itself names (its caller, the thread wrapper)
        )


def _finish(plan: _Plan, loop: TrainingLoop, order: DataOrder, run: _Concerns) -> None:
    """After a run that was not already finished: on a divergence restore the last good state and say where and
    what to try; write the final checkpoint."""
    if loop.status == "diverged":
        run.last_good.restore(loop)
        loop.message = (
            f"{plan.estimator.name} (seed {plan.seed}) diverged at step {loop.failed_step} (epoch {order.epoch:.2f}): "
            f"{loop.message}; kept the last good state (step {run.last_good.step}); "
            + _what_to_try(plan.estimator, plan.lr, plan.decor, plan.dtype)
        )
    run.checkpointing.save(loop, done=True)


def _result(plan: _Plan, loop: TrainingLoop, run: _Concerns) -> RunResult:
    """The :class:`RunResult` of a finished loop."""
    diag = run.diagnostics
    chosen = None
    if plan.choice is not None:
        chosen = {**plan.choice.to_dict(), "trained_weights": sum(p.numel() for _, p in trainable(loop.model))}
    return RunResult(
        method=plan.estimator.name,
        seed=plan.seed,
        status=loop.status,
        message=loop.message,
        history=loop.history,
        steps=loop.step,
        forward_equivalents=loop.forward_equivalents,
        train_seconds=loop.seconds,
        last_good_step=run.last_good.step,
        model=loop.model,
        optimizer=loop.optimizer,
        estimator=plan.estimator,
        decorrelation=plan.decor,
        diagnostic_names=plan.names,
        diagnostics=diag.records if diag is not None else [],
        diagnostics_seconds=diag.seconds if diag is not None else 0.0,
        parameters=chosen,
    )
