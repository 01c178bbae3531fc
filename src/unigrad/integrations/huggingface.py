"""Train a Hugging Face ``transformers`` model with any unigrad estimator: :class:`UnigradTrainer`.

``UnigradTrainer`` is a ``transformers.Trainer`` whose :meth:`~UnigradTrainer.training_step` does not call
``loss.backward()``: the estimator (``mezo``, ``spsa``, ``anp``, ``backprop``, …) evaluates the model on the
batch as often as it needs and writes its direction ``d`` into ``.grad``; the Trainer's optimizer, gradient
clipping and learning-rate schedule then take the step as they would from a gradient (MeZO-SGD is
``optim="sgd"``). Evaluation, prediction, logging, callbacks and checkpoints are the Trainer's.

Why a subclass and not a ``TrainerCallback``: a callback sees the step only before and after the Trainer's own
forward and backward (``on_step_begin``, ``on_pre_optimizer_step``), never the batch, so it could only
overwrite a gradient that had already cost a backward pass, and backprop's memory with it. The step has to
be replaced where the batch is at hand, which is ``training_step``. A callback is still the right fit for the
part that runs after the optimizer (the decorrelation update of ``danp``/``dnp``/``dinp``/``dbp``), and
:class:`UnigradTrainer` adds one for those.

The objective calls the model as the Trainer does (``model(**inputs)``). By default
(``per_sample=None``) it returns per-sample losses wherever they reproduce the Trainer's loss exactly: a
batch with one label (or one row of float labels) per sample, scored by the model's
``config.problem_type`` (cross-entropy, mean squared error, or binary cross-entropy with logits), when the
Trainer has no ``label_smoothing_factor``, no ``compute_loss_func`` and ``compute_loss`` is not overridden.
Elsewhere (token-level labels of a language model, a custom loss) it returns the Trainer's
``compute_loss``: one scalar, which suffices for every order-0 probe method (``mezo``, ``spsa``, …) but not
for node perturbation (``np``, ``anp``, ``inp``) or activity forward gradient, which need per-sample losses:
``per_sample=True`` computes them from the logits and labels (the mean over each sample's labelled tokens,
shifted for a causal language model). Override :meth:`UnigradTrainer.objective` for anything else.

What the Trainer offers and the estimate does not fit is refused with one line at construction:
gradient accumulation (several estimates per step would advance a stateful estimator, L-BFGS or HiZOO,
several times per step: raise the batch size or the probes instead), ``fp16``/``bf16`` mixed precision
(``fp16``'s loss scaler divides ``.grad`` by a scale the estimate never had; under autocast a ``1e-3``
perturbation drowns in rounding), several processes or devices (the estimate is not all-reduced), an
estimator that writes no ``.grad`` (``mezo`` with ``write_grad=False``) and local losses (they need heads
a Hugging Face model lacks). ``max_grad_norm`` (1.0 by default in ``TrainingArguments``) clips the estimate
as it would a gradient; MeZO's own recipe has no clipping: pass ``max_grad_norm=0``.

Cost: the logs of training carry ``forward_equivalents``, the estimator's work since training began
(:class:`~unigrad.core.cost.Cost`: forwards + 2·backwards + JVPs + 4·HVPs, in samples); the same
:class:`~unigrad.core.cost.Cost` is :attr:`UnigradTrainer.cost`. Checkpoints hold the estimator's state and
the cost (``unigrad_estimator.pt``), so ``train(resume_from_checkpoint=...)`` continues the noise stream
where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.io import atomic_path
from unigrad.core.objective import Objective
from unigrad.core.objective import objective as counted
from unigrad.core.options import parse_value
from unigrad.nn.decorrelation import Decorrelated, is_decorrelated
from unigrad.registry import make_estimator

INSTALL = "pip install 'unigrad[finetune]'"
try:
    import accelerate  # noqa: F401  (the Trainer needs it; a missing one is named here, not deep in transformers)
    import transformers
except ImportError as _missing:
    raise UnigradError(
        f"unigrad.integrations.huggingface needs transformers and accelerate ({_missing}); {INSTALL}"
    ) from None

ESTIMATOR_STATE = "unigrad_estimator.pt"
"""The file, in each checkpoint folder, that holds the estimator's state and the cost so far."""
IGNORE_INDEX = -100
"""Label of a token that no loss counts (Hugging Face's convention)."""
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
TRAINER_KEYS = ("lr", "optimizer")


