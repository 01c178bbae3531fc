"""Tasks: a dataset, a model builder, a loss and a metric, under one name.

=============  ==================================================  ==========
name           model                                               parameters
=============  ==================================================  ==========
mnist1d-mlp    MNIST-1D, MLP 40 → 100 → 100 → 10 (ReLU)            15,210
digits-mlp     sklearn digits, MLP 64 → 64 → 10 (ReLU)             4,810
fashion-mlp    Fashion-MNIST, MLP 784 → 256 → 256 → 10 (ReLU)      269,322
fashion-mlp3   Fashion-MNIST, MLP 784 → 3 × 500 → 10 (LeakyReLU)    898,510
fashion-cnn    Fashion-MNIST, 2 × (conv3×3 → ReLU → pool) → linear  20,490
=============  ==================================================  ==========

The text tasks (:mod:`unigrad.data.lexicon`, :mod:`unigrad.nn.text`; ``pip install 'unigrad[finetune]'``)
classify VADER words in MeZO's prompt ``"It was {word}."`` as positive or negative, with a
:class:`~unigrad.nn.text.SentenceClassifier` started from the zero-shot prototypes of ``"It was great."`` and
``"It was terrible."``; their inputs are token ids ``(N, L)`` int64 (padding id 0):

=====================  ==========================================================  ==========
name                   model, training set                                         parameters
=====================  ==========================================================  ==========
minilm-sentiment       all-MiniLM-L6-v2 (pretrained), the training split (4,462)   22,566,146
minilm-sentiment-k16   the same, 16 words per class                                22,566,146
minilm-sentiment-k512  the same, 512 words per class                               22,566,146
tiny-sentiment         tiny random BERT (hidden 32, 2 layers), 64 words per class  1,010,370
=====================  ==========================================================  ==========

Every text task is tested on the whole test split (1,116 words) and, as its extra test set ``transfer``
(:attr:`Task.extra_tests`), on the AFINN transfer set (684 words not in VADER,
:func:`~unigrad.data.lexicon.load_transfer`). The pretrained model is the same for every
seed (the seed still orders the data and keys the noise); the tiny one is initialised from it.

The loss is ``F.cross_entropy`` (per sample through :func:`unigrad.supervised`) and the metric is
accuracy. Datasets are loaded once per process and shared by every run of that task; the pretrained model
is loaded and checked once per process and copied for every run.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, unknown_name
from unigrad.data.digits import load_digits
from unigrad.data.fashion_mnist import load_fashion_mnist
from unigrad.data.lexicon import LABEL_WORDS, load_sentiment, load_transfer, sentences
from unigrad.data.mnist1d import load_mnist1d
from unigrad.nn.models import mlp, small_cnn
from unigrad.nn.text import SentenceClassifier, embed_texts, load_encoder

TINY_K = 64
"""Training words per class of ``tiny-sentiment``."""


def cast_inputs(x: Tensor, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """``x`` on ``device``; floating inputs cast to ``dtype``, integer ones (token ids) kept as they are."""
    return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device=device)


ExtraTests = dict[str, tuple[Tensor, Tensor]]
"""Extra named evaluation sets of a task: ``{name: (x, y)}``, evaluated next to the test set."""


@dataclass(frozen=True)
class TaskData:
    """Train and test tensors of one task, and its extra named evaluation sets (:data:`ExtraTests`, most tasks
    have none)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    extra: ExtraTests = field(default_factory=dict)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> TaskData:
        """Everything moved to ``device``; floating inputs cast to ``dtype`` (:func:`cast_inputs`)."""
        return TaskData(
            cast_inputs(self.x_train, device, dtype),
            self.y_train.to(device=device),
            cast_inputs(self.x_test, device, dtype),
            self.y_test.to(device=device),
            {name: (cast_inputs(x, device, dtype), y.to(device=device)) for name, (x, y) in self.extra.items()},
        )


@dataclass(frozen=True)
class Task:
    """A named supervised problem: ``data()``, ``build_model(seed)``, ``loss_fn`` and ``metric``; ``batch_size`` is
    the command line's default batch for it. ``extra_tests``, when given, loads the task's extra named evaluation
    sets (:data:`ExtraTests`): the trainer reports ``<name>_loss`` and ``<name>_accuracy`` for each. ``source`` is
    the import path of a task of your own (:func:`load_user_task`; ``None`` for the built-in ones).

    A task of your own: a function that returns ``Task("my-task", "what it is", loader, builder, batch_size)``,
    ``loader()`` returning ``(x_train, y_train, x_test, y_test)`` with integer class labels and ``builder(seed)`` a
    freshly initialised ``nn.Module`` (the same seed, the same weights); the loss is cross-entropy and the metric
    accuracy. Name it on the command line as ``--task my_package.tasks:make_task`` (``examples/custom_task.py``)."""

    name: str
    description: str
    loader: Callable[[], tuple[Tensor, Tensor, Tensor, Tensor]]
    builder: Callable[[int], nn.Module]
    batch_size: int = 64
    extra_tests: Callable[[], ExtraTests] | None = None
    source: str | None = None

    loss_fn = staticmethod(F.cross_entropy)
    metric_name = "accuracy"

    def data(self) -> TaskData:
        """The task's tensors (loaded on first use, then kept for the process)."""
        key = (self.loader, self.extra_tests)
        if key not in _LOADED:
            _LOADED[key] = TaskData(*self.loader(), extra=self.extra_tests() if self.extra_tests else {})
        return _LOADED[key]

    def build_model(self, seed: int = 0) -> nn.Module:
        """A freshly initialised model; the same seed gives the same weights."""
        return self.builder(seed)

    @staticmethod
    def metric(logits: Tensor, targets: Tensor) -> float:
        """Accuracy: the fraction of samples whose largest logit is the target."""
        return float((logits.argmax(dim=-1) == targets).float().mean())


