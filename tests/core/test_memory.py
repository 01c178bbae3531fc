"""peak_memory counts tensor storage held at once during a call; the precision guard warns."""

import warnings

import torch

from unigrad.core.memory import peak_memory
from unigrad.core.precision import warn_if_sigma_too_small


def test_peak_counts_live_tensors_only():
    def two_at_once():
        a = torch.empty(1000)
        b = torch.empty(500)
        return a, b

    def one_after_another():
        for n in (1000, 500):
            torch.empty(n)

    assert peak_memory(two_at_once) == 6000
    assert peak_memory(one_after_another) == 4000


def test_memory_held_before_is_not_counted():
    big = torch.empty(10_000)
    assert peak_memory(lambda: big.add_(1)) < 100  # a few bytes for the wrapped scalar, not 40 kB


def test_sigma_below_bfloat16_spacing_warns_and_float32_does_not():
    p16 = [("w", torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16)))]
    p32 = [("w", torch.nn.Parameter(torch.ones(8)))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_if_sigma_too_small(p16, 1e-3) is True
        assert warn_if_sigma_too_small(p32, 1e-3) is False
    assert sum("bfloat16" in str(w.message) for w in caught) == 1
    # the rounding really does erase the perturbation in bfloat16
    assert torch.equal(p16[0][1] + 1e-3, p16[0][1])  # IEEE round-to-nearest: 1e-3 < half the spacing 2⁻⁸ at 1
