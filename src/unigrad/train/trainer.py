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
  previous point, test accuracy and test loss. The model is evaluated at most once a step: asking for
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
  evaluation point as it is made (the experiment store records progress this way).
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
"""

from __future__ import annotations

import copy
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from unigrad.core.errors import (
    NonFiniteLossError,
    UnigradError,
    check_finite_options,
    check_positive,
    unknown_name,
)
from unigrad.core.estimator import Estimator
from unigrad.core.exchange import ProbeExchange, check_exchange
from unigrad.core.memory import peak_memory
from unigrad.core.objective import supervised
from unigrad.core.options import check_number, check_seed
from unigrad.core.params import trainable
from unigrad.core.rng import generator, key_hash
from unigrad.data.tasks import Task, TaskData, get_task
from unigrad.dynamics.diagnostics import Pending, check_diagnostics, measure, measure_step
from unigrad.nn.decorrelation import (
    Decorrelated,
    Decorrelation,
    check_decorrelation,
    decorrelate,
    update_decorrelation,
)
from unigrad.nn.local_heads import with_local_heads
from unigrad.registry import make_estimator
from unigrad.train.checkpoint import load_checkpoint, save_checkpoint

BUDGET_KINDS = ("epochs", "steps", "forwards", "seconds")

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

_DATA_TAG = 0xDA7A


def build_model(
    task: Task,
    seed: int,
    dev: torch.device,
    dt: torch.dtype,
    decor: dict[str, Any] | None,
    local_heads: bool = False,
) -> nn.Module:
    """``task``'s model from ``seed`` on ``dev``/``dt``, decorrelated when ``decor`` is given and
    wrapped with local heads (:func:`unigrad.nn.local_heads.with_local_heads`) when ``local_heads``."""
    model = task.build_model(seed).to(device=dev, dtype=dt)
    if decor is not None:
        decorrelate(model, seed=seed, **decor)
    if local_heads:
        model = with_local_heads(model, task.data().x_train[:2].to(device=dev, dtype=dt), seed=seed)
    return model


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


def _wants_heads(estimator: Estimator) -> bool:
    """Whether ``estimator`` trains with local losses and so needs local heads on the model."""
    return bool(getattr(estimator, "local_losses", False))


@dataclass(frozen=True)
class Budget:
    """How long to train: ``kind`` is one of :data:`BUDGET_KINDS`, ``value`` > 0."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise UnigradError(f"budget kind must be one of {', '.join(BUDGET_KINDS)}; got {self.kind!r}")
        check_number(self.kind, self.value, what="a finite number > 0", subject=f"budget {self.kind}")
        if not self.value > 0:
            raise UnigradError(f"budget {self.kind} must be > 0, got {self.value:g}")
        if self.kind == "steps" and self.value != int(self.value):
            raise UnigradError(f"budget steps must be a whole number, got {self.value:g}")

    @classmethod
    def parse(cls, text: str | Budget) -> Budget:
        """``"epochs=5"``, ``"steps=100"``, ``"forwards=1e7"`` or ``"seconds=30"``."""
        if isinstance(text, Budget):
            return text
        kind, sep, value = str(text).partition("=")
        if not sep:
            raise UnigradError(f"malformed budget {text!r}; write KIND=N with KIND one of {', '.join(BUDGET_KINDS)}")
        try:
            number = float(value)
        except ValueError:
            raise UnigradError(f"malformed budget {text!r}: {value!r} is not a number") from None
        return cls(kind.strip(), number)

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"


DEFAULT_EVAL_POINTS = 20
"""Evaluation points of a run that does not ask for a number (``eval_points=None``)."""


class PlanWarning(UserWarning):
    """A run could not do what was asked in a way only training revealed (fewer steps than evaluation points)."""


MAX_STEPS = 10**9
"""A plan of more steps is refused (:func:`check_plan`): the loop's own work per step (tens of microseconds
at least, before any model runs) makes 1e9 steps a day or more."""

MAX_FORWARDS = 1e13
"""A plan that needs more forward-pass equivalents (samples through the model) than this is refused
(:func:`check_plan`): 12 days even at 10 million samples a second, and a 2-core CPU manages a few hundred
thousand a second on the small tasks."""

