"""poisson_counts: mean = variance = rate·dt, per-entry rates, keys; PoissonVariability: mean 0, std σ."""

import math

import pytest
import torch

from tests.noise._processes import zscore
from unigrad.core.errors import UnigradError
from unigrad.noise import PoissonVariability, poisson_counts


@pytest.mark.parametrize("rate, dt", [(0.1, 1.0), (2.0, 1.0), (15.0, 2.0)])
def test_counts_mean_equals_variance(rate: float, dt: float) -> None:
    rates = torch.full((200_000,), rate, dtype=torch.float64)
    n = poisson_counts(rates, dt, seed=0, trial=0)
    lam = rate * dt
    assert n.dtype == torch.float64
    assert bool((n >= 0).all()) and torch.equal(n, n.round())  # counts are integers in any float format
    size = n.numel()
    assert zscore(float(n.mean()), lam, math.sqrt(lam / size)) < 5
    assert zscore(float(n.var()), lam, math.sqrt((lam + 2 * lam**2) / size)) < 5


def test_rate_dependent_per_entry() -> None:
    rates = torch.tensor([0.0, 0.5, 5.0, 50.0])
    n = poisson_counts(rates.expand(50_000, 4), 1.0, seed=1, trial=3, stream=2)
    assert bool((n[:, 0] == 0).all())
    for j in (1, 2, 3):
        lam = float(rates[j])
        assert zscore(float(n[:, j].mean()), lam, math.sqrt(lam / n.shape[0])) < 5
        assert zscore(float(n[:, j].double().var()), lam, math.sqrt((lam + 2 * lam**2) / n.shape[0])) < 5


def test_counts_keyed_and_global_rng_untouched() -> None:
    rates = torch.full((100,), 3.0)
    state = torch.get_rng_state()
    a = poisson_counts(rates, 1.0, seed=1, trial=2, stream=3, step=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, poisson_counts(rates, 1.0, seed=1, trial=2, stream=3, step=4))
    for change in ({"seed": 0}, {"trial": 0}, {"stream": 0}, {"step": 0}):
        key = {"seed": 1, "trial": 2, "stream": 3, "step": 4, **change}
        assert not torch.equal(a, poisson_counts(rates, 1.0, **key))


def test_counts_dtype_and_device() -> None:
    assert poisson_counts(torch.ones(3, dtype=torch.float16), 1.0, seed=0, trial=0).dtype == torch.float16
    assert poisson_counts(torch.ones(3, dtype=torch.int64), 1.0, seed=0, trial=0).dtype == torch.float32
    assert poisson_counts(torch.ones(3), 1.0, seed=0, trial=0).device.type == "cpu"


@pytest.mark.parametrize(
    "rates, dt",
    [
        (torch.tensor([1.0, -0.5]), 1.0),
        (torch.tensor([float("nan")]), 1.0),
        (torch.tensor([float("inf")]), 1.0),
        (torch.tensor([1.0]), 0.0),
        (torch.tensor([1.0]), -1.0),
        ([1.0, 2.0], 1.0),
    ],
)
def test_counts_bad_input(rates: object, dt: float) -> None:
    with pytest.raises(UnigradError) as info:
        poisson_counts(rates, dt, seed=0, trial=0)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("rate, dt", [(0.02, 1.0), (0.5, 4.0)])
def test_variability_process_moments(rate: float, dt: float) -> None:
    sigma = 0.4
    x = PoissonVariability(sigma, rate).sequence(200, (1000,), seed=2, trial=0, dt=dt, dtype=torch.float64)
    lam = rate * dt
    n = x.numel()
    assert zscore(float(x.mean()), 0.0, sigma / math.sqrt(n)) < 5
    # Var of the sample variance: (μ4 − σ⁴)/n, with μ4/σ⁴ = 3 + 1/λ for standardised Poisson counts
    assert zscore(float(x.var()), sigma**2, sigma**2 * math.sqrt((2 + 1 / lam) / n)) < 5
    # lattice values σ(k − λ)/√λ and skewness 1/√λ: shot noise, not Gaussian
    k = x / sigma * math.sqrt(lam) + lam
    # float64 round trip (k − λ)·σ/√λ → k of counts ≤ ~30: a few eps64·30 ≈ 1e-14 ≪ 1e-9 ≪ a lattice step of 1
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-9)
    skew = float((x / sigma).pow(3).mean())
    # Var of the sample third moment of a standardised variable ≈ (μ6 − μ3²)/n; for Poisson μ6 ≈ 15 + 25/λ + 1/λ²
    se = math.sqrt((15 + 25 / lam + 1 / lam**2) / n)
    assert zscore(skew, 1 / math.sqrt(lam), se) < 5
