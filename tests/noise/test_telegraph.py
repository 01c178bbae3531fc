"""StochasticMTJ: mean c, variance σ² + a², telegraph autocorrelation (1 − 2p)^k, flips at rate p, keyed."""

import math

import pytest
import torch

from tests.noise._processes import zscore
from unigrad.core.errors import UnigradError
from unigrad.noise import NOISES, make_noise
from unigrad.noise.telegraph import AMPLITUDE, FLIP, OFFSET, StochasticMTJ


def signs(proc: StochasticMTJ, steps: int, entries: int, **key: int) -> torch.Tensor:
    """The telegraph signs ``s_t`` of a σ = 0 process: ``(ξ_t − c)/a``, which must be exactly ±1."""
    x = proc.sequence(steps, (entries,), seed=key.get("seed", 0), trial=key.get("trial", 0), dtype=torch.float64)
    s = (x - proc.offset) / proc.amplitude
    # float64 (c ± a − c)/a: rounding ≲ eps64·|c ± a|/a ≈ 1e-15 for the values here, ≪ 1e-9
    assert torch.allclose(s.abs(), torch.ones_like(s), atol=1e-9)
    return s.sign()


def test_defaults_are_the_published_values() -> None:
    proc = StochasticMTJ()
    assert (proc.amplitude, proc.flip, proc.offset, proc.sigma) == (AMPLITUDE, FLIP, OFFSET, 0.0)
    assert (AMPLITUDE, FLIP, OFFSET) == (0.0059, 0.0809, 0.042)
    assert proc.accessible is False and proc.multiplicative is False
    assert proc.mean == OFFSET and proc.variance == pytest.approx(AMPLITUDE**2)  # float64 arithmetic ≪ rel 1e-6


@pytest.mark.parametrize("sigma, amplitude, flip, offset", [(0.01, 0.0059, 0.0809, 0.042), (0.5, 1.0, 0.3, -2.0)])
def test_stationary_mean_and_variance(sigma: float, amplitude: float, flip: float, offset: float) -> None:
    proc = StochasticMTJ(sigma, amplitude, flip, offset)
    x = proc.sequence(300, (2000,), seed=1, trial=0, dtype=torch.float64)
    assert proc.mean == offset and proc.variance == pytest.approx(sigma**2 + amplitude**2)  # float64: ≪ rel 1e-6
    # entries are independent: standard errors from the spread of per-entry statistics
    m, v = x.mean(0), x.var(0, correction=0)
    assert zscore(float(m.mean()), offset, float(m.std()) / math.sqrt(m.numel())) < 5
    # the per-entry variance about its own mean is biased low by the variance of that mean
    r = 1 - 2 * flip
    steps = x.shape[0]
    lag_sum = sum((1 - k / steps) * r**k for k in range(1, steps))
    var_of_mean = (sigma**2 + amplitude**2 * (1 + 2 * lag_sum)) / steps
    assert zscore(float(v.mean()), proc.variance - var_of_mean, float(v.std()) / math.sqrt(v.numel())) < 5
    # the law is stationary from the first step: no transient at t = 0
    first = x[0]
    assert zscore(float(first.mean()), offset, math.sqrt(proc.variance / first.numel())) < 5
    # Var(sample variance) = (μ4 − v²)/n = (4a²σ² + 2σ⁴)/n ≤ 2v²/n: v√(2/n) bounds the SE, ×2 spare
    assert zscore(float(first.var()), proc.variance, proc.variance * math.sqrt(2 / first.numel()) * 2) < 5


@pytest.mark.parametrize("flip", [0.0809, 0.3, 0.5, 0.85])
def test_telegraph_autocorrelation(flip: float) -> None:
    proc = StochasticMTJ(0.0, 1.0, flip, 0.0)
    s = signs(proc, 200, 4000, seed=2)
    assert proc.correlation(3) == pytest.approx((1 - 2 * flip) ** 3)  # float64 closed form: ≪ rel 1e-6
    for k in (1, 2, 5, 12):
        per_entry = (s[k:] * s[:-k]).mean(0)  # entries independent: SE from their spread
        est, se = float(per_entry.mean()), float(per_entry.std()) / math.sqrt(per_entry.numel())
        target = (1 - 2 * flip) ** k
        assert zscore(est, target, max(se, 1e-4)) < 5, (k, est, target)  # floor only for a zero spread
    # every step is a fair coin (stationary start): E[s_t] = 0 at t = 0 and later
    for t in (0, 1, 199):
        assert zscore(float(s[t].mean()), 0.0, 1 / math.sqrt(s.shape[1])) < 5