MAX_STEP_FORWARDS = 1e10
"""A step that needs more forward samples than this is refused (:func:`check_plan`): a step runs to its end
(the budget, the progress bar and the checkpoints act only between steps), and 1e10 samples is hours
even at a million samples a second."""


def planned_steps(budget: Budget, n_train: int, batch_size: int) -> float | None:
    """The steps an ``epochs`` or ``steps`` budget takes with ``n_train`` training samples (a float: the
    count can be beyond any integer a loop reaches); ``None`` for ``forwards`` and ``seconds`` budgets."""
    if budget.kind == "epochs":
        steps = budget.value * _batches_per_epoch(n_train, batch_size)
        return math.ceil(steps) if math.isfinite(steps) else math.inf
    if budget.kind == "steps":
        return budget.value
    return None


def check_plan(
    task: Task | str,
    method: Estimator | str,
    *,
    budget: Budget | str,
    batch_size: int,
    eval_points: int | None,
    estimator_options: dict[str, Any] | None = None,
) -> None:
    """Refuse, before anything is trained or written, a run that cannot be what was asked or cannot finish.

    * a batch larger than the training set (the loop would silently take the whole set each step);
    * more evaluation points than the steps of an ``epochs`` or ``steps`` budget (a model is evaluated at
      most once a step; a ``forwards`` or ``seconds`` budget cannot know its steps in advance: :func:`train`
      then warns after the run). ``eval_points=None`` (the default of :func:`train`) is not checked;
    * a plan beyond any machine: more than :data:`MAX_STEPS` steps, a step of more than
      :data:`MAX_STEP_FORWARDS` forward samples, or more than :data:`MAX_FORWARDS` forward-pass equivalents
      in all. The work is a lower bound: the samples of a step (a full batch, or on average over the steps
      ``n / ⌈n / batch⌉`` since an epoch's last batch may be short) × the estimator's
      :meth:`~unigrad.core.estimator.Estimator.min_forwards_per_sample` (its probes).
    """
    task = get_task(task) if isinstance(task, str) else task
    budget = Budget.parse(budget)
    check_positive("batch_size", batch_size, integer=True)
    if eval_points is not None:
        check_positive("eval_points", eval_points, integer=True)
    n = int(task.data().x_train.shape[0])
    if batch_size > n:
        raise UnigradError(
            f"batch size {batch_size} is larger than the training set of {task.name} ({n} samples); give at most {n}"
        )
    estimator = method if isinstance(method, Estimator) else make_estimator(method, **(estimator_options or {}))
    evals = estimator.min_forwards_per_sample()
    per_step = batch_size * evals
    beyond = "refused as beyond any machine"
    if per_step > MAX_STEP_FORWARDS:
        raise UnigradError(
            f"{estimator.name} runs at least {per_step:.3g} forward samples a step ({evals:g} probes × batch size "
            f"{batch_size}); a step runs to its end (the budget and the checkpoints act between steps) and more than "
            f"{MAX_STEP_FORWARDS:g} a step is {beyond}; lower the probes or the batch size"
        )
    steps = planned_steps(budget, n, batch_size)
    if steps is not None:
        per_epoch = f" ({_batches_per_epoch(n, batch_size)} an epoch at batch size {batch_size})"
        if steps > MAX_STEPS:
            raise UnigradError(
                f"budget {budget} is {steps:.3g} steps{per_epoch * (budget.kind == 'epochs')}; more than "
                f"{MAX_STEPS:.0e} steps is {beyond} (the loop alone needs a day for 1e9); lower the budget"
            )
        # an epoch's last batch may be short: any run of steps averages at least n / (batches an epoch) samples
        total = steps * n / _batches_per_epoch(n, batch_size) * evals
        if total > MAX_FORWARDS:
            raise UnigradError(
                f"budget {budget} is {int(steps)} steps at batch size {batch_size} with {evals:g} probes: at least "
                f"{total:.3g} forward samples; more than {MAX_FORWARDS:g} forward-pass equivalents is {beyond} "
                "(12 days even at 1e7 samples a second); lower the budget, the probes or the batch size"
            )
        if eval_points is not None and eval_points > steps:
            raise UnigradError(
                f"{eval_points} evaluation points are more than the {int(steps)} steps of budget {budget}"
                f"{per_epoch * (budget.kind == 'epochs')}; the model is evaluated at most once a step, so ask for "
                f"at most {int(steps)}"
            )
    elif budget.kind == "forwards" and budget.value > MAX_FORWARDS:
        raise UnigradError(
            f"budget {budget} is more than {MAX_FORWARDS:g} forward-pass equivalents, {beyond} (12 days even at "
            "1e7 samples a second); lower it"
        )


