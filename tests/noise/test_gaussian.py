"""WhiteGaussian: zero mean, standard deviation σ, no correlation between steps, Gaussian shape."""

import math

import pytest
import torch
from scipy import stats

from tests.noise._processes import zscore
from unigrad.noise import WhiteGaussian


@pytest.mark.parametrize("sigma", [0.05, 2.0])
def test_moments(sigma: float) -> None:
    x = WhiteGaussian(sigma).sequence(200, (1000,), seed=0, trial=1, dtype=torch.float64)
    n = x.numel()
    assert zscore(float(x.mean()), 0.0, sigma / math.sqrt(n)) < 5
    assert zscore(float(x.std()), sigma, sigma / math.sqrt(2 * n)) < 5
    lag1 = float((x[1:] * x[:-1]).mean()) / sigma**2
    assert zscore(lag1, 0.0, 1 / math.sqrt(x[1:].numel())) < 5
    assert WhiteGaussian(sigma).std == pytest.approx(sigma)  # √(σ²) in float64: a few eps64 ≪ rel 1e-6


def test_gaussian_shape() -> None:
    x = WhiteGaussian(0.5).sequence(20, (1000,), seed=2, trial=0).flatten().double() / 0.5
    # the p-value is uniform for a correct sampler: 1e-6 is the ≈ 5σ false-alarm rate (measured p = 0.81)
    assert stats.kstest(x.numpy(), "norm").pvalue > 1e-6


def test_dt_is_ignored() -> None:
    proc = WhiteGaussian(1.0)
    a = proc.sequence(5, (3,), seed=1, trial=1, dt=1.0)
    assert torch.equal(a, proc.sequence(5, (3,), seed=1, trial=1, dt=7.0))
