"""Rademacher: values exactly ±σ, balanced signs, independent steps."""

import math

import pytest
import torch

from tests.noise._processes import zscore
from unigrad.noise import Rademacher


@pytest.mark.parametrize("sigma", [0.1, 3.0])
def test_values_and_balance(sigma: float) -> None:
    x = Rademacher(sigma).sequence(100, (1000,), seed=0, trial=0, dtype=torch.float64)
    assert bool(((x == sigma) | (x == -sigma)).all())  # b·2σ − σ is exact in IEEE arithmetic (Sterbenz)
    n = x.numel()
    frac = float((x > 0).double().mean())
    assert zscore(frac, 0.5, 0.5 / math.sqrt(n)) < 5
    assert zscore(float(x.mean()), 0.0, sigma / math.sqrt(n)) < 5
    lag1 = float((x[1:] * x[:-1]).mean()) / sigma**2
    assert zscore(lag1, 0.0, 1 / math.sqrt(x[1:].numel())) < 5


def test_exact_in_low_precision() -> None:
    x = Rademacher(0.5).sequence(10, (10,), seed=1, trial=0, dtype=torch.float16)
    assert bool(((x == 0.5) | (x == -0.5)).all())  # ±0.5 is exact in float16
