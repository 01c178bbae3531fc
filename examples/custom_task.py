"""Your own model and data under unigrad's command line: a function that returns a ``Task``.

    cd examples
    ../.venv/bin/unigrad compare --task custom_task:make_task --methods backprop,danp,spsa:probes=4 \\
        --budget steps=300 --seeds 2
    ../.venv/bin/unigrad train --task custom_task:make_task --method danp --budget steps=300
    ../.venv/bin/unigrad bench --tasks custom_task:make_task --methods backprop,spsa --seeds 1

or, from anywhere, with this folder on the path: ``PYTHONPATH=examples unigrad compare --task custom_task:make_task``.
A TOML configuration takes it the same way: ``task = "custom_task:make_task"``. Running this file compares three
methods through the Python API instead (``python examples/custom_task.py``).

The task: three interleaved spirals in the plane (600 training and 300 test points, a fixed generator, so every
process sees the same data), and a model of our own, a small residual network of ``nn.Linear`` layers. Any
``nn.Module`` works; ``builder(seed)`` must return the same weights for the same seed, so every method starts from
one initial model. The loss is cross-entropy and the metric accuracy, as for the built-in tasks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from unigrad.data.tasks import Task
from unigrad.nn.models import init_

CLASSES = 3


def spirals(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` points on :data:`CLASSES` spirals with Gaussian jitter: inputs ``(n, 2)`` float32, labels ``(n,)``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    t = torch.rand(n, generator=g) * 3.0 + 0.25  # radius, and the angle travelled along the spiral
    angle = t * 1.6 + y * (2 * math.pi / CLASSES)
    x = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], dim=1)
    return x + 0.12 * torch.randn(n, 2, generator=g), y


def load() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``: 600 and 300 points, from two fixed seeds."""
    x_train, y_train = spirals(600, seed=1)
    x_test, y_test = spirals(300, seed=2)
    return x_train, y_train, x_test, y_test


class ResidualMLP(nn.Module):
    """``x → W_in x → (h + W₂ relu(W₁ h)) × blocks → W_out relu(h)``: a model unigrad has no built-in twin of."""

    def __init__(self, width: int = 64, blocks: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(2, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)) for _ in range(blocks)
        )
        self.out = nn.Linear(width, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(torch.relu(h))


def build(seed: int) -> nn.Module:
    """A freshly initialised :class:`ResidualMLP`: the same seed gives the same weights, drawn from a generator of
    its own (:func:`unigrad.nn.models.init_`), not from torch's global one."""
    return init_(ResidualMLP(), seed)


def make_task() -> Task:
    """The task ``--task custom_task:make_task`` names."""
    return Task("spirals-resmlp", "three spirals (600/300 points), residual MLP 2-64-64-3", load, build, batch_size=32)


def main(steps: int = 300, seeds: int = 1) -> dict[str, float]:
    """Compare backprop, danp and spsa on the task for ``steps`` steps; the mean test accuracy of each."""
    from unigrad.train.compare import compare

    folder, results = compare(
        make_task(), ["backprop", "danp", "spsa:probes=4"], f"steps={steps}", seeds, memory=False, progress=False
    )
    accuracy = {label: m["summary"]["test_accuracy_mean"] for label, m in results["methods"].items()}
    for label, acc in accuracy.items():
        print(f"{label:>14}: test accuracy {acc:.3f}")
    print(f"report: {folder}/report.md")
    return accuracy


if __name__ == "__main__":
    main()
