"""A σ too small for the parameters' precision gives a zero estimate: the estimators warn."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import unigrad
from unigrad.core import precision


@pytest.mark.parametrize("name", ["rge", "spsa", "es", "cge"])
def test_bfloat16_with_tiny_sigma_warns_and_really_estimates_zero(name):
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(6, 3).to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)  # |θ| ≥ 0.5: bf16 spacing ≥ 2e-3
    x = torch.randn(16, 6, generator=g).to(torch.bfloat16)
    y = torch.randint(0, 3, (16,), generator=g)
    precision._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unigrad.make_estimator(name, sigma=1e-5).estimate(model, unigrad.supervised(F.cross_entropy, x, y))
    assert any("spacing" in str(w.message) for w in caught)
    # exact zeros on any IEEE machine: |σu| ≲ 1e-5·6 is far below half the bf16 spacing (≥ 2e-3), so every
    # θ ± σu rounds back to θ and the probe losses are equal (cge's default forward scheme also compares them with
    # a plain, unbatched forward: that needs the two bf16 kernels to agree bitwise, which this test checks too)
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_float32_with_ordinary_sigma_does_not_warn():
    model = torch.nn.Linear(6, 3)
    x, y = torch.ones(4, 6), torch.zeros(4, dtype=torch.long)
    precision._WARNED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        unigrad.make_estimator("spsa", sigma=1e-3).estimate(model, unigrad.supervised(F.cross_entropy, x, y))