def build_estimator(estimator: Estimator | str, seed: int = 0) -> Estimator:
    """``estimator`` itself, or the estimator a spec ``"name[:key=value]..."`` names (``"mezo:probes=4:sigma=1e-3"``).

    A spec's options go to :func:`unigrad.make_estimator` (so unset ones are the constructor's defaults, the
    method as published); values read as booleans (``true``/``false``), ``none``, integers, floats, else text.
    ``seed`` keys the noise unless the spec sets ``seed``. The learning rate and the optimizer are the
    Trainer's (``TrainingArguments(learning_rate=..., optim=...)``), so the keys ``lr`` and ``optimizer`` are
    refused.
    """
    if isinstance(estimator, Estimator):
        return estimator
    if not isinstance(estimator, str):
        raise UnigradError(
            f"estimator must be a unigrad Estimator or a spec such as 'mezo:sigma=1e-3', got {type(estimator).__name__}"
        )
    name, *parts = estimator.strip().split(":")
    if not name.strip():
        raise UnigradError(f"malformed estimator spec {estimator!r}: it must start with a method name")
    options: dict[str, Any] = {}
    for part in parts:
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not key or not value:
            raise UnigradError(f"malformed estimator spec {estimator!r}: {part!r} is not key=value")
        if key in options:
            raise UnigradError(f"malformed estimator spec {estimator!r}: option {key} given twice")
        if key in TRAINER_KEYS:
            raise UnigradError(
                f"{key} in {estimator!r} belongs to the Trainer: set TrainingArguments(learning_rate=..., optim=...)"
            )
        options[key] = parse_value(value)
    options.setdefault("seed", seed)
    return make_estimator(name.strip(), **options)


def _problem_type(model: nn.Module, logits: Tensor, labels: Tensor) -> str:
    """How a sequence-level model scores ``logits`` against ``labels``: its ``config.problem_type``, or the rule
    Hugging Face's classifiers apply when it is unset."""
    config = getattr(model, "config", None)
    kind = getattr(config, "problem_type", None)
    if kind in PROBLEM_TYPES:
        return kind
    if logits.shape[-1] == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
        return "single_label_classification"
    return "multi_label_classification"


def _causal(model: nn.Module) -> bool:
    """Whether ``model`` is a causal language model (its logits at position ``t`` predict the label at ``t+1``)."""
    names = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    peft_base = getattr(getattr(model, "base_model", None), "model", None)  # a PEFT wrapper: the model inside
    return type(model).__name__ in names or (peft_base is not None and type(peft_base).__name__ in names)


