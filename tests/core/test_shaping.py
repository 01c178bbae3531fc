"""Fitness shaping: centered ranks and z-scores keep the order, have zero mean, and the right scale."""

from __future__ import annotations

import pytest
import torch

from unigrad import UnigradError
from unigrad.core.shaping import SHAPERS, centered_ranks, raw, shaper, zscore


def samples() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = [torch.randn(n, generator=g, dtype=torch.float64) * 10 ** torch.randn(1, generator=g) for n in (2, 3, 17, 64)]
    out.append(torch.randn(2, 8, generator=g))  # the (2, q) layout ES shapes
    out.append(torch.tensor([1.0, -3.0, 1.0, 2.0, 1.0]))  # ties
    return out


def assert_order_preserving(values: torch.Tensor, shaped: torch.Tensor) -> None:
    v, s = values.flatten(), shaped.flatten()
    less = v[:, None] < v[None, :]
    assert (s[:, None] < s[None, :])[less].all()


@pytest.mark.parametrize("values", samples())
def test_centered_ranks(values: torch.Tensor) -> None:
    r = centered_ranks(values)
    n = values.numel()
    assert r.shape == values.shape and r.dtype == values.dtype
    assert r.min() == -0.5 and r.max() == 0.5  # 0/(n−1) − 0.5 and (n−1)/(n−1) − 0.5 are exact
    # each rank rounds by ≤ 1.5u and their n-term sum by ≤ (n−1)u·Σ|r| (u = eps/2); measured ≤ 6 eps
    eps = torch.finfo(r.dtype).eps
    assert abs(float(r.sum())) < eps * n * (1 + float(r.abs().sum()))
    assert_order_preserving(values, r)
    # without ties, the values are the n equally spaced points of [-0.5, 0.5], each used once
    if values.unique().numel() == n:
        # both within an ulp or two of values ≥ 1/(2(n−1)) in size: ≪ rtol 1e-5 (the float64 cases ≪ atol 1e-8)
        assert torch.allclose(r.flatten().sort().values, torch.linspace(-0.5, 0.5, n, dtype=r.dtype))
    # invariant to any increasing transform: the same ranks (no new ties at these spacings), so the same ops
    assert torch.equal(centered_ranks(values.pow(3) * 7 - 2), r)


def test_centered_ranks_average_ties() -> None:
    r = centered_ranks(torch.tensor([1.0, -3.0, 1.0, 2.0, 1.0]))
    assert r.tolist() == [0.0, -0.5, 0.0, 0.5, 0.0]
    assert centered_ranks(torch.tensor([4.0])).tolist() == [0.0]
    # all equal (a flat region): no information, so no direction
    assert centered_ranks(torch.full((2, 8), 3.0)).abs().sum() == 0


@pytest.mark.parametrize("values", samples())
def test_zscore(values: torch.Tensor) -> None:
    z = zscore(values)
    assert z.shape == values.shape
    # the subtracted mean and z's mean are n-term sums, each ≲ n·u·mean|v|/std ≤ n·u (zero-mean samples), plus
    # ≲ 3u per entry: ≲ (2n + 3)·u ≤ 4n·eps (measured ≤ 0.33 eps)
    assert abs(float(z.mean())) < 4 * z.numel() * torch.finfo(z.dtype).eps
    # std(z) = s/(s + 1e-8): biased by 1e-8/s ≤ 1.2e-6 here (s ≥ 0.0086), plus ≲ 16·eps32 = 2e-6 of rounding
    assert float(z.std()) == pytest.approx(1.0, rel=1e-5)
    assert_order_preserving(values, z)
    # 3v + 5 rounds by ≲ 8u relative to std 3 (float32: ≈ 2e-7 in z), the 16-term mean and std by ≲ 2e-6, and the
    # 1e-8 in the denominator moves z by ≲ 1e-8·(2/3)/s·|z| ≤ 1e-6: all ≪ 1e-5
    assert torch.allclose(zscore(3 * values + 5), z, atol=1e-5)
    assert zscore(torch.tensor([2.5])).tolist() == [0.0]


def test_raw_is_the_identity_and_lookup_validates() -> None:
    v = torch.randn(5, generator=torch.Generator().manual_seed(1))
    assert raw(v) is v
    assert set(SHAPERS) == {"centered_ranks", "zscore", "raw"}
    for name, fn in SHAPERS.items():
        assert shaper(name) is fn
    with pytest.raises(UnigradError, match="fitness_shaping"):
        shaper("softmax")