_Loader = Callable[[], tuple[Tensor, Tensor, Tensor, Tensor]]
_LOADED: dict[tuple[_Loader, Callable[[], ExtraTests] | None], TaskData] = {}


def transfer_tests() -> ExtraTests:
    """The text tasks' extra test set: ``{"transfer": load_transfer()}``, the AFINN words not in VADER."""
    return {"transfer": load_transfer()}


def sentiment_classifier(encoder: str, seed: int) -> SentenceClassifier:
    """The text tasks' model: ``encoder`` (:func:`~unigrad.nn.text.load_encoder`) under a head started from the
    zero-shot prototypes, the embeddings of ``"It was terrible."`` (class 0) and ``"It was great."`` (class 1)."""
    model = load_encoder(encoder, seed)
    return SentenceClassifier(model, len(LABEL_WORDS), embed_texts(model, sentences(list(LABEL_WORDS))), seed=seed)


def text_task(name: str, description: str, encoder: str, k: int | None = None, batch_size: int = 64) -> Task:
    """A text task: the VADER words (``k`` per class from the training split, or all of it;
    :func:`~unigrad.data.lexicon.load_sentiment`), :func:`sentiment_classifier` on ``encoder``, and the transfer
    set as its extra test set (:func:`transfer_tests`)."""
    loader = load_sentiment if k is None else functools.partial(load_sentiment, k)
    builder = functools.partial(sentiment_classifier, encoder)
    return Task(name, description, loader, builder, batch_size, extra_tests=transfer_tests)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "mnist1d-mlp",
            "MNIST-1D (4,000/1,000 sequences of 40), MLP 40-100-100-10",
            load_mnist1d,
            lambda seed: mlp([40, 100, 100, 10], seed=seed),
        ),
        Task(
            "digits-mlp",
            "sklearn 8x8 digits (1,437/360), MLP 64-64-10",
            load_digits,
            lambda seed: mlp([64, 64, 10], seed=seed),
        ),
        Task(
            "fashion-mlp",
            "Fashion-MNIST (60,000/10,000), MLP 784-256-256-10",
            load_fashion_mnist,
            lambda seed: mlp([784, 256, 256, 10], seed=seed),
        ),
        Task(
            "fashion-mlp3",
            "Fashion-MNIST (60,000/10,000), MLP 784-500-500-500-10, LeakyReLU",
            load_fashion_mnist,
            lambda seed: mlp([784, 500, 500, 500, 10], activation="leaky_relu", seed=seed),
        ),
        Task(
            "fashion-cnn",
            "Fashion-MNIST (60,000/10,000), CNN conv16-conv32-linear",
            load_fashion_mnist,
            lambda seed: small_cnn(1, 28, (16, 32), 10, seed=seed),
        ),
        text_task(
            "minilm-sentiment",
            "VADER words 'It was {word}.' (4,462/1,116), pretrained all-MiniLM-L6-v2 + prototype head",
            "minilm",
        ),
        text_task(
            "minilm-sentiment-k16",
            "VADER words, 16 per class (32/1,116), pretrained all-MiniLM-L6-v2 + prototype head",
            "minilm",
            k=16,
            batch_size=32,  # the whole training set
        ),
        text_task(
            "minilm-sentiment-k512",
            "VADER words, 512 per class (1,024/1,116), pretrained all-MiniLM-L6-v2 + prototype head",
            "minilm",
            k=512,
        ),
        text_task(
            "minilm-random-k512",
            "VADER words, 512 per class (1,024/1,116), all-MiniLM-L6-v2's architecture at random init + head",
            "minilm-random",
            k=512,
        ),
        text_task(
            "tiny-sentiment",
            "VADER words, 64 per class (128/1,116), tiny random BERT (hidden 32, 2 layers) + prototype head",
            "tiny",
            k=TINY_K,
        ),
    )
}


def get_task(name: str) -> Task:
    """The task registered under ``name``, or the task a function of yours returns when ``name`` is an import
    path ``module.path:function`` (:func:`load_user_task`). Unknown names raise an error listing the valid ones."""
    if isinstance(name, str) and ":" in name:
        return load_user_task(name)
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return TASKS[name]


