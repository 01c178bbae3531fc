"""OrnsteinUhlenbeck: stationary std σ from the first step, autocorrelation e^{−k·dt/τ}, exact recursion."""

import math

import pytest
import torch

from tests.noise._processes import zscore
from unigrad.noise import OrnsteinUhlenbeck


def ar1_variance_se(a: float, n: int, sigma: float) -> float:
    """Standard error of the sample variance of ``n`` points of a stationary AR(1) with coefficient ``a``."""
    return sigma**2 * math.sqrt(2 / n * (1 + a**2) / (1 - a**2))


def bartlett_se(a: float, k: int, n: int) -> float:
    """Bartlett's standard error of the lag-``k`` sample autocorrelation of an AR(1) with coefficient ``a``."""
    var = ((1 + a**2) * (1 - a ** (2 * k)) / (1 - a**2) - 2 * k * a ** (2 * k)) / n
    return math.sqrt(var)


@pytest.mark.parametrize("dt, tau", [(1.0, 10.0), (2.0, 10.0), (5.0, 2.0)])
def test_stationary_std_and_autocorrelation(dt: float, tau: float) -> None:
    sigma = 0.7
    proc = OrnsteinUhlenbeck(sigma, tau)
    x = proc.sequence(400, (500,), seed=1, trial=0, dt=dt, dtype=torch.float64)
    a = math.exp(-dt / tau)
    assert proc.decay(dt) == pytest.approx(a)  # the same float64 exp: a few eps64 ≪ rel 1e-6
    n = x.numel()
    assert zscore(float(x.var()), sigma**2, ar1_variance_se(a, n, sigma)) < 5
    var = float(x.square().mean())
    for k in (1, 3, 10):
        r = float((x[k:] * x[:-k]).mean()) / var
        assert zscore(r, a**k, bartlett_se(a, k, x[k:].numel())) < 5, (k, r, a**k)


def test_first_sample_already_stationary() -> None:
    sigma, tau, dt = 1.5, 20.0, 1.0
    x = OrnsteinUhlenbeck(sigma, tau).sequence(30, (20000,), seed=2, trial=3, dt=dt, dtype=torch.float64)
    n = x.shape[1]
    for t in (0, 1, 29):  # the same law at every step: no transient from a zero start
        assert zscore(float(x[t].std()), sigma, sigma / math.sqrt(2 * n)) < 5, t
        assert zscore(float(x[t].mean()), 0.0, sigma / math.sqrt(n)) < 5, t
    # correlation with the first sample is already a^k (a zero start would make ξ_0 = 0)
    a = math.exp(-dt / tau)
    for k in (1, 10, 29):
        r = float((x[0] * x[k]).mean()) / sigma**2  # Var(ξ_0ξ_k)/σ⁴ = 1 + ρ² for jointly Gaussian, ρ = a^k
        assert zscore(r, a**k, math.sqrt((1 + a ** (2 * k)) / n)) < 5, k


def test_exact_discretisation_innovations() -> None:
    # (ξ_{t+1} − a ξ_t) / (σ√(1 − a²)) must be i.i.d. N(0, 1) and independent of ξ_t
    sigma, tau, dt = 0.3, 4.0, 1.0
    x = OrnsteinUhlenbeck(sigma, tau).sequence(300, (300,), seed=4, trial=0, dt=dt, dtype=torch.float64)
    a = math.exp(-dt / tau)
    eps = (x[1:] - a * x[:-1]) / (sigma * math.sqrt(1 - a * a))
    n = eps.numel()  # i.i.d. N(0, 1): the SEs below are those of means of unit-variance, uncorrelated terms
    assert zscore(float(eps.mean()), 0.0, 1 / math.sqrt(n)) < 5
    assert zscore(float(eps.std()), 1.0, 1 / math.sqrt(2 * n)) < 5
    assert zscore(float((eps[1:] * eps[:-1]).mean()), 0.0, 1 / math.sqrt(n)) < 5
    assert zscore(float((eps * x[:-1]).mean()) / sigma, 0.0, 1 / math.sqrt(n)) < 5


def test_limits_of_tau() -> None:
    # τ ≪ dt: white noise; τ ≫ T·dt: nearly constant over the trial
    white = OrnsteinUhlenbeck(1.0, tau=1e-3).sequence(200, (200,), seed=0, trial=0, dtype=torch.float64)
    r = float((white[1:] * white[:-1]).mean())
    assert abs(r) < 5 / math.sqrt(white[1:].numel())  # 5 SE: each product has variance 1, products uncorrelated
    frozen = OrnsteinUhlenbeck(1.0, tau=1e6).sequence(50, (200,), seed=0, trial=0, dtype=torch.float64)
    # ξ_t − ξ_0 has SD ≤ √(2·49/τ) = 0.01, so ≲ 0.05 over 10⁴ entries, while max|ξ_0| over 200 entries is > 1.5
    # but with probability 1e-12: a bound of 0.1·max|ξ_0| > 0.15 has a margin of 10 SD
    assert float((frozen - frozen[0]).abs().max()) < 0.1 * float(frozen[0].abs().max())
