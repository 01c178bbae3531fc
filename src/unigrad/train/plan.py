"""What a run may be asked for: the budget, the plan checks, and the optimizer, device and dtype by name.

A :class:`Budget` says how long to train (``epochs``, ``steps``, ``forwards`` or ``seconds``);
:func:`check_plan` refuses, before anything is built, a plan that cannot be carried out (the rules are in
:mod:`unigrad.train.trainer`'s docstring); :func:`make_optimizer`, :func:`resolve_device` and
:func:`resolve_dtype` turn the names of the command line into torch objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unigrad.core.errors import UnigradError, check_finite_options, check_positive, unknown_name
from unigrad.core.estimator import Estimator
from unigrad.core.options import check_number
from unigrad.data.tasks import Task, get_task
from unigrad.optim import ConserveSGD, ReplaySGD, SignSGD
from unigrad.registry import make_estimator

BUDGET_KINDS = ("epochs", "steps", "forwards", "seconds")


class SGDMomentum(torch.optim.SGD):
    """``torch.optim.SGD`` with heavy-ball momentum 0.9 by default: with a zeroth-order estimator, ZO-Bench's
    ZO-SGD-MMT (``b ← 0.9·b + g``, ``θ ← θ − lr·b``)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.9, **options: Any) -> None:
        super().__init__(params, lr=lr, momentum=momentum, **options)


OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "sgd-momentum": SGDMomentum,  # ZO-SGD-MMT (ZO-Bench) with a zeroth-order estimator
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "replay-sgd": ReplaySGD,  # memory-lean MeZO-SGD: steps mezo:write_grad=false's compressed direction
    "sign-sgd": SignSGD,  # ZO-SGD-Sign (ZO-Bench): a step of lr along the sign of each coordinate
    "conserve-sgd": ConserveSGD,  # ZO-SGD-Conserve (ZO-Bench): keep θ, θ − lr·g or θ + lr·g, whichever is lowest
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


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

    def spent(self, *, steps: int, forwards: float, seconds: float, planned: int | None) -> float:
        """The fraction of the budget that ``steps`` steps, ``forwards`` forward-pass equivalents and ``seconds``
        of training have used; ``planned`` is the steps of an ``epochs`` or ``steps`` budget
        (:func:`planned_steps`), ``None`` for the others."""
        used = {"epochs": steps, "steps": steps, "forwards": forwards, "seconds": seconds}[self.kind]
        return used / (planned if planned is not None else self.value)


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
        steps = budget.value * batches_per_epoch(n_train, batch_size)
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
        per_epoch = f" ({batches_per_epoch(n, batch_size)} an epoch at batch size {batch_size})"
        if steps > MAX_STEPS:
            raise UnigradError(
                f"budget {budget} is {steps:.3g} steps{per_epoch * (budget.kind == 'epochs')}; more than "
                f"{MAX_STEPS:.0e} steps is {beyond} (the loop alone needs a day for 1e9); lower the budget"
            )
        # an epoch's last batch may be short: any run of steps averages at least n / (batches an epoch) samples
        total = steps * n / batches_per_epoch(n, batch_size) * evals
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


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Batches of ``batch_size`` an epoch of ``n`` samples takes (the last one may be short)."""
    return math.ceil(n / batch_size)
