"""StochasticRelease: 0/1 masks with mean p, independent entries; p = 1 is reliable release."""

import math

import pytest
import torch

from tests.noise._processes import zscore
from unigrad.noise import StochasticRelease


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_mask_values_and_mean(p: float) -> None:
    proc = StochasticRelease(p)
    m = proc.sequence(200, (30, 40), seed=1, trial=2)
    assert m.dtype == torch.float32
    assert bool(((m == 0) | (m == 1)).all())
    n = m.numel()
    assert zscore(float(m.double().mean()), p, math.sqrt(p * (1 - p) / n)) < 5
    assert proc.mean == p and proc.variance == pytest.approx(p * (1 - p))  # one float64 product: ≪ rel 1e-6
    assert proc.multiplicative
    # independence between neighbouring steps: P(both released) = p²; consecutive products share a mask, so
    # Var(mean) = (p²(1 − p²) + 2p³(1 − p))/N (covariance p³ − p⁴ with each neighbour)
    both = float((m[1:] * m[:-1]).double().mean())
    assert zscore(both, p * p, math.sqrt((p * p * (1 - p * p) + 2 * p**3 * (1 - p)) / m[1:].numel())) < 5


def test_reliable_release() -> None:
    assert bool((StochasticRelease(1.0).sequence(10, (5,), seed=0, trial=0) == 1).all())


def test_multiplicative_use_on_weights() -> None:
    w = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    masks = StochasticRelease(0.5).sequence(3, w.shape, seed=0, trial=0)
    w_eff = w * masks  # (3, 6, 4): one effective weight matrix per step
    assert torch.equal(w_eff[masks == 1], w.expand_as(w_eff)[masks == 1])  # w·1 is exact
    assert bool((w_eff[masks == 0] == 0).all())