def make_optimizer(name: str, params: Iterable[Tensor], lr: float, **options: Any) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer called ``name`` (one of :data:`OPTIMIZERS`) with learning rate ``lr``."""
    if name not in OPTIMIZERS:
        raise unknown_name("optimizer", name, OPTIMIZERS)
    check_number("lr", lr, low=0, low_inclusive=False)
    check_finite_options(f"optimizer {name}", options)
    try:
        return OPTIMIZERS[name](params, lr=lr, **options)
    except (TypeError, ValueError) as e:
        raise UnigradError(f"bad options for optimizer {name}: {e}") from None


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"`` or ``"cuda[:i]"``; asking for CUDA on a machine without it is an error."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UnigradError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise UnigradError(f"device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UnigradError("device cuda requested but torch.cuda.is_available() is False")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UnigradError(f"device {dev} does not exist: torch sees {torch.cuda.device_count()} CUDA devices")
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A floating dtype by name (``float32``, ``float64``, ``bfloat16``, ``float16``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise unknown_name("dtype", dtype, DTYPES)
    return DTYPES[dtype]


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


def check_trainable(estimator: Estimator) -> Estimator:
    """Refuse an estimator that would leave ``.grad`` empty: the loop steps a ``torch.optim`` optimizer from
    ``.grad``, so it would report success and train nothing (MeZO with ``write_grad=False`` returns its
    direction compressed, for :class:`~unigrad.core.replay.ReplaySGD` in a loop of one's own)."""
    if getattr(estimator, "write_grad", True) is False:
        raise UnigradError(
            f"option write_grad=false of {estimator.name} leaves .grad empty and the training loop steps from .grad, "
            "so nothing would train; drop the option (memory-lean MeZO-SGD: unigrad.core.replay.ReplaySGD in your "
            "own loop, see examples/quickstart.py)"
        )
    return estimator


def _build_estimator(method: Estimator | str, seed: int, options: dict[str, Any] | None) -> Estimator:
    if isinstance(method, Estimator):
        if options:
            raise UnigradError("estimator options were given for an already built estimator")
        return check_trainable(method)
    return check_trainable(make_estimator(method, **{"seed": seed, **(options or {})}))


def _split_decorrelated(estimator: Estimator, decor: dict[str, Any] | None) -> tuple[Estimator, dict[str, Any] | None]:
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


def _attach_exchange(
    estimator: Estimator,
    exchange: ProbeExchange,
    diagnostics: Sequence[str],
    decor: dict[str, Any] | None,
    check_every: int | None,
) -> None:
    """Hand ``exchange`` to ``estimator``; refuse what cannot run on several processes."""
    if not hasattr(estimator, "exchange"):
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


def _slice(rows: range) -> slice:
    return slice(rows.start, rows.stop)


def _batches_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


HALF_DTYPES = (torch.float16, torch.bfloat16)
"""Dtypes whose models train through float32 master weights (:class:`MasterWeights`)."""


class MasterWeights:
    """Float32 master copies of a half-precision model's parameters, which the optimizer steps.

    The model computes in its own dtype and the estimator writes ``.grad`` in it; :meth:`grads_in` hands the
    gradients to the masters as float32, the ``torch.optim`` optimizer steps the masters (its state is float32
    too), and :meth:`weights_out` rounds the masters into the model. Half precision cannot hold what the
    optimizer needs: Adam's ``eps = 1e-8`` is zero in float16, so a coordinate with a zero gradient gives
    ``0/0`` at the first step, and updates smaller than half a unit in the last place of a weight (most of
    them, at learning rates around 1e-3) round away.
    """

    def __init__(self, model: nn.Module) -> None:
        self.pairs = [(p, p.detach().float().clone().requires_grad_(p.requires_grad)) for p in model.parameters()]

    @property
    def params(self) -> list[Tensor]:
        """The float32 masters, in the order of ``model.parameters()`` (what the optimizer steps)."""
        return [m for _, m in self.pairs]

    def grads_in(self) -> None:
        """Each master's ``.grad``: its parameter's ``.grad`` in float32 (``None`` stays ``None``)."""
        for p, m in self.pairs:
            m.grad = None if p.grad is None else p.grad.detach().float()

    @torch.no_grad()
    def weights_out(self) -> None:
        """Round the masters into the model's parameters."""
        for p, m in self.pairs:
            p.copy_(m)

    @torch.no_grad()
    def adopt_changes(self) -> None:
        """Take over parameters changed in the model since :meth:`weights_out` (a decorrelation update with
        weight compensation rewrites ``W``); the others keep their float32 values."""
        for p, m in self.pairs:
            if not torch.equal(p, m.to(p.dtype)):
                m.copy_(p)

    def state(self) -> list[Tensor]:
        """The masters (references), for a checkpoint or a snapshot."""
        return [m.detach() for _, m in self.pairs]

    @torch.no_grad()
    def load(self, tensors: Sequence[Tensor]) -> None:
        """Set the masters from :meth:`state`'s tensors (the model's parameters are left as they are)."""
        if len(tensors) != len(self.pairs):
            raise UnigradError(f"the checkpoint holds {len(tensors)} master weights, the model {len(self.pairs)}")
        for (_, m), t in zip(self.pairs, tensors):
            m.copy_(t)


class _Snapshot:
    """An in-memory copy of parameters and buffers (decorrelation ``R`` included), master weights, optimizer and
    estimator state."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        estimator: Estimator,
        step: int,
        masters: MasterWeights | None = None,
    ) -> None:
        self.state = copy.deepcopy(_dump_state(model, optimizer, estimator, masters))
        self.step = step

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        estimator: Estimator,
        masters: MasterWeights | None = None,
    ) -> None:
        _load_state(copy.deepcopy(self.state), model, optimizer, estimator, masters)


def _dump_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, estimator: Estimator, masters: MasterWeights | None = None
) -> dict[str, Any]:
    """Model (parameters and buffers), decorrelation counters, optimizer and estimator state (references, not
    copies), for a checkpoint or a snapshot; the float32 master weights of a half-precision model too."""
    return {
        "model": {k: v.detach() for k, v in model.state_dict().items()},
        "decor_steps": {k: m.step for k, m in model.named_modules() if isinstance(m, Decorrelation)},
        "optimizer": optimizer.state_dict(),
        "estimator": estimator.state_dict(),
        **({"masters": masters.state()} if masters is not None else {}),
    }


def _load_state(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    estimator: Estimator,
    masters: MasterWeights | None = None,
) -> None:
    model.load_state_dict(state["model"])
    for k, m in model.named_modules():
        if isinstance(m, Decorrelation):
            m.step, m.last = int(state["decor_steps"][k]), None
    if masters is not None:
        masters.load(state["masters"])
    optimizer.load_state_dict(state["optimizer"])
    estimator.load_state_dict(state["estimator"])


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
    diagnostics: Sequence[str] = (),
    diagnostics_every: int | None = None,
    exchange: ProbeExchange | None = None,
    exchange_check_every: int | None = None,
    threads: int | None = 1,
) -> RunResult:
    """Train ``task``'s model with ``method`` and ``optimizer`` until ``budget`` is spent (module docs).

    ``threads`` (default 1) is torch's intra-op thread count during the call, restored afterwards;
    ``None`` leaves the process's setting alone (see "Threads" in the module docs).
    """
    task = get_task(task) if isinstance(task, str) else task
    budget = Budget.parse(budget)
    check_positive("batch_size", batch_size, integer=True)
    asked = eval_points  # None: the default number, which a short run may not reach (module docs)
    eval_points = DEFAULT_EVAL_POINTS if eval_points is None else eval_points
    check_positive("eval_points", eval_points, integer=True)
    check_seed("seed", seed)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    decor = check_decorrelation(decorrelation)
    names = check_diagnostics(diagnostics)
    if diagnostics_every is not None:
        check_positive("diagnostics_every", diagnostics_every, integer=True)

    estimator, decor = _split_decorrelated(_build_estimator(method, seed, estimator_options), decor)
    check_plan(task, estimator, budget=budget, batch_size=batch_size, eval_points=asked)
    if exchange is not None:
        _attach_exchange(estimator, exchange, names, decor, exchange_check_every)
    lead = exchange is None or exchange.rank == 0  # the process that writes checkpoints and reports progress
    data: TaskData = task.data().to(dev, dt)
    model = build_model(task, seed, dev, dt, decor, local_heads=_wants_heads(estimator))
    masters = MasterWeights(model) if dt in HALF_DTYPES else None  # the optimizer steps float32 copies
    opt = make_optimizer(
        optimizer, masters.params if masters is not None else model.parameters(), lr, **(optimizer_options or {})
    )
    model.train()
    initial = [p.detach().clone() for _, p in trainable(model)] if "drift" in names else None

    n = data.x_train.shape[0]
    planned = planned_steps(budget, n, batch_size)
    total_steps = None if planned is None else int(planned)

    step, fe, seconds, seen = 0, 0.0, 0.0, 0
    window: list[float] = []
    history: list[dict[str, float | None]] = []
    snapshot: _Snapshot | None = None
    status, message, failed = "ok", "", 0
    next_eval, pos = 1, 0
    fingerprint = {
        "task": task.name,
        "estimator": estimator.name,
        "estimator_options": estimator.options(),
        "optimizer": optimizer,
        "lr": lr,
        "optimizer_options": dict(optimizer_options or {}),
        "budget": str(budget),
        "batch_size": batch_size,
        "seed": seed,
        "device": dev.type,
        "dtype": str(dt),
        "eval_points": eval_points,
        "decorrelation": decor,
    }
    if masters is not None:  # half-precision checkpoints hold the masters; those of older versions did not
        fingerprint["master_weights"] = "float32"
    if names:  # runs without diagnostics keep the fingerprint (and checkpoints) they always had
        fingerprint["diagnostics"] = list(names)
        fingerprint["diagnostics_every"] = diagnostics_every
    if exchange is not None and exchange.data_parallel:  # sharded batches round differently
        fingerprint["data_parallel"] = True
    sent = 0  # bytes this process sent in the estimators' exchanges (distributed runs)
    diag_records: list[dict[str, float | None]] = []
    diag_seconds = 0.0
    diag_due = True  # default schedule: the step after each evaluation point (checkpoints are taken at those)
    finished = False
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint)
        if state.get("fingerprint") != fingerprint:
            theirs = state.get("fingerprint") or {}
            diff = sorted(k for k in fingerprint.keys() | theirs.keys() if fingerprint.get(k) != theirs.get(k))
            raise UnigradError(
                f"checkpoint {checkpoint} belongs to a different run (differs in {', '.join(diff)}); "
                f"use another checkpoint path or delete it"
            )
        _load_state(state, model, opt, estimator, masters)
        step, fe, seconds, seen = state["step"], state["forward_equivalents"], state["seconds"], state["seen"]
        pos, next_eval = state["pos"], state["next_eval"]
        window, history = list(state["window"]), [dict(h) for h in state["history"]]
        status, message, finished = state["status"], state["message"], state["finished"]
        diag_records = [dict(d) for d in state.get("diagnostics", [])]
        diag_seconds = float(state.get("diagnostics_seconds", 0.0))
        sent = int(state.get("bytes", 0))
        snapshot = _Snapshot(model, opt, estimator, state["last_good_step"], masters)
    if exchange is not None:  # every process starts from the same point before rank 0 writes anything
        starts = exchange.all_gather(torch.tensor([step], dtype=torch.int64)).view(-1).tolist()
        if len(set(starts)) > 1:
            raise UnigradError(
                f"the processes start from different steps {starts}; they must all see the same checkpoint file"
            )

    def save(done: bool = False) -> None:
        if checkpoint is None or not lead:
            return
        assert snapshot is not None
        save_checkpoint(
            checkpoint,
            {
                "fingerprint": fingerprint,
                **_dump_state(model, opt, estimator, masters),
                "step": step,
                "forward_equivalents": fe,
                "seconds": seconds,
                "seen": seen,
                "pos": pos,
                "next_eval": next_eval,
                "window": list(window),
                "history": history,
                "status": status,
                "message": message,
                "finished": done,
                "last_good_step": snapshot.step,
                **({"diagnostics": diag_records, "diagnostics_seconds": diag_seconds} if names else {}),
                **({"bytes": sent} if exchange is not None else {}),
            },
        )

    def spent() -> float:
        used = {"epochs": step, "steps": step, "forwards": fe, "seconds": seconds}[budget.kind]
        return used / (total_steps if total_steps is not None else budget.value)

    def record() -> bool:
        """Evaluate; keep a snapshot if finite. Returns False if the test loss is not finite."""
        nonlocal snapshot, diag_due
        diag_due = True
        test_loss, test_acc = evaluate(model, task, data.x_test, data.y_test)
        if not math.isfinite(test_loss):
            return False
        history.append(
            {
                "epoch": seen / n,
                "step": step,
                "forward_equivalents": fe,
                "seconds": seconds,
                "train_loss": sum(window) / len(window) if window else None,
                "test_loss": test_loss,
                "test_accuracy": test_acc,
                **({"bytes": sent} if exchange is not None else {}),
            }
        )
        window.clear()
        snapshot = _Snapshot(model, opt, estimator, step, masters)
        if on_record is not None and lead:
            on_record(dict(history[-1]))
        return True

    if snapshot is None:
        if not record():
            raise UnigradError(f"the initial model of task {task.name} gives a non-finite test loss")
        save()
    label = desc or f"{estimator.name} seed {seed}"
    quiet = not progress or not lead or not sys.stderr.isatty()
    bar = tqdm(total=1000, desc=label, leave=False, disable=quiet, file=sys.stderr)
    perm = torch.empty(0, dtype=torch.long)
    if pos != 0:  # resumed within an epoch: the same permutation, regenerated from its key
        perm = torch.randperm(n, generator=generator(seed, seen // n, _DATA_TAG)).to(dev)
    try:
        while not finished and spent() < 1.0:
            if pos == 0:
                perm = torch.randperm(n, generator=generator(seed, seen // n, _DATA_TAG)).to(dev)
            idx = perm[pos : pos + batch_size]
            rows = idx if exchange is None else idx[_slice(exchange.shard(idx.shape[0]))]
            xb, yb = data.x_train[rows], data.y_train[rows]
            due = bool(names) and (diag_due if diagnostics_every is None else step % diagnostics_every == 0)
            pending: Pending | None = None
            state_before: dict[str, Any] | None = None
            diag_step, diag_epoch, in_step = step, seen / n, 0.0
            if due and "variance" in names:  # the repeated estimates start from the state this estimate starts from
                t1 = time.perf_counter()
                state_before = copy.deepcopy(estimator.state_dict())
                diag_seconds += time.perf_counter() - t1
            t0 = time.perf_counter()
            try:
                opt.zero_grad(set_to_none=True)
                if masters is not None:  # the optimizer holds the masters: the model's .grad is cleared here
                    model.zero_grad(set_to_none=True)
                objective = supervised(task.loss_fn, xb, yb)
                est = estimator.estimate(model, objective)
                if not math.isfinite(est.loss):
                    raise NonFiniteLossError(f"loss became {est.loss}")
                if due:
                    t1 = time.perf_counter()
                    pending = measure(
                        names,
                        model,
                        objective,
                        estimator=estimator,
                        state_before=state_before,
                        initial=initial,
                        seed=key_hash(seed, step),
                    )
                    in_step = time.perf_counter() - t1
                    diag_seconds += in_step
                    diag_due = False
                if decor is not None:
                    fe += record_decorrelation_inputs(model, xb)
                if masters is not None:
                    masters.grads_in()
                opt.step()
                if masters is not None:
                    masters.weights_out()
                if decor is not None:
                    update_decorrelation(model)
                    if masters is not None:
                        masters.adopt_changes()
            except NonFiniteLossError as e:
                seconds += time.perf_counter() - t0 - in_step
                what = f"{e}".split(";")[0]  # "loss became nan" (the estimate's loss), or the estimator's own words
                status, failed = "diverged", step + 1
                message = f"the training {what}" if what.startswith("loss became") else what
                break
            took, step_fe = time.perf_counter() - t0 - in_step, est.cost.forward_equivalents
            if exchange is not None:  # all processes agree on the work done (sum) and the time taken (slowest)
                both = exchange.all_gather(torch.tensor([step_fe, took], dtype=torch.float64))
                step_fe, took = float(both[:, 0].sum()), float(both[:, 1].max())
                sent += est.cost.bytes
            seconds += took
            if pending is not None:
                t1 = time.perf_counter()
                diag_records.append({"step": diag_step, "epoch": diag_epoch, **measure_step(pending, model)})
                diag_seconds += time.perf_counter() - t1
            step += 1
            fe += step_fe
            seen += idx.shape[0]
            if exchange_check_every is not None and exchange is not None and step % exchange_check_every == 0:
                exchange.check_identical([p for _, p in trainable(model)], step)
            pos = 0 if pos + batch_size >= n else pos + batch_size
            window.append(est.loss)
            frac = spent()
            bar.update(min(1000, int(frac * 1000)) - bar.n)
            if frac >= 1.0 or frac * eval_points >= next_eval:
                if not record():
                    status, message, failed = "diverged", "the test loss became non-finite", step
                    break
                next_eval = math.floor(frac * eval_points) + 1
                bar.set_postfix(loss=f"{history[-1]['train_loss']:.3g}", acc=f"{history[-1]['test_accuracy']:.3f}")
                save()
    finally:
        bar.close()

    if asked is not None and budget.kind in ("forwards", "seconds") and step < eval_points and status == "ok":
        warnings.warn(
            f"{eval_points} evaluation points were asked for, but budget {budget} allowed {estimator.name} (seed "
            f"{seed}) only {step} step{'s' * (step != 1)}: it was evaluated after every step",
            PlanWarning,
            stacklevel=2,
        )
    if status == "diverged" and not finished:
        assert snapshot is not None
        snapshot.restore(model, opt, estimator, masters)
        message = (
            f"{estimator.name} (seed {seed}) diverged at step {failed} (epoch {seen / n:.2f}): {message}; "
            f"kept the last good state (step {snapshot.step}); {_what_to_try(estimator, lr, decor, dt)}"
        )
    assert snapshot is not None
    if not finished:
        save(done=True)
    return RunResult(
        method=estimator.name,
        seed=seed,
        status=status,
        message=message,
        history=history,
        steps=step,
        forward_equivalents=fe,
        train_seconds=seconds,
        last_good_step=snapshot.step,
        model=model,
        optimizer=opt,
        estimator=estimator,
        decorrelation=decor,
        diagnostic_names=names,
        diagnostics=diag_records,
        diagnostics_seconds=diag_seconds,
    )


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
) -> int:
    """Peak bytes of tensor storage for two training steps of a fresh model (see module docs)."""
    task = get_task(task) if isinstance(task, str) else task
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    decor = check_decorrelation(decorrelation)
    data = task.data()
    xb = data.x_train[:batch_size].to(device=dev, dtype=dt)
    yb = data.y_train[:batch_size].to(device=dev)

    first, decor = _split_decorrelated(_build_estimator(method, seed, estimator_options), decor)
    heads = _wants_heads(first)

    def two_steps() -> None:
        model = build_model(task, seed, dev, dt, decor, local_heads=heads)
        est = _split_decorrelated(_build_estimator(method, seed, estimator_options), None)[0]
        masters = MasterWeights(model) if dt in HALF_DTYPES else None
        params = masters.params if masters is not None else model.parameters()
        opt = make_optimizer(optimizer, params, lr, **(optimizer_options or {}))
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            if masters is not None:
                model.zero_grad(set_to_none=True)
            est.estimate(model, supervised(task.loss_fn, xb, yb))
            if decor is not None:
                record_decorrelation_inputs(model, xb)
            if masters is not None:
                masters.grads_in()
            opt.step()
            if masters is not None:
                masters.weights_out()
            if decor is not None:
                update_decorrelation(model)
                if masters is not None:
                    masters.adopt_changes()

    # one unmeasured step first builds what lives for the whole process (a shared noise table)
    _split_decorrelated(_build_estimator(method, seed, estimator_options), None)[0].estimate(
        build_model(task, seed, dev, dt, decor, local_heads=heads), supervised(task.loss_fn, xb, yb)
    )
    return peak_memory(two_steps, dev.type)
