"""LIFNetwork: the surrogate derivative against its formula, the membrane and readout recursions, silence without
drive, the analytic firing of a driven neuron, BPTT on a rate-coding task, intrinsic noise and estimator use."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.func import functional_call, grad, vmap

import unigrad
from tests.bio.test_rate_rnn import StandIn, randn
from unigrad import UnigradError
from unigrad.bio import LIFNetwork
from unigrad.bio.lif import spike
from unigrad.core.rng import generator

F64 = torch.float64


@pytest.mark.parametrize("slope", [1.0, 10.0, 25.0])
def test_surrogate_gradient_is_the_fast_sigmoid_derivative(slope: float) -> None:
    x = torch.linspace(-2, 2, 41, dtype=F64).requires_grad_()
    w = randn(41, seed=1)
    s = spike(x, slope)
    assert torch.equal(s, (x >= 0).to(F64))
    (g,) = torch.autograd.grad((w * s).sum(), x)
    # float64, ≲ 4 roundings on each side (|x|, ·k, +1, ², ÷): relative ≲ 8·1.1e-16 ≈ 1e-15 < 1e-14
    assert torch.allclose(g, w / (1 + slope * x.detach().abs()) ** 2, rtol=1e-14, atol=0)
    # the same derivative under torch.func transforms (vmap of grad)
    g_func = vmap(grad(lambda xi: spike(xi, slope)))(x.detach())
    assert torch.allclose(g_func, 1 / (1 + slope * x.detach().abs()) ** 2, rtol=1e-14, atol=0)


@pytest.mark.parametrize("detach_reset", [True, False])
def test_bptt_through_two_steps_is_the_hand_chain_rule(detach_reset: bool) -> None:
    k, theta = 4.0, 1.0
    m = LIFNetwork(1, 1, 1, tau_mem=10.0, tau_out=5.0, surrogate_slope=k, detach_reset=detach_reset, dtype=F64)
    with torch.no_grad():
        m.inp.weight.fill_(3.0)
        m.rec.weight.zero_()
        m.out.weight.fill_(0.7)
    tr = m.run(torch.full((2, 1, 1), 0.5, dtype=F64))
    (db,) = torch.autograd.grad(tr.outputs[1, 0, 0], m.inp.bias)
    beta, beta_out = math.exp(-0.1), math.exp(-0.2)
    v1 = (1 - beta) * 1.5
    v2 = beta * v1 + (1 - beta) * 1.5  # no spike at step 1, so no reset
    v = tr.v.detach()[:, 0, 0]
    # float64 with the model's own β = math.exp(−0.1): v1 is the same product, v2 a few roundings off (≲ 1e-15)
    assert float(v[1]) == pytest.approx(v1, rel=1e-14) and float(v[2]) == pytest.approx(v2, rel=1e-14)
    ds1 = (1 - beta) / (1 + k * abs(v1 - theta)) ** 2
    dv2 = beta * (1 - beta) + (1 - beta) - (0.0 if detach_reset else theta * ds1)  # the reset's surrogate path
    ds2 = dv2 / (1 + k * abs(v2 - theta)) ** 2
    expected = beta_out * (1 - beta_out) * 0.7 * ds1 + (1 - beta_out) * 0.7 * ds2
    # ~30 float64 operations on each side and no cancellation (each summand is positive): ≲ 1e-14 relative
    assert float(db) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_membrane_and_readout_recursions(reset: str) -> None:
    m = LIFNetwork(4, 12, 3, tau_mem=8.0, tau_out=6.0, dt=1.0, threshold=0.8, reset=reset, gain=3.0, seed=2, dtype=F64)
    with torch.no_grad():
        m.inp.weight.mul_(6.0)
        m.inp.bias.copy_(0.3 * randn(12, seed=3))
        m.out.bias.copy_(randn(3, seed=4))
    u, xi = randn(30, 5, 4, seed=5), 0.2 * randn(30, 5, 12, seed=6)
    tr = m.run(u, xi)
    v, s = tr.v.detach(), tr.spikes.detach()
    # v stays ≥ 2e-5 from θ (measured), far beyond rounding: the spike pattern (mean 0.09 / 0.08) is machine-free
    assert set(s.unique().tolist()) == {0.0, 1.0} and 0.05 < float(s.mean()) < 0.6
    # the model's spikes are this comparison of its own v: bitwise
    assert torch.equal(s, (v >= 0.8).to(F64)) and float(s[0].abs().sum()) == float(v[0].abs().sum()) == 0.0
    beta, beta_out = math.exp(-1 / 8), math.exp(-1 / 6)
    drive = (1 - beta) * (u @ m.inp.weight.detach().T + m.inp.bias.detach() + s[:-1] @ m.rec.weight.detach().T)
    if reset == "subtract":
        resid = v[1:] - beta * v[:-1] - drive + 0.8 * s[:-1]
    else:
        resid = v[1:] - beta * v[:-1] * (1 - s[:-1]) - drive
    # float64, the drive recomputed in another order: ≲ 2·22 roundings of terms of size ≤ 13 (measured) per entry,
    # 44·1.1e-16·13 ≈ 6e-14 < 1e-13
    assert torch.allclose(resid, xi, rtol=0, atol=1e-13)
    z = (1 - beta_out) * (s[1:] @ m.out.weight.detach().T + m.out.bias.detach())
    o = torch.zeros(5, 3, dtype=F64)
    # float64: z's 13-term sums recomputed in another order, the error damped by β_out each step: a bound of
    # Σ_k β_out^(t−k)·(15 + 2)·eps64·|terms_k| stays below 0.1 of rtol·|o| + atol (computed along this trajectory)
    for t in range(30):
        o = beta_out * o + z[t]
        assert torch.allclose(tr.outputs[t], o, rtol=1e-13, atol=1e-14)
    assert torch.equal(m(u, xi), tr.outputs)  # forward is run(...).outputs: the same ops


def test_silent_without_input_or_noise() -> None:
    m = LIFNetwork(3, 20, 2, gain=5.0, seed=7)  # strong random recurrence, zero biases
    with torch.no_grad():
        tr = m.run(torch.zeros(50, 4, 3))
    # exact: with zero input, bias and state every term is 0·w = 0
    assert float(tr.spikes.sum()) == 0.0 and float(tr.v.abs().max()) == 0.0 and float(tr.outputs.abs().max()) == 0.0


@pytest.mark.parametrize(("current", "tau", "dt"), [(1.5, 20.0, 1.0), (3.2, 20.0, 1.0), (1.1, 10.0, 0.5)])
def test_constant_drive_fires_at_the_analytic_rate(current: float, tau: float, dt: float) -> None:
    # v_n = I(1 − βⁿ) from rest, so the first spike is at n* = ⌈ln(1 − θ/I)/ln β⌉ = ⌈τ ln(I/(I − θ))/dt⌉ steps
    # τ ln(I/(I − θ))/dt is 21.97, 7.49 and 47.96 here, so v(n*) clears θ by ≥ 2e-4 and v(n* − 1) misses it by
    # ≥ 4e-3: float64 rounding (≲ 1e-14) cannot move the crossing; after a "zero" reset v restarts from exactly 0,
    # so the same ops repeat and the spike train is exactly periodic
    n_star = math.ceil(math.log(1 - 1 / current) / math.log(math.exp(-dt / tau)))
    assert n_star == math.ceil(tau * math.log(current / (current - 1)) / dt)
    T = 12 * n_star + 3
    for reset in ("zero", "subtract"):
        m = LIFNetwork(1, 1, 1, tau_mem=tau, dt=dt, reset=reset, seed=0, dtype=F64)
        with torch.no_grad():
            m.inp.weight.fill_(current)
            m.rec.weight.zero_()
        s = m.run(torch.ones(T, 1, 1, dtype=F64)).spikes[:, 0, 0]
        times = torch.nonzero(s).flatten().tolist()
        assert times[0] == n_star
        if reset == "zero":  # back to rest after each spike: periodic with period n*, rate 1/(n*·dt)
            assert times == list(range(n_star, T + 1, n_star))
    weak = LIFNetwork(1, 1, 1, tau_mem=tau, dt=dt, seed=0, dtype=F64)
    with torch.no_grad():
        weak.inp.weight.fill_(0.99)  # I < θ: v → I never reaches threshold
    assert float(weak.run(torch.ones(400, 1, 1, dtype=F64)).spikes.detach().sum()) == 0.0


def mean_firing(T: int = 40, B: int = 32, n_in: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Bernoulli spike trains with a rate p per trial; the target is 4p (read out after a warm-up)."""
    g = generator(3, 2)
    p = 0.05 + 0.35 * torch.rand(B, generator=g)
    spikes = (torch.rand(T, B, n_in, generator=g) < p[None, :, None]).float()
    return spikes, (4 * p)[None, :, None].expand(T, B, 1)


