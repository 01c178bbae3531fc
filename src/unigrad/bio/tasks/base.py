"""Temporal tasks: trials generated offline, scored per trial, with a reward for learning rules.

A :class:`TemporalTask` draws a :class:`TrialBatch` of ``B`` trials, time-major:

* ``inputs``  ``(T, B, n_in)`` — what the network receives at each step,
* ``targets`` ``(T, B, n_out)`` — the desired outputs (zero where the output is not scored),
* ``mask``    ``(T, B)`` — 1.0 at the steps whose output is scored, 0.0 elsewhere,
* ``labels``  ``(B,)`` — the correct choice of choice tasks (``None`` for the others).

``sample(batch, seed=s, step=k)`` is a pure function of ``(s, k)`` (and the task's options): the trials are drawn from
a fresh generator keyed by ``(seed, step, tag)`` (:func:`unigrad.core.rng.generator`, a task-specific ``tag``), never
from the global RNG, so the trials of any training step can be regenerated bit for bit, and different steps give
different trials. Keep a seed of its own for held-out evaluation.

Every task defines, per trial,

* ``loss(outputs, batch)`` — what gradient-based methods minimise: by default the masked mean squared error
  ``Σ_t m_t ‖y_t − y*_t‖² / (n_out Σ_t m_t)``,
* ``reward(outputs, batch)`` — what a reward-modulated rule sees (higher is better); by default ``−loss``,

and over the batch ``score(outputs, batch)`` (a float): accuracy for choice tasks, a normalised error otherwise, with
``chance`` the score of a trivial output (the constant zero output, or the mean) so results read against it.

:class:`TaskObjective` turns a batch into an objective for any estimator: ``objective(model)`` runs
``model(inputs)`` (a map ``(T, B, n_in) → (T, B, n_out)``) and returns the ``(B,)`` per-trial losses; one call costs
``B`` samples. It subclasses :class:`unigrad.core.objective.Supervised`, so curvature methods that read the model's
outputs (Gauss–Newton products) apply as they do to any supervised batch.

Choice tasks (:class:`ChoiceTask`) answer with the sign of the output: the decision of a trial is the mean of output
channel 0 over its response window (the masked steps), the correct answer is ``+1`` for label 1 and ``−1`` for label
0 (the targets hold that ±1 in the window). ``score`` is the accuracy of ``sign(decision)``; a decision of exactly 0
(no answer, as from the zero output) counts 1/2, its expected accuracy under a coin flip, so the chance level 0.5 is
the score of the zero output exactly. Their ``reward`` option chooses what the learning rule sees:

* ``"mse"`` (default) — ``−loss``, the negative masked squared error,
* ``"abs"`` — ``−mean_t |y_t − y*_t|`` over the response window, the error signal of Miconi (2017, eLife 6:e20899),
* ``"correct"`` — ``+1`` for a correct sign, ``−1`` for a wrong one, 0 for no answer.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from unigrad.core import options as core_options
from unigrad.core.errors import UnigradError, check_choice
from unigrad.core.objective import Supervised
from unigrad.core.rng import generator


@dataclass
class TrialBatch:
    """A batch of trials, time-major (see the module docs)."""

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    labels: Tensor | None = None

    @property
    def size(self) -> int:
        """Number of trials ``B``."""
        return int(self.inputs.shape[1])

    @property
    def steps(self) -> int:
        """Number of time steps ``T``."""
        return int(self.inputs.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TrialBatch:
        """The batch on ``device``, with its float tensors cast to ``dtype`` (labels stay integers)."""
        labels = None if self.labels is None else self.labels.to(device=device)
        return TrialBatch(
            self.inputs.to(device=device, dtype=dtype),
            self.targets.to(device=device, dtype=dtype),
            self.mask.to(device=device, dtype=dtype),
            labels,
        )


def steps_of(option: str, duration: float, dt: float, *, allow_zero: bool = False) -> int:
    """``duration / dt`` as a whole number of steps, or a one-line error.

    Durations must be whole multiples of ``dt`` (within 1e-6 of a step) so every trial has the documented timeline.
    """
    core_options.check_number(option, duration, what="a number of time units")
    n = duration / dt
    k = round(n)
    if abs(n - k) > 1e-6:
        raise UnigradError(f"option {option}={duration} is not a whole number of steps of dt={dt}")
    if k < 0 or (k == 0 and not allow_zero):
        allowed = ">= 0" if allow_zero else "at least one step"
        raise UnigradError(f"option {option} must be {allowed} (dt={dt}), got {duration!r}")
    return int(k)


def check_number(option: str, value: Any, *, low: float | None = None, strict: bool = False) -> float:
    """A finite real option, optionally bounded below (``> low`` if ``strict``, else ``>= low``)."""
    core_options.check_number(option, value)
    if low is not None and (value <= low if strict else value < low):
        raise UnigradError(f"option {option} must be {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


def check_steps(option: str, value: Any, *, minimum: int = 1) -> int:
    """An integer option ``>= minimum``."""
    return core_options.check_int(option, value, low=minimum)


def masked_mse(outputs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Per-trial ``Σ_t m_t ‖y_t − y*_t‖² / (n_out · Σ_t m_t)`` for time-major ``(T, B, n)`` tensors → ``(B,)``."""
    sq = (outputs - targets).square().sum(dim=2)  # (T, B)
    weight = mask.to(sq.dtype)
    return (sq * weight).sum(dim=0) / (outputs.shape[2] * weight.sum(dim=0).clamp_min(1.0))