def per_sample_losses(model: nn.Module, logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample losses ``(B,)`` of ``logits`` against ``labels``, as the model's own loss scores them.

    Sequence level (labels ``(B,)``, or ``(B, k)`` float labels beside ``(B, k)`` logits): cross-entropy, mean
    squared error or binary cross-entropy with logits by the model's ``config.problem_type``; their mean is the
    model's loss. Token level (labels ``(B, T)`` beside logits ``(B, T, V)``): each sample's mean cross-entropy
    over its tokens not labelled ``-100`` (shifted by one position for a causal language model); their mean
    weights samples equally, where the model's loss weights tokens equally.
    """
    if logits.dim() == 3 and labels.dim() == 2 and not labels.is_floating_point():
        if _causal(model):
            logits, labels = logits[:, :-1], labels[:, 1:]
        tokens = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(labels.shape)
        counted_tokens = (labels != IGNORE_INDEX).sum(dim=1).clamp_min(1)
        return tokens.sum(dim=1) / counted_tokens
    if logits.dim() != 2 or labels.shape[0] != logits.shape[0] or labels.dim() > 2:
        raise UnigradError(
            f"per-sample losses need (batch, classes) logits with labels (batch,) or (batch, k), or (batch, tokens, "
            f"vocab) logits with labels (batch, tokens); got logits {tuple(logits.shape)} and labels "
            f"{tuple(labels.shape)}: override UnigradTrainer.objective, or pass per_sample=False"
        )
    kind = _problem_type(model, logits, labels)
    if kind == "regression":
        target = labels.float().reshape(labels.shape[0], -1)
        return F.mse_loss(logits.float().reshape(target.shape), target, reduction="none").mean(dim=1)
    if kind == "single_label_classification":
        return F.cross_entropy(logits, labels.reshape(-1).long(), reduction="none")
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").mean(dim=1)


def _sequence_labels(labels: object) -> bool:
    """Whether ``labels`` are one per sample (``(B,)``, or a row of float labels ``(B, k)``)."""
    return isinstance(labels, Tensor) and (labels.dim() == 1 or (labels.dim() == 2 and labels.is_floating_point()))


def _batch_size(inputs: Mapping[str, Any]) -> int:
    for value in inputs.values():
        if isinstance(value, Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise UnigradError(f"the batch holds no tensor with a batch dimension (keys: {', '.join(inputs)})")


def _check_arguments(args: Any) -> None:
    """Refuse gradient accumulation and mixed precision in ``TrainingArguments`` (module docs), one line each."""
    if args.gradient_accumulation_steps != 1:
        raise UnigradError(
            f"UnigradTrainer takes one estimate per optimizer step, got gradient_accumulation_steps="
            f"{args.gradient_accumulation_steps}: set it to 1 and raise per_device_train_batch_size or the probes"
        )
    if args.fp16 or args.bf16:
        raise UnigradError(
            f"UnigradTrainer trains in full precision: set fp16=False and bf16=False (got fp16={args.fp16}, "
            f"bf16={args.bf16}); mixed precision rescales or rounds away the estimate"
        )


class _DecorrelationUpdate(transformers.TrainerCallback):
    """After every optimizer step, the decorrelation update of a decorrelated method (``estimator.update``)."""

    def __init__(self, estimator: Decorrelated) -> None:
        self.estimator = estimator

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **_: Any) -> None:
        if model is not None:
            self.estimator.update(model)


class UnigradTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that trains with a unigrad estimator instead of backprop (module docs).

    Every step: ``estimate = estimator.estimate(model, objective)`` writes ``.grad`` from the batch, then the
    Trainer clips, steps its optimizer and its schedule; the logged training loss is ``estimate.loss`` (for
    methods that never evaluate the unperturbed model, such as ``mezo``, the mean over its probes). Takes the
    Trainer's arguments, plus:

    Args:
        estimator: a :class:`~unigrad.core.estimator.Estimator`, or a spec ``"name[:key=value]..."`` such as
            ``"mezo:probes=4:sigma=1e-3"`` (:func:`build_estimator`; its noise is keyed by
            ``TrainingArguments.seed`` unless the spec sets ``seed``). A decorrelated method (``danp``) has its
            model decorrelated here and its decorrelation updated after every optimizer step.
        per_sample: the losses the objective returns: ``None`` (default) per-sample losses where they reproduce
            the Trainer's loss (one label per sample, no label smoothing, no custom loss), else the Trainer's
            scalar ``compute_loss``; ``True`` per-sample losses from the logits and labels always
            (:func:`per_sample_losses`); ``False`` the Trainer's ``compute_loss`` always.

    Attributes:
        estimator: the estimator in use (its ``state_dict`` is saved with each checkpoint).
        cost: the estimator's :class:`~unigrad.core.cost.Cost` since training began.
        last_estimate: the :class:`~unigrad.core.estimator.Estimate` of the latest step (``None`` before one).
    """

    def __init__(self, *args: Any, estimator: Estimator | str, per_sample: bool | None = None, **kwargs: Any) -> None:
        if per_sample is not None and not isinstance(per_sample, bool):
            raise UnigradError(f"per_sample must be True, False or None, got {per_sample!r}")
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if training_args is not None:  # refused before the Trainer sets up an accelerator for them
            _check_arguments(training_args)
        super().__init__(*args, **kwargs)
        self.estimator = build_estimator(estimator, seed=self.args.seed)
        self.per_sample = per_sample
        self.cost = Cost()
        self.last_estimate: Estimate | None = None
        self._check_supported()
        if isinstance(self.estimator, Decorrelated):
            if self.model is not None and not is_decorrelated(self.model):
                self.estimator.prepare(self.model)  # the same Parameters: an optimizer made later sees them
            self.add_callback(_DecorrelationUpdate(self.estimator))

    def _check_supported(self) -> None:
        """Refuse, in one line each, what the Trainer offers and an estimate cannot honour (module docs)."""
        args, name = self.args, self.estimator.name
        _check_arguments(args)
        if args.world_size > 1 or args.n_gpu > 1 or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise UnigradError(
                f"UnigradTrainer trains in one process on one device (world_size={args.world_size}, n_gpu="
                f"{args.n_gpu}, deepspeed={self.is_deepspeed_enabled}, fsdp={self.is_fsdp_enabled}); the estimate is "
                f"not all-reduced: run one process and make one device visible (CUDA_VISIBLE_DEVICES)"
            )
        if not self.estimator.write_grad:
            raise UnigradError(
                f"UnigradTrainer steps the Trainer's optimizer from .grad, which {name} with write_grad=False does "
                f"not write: build it with write_grad=True"
            )
        if self.per_sample is True and (self.label_smoother is not None or self.compute_loss_func is not None):
            raise UnigradError(
                "per_sample=True computes the losses from logits and labels, which leaves out "
                "label_smoothing_factor and compute_loss_func: pass per_sample=False, or drop them"
            )
        if getattr(self.estimator, "local_losses", False):
            raise UnigradError(
                f"{name} with local_losses=True needs local heads, which UnigradTrainer cannot add to a Hugging Face "
                f"model: build it with local_losses=False"
            )

    def _per_sample(self, inputs: Mapping[str, Any]) -> bool:
        """Whether this batch's objective returns per-sample losses (the rule of ``per_sample``)."""
        custom = self.label_smoother is not None or self.compute_loss_func is not None
        if self.per_sample is True:
            if "labels" not in inputs:
                raise UnigradError(
                    f"per_sample=True needs labels in the batch (keys: {', '.join(inputs)}): pass per_sample=False"
                )
            return True
        if self.per_sample is False or custom:
            return False
        if type(self).compute_loss is not transformers.Trainer.compute_loss:
            return False  # a subclass's own loss is the loss
        return _sequence_labels(inputs.get("labels"))

    def objective(self, model: nn.Module, inputs: Mapping[str, Any], num_items_in_batch: Any = None) -> Objective:
        """The unigrad objective of one batch: ``objective(model)`` calls ``model(**inputs)`` and returns
        per-sample losses or the Trainer's scalar loss (class docs, ``per_sample``); one call costs the batch's
        samples. Override it for a loss of your own: return ``unigrad.objective(fn, n_samples)`` with
        ``fn(model)`` giving per-sample losses ``(B,)`` or a 0-d scalar."""
        batch = _batch_size(inputs)
        if self._per_sample(inputs):
            labels = inputs["labels"]
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}  # the model computes no loss of its own

            def losses(m: nn.Module) -> Tensor:
                outputs = m(**model_inputs)
                logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
                return per_sample_losses(_unwrap(m), logits, labels)

            return counted(losses, batch)

        def loss(m: nn.Module) -> Tensor:  # a copy per call: compute_loss pops the labels of a label smoother
            return self.compute_loss(m, dict(inputs), num_items_in_batch=num_items_in_batch)

        return counted(loss, batch)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Tensor | Any], num_items_in_batch: Tensor | int | None = None
    ) -> Tensor:
        """One estimate on ``inputs``: writes ``.grad`` (the Trainer then steps) and returns the loss to log."""
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        objective = self.objective(model, inputs, num_items_in_batch)
        with self.compute_loss_context_manager():
            estimate = self.estimator.estimate(model, objective)
        self.cost += estimate.cost
        self.last_estimate = estimate
        return torch.tensor(estimate.loss, device=self.args.device)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log, with ``forward_equivalents`` (the estimator's work so far) beside the training loss."""
        if "loss" in logs or "train_loss" in logs:
            logs = {**logs, "forward_equivalents": self.cost.forward_equivalents}
        super().log(logs, start_time)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            state = {"estimator": self.estimator.state_dict(), "cost": dict(vars(self.cost))}
            with atomic_path(os.path.join(output_dir, ESTIMATOR_STATE), what="the estimator state") as tmp:
                torch.save(state, tmp)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, ESTIMATOR_STATE)
        if not os.path.isfile(path):
            raise UnigradError(
                f"checkpoint {checkpoint} has no {ESTIMATOR_STATE} (UnigradTrainer did not save it): to start anew "
                f"from its weights, load the model from it and train without resume_from_checkpoint"
            )
        try:
            state = torch.load(path, weights_only=True)
        except Exception as e:  # a state that is not plain tensors and numbers, a damaged file
            raise UnigradError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
        self.estimator.load_state_dict(state["estimator"])
        self.cost = Cost(**state["cost"])


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DataParallel``/``DistributedDataParallel``-style wrapper (``.module``), else ``model``."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


__all__: list[str] = ["ESTIMATOR_STATE", "UnigradTrainer", "build_estimator", "per_sample_losses"]