_USER_TASKS: dict[str, Task] = {}


def load_user_task(path: str) -> Task:
    """The :class:`Task` returned by the function at ``path`` (``"my_package.tasks:make_task"``), called once per
    process without arguments; its ``source`` is set to ``path``.

    The module is imported as Python would (the current folder is searched too, as ``python -m`` does). The
    task's name must not be a built-in task's. Its data are checked when first loaded: four tensors
    ``(x_train, y_train, x_test, y_test)``, integer class labels ``(N,)`` matching the inputs' first
    dimension, at least one sample in each split; its builder must return an ``nn.Module``. Every problem is a
    one-line :class:`~unigrad.core.errors.UnigradError`.
    """
    if path in _USER_TASKS:
        return _USER_TASKS[path]
    module_name, _, attr = path.partition(":")
    shape = "write the task as module.path:function, e.g. my_package.tasks:make_task"
    if not _dotted(module_name) or not _dotted(attr) or ":" in attr:
        raise UnigradError(f"task {path!r} is not a task name or an import path; {shape}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            raise UnigradError(
                f"task {path!r}: no module named {e.name!r}; run from the folder that holds it, add that folder to "
                f"PYTHONPATH, or install its package"
            ) from None
        raise UnigradError(f"task {path!r}: importing {module_name} failed: {_exception(e)}") from None
    except Exception as e:
        raise UnigradError(f"task {path!r}: importing {module_name} failed: {_exception(e)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n)))
            hint = f"; it has {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}" if names else ""
            raise UnigradError(f"task {path!r}: {module_name} has no {attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UnigradError(f"task {path!r}: {attr} is a {type(obj).__name__}, not a function that returns a Task")
    try:
        task = obj()
    except Exception as e:
        raise UnigradError(f"task {path!r}: {attr}() failed: {_exception(e)}") from None
    if not isinstance(task, Task):
        raise UnigradError(f"task {path!r}: {attr}() returned a {type(task).__name__}, not a unigrad.data.tasks.Task")
    if not isinstance(task.name, str) or not task.name.strip():
        raise UnigradError(f"task {path!r}: the Task's name must be a non-empty string, got {task.name!r}")
    if task.name in TASKS:
        raise UnigradError(f"task {path!r}: its name {task.name!r} is a built-in task's; give it another name")
    if not callable(task.loader) or not callable(task.builder):
        raise UnigradError(f"task {path!r}: the Task's loader and builder must be functions")
    if isinstance(task.batch_size, bool) or not isinstance(task.batch_size, int) or task.batch_size < 1:
        raise UnigradError(f"task {path!r}: the Task's batch_size must be an integer >= 1, got {task.batch_size!r}")
    checked = dataclasses.replace(
        task,
        loader=functools.partial(_checked_data, path, task.loader),
        builder=functools.partial(_checked_model, path, task.builder),
        source=path,
    )
    _USER_TASKS[path] = checked
    return checked


def _dotted(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _exception(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _checked_data(path: str, loader: Callable[[], Any]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A user task's data, checked (:func:`load_user_task`)."""
    try:
        data = loader()
    except UnigradError:
        raise
    except Exception as e:
        raise UnigradError(f"task {path!r}: its loader failed: {_exception(e)}") from None
    if not isinstance(data, (tuple, list)) or len(data) != 4 or not all(isinstance(t, Tensor) for t in data):
        raise UnigradError(
            f"task {path!r}: its loader must return four tensors (x_train, y_train, x_test, y_test), got "
            f"{type(data).__name__}" + (f" of {len(data)}" if isinstance(data, (tuple, list)) else "")
        )
    for split, x, y in (("train", data[0], data[1]), ("test", data[2], data[3])):
        if y.ndim != 1 or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise UnigradError(
                f"task {path!r}: y_{split} must be integer class labels of shape (N,), got {tuple(y.shape)} "
                f"{str(y.dtype).removeprefix('torch.')}"
            )
        if x.ndim < 1 or x.shape[0] != y.shape[0] or y.shape[0] == 0:
            raise UnigradError(
                f"task {path!r}: x_{split} has {x.shape[0] if x.ndim else 0} samples and y_{split} {y.shape[0]}; "
                "they must match and be at least one"
            )
    return data[0], data[1].long(), data[2], data[3].long()


def _checked_model(path: str, builder: Callable[[int], Any], seed: int) -> nn.Module:
    """A user task's model, checked to be an ``nn.Module`` (:func:`load_user_task`)."""
    try:
        model = builder(seed)
    except UnigradError:
        raise
    except Exception as e:
        raise UnigradError(f"task {path!r}: its builder failed for seed {seed}: {_exception(e)}") from None
    if not isinstance(model, nn.Module):
        raise UnigradError(f"task {path!r}: its builder returned a {type(model).__name__}, not a torch nn.Module")
    return model


def available_tasks() -> list[Task]:
    """Every registered task, by name."""
    return [TASKS[n] for n in sorted(TASKS)]
