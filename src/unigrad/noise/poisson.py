"""Poisson variability: spike counts ``N ~ Poisson(rate·dt)``, whose variance equals their mean.

Definition (Faisal, Selen & Wolpert 2008, "Noise in the nervous system", Nat. Rev. Neurosci. 9:292)
    A neuron firing as a Poisson process of rate ``r`` emits ``N ~ Poisson(λ)`` spikes in a window ``dt``,
    ``λ = r·dt``: ``E[N] = Var[N] = λ`` (Fano factor 1), so the noise grows with the rate. Two tools:

:func:`poisson_counts` ``(rates, dt, *, seed, trial, stream=0, step=0)``
    Counts for a tensor of (non-negative) rates, each entry with its own ``λ = rate·dt``: rate-dependent
    noise for a network whose rates change as it runs (``counts/dt`` is an unbiased, noisy estimate of the
    rates, of variance ``rate/dt``). Call it once per step with ``step`` counting the steps, so each step has
    its own key ``(seed, trial, stream, step)``.

:class:`PoissonVariability` ``(sigma, rate)``
    The same shot noise at one constant rate, centred and scaled to be added to a state:
    ``ξ_t = σ·(N_t − λ)/√λ`` with ``N_t ~ Poisson(λ)``, ``λ = rate·dt``. Mean 0, standard deviation σ,
    skewness ``1/√λ``: strongly skewed, lattice-valued noise for small ``λ``, nearly Gaussian for large.

Options of :class:`PoissonVariability`
    ``sigma``: standard deviation σ > 0 of each entry.
    ``rate``: the firing rate, in events per unit of ``dt`` (e.g. per ms); ``λ = rate·dt`` per step.
    ``accessible``: whether a learning rule may read the noise (see :mod:`unigrad.noise.base`).

Spec: ``poisson:sigma=0.1:rate=0.02``. Cost: one Poisson draw per entry and step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unigrad.core.errors import UnigradError
from unigrad.core.rng import generator
from unigrad.noise.base import CenteredNoise, Draw, check_key, check_positive_finite, reserve_tag

COUNTS_TAG = reserve_tag(0x4E5A0007, f"{__name__}.poisson_counts")
"""First part of the generator key of :func:`poisson_counts`."""


def poisson_counts(rates: Tensor, dt: float, *, seed: int, trial: int, stream: int = 0, step: int = 0) -> Tensor:
    """Spike counts ``N ~ Poisson(rates·dt)``, one per entry of ``rates``, keyed ``(seed, trial, stream, step)``.

    ``rates`` must be finite and >= 0 (checked: one device synchronisation). The counts have the dtype
    (floating; an integer ``rates`` gives float32) and device of ``rates``. The generator is
    ``unigrad.core.rng.generator(COUNTS_TAG, seed, trial, stream, step)``; the global RNG is never used.
    """
    if not isinstance(rates, Tensor):
        raise UnigradError(f"rates must be a tensor, got {type(rates).__name__}")
    dt = check_positive_finite("dt", dt)
    key = (check_key("seed", seed), check_key("trial", trial), check_key("stream", stream), check_key("step", step))
    if rates.is_complex() or rates.dtype == torch.bool:
        raise UnigradError(f"rates must be a real tensor, got dtype {rates.dtype}")
    out_dtype = rates.dtype if rates.is_floating_point() else torch.float32
    work = torch.float64 if out_dtype == torch.float64 else torch.float32
    lam = rates.detach().to(work) * dt
    if lam.numel() and not bool((torch.isfinite(lam) & (lam >= 0)).all()):
        raise UnigradError("rates must be finite and >= 0 for Poisson counts")
    g = generator(COUNTS_TAG, *key, device=rates.device)
    return torch.poisson(lam, generator=g).to(out_dtype)


class PoissonVariability(CenteredNoise):
    """Centred, scaled Poisson counts at a constant rate: ``σ·(N − λ)/√λ``, ``N ~ Poisson(rate·dt)``."""

    name = "poisson"
    tag = 0x4E5A0006
    options = ("sigma", "rate")
    example = "poisson:sigma=0.1:rate=0.02"

    def __init__(self, sigma: float, rate: float, *, accessible: bool = True) -> None:
        super().__init__(sigma, accessible=accessible)
        self.rate = check_positive_finite("rate", rate)

    def _sample(self, draw: Draw) -> Tensor:
        lam = self.rate * draw.dt
        counts = torch.poisson(torch.full(draw.size, lam, device=draw.device), generator=draw.g)
        return counts.to(draw.work).sub_(lam).mul_(self.sigma / math.sqrt(lam))
