"""The problems of ``unigrad bench`` that are not registered tasks of :mod:`unigrad.data.tasks`.

``fashion-small``
    Fashion-MNIST (:func:`unigrad.data.fashion_mnist.load_fashion_mnist`, 60,000/10,000 images)
    average-pooled 4×4, so each image is 7×7 = 49 inputs, and an MLP 49-16-10 (ReLU, 970
    parameters): small enough for full-covariance CMA-ES. A :class:`~unigrad.data.tasks.Task`
    trained by :func:`unigrad.train.train` like the registered ones (not registered globally).

Black-box functions (:data:`FUNCTIONS`), written in torch so backprop works on them too. The
"model" is a :class:`Point`, a module holding one parameter ``x`` of ``D`` entries (float64, so the
curves are not cut off at float32 precision), and the objective is ``f(x)`` with one unit of cost
per evaluation (``objective(fn, n_samples=1)``). Every minimum is ``f(x*) = 0``. The start point is
drawn from a generator keyed by ``(seed, D, function tag)``:

=============  =========================================================  =============  ==========================
name           f(x)                                                       x*             start
=============  =========================================================  =============  ==========================
sphere         Σ x_i²                                                     0              N(0, I)
rosenbrock     Σ_{i<D} 100·(x_{i+1} − x_i²)² + (1 − x_i)²                  (1, …, 1)      N(0, 0.5²·I) (around 0)
rastrigin      10·D + Σ x_i² − 10·cos(2π·x_i)                             0              uniform on [−5.12, 5.12]^D
=============  =========================================================  =============  ==========================

``cartpole`` (:class:`CartPoleProblem`): a CartPole-v1 policy ``policy_mlp(4, 2, (16,))`` (tanh,
114 parameters). The objective of update ``k`` plays ``episodes`` episodes (4 by default) whose
environment seeds are keyed by ``(seed, k, index)`` (:class:`unigrad.bio.control.EpisodeObjective`)
with the greedy policy and returns minus their mean return; every probe of one update sees the
same episodes. **One unit of cost is one episode** (``objective(fn, n_samples=episodes)``), not one
environment step: a budget of 10,000 is 10,000 episodes whatever their length. The metric is the
mean greedy return over ``eval_episodes`` evaluation episodes (:func:`unigrad.bio.control.evaluate`,
environment seeds keyed by the run's seed on the evaluation stream, never seen in training); higher
is better, 500 is the maximum.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, check_positive, unknown_name
from unigrad.core.objective import Objective, objective
from unigrad.core.rng import generator
from unigrad.data.fashion_mnist import load_fashion_mnist
from unigrad.data.tasks import Task
from unigrad.nn.models import mlp

if TYPE_CHECKING:  # gymnasium is imported only when the control problem is used
    from unigrad.bio.control import ControlTask

# -- fashion-small ---------------------------------------------------------------------------------

POOL = 4
"""Fashion-MNIST images are average-pooled POOL×POOL: 28×28 → 7×7."""


def load_fashion_small() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fashion-MNIST pooled to 7×7 and flattened: ``(N, 49)`` float32 inputs, int64 labels."""
    x_train, y_train, x_test, y_test = load_fashion_mnist()

    def pool(x: Tensor) -> Tensor:
        return F.avg_pool2d(x, POOL).flatten(1).contiguous()

    return pool(x_train), y_train, pool(x_test), y_test


FASHION_SMALL = Task(
    "fashion-small",
    "Fashion-MNIST (60,000/10,000) average-pooled to 7x7, MLP 49-16-10 (970 parameters)",
    load_fashion_small,
    lambda seed: mlp([49, 16, 10], seed=seed),
)

# -- black-box functions ---------------------------------------------------------------------------


def sphere(x: Tensor) -> Tensor:
    """``Σ x_i²``; minimum 0 at 0."""
    return x.square().sum()


def rosenbrock(x: Tensor) -> Tensor:
    """``Σ_{i<D} 100·(x_{i+1} − x_i²)² + (1 − x_i)²``; minimum 0 at (1, …, 1)."""
    a, b = x[:-1], x[1:]
    return (100.0 * (b - a.square()).square() + (1.0 - a).square()).sum()


