"""Mackey–Glass prediction (``mackey-glass``): predict the chaotic series ``horizon`` samples ahead.

The Mackey–Glass delay differential equation (Mackey & Glass 1977, "Oscillation and chaos in physiological control
systems", Science 197:287)

    dx/dt = β·x(t−τ) / (1 + x(t−τ)ⁿ) − γ·x(t),     β = 0.2, γ = 0.1, n = 10, τ = 17

is chaotic for τ = 17 (a low-dimensional strange attractor, values about 0.4–1.35), the classic benchmark of time
series prediction (Farmer & Sidorowich 1987; Jaeger & Haas 2004) and of the temporal tasks of García Fernández,
Keemink & van Gerven (2024, Front. Neurosci.).

Generation (offline, cached): the equation is integrated with the classical Runge–Kutta method at step ``h``
(default 0.1; ``τ/h`` must be whole), the delayed term at the half steps taken as the mean of its two neighbouring
grid values (which makes the scheme second-order accurate: about 1e-5 error after 50 time units at h = 0.1);
the initial history ``x(t)``, ``t ∈ [−τ, 0]``, is drawn uniformly from [0.5, 1.3] at every grid point
from a generator keyed by ``seed``; the first ``transient`` time units are discarded; then one sample is kept every
``subsample`` time units until ``series_length`` samples. The series depends only on ``seed`` and these options and is
cached per process (:meth:`MackeyGlass.series`); generating 10⁴ samples takes about 0.1 s.

Trials: each trial is a window of ``steps`` consecutive samples starting at a random offset of the seed's series
(drawn from ``(seed, step)``). Inputs ``(T, B, 1)``: ``x_t`` (raw values, not centred); targets ``(T, B, 1)``:
``x_{t+horizon}`` from step ``washout`` on, where the output is scored (``mask``; the network first needs a few samples
of context), 0 before.
Different steps of the same seed reuse the same series (overlapping windows); evaluate on another seed.

``loss``: masked MSE. ``reward``: ``−loss``. ``score``: NRMSE = RMSE / std(target) over every scored step of the
batch (population std), lower is better. ``chance = 1``, the NRMSE of predicting the mean. Predicting the current
value (persistence) is much better than chance at short horizons — NRMSE about 0.15 at ``horizon = 1`` with
``subsample = 1``: :meth:`MackeyGlass.persistence_nrmse` gives it over the whole series, and since ``n_in = n_out``,
``task.score(batch.inputs, batch)`` gives it on a batch. Read scores against both.

Options:
    tau, beta, gamma, power: the equation's delay τ, production β, decay γ and exponent n.
    subsample: time units between samples (the ``dt`` of the task).
    horizon: how many samples ahead to predict (≥ 1).
    steps: samples per trial window T (≥ 1).
    washout: unscored samples at the start of each window (0 ≤ washout < steps).
    series_length: samples in each seed's series (> steps + horizon).
    transient: time units integrated and discarded before sampling (≥ 0).
    h: Runge–Kutta integration step (``tau``, ``subsample`` and ``transient`` must be whole multiples of it).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from unigrad.bio.tasks.base import TemporalTask, TrialBatch, check_number, check_steps, nrmse, steps_of
from unigrad.core.errors import UnigradError
from unigrad.core.rng import generator

_HISTORY_TAG = 0xB10A


def integrate(
    history: Sequence[float], substeps: int, *, delay: int, h: float, beta: float, gamma: float, power: float
) -> list[float]:
    """RK4 integration of the Mackey–Glass equation on a grid of step ``h``.

    Args:
        history: ``x`` on the grid points ``t = −delay·h, …, 0`` (at least ``delay + 1`` values; the last is x(0)).
        substeps: grid steps to integrate.
        delay: ``τ/h``, the delay in grid steps.

    Returns:
        ``history`` followed by the ``substeps`` new grid values.
    """
    if len(history) < delay + 1:
        raise UnigradError(f"the Mackey-Glass history needs tau/h + 1 = {delay + 1} values, got {len(history)}")
    xs = [float(v) for v in history]
    x = xs[-1]
    for _ in range(substeps):
        a, b = xs[-1 - delay], xs[-delay]  # x(t − τ) and x(t + h − τ)
        m = 0.5 * (a + b)
        fa = beta * a / (1.0 + a**power)
        fm = beta * m / (1.0 + m**power)
        fb = beta * b / (1.0 + b**power)
        k1 = fa - gamma * x
        k2 = fm - gamma * (x + 0.5 * h * k1)
        k3 = fm - gamma * (x + 0.5 * h * k2)
        k4 = fb - gamma * (x + h * k3)
        x = x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        xs.append(x)
    return xs


@functools.lru_cache(maxsize=16)
def _series(
    seed: int,
    length: int,
    delay: int,
    every: int,
    skip: int,
    h: float,
    beta: float,
    gamma: float,
    power: float,
) -> Tensor:
    g = generator(seed, _HISTORY_TAG)
    history = (0.5 + 0.8 * torch.rand(delay + 1, generator=g, dtype=torch.float64)).tolist()
    xs = integrate(history, skip + (length - 1) * every, delay=delay, h=h, beta=beta, gamma=gamma, power=power)
    start = delay + skip  # index of the first kept grid point
    out = torch.tensor(xs[start::every], dtype=torch.float64)
    assert out.numel() == length
    return out


class MackeyGlass(TemporalTask):
    """One-step (``horizon``-step) prediction of the Mackey–Glass series (module docs)."""

    name = "mackey-glass"
    description = "predict the chaotic Mackey-Glass series (tau=17) horizon samples ahead; score NRMSE"
    tag = 0xB1006
    chance = 1.0
    _options = (
        "tau",
        "beta",
        "gamma",
        "power",
        "subsample",
        "horizon",
        "steps",
        "washout",
        "series_length",
        "transient",
        "h",
    )

    def __init__(
        self,
        *,
        tau: float = 17.0,
        beta: float = 0.2,
        gamma: float = 0.1,
        power: float = 10.0,
        subsample: float = 1.0,
        horizon: int = 1,
        steps: int = 100,
        washout: int = 10,
        series_length: int = 10_000,
        transient: float = 1000.0,
        h: float = 0.1,
    ) -> None:
        self.h = check_number("h", h, low=0.0, strict=True)
        self.tau = check_number("tau", tau, low=0.0, strict=True)
        self.beta = check_number("beta", beta, low=0.0, strict=True)
        self.gamma = check_number("gamma", gamma, low=0.0, strict=True)
        self.power = check_number("power", power, low=0.0, strict=True)
        self.subsample = check_number("subsample", subsample, low=0.0, strict=True)
        self.transient = check_number("transient", transient, low=0.0)
        self.horizon = check_steps("horizon", horizon)
        self.steps = check_steps("steps", steps)
        self.washout = check_steps("washout", washout, minimum=0)
        if self.washout >= self.steps:
            raise UnigradError(f"option washout must be < steps ({self.steps}), got {washout!r}")
        self.series_length = check_steps("series_length", series_length)
        if self.series_length <= self.steps + self.horizon:
            raise UnigradError(
                f"option series_length must exceed steps + horizon = {self.steps + self.horizon}, got {series_length!r}"
            )
        self._delay = steps_of("tau", self.tau, self.h)
        self._every = steps_of("subsample", self.subsample, self.h)
        self._skip = steps_of("transient", self.transient, self.h, allow_zero=True)
        self.dt = self.subsample
        self.n_in = self.n_out = 1

    def series(self, seed: int = 0) -> Tensor:
        """The seed's whole series ``(series_length,)`` in float64 (cached; do not modify it)."""
        check_steps("seed", seed, minimum=0)
        return _series(
            seed,
            self.series_length,
            self._delay,
            self._every,
            self._skip,
            self.h,
            self.beta,
            self.gamma,
            self.power,
        )

    def _sample(self, batch: int, gen: torch.Generator, seed: int) -> TrialBatch:
        x = self.series(seed)
        starts = torch.randint(0, self.series_length - self.steps - self.horizon + 1, (batch,), generator=gen)
        index = starts[None, :] + torch.arange(self.steps)[:, None]  # (T, B)
        inputs = x[index].to(torch.float32)[:, :, None]
        mask = torch.zeros(self.steps, batch)
        mask[self.washout :] = 1.0
        targets = x[index + self.horizon].to(torch.float32)[:, :, None] * mask[:, :, None]
        return TrialBatch(inputs, targets, mask)

    def score(self, outputs: Tensor, batch: TrialBatch) -> float:
        """NRMSE over the scored steps (chance 1; compare with the persistence baseline too)."""
        self.check_outputs(outputs, batch)
        return nrmse(outputs, batch)

    def persistence_nrmse(self, seed: int = 0) -> float:
        """NRMSE of predicting ``x_{t+horizon}`` by ``x_t`` over the seed's whole series."""
        x = self.series(seed)
        k = self.horizon
        err = (x[k:] - x[:-k]).square().mean().sqrt()
        return float(err / x[k:].std(correction=0))
