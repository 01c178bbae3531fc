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

The loss is ``F.cross_entropy`` (per sample through :func:`unigrad.supervised`) and the metric is
accuracy. Datasets are loaded once per process and shared by every run of that task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.errors import unknown_name
from unigrad.data.digits import load_digits
from unigrad.data.fashion_mnist import load_fashion_mnist
from unigrad.data.mnist1d import load_mnist1d
from unigrad.nn.models import mlp, small_cnn


@dataclass(frozen=True)
class TaskData:
    """Train and test tensors of one task."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> TaskData:
        """Inputs cast to ``dtype`` and everything moved to ``device``."""
        return TaskData(
            self.x_train.to(device=device, dtype=dtype),
            self.y_train.to(device=device),
            self.x_test.to(device=device, dtype=dtype),
            self.y_test.to(device=device),
        )


@dataclass(frozen=True)
class Task:
    """A named supervised problem: ``data()``, ``build_model(seed)``, ``loss_fn`` and ``metric``."""

    name: str
    description: str
    loader: Callable[[], tuple[Tensor, Tensor, Tensor, Tensor]]
    builder: Callable[[int], nn.Module]

    loss_fn = staticmethod(F.cross_entropy)
    metric_name = "accuracy"

    def data(self) -> TaskData:
        """The task's tensors (loaded on first use, then kept for the process)."""
        if self.loader not in _LOADED:
            _LOADED[self.loader] = TaskData(*self.loader())
        return _LOADED[self.loader]

    def build_model(self, seed: int = 0) -> nn.Module:
        """A freshly initialised model; the same seed gives the same weights."""
        return self.builder(seed)

    @staticmethod
    def metric(logits: Tensor, targets: Tensor) -> float:
        """Accuracy: the fraction of samples whose largest logit is the target."""
        return float((logits.argmax(dim=-1) == targets).float().mean())


_LOADED: dict[Callable[[], tuple[Tensor, Tensor, Tensor, Tensor]], TaskData] = {}

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
