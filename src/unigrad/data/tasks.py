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

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.errors import unknown_name
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
    sets (:data:`ExtraTests`): the trainer reports ``<name>_loss`` and ``<name>_accuracy`` for each."""

    name: str
    description: str
    loader: Callable[[], tuple[Tensor, Tensor, Tensor, Tensor]]
    builder: Callable[[int], nn.Module]
    batch_size: int = 64
    extra_tests: Callable[[], ExtraTests] | None = None

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
    """The task registered under ``name`` (unknown names raise an error listing the valid ones)."""
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return TASKS[name]


def available_tasks() -> list[Task]:
    """Every registered task, by name."""
    return [TASKS[n] for n in sorted(TASKS)]