def test_gaussian_part_adds_white_noise_on_the_same_telegraph() -> None:
    # the uniforms are drawn before the normals, so one key gives the same telegraph whatever σ is
    sigma = 0.02
    noisy = StochasticMTJ(sigma, 0.1, 0.2, 0.5).sequence(200, (1000,), seed=3, trial=1, dtype=torch.float64)
    clean = StochasticMTJ(0.0, 0.1, 0.2, 0.5).sequence(200, (1000,), seed=3, trial=1, dtype=torch.float64)
    eps = (noisy - clean) / sigma
    n = eps.numel()
    assert zscore(float(eps.mean()), 0.0, 1 / math.sqrt(n)) < 5
    assert zscore(float(eps.var()), 1.0, math.sqrt(2 / n)) < 5
    assert zscore(float((eps[1:] * eps[:-1]).mean()), 0.0, 1 / math.sqrt(n)) < 5  # white
    assert zscore(float((eps * (clean - 0.5)).mean()) / 0.1, 0.0, 1 / math.sqrt(n)) < 5  # independent of s_t


@pytest.mark.parametrize("flip", [0.0809, 0.5, 0.95])
def test_flip_frequency_and_independence(flip: float) -> None:
    s = signs(StochasticMTJ(0.0, 0.0059, flip, 0.042), 300, 2000, seed=4)
    flipped = (s[1:] != s[:-1]).double()
    n = flipped.numel()
    se = math.sqrt(flip * (1 - flip) / n)
    assert zscore(float(flipped.mean()), flip, se) < 5
    # a flip does not depend on the current sign nor on the previous flip
    up = s[:-1] > 0
    assert zscore(float(flipped[up].mean()), flip, math.sqrt(flip * (1 - flip) / int(up.sum()))) < 5
    both = float((flipped[1:] * flipped[:-1]).mean())
    # consecutive products share a flip: the true SE is √(1 + 2p/(1 + p)) ≤ √2 times the Bernoulli one; ×2 covers it
    assert zscore(both, flip**2, math.sqrt(flip**2 * (1 - flip**2) / n) * 2) < 5


def test_flip_limits() -> None:
    frozen = signs(StochasticMTJ(0.0, 1.0, 0.0, 0.0), 50, 400, seed=5)
    assert torch.equal(frozen, frozen[0].expand_as(frozen))  # p = 0: a per-trial ±a offset
    assert 100 < int((frozen[0] > 0).sum()) < 300  # with a fair initial sign: Binomial(400, 1/2) is 200 ± 10
    alternating = signs(StochasticMTJ(0.0, 1.0, 1.0, 0.0), 50, 400, seed=5)
    assert torch.equal(alternating[1:], -alternating[:-1])  # p = 1: flips at every step


def test_keyed_replay() -> None:
    proc = StochasticMTJ(0.01)
    a = proc.sequence(100, (8, 3), seed=7, trial=2, stream=1)
    assert torch.equal(a, proc.sequence(100, (8, 3), seed=7, trial=2, stream=1))
    assert torch.equal(a, StochasticMTJ(0.01).sequence(100, (8, 3), seed=7, trial=2, stream=1))
    for change in ({"seed": 8}, {"trial": 3}, {"stream": 0}):
        key = {"seed": 7, "trial": 2, "stream": 1, **change}
        assert not torch.equal(a, proc.sequence(100, (8, 3), **key))
    state = torch.get_rng_state()
    proc.sequence(10, (4,), seed=0, trial=0)
    assert torch.equal(torch.get_rng_state(), state)
    # dt is ignored: p is a probability per step
    assert torch.equal(a, proc.sequence(100, (8, 3), seed=7, trial=2, stream=1, dt=0.1))
    half = proc.sequence(100, (8, 3), seed=7, trial=2, stream=1, dtype=torch.float16)
    # float16 is the float32 result rounded: half an ulp, rel 4.9e-4 (|ξ| ≈ 0.04 is far from float16's subnormals)
    torch.testing.assert_close(half.float(), a, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"flip": 1.5}, ["flip", "[0, 1]"]),
        ({"flip": -0.1}, ["flip", "[0, 1]"]),
        ({"sigma": -0.1}, ["sigma", ">= 0"]),
        ({"amplitude": -1.0}, ["amplitude", ">= 0"]),
        ({"offset": float("nan")}, ["offset", "finite"]),
        ({"sigma": float("inf")}, ["sigma", "finite"]),
        ({"flip": True}, ["flip"]),
        ({"sigma": 0.0, "amplitude": 0.0}, ["sigma", "amplitude", "both 0"]),
        ({"accessible": 1}, ["accessible"]),
    ],
)
def test_options_validated(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(UnigradError) as info:
        StochasticMTJ(**kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (kwargs, msg)


def test_spec_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(NOISES, StochasticMTJ.name, StochasticMTJ)
    for proc in (StochasticMTJ(), StochasticMTJ(0.25, 0.0, 1.0, -3.5, accessible=True)):
        assert make_noise(proc.spec) == proc
        assert make_noise(proc.spec).accessible is proc.accessible
        assert type(proc)(**proc.option_values(), accessible=proc.accessible) == proc
    assert StochasticMTJ().spec == "smtj:sigma=0:amplitude=0.0059:flip=0.0809:offset=0.042:accessible=false"
    assert type(make_noise(StochasticMTJ.example)) is StochasticMTJ