def rastrigin(x: Tensor) -> Tensor:
    """``10·D + Σ x_i² − 10·cos(2π x_i)``; minimum 0 at 0, a local minimum near every integer point."""
    return 10.0 * x.numel() + (x.square() - 10.0 * torch.cos(2.0 * math.pi * x)).sum()


def _start_sphere(g: torch.Generator, dim: int) -> Tensor:
    return torch.randn(dim, generator=g, dtype=torch.float64)


def _start_rosenbrock(g: torch.Generator, dim: int) -> Tensor:
    return 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)


def _start_rastrigin(g: torch.Generator, dim: int) -> Tensor:
    return (torch.rand(dim, generator=g, dtype=torch.float64) * 2.0 - 1.0) * 5.12


@dataclass(frozen=True)
class Function:
    """A black-box test function: ``f``, its minimiser, how to draw a start point, and a key tag."""

    name: str
    f: Callable[[Tensor], Tensor]
    minimizer: Callable[[int], Tensor]
    start: Callable[[torch.Generator, int], Tensor]
    start_text: str
    tag: int


FUNCTIONS: dict[str, Function] = {
    f.name: f
    for f in (
        Function("sphere", sphere, lambda d: torch.zeros(d, dtype=torch.float64), _start_sphere, "N(0, I)", 0x5F),
        Function(
            "rosenbrock",
            rosenbrock,
            lambda d: torch.ones(d, dtype=torch.float64),
            _start_rosenbrock,
            "N(0, 0.5²·I)",
            0x20B,
        ),
        Function(
            "rastrigin",
            rastrigin,
            lambda d: torch.zeros(d, dtype=torch.float64),
            _start_rastrigin,
            "uniform on [-5.12, 5.12]^D",
            0x2A5,
        ),
    )
}


class Point(nn.Module):
    """The model of a black-box problem: one parameter ``x``."""

    def __init__(self, x: Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(x)


class FunctionProblem:
    """Minimise ``FUNCTIONS[name]`` in ``dim`` dimensions (module docs)."""

    kind = "function"

    def __init__(self, name: str, dim: int) -> None:
        if name not in FUNCTIONS:
            raise unknown_name("function", name, FUNCTIONS)
        check_positive("dim", dim, integer=True)
        if name == "rosenbrock" and dim < 2:
            raise UnigradError(f"rosenbrock needs dim >= 2, got {dim}")
        self.function = FUNCTIONS[name]
        self.dim = dim

    def build_model(self, seed: int) -> Point:
        g = generator(seed, self.dim, self.function.tag)
        return Point(self.function.start(g, self.dim))

    def objective(self, seed: int, step: int) -> Objective:
        f = self.function.f
        return objective(lambda model: f(model.x), n_samples=1)

    @torch.no_grad()
    def metric(self, model: nn.Module, seed: int) -> float:
        return float(self.function.f(model.x))


# -- cartpole --------------------------------------------------------------------------------------

_CONTROL: dict[str, ControlTask] = {}


class CartPoleProblem:
    """Learn a CartPole-v1 policy; cost unit one episode, metric the mean greedy return (module docs)."""

    kind = "control"

    def __init__(self, episodes: int = 4, eval_episodes: int = 50, hidden: tuple[int, ...] = (16,)) -> None:
        check_positive("episodes", episodes, integer=True)
        check_positive("eval_episodes", eval_episodes, integer=True)
        self.episodes = episodes
        self.eval_episodes = eval_episodes
        self.hidden = tuple(hidden)

    @property
    def task(self) -> ControlTask:
        from unigrad.bio.control import ControlTask

        if "cartpole" not in _CONTROL:  # environments are made once per process and reseeded per episode
            _CONTROL["cartpole"] = ControlTask("cartpole")
        return _CONTROL["cartpole"]

    def build_model(self, seed: int) -> nn.Module:
        from unigrad.bio.control import policy_mlp

        return policy_mlp(4, 2, self.hidden, seed=seed)

    def objective(self, seed: int, step: int) -> Objective:
        from unigrad.bio.control import EpisodeObjective

        episodes = EpisodeObjective(self.task, seed=seed, episode=step, episodes=self.episodes)
        return objective(episodes, n_samples=self.episodes)

    def metric(self, model: nn.Module, seed: int) -> float:
        from unigrad.bio.control import evaluate

        return evaluate(model, self.task, self.eval_episodes, seed=seed)