def test_bptt_learns_to_read_out_the_input_rate() -> None:
    u, y = mean_firing()
    m = LIFNetwork(20, 32, 1, tau_mem=10.0, tau_out=10.0, seed=0)
    with torch.no_grad():
        m.inp.weight.mul_(8.0)
    objective = unigrad.objective(lambda model: (model(u) - y)[15:].square().mean(dim=(0, 2)), n_samples=32)
    est, opt = unigrad.make_estimator("backprop"), torch.optim.Adam(m.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        losses.append(est.estimate(m, objective).loss)
        opt.step()
    with torch.no_grad():
        final = float(objective(m).mean())
    best_constant = float(y[0].var())  # what an output ignoring the input achieves at best
    # measured final/best_constant 0.11 and final/losses[0] 0.033 (0.09–0.11 and 0.017–0.033 over init seeds 0–5,
    # unchanged when the initial weights are perturbed by 1 ulp): both thresholds are > 25 SDs of that spread away
    assert final < 0.3 * best_constant and final < 0.1 * losses[0], (losses[0], final, best_constant)
    assert 0.0 < float(m.run(u).spikes.detach().mean()) < 0.5  # 0.066 (0.058–0.078 over seeds 0–5)


def test_intrinsic_noise_and_trial_state() -> None:
    noise = StandIn(0.5, accessible=False)
    m = LIFNetwork(2, 8, 1, seed=9, intrinsic=noise)
    u = torch.zeros(30, 3, 2)
    a, b = m.run(u), m.run(u)
    assert noise.calls == [(9, 0, 0, 1.0), (9, 1, 0, 1.0)] and not a.noise_accessible
    # the bitwise equalities below replay the same generator keys and the same ops
    assert torch.equal(a.noise, noise.sequence(30, (3, 8), seed=9, trial=0))
    assert float(a.spikes.detach().sum()) > 0 and not torch.equal(a.spikes, b.spikes)  # noise alone makes it fire
    other = LIFNetwork(2, 8, 1, seed=9, intrinsic=StandIn(0.5))
    other.load_state_dict(m.state_dict())
    assert other.trial == 2 and torch.equal(other.run(u).v, m.run(u).v)
    m.trial = 0
    assert torch.equal(m.run(u).v, a.v)


def test_functional_call_and_spsa() -> None:
    m = LIFNetwork(3, 10, 2, seed=10)
    with torch.no_grad():
        m.inp.weight.mul_(5.0)
    u = (torch.rand(20, 4, 3, generator=generator(1, 1)) < 0.3).float()
    params = m.named_parameters()
    shifted = {n: p.detach() + 0.2 * randn(*p.shape, seed=i, dtype=p.dtype) for i, (n, p) in enumerate(params)}
    clone = copy.deepcopy(m)
    clone.load_state_dict({**clone.state_dict(), **shifted})
    assert torch.equal(functional_call(m, shifted, (u,)), clone(u))  # the same parameter values, the same ops
    target = torch.full((20, 4, 2), 0.1)
    objective = unigrad.objective(lambda model: (model(u) - target).square().mean(dim=(0, 2)), n_samples=4)
    before = [p.detach().clone() for p in m.parameters()]
    e = unigrad.make_estimator("spsa", probes=4, sigma=0.05).estimate(m, objective)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))
    assert math.isfinite(e.loss) and all(bool(p.grad.isfinite().all()) for p in m.parameters())
    assert float(sum(p.grad.abs().sum() for p in m.parameters())) > 0


def test_bad_options() -> None:
    for kwargs, match in [
        ({"tau_mem": 0.0}, "tau_mem"),
        ({"tau_out": -1.0}, "tau_out"),
        ({"dt": 0.0}, "dt"),
        ({"threshold": 0.0}, "threshold"),
        ({"surrogate_slope": float("nan")}, "surrogate_slope"),
        ({"reset": "none"}, "reset"),
        ({"gain": -0.5}, "gain"),
        ({"seed": 1.5}, "seed"),
        ({"dtype": torch.int64}, "dtype"),
    ]:
        with pytest.raises(UnigradError, match=match):
            LIFNetwork(2, 4, 1, **kwargs)
    with pytest.raises(UnigradError, match="must be an integer"):
        LIFNetwork(2, 0, 1)
    with pytest.raises(UnigradError, match="time first"):
        LIFNetwork(2, 4, 1)(torch.zeros(5, 3, 3))