def nrmse(outputs: Tensor, batch: TrialBatch) -> float:
    """``RMSE / std(target)`` over every scored step of the batch (population std of those targets)."""
    m = batch.mask.bool()
    y = outputs.detach()[m].double()
    t = batch.targets[m].to(y)
    return float((y - t).square().mean().sqrt() / t.std(correction=0).clamp_min(1e-12))


class TemporalTask(abc.ABC):
    """A task of trials unrolled in time (module docs). Subclasses implement :meth:`_sample` and :meth:`score`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    tag: ClassVar[int] = 0  # names the task's random stream: generator(seed, step, tag)
    _options: ClassVar[tuple[str, ...]] = ()

    n_in: int
    n_out: int
    steps: int
    dt: float
    chance: float

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self, batch: int, *, seed: int, step: int) -> TrialBatch:
        """``batch`` trials, a deterministic function of ``(seed, step)``."""
        check_steps("batch", batch)
        for option, value in (("seed", seed), ("step", step)):
            check_steps(option, value, minimum=0)
        out = self._sample(batch, generator(seed, step, self.tag), seed)
        assert out.inputs.shape == (self.steps, batch, self.n_in)
        assert out.targets.shape == (self.steps, batch, self.n_out)
        assert out.mask.shape == (self.steps, batch)
        return out

    @abc.abstractmethod
    def _sample(self, batch: int, gen: torch.Generator, seed: int) -> TrialBatch:
        """Draw ``batch`` trials from ``gen`` (``seed`` for tasks that cache per-seed data)."""

    # -- evaluation -------------------------------------------------------------------------------
    def check_outputs(self, outputs: Tensor, batch: TrialBatch) -> None:
        """Raise unless ``outputs`` is shaped like the batch's targets ``(T, B, n_out)``."""
        if not isinstance(outputs, Tensor) or outputs.shape != batch.targets.shape:
            got = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
            raise UnigradError(
                f"{self.name} outputs must be shaped (steps, batch, n_out) = {tuple(batch.targets.shape)}, got {got}"
            )

    def loss(self, outputs: Tensor, batch: TrialBatch) -> Tensor:
        """``(B,)`` per-trial loss (default: masked mean squared error)."""
        self.check_outputs(outputs, batch)
        return masked_mse(outputs, batch.targets.to(outputs.dtype), batch.mask)

    def reward(self, outputs: Tensor, batch: TrialBatch) -> Tensor:
        """``(B,)`` per-trial reward, higher is better (default: ``−loss``)."""
        return -self.loss(outputs, batch)

    @abc.abstractmethod
    def score(self, outputs: Tensor, batch: TrialBatch) -> float:
        """Accuracy (choice tasks) or normalised error over the batch; compare with :attr:`chance`."""

    def objective(self, batch: TrialBatch) -> TaskObjective:
        """The objective ``model ↦ loss(model(batch.inputs), batch)`` for any estimator."""
        return TaskObjective(self, batch)

    # -- reporting --------------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """The constructor options (for reports and exact re-creation)."""
        return {k: getattr(self, k) for k in self._options}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


