"""Shared pieces of the trial-rule tests (Miconi, exploratory Hebb): a reach objective, a reward unrelated to the
network, a small float64 rate network, two input pulses, and the rule's recurrent update."""

from __future__ import annotations

import torch
from torch import nn

from unigrad.bio import RateRNN
from unigrad.core.estimator import Estimator
from unigrad.core.rng import generator

F64 = torch.float64


class Reach:
    """One fixed input sequence for every trial; reward −mean (y − target)² over the last ``window`` steps."""

    def __init__(self, inputs: torch.Tensor, target: float = 0.8, window: int = 5) -> None:
        self.inputs, self.target, self.window = inputs, target, window
        self.n_samples = inputs.shape[1]

    def reward(self, outputs: torch.Tensor) -> torch.Tensor:
        return -(outputs[-self.window :, :, 0] - self.target).square().mean(0)

    def score(self, outputs: torch.Tensor) -> torch.Tensor:
        return -self.reward(outputs)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return self.score(model(self.inputs))


class Unrelated(Reach):
    """A reward that ignores the network: constant, or i.i.d. N(3, 1) keyed by ``seed``."""

    def __init__(self, inputs: torch.Tensor, value: float | None = None, seed: int = 0) -> None:
        super().__init__(inputs)
        self.value, self.seed = value, seed

    def reward(self, outputs: torch.Tensor) -> torch.Tensor:
        b = outputs.shape[1]
        if self.value is not None:
            return torch.full((b,), self.value, dtype=F64)
        return 3.0 + torch.randn(b, generator=generator(self.seed, 0xAB), dtype=F64)


def net(n: int = 6, *, n_in: int = 2, dt: float = 10.0, tau: float = 100.0, seed: int = 3, **kw) -> RateRNN:
    return RateRNN(n_in, n, 1, tau=tau, dt=dt, seed=seed, dtype=F64, **kw)


def pulses(steps: int, batch: int) -> torch.Tensor:
    u = torch.zeros(steps, batch, 2, dtype=F64)
    u[: steps // 4, :, 0] = 1.0
    u[steps // 4 : steps // 2, :, 1] = 1.0
    return u


def rec_update(est: Estimator, model: RateRNN, objective: Reach) -> torch.Tensor:
    """The rule's ΔW/η for the recurrent weights (the negated direction)."""
    est.estimate(model, objective)
    return -model.rec.weight.grad.clone()
