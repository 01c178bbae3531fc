"""SparseKicks: a fraction p of entries kicked, kicks uniform on [−σ, σ], independent of where they land."""

import math

import pytest
import torch
from scipy import stats

from tests.noise._processes import zscore
from unigrad.noise import SparseKicks


@pytest.mark.parametrize("p, sigma", [(0.003, 16.0), (0.1, 0.5), (0.7, 2.0)])
def test_fraction_and_kick_distribution(p: float, sigma: float) -> None:
    proc = SparseKicks(p, sigma)
    x = proc.sequence(500, (1000,), seed=3, trial=1, dtype=torch.float64)
    n = x.numel()
    kicked = x != 0
    frac = float(kicked.double().mean())
    assert zscore(frac, p, math.sqrt(p * (1 - p) / n)) < 5
    v = x[kicked]
    m = v.numel()
    assert bool((v.abs() <= sigma).all())  # u·2σ − σ with u ∈ [0, 1): rounding is monotone, so never beyond ±σ
    assert zscore(float(v.mean()), 0.0, sigma / math.sqrt(3 * m)) < 5  # Var U[−σ, σ] = σ²/3
    assert zscore(float(v.square().mean()), sigma**2 / 3, sigma**2 * math.sqrt(4 / 45 / m)) < 5
    # the p-value is uniform for a correct sampler: 1e-6 is the ≈ 5σ false-alarm rate (measured p ≥ 0.16)
    assert stats.kstest(v.numpy(), "uniform", args=(-sigma, 2 * sigma)).pvalue > 1e-6
    # Var(ξ²) = E ξ⁴ − (E ξ²)² = pσ⁴/5 − (pσ²/3)² for a kick probability p
    assert zscore(float(x.var()), proc.variance, math.sqrt((p * sigma**4 / 5 - proc.variance**2) / n)) < 5


def test_p_one_kicks_everywhere() -> None:
    x = SparseKicks(1.0, 1.0).sequence(50, (100,), seed=0, trial=0)
    assert float((x != 0).float().mean()) > 0.999  # a kick is 0 only for a uniform of exactly 1/2 (prob 2⁻²⁴)


def test_kicks_independent_across_steps() -> None:
    x = SparseKicks(0.2, 1.0).sequence(1000, (200,), seed=5, trial=0, dtype=torch.float64)
    k = (x != 0).double()
    both = float((k[1:] * k[:-1]).mean())
    n = k[1:].numel()
    # consecutive products share a factor: Var(mean) = (p²(1 − p²) + 2p³(1 − p))/n with p = 0.2
    assert zscore(both, 0.2**2, math.sqrt((0.04 * 0.96 + 2 * 0.008 * 0.8) / n)) < 5