class ChoiceTask(TemporalTask):
    """A task answered by the sign of output 0 averaged over the response window (module docs)."""

    chance = 0.5
    REWARDS: ClassVar[tuple[str, ...]] = ("mse", "abs", "correct")

    def _set_reward(self, reward: str) -> None:
        check_choice("reward", reward, self.REWARDS)
        self.reward_kind = reward

    def options(self) -> dict[str, Any]:
        return {k: self.reward_kind if k == "reward" else getattr(self, k) for k in self._options}

    def decision(self, outputs: Tensor, batch: TrialBatch) -> Tensor:
        """``(B,)`` mean of output channel 0 over each trial's response window."""
        self.check_outputs(outputs, batch)
        w = batch.mask.to(outputs.dtype)
        return (outputs[..., 0] * w).sum(dim=0) / w.sum(dim=0).clamp_min(1.0)

    def correct(self, outputs: Tensor, batch: TrialBatch) -> Tensor:
        """``(B,)`` 1.0 for a correct sign, 0.0 for a wrong one, 0.5 for no answer (decision exactly 0)."""
        assert batch.labels is not None
        d = self.decision(outputs, batch).detach()
        want = batch.labels.to(d.dtype) * 2 - 1
        return torch.where(d == 0, torch.full_like(d, 0.5), (torch.sign(d) == want).to(d.dtype))

    def score(self, outputs: Tensor, batch: TrialBatch) -> float:
        """Accuracy of ``sign(decision)`` (chance 0.5)."""
        return float(self.correct(outputs, batch).mean())

    def reward(self, outputs: Tensor, batch: TrialBatch) -> Tensor:
        """Per the ``reward`` option: ``−loss``, ``−mean |error|`` over the window, or ±1 correctness."""
        if self.reward_kind == "mse":
            return -self.loss(outputs, batch)
        if self.reward_kind == "abs":
            self.check_outputs(outputs, batch)
            w = batch.mask.to(outputs.dtype)
            err = (outputs - batch.targets.to(outputs.dtype)).abs().mean(dim=2)
            return -(err * w).sum(dim=0) / w.sum(dim=0).clamp_min(1.0)
        return self.correct(outputs, batch) * 2 - 1


class TaskObjective(Supervised):
    """``objective(model) = task.loss(model(batch.inputs), batch)``: ``(B,)`` losses, ``B`` samples per call.

    Attributes:
        inputs: ``batch.inputs`` ``(T, B, n_in)``.
        targets: ``batch.targets`` ``(T, B, n_out)``.
        batch: the :class:`TrialBatch`.
        task: the :class:`TemporalTask`.
        n_samples: ``B`` (one trial is one sample, whatever its length).
    """

    def __init__(self, task: TemporalTask, batch: TrialBatch) -> None:
        if not isinstance(batch, TrialBatch):
            raise UnigradError(f"a task objective needs a TrialBatch (task.sample(...)), got {type(batch).__name__}")
        self.task = task
        self.batch = batch
        loss_fn: Callable[[Tensor, Tensor], Tensor] = lambda outputs, targets: task.loss(outputs, batch)  # noqa: E731
        super().__init__(loss_fn, batch.inputs, batch.targets)
        self.n_samples = batch.size

    def score(self, outputs: Tensor) -> Tensor:
        """``(B,)`` per-trial losses of ``outputs`` ``(T, B, n_out)``."""
        return self.task.loss(outputs, self.batch)

    def reward(self, outputs: Tensor) -> Tensor:
        """``(B,)`` per-trial rewards of ``outputs``."""
        return self.task.reward(outputs, self.batch)

    def metric(self, outputs: Tensor) -> float:
        """The task's score of ``outputs`` on this batch (accuracy or normalised error)."""
        return self.task.score(outputs, self.batch)

    def __call__(self, model: nn.Module) -> Tensor:
        return self.score(model(self.inputs))
