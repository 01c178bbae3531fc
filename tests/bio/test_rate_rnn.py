"""RateRNN: the Euler equations by hand, the linear closed form, where the noise enters, intrinsic noise keyed
by (seed, trial) and saved with the state, BPTT on a delayed copy, and functional_call / SPSA compatibility."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call

import unigrad
from unigrad import UnigradError
from unigrad.bio import RateRNN
from unigrad.core.probe import _NO_FAST_PATH
from unigrad.core.rng import generator

F64 = torch.float64


class StandIn:
    """White Gaussian noise with the NoiseProcess ``sequence`` signature, keyed by (seed, trial, stream)."""

    def __init__(self, sigma: float, accessible: bool = True) -> None:
        self.sigma, self.accessible = sigma, accessible
        self.calls: list[tuple[int, int, int, float]] = []

    def sequence(self, steps, shape, *, seed, trial, stream=0, dt=1.0, dtype=torch.float32, device="cpu"):
        self.calls.append((seed, trial, stream, dt))
        g = generator(seed, trial, stream, 0x5EED)
        return self.sigma * torch.randn((steps, *shape), generator=g, dtype=dtype, device=device)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(shape, generator=generator(seed, 99), dtype=dtype)


def with_biases(model: RateRNN, seed: int = 1) -> RateRNN:
    with torch.no_grad():
        model.inp.bias.copy_(randn(model.n_rec, seed=seed, dtype=model.inp.bias.dtype))
        model.out.bias.copy_(randn(model.n_out, seed=seed + 1, dtype=model.out.bias.dtype))
    return model


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_steps_match_hand_formula(activation: str) -> None:
    m = with_biases(RateRNN(3, 7, 2, tau=50.0, dt=10.0, activation=activation, seed=4, dtype=F64))
    u = randn(4, 5, 3, seed=2)
    traj = m.run(u)
    a, phi = 0.2, (torch.tanh if activation == "tanh" else torch.relu)
    W, Win, b, Wout, bout = (t.detach() for t in (m.rec.weight, m.inp.weight, m.inp.bias, m.out.weight, m.out.bias))
    x = torch.zeros(5, 7, dtype=F64)
    assert torch.equal(traj.x[0], x) and torch.equal(traj.r[0], phi(x))
    # float64, the same sums in another order: each step rounds ≲ 12 terms of size ≤ 3.6 (measured) on each side,
    # the error carried on through |1 − α| + α|W| over 4 steps; that bound (≤ 8e-14 on x, r and the outputs) is
    # below atol = 1e-13 (an entry near 0 gets no help from rtol)
    for t in range(4):
        x = (1 - a) * x + a * (phi(x) @ W.T + u[t] @ Win.T + b)
        assert torch.allclose(traj.x[t + 1], x, rtol=1e-13, atol=1e-13)
        assert torch.allclose(traj.r[t + 1], phi(x), rtol=1e-13, atol=1e-13)
        assert torch.allclose(traj.outputs[t], phi(x) @ Wout.T + bout, rtol=1e-13, atol=1e-13)
    assert traj.noise is None and traj.inputs is u
    assert torch.equal(m(u), traj.outputs)  # forward is exactly run(...).outputs


def test_linear_regime_is_the_exact_discrete_linear_system() -> None:
    # relu with non-negative weights, bias and input keeps every state >= 0, so φ is the identity and
    # x_t = (I − A)⁻¹ (I − Aᵗ) c with A = (1−α)I + αW_rec, c = α(W_in u + b) (a geometric series)
    n, a = 6, 0.25
    m = RateRNN(2, n, 1, tau=80.0, dt=20.0, activation="relu", seed=3, dtype=F64)
    with torch.no_grad():
        w = randn(n, n, seed=5).abs()
        m.rec.weight.copy_(0.9 * w / torch.linalg.eigvals(w).abs().max())  # spectral radius 0.9
        m.inp.weight.copy_(randn(n, 2, seed=6).abs())
        m.inp.bias.copy_(randn(n, seed=7).abs())
    u0 = torch.tensor([0.3, 1.2], dtype=F64)
    T = 25
    traj = m.run(u0.expand(T, 1, 2))
    A = (1 - a) * torch.eye(n, dtype=F64) + a * m.rec.weight.detach()
    c = a * (m.inp.weight.detach() @ u0 + m.inp.bias.detach())
    inv = torch.linalg.inv(torch.eye(n, dtype=F64) - A)
    # float64: κ(I − A) = 14, ‖A‖₂ = 0.99, |x| ≤ 8.2; the closed form errs by ≲ κ·6·eps64·8 ≈ 1.5e-13 and the
    # recursion by ≲ 25 steps·10 terms·eps64·8 ≈ 4.4e-13, both below atol = 1e-12 (and rtol·|x| grows with x)
    for t in range(T + 1):
        exact = inv @ (torch.eye(n, dtype=F64) - torch.linalg.matrix_power(A, t)) @ c
        assert torch.allclose(traj.x[t, 0], exact, rtol=1e-11, atol=1e-12), t
    assert bool((traj.x >= 0).all())


def test_noise_enters_after_the_leak() -> None:
    m = with_biases(RateRNN(2, 5, 1, tau=60.0, dt=20.0, seed=8, dtype=F64))
    u, xi = randn(6, 3, 2, seed=9), 0.3 * randn(6, 3, 5, seed=10)
    clean, noisy = m.run(u), m.run(u, xi)
    # x₁ = c + ξ₀ against c (x₀ = 0): (c + ξ₀) − c rounds twice at |c| + |ξ₀| ≤ 0.8, ≲ 2·1.1e-16·0.8 < 1e-15
    assert torch.allclose(noisy.x[1] - clean.x[1], xi[0], rtol=0, atol=1e-15)
    assert noisy.noise is xi and noisy.noise_accessible
    # every later step obeys the noisy recursion exactly: the residual of the deterministic part is ξ_t
    a, W, Win, b = 1 / 3, m.rec.weight.detach(), m.inp.weight.detach(), m.inp.bias.detach()
    resid = noisy.x[1:] - (1 - a) * noisy.x[:-1] - a * (noisy.r[:-1] @ W.T + u @ Win.T + b)
    # float64, ≲ 2·12 roundings of terms of size ≤ 4.4 (measured) per entry: 24·1.1e-16·4.4 ≈ 1.2e-14 < 5e-14
    assert torch.allclose(resid, xi, rtol=0, atol=5e-14)
    # the propagated noise moves x by up to 1.07 (measured), far outside allclose's default tolerance
    assert not torch.allclose(noisy.x[2:], clean.x[2:] + xi[1:])  # the noise propagates through the dynamics


def test_intrinsic_noise_is_keyed_by_seed_and_trial() -> None:
    noise = StandIn(0.2)
    m = RateRNN(2, 6, 1, seed=11, intrinsic=noise)
    u = randn(5, 4, 2, seed=12, dtype=torch.float32)
    assert m.trial == 0
    first, second = m.run(u), m.run(u)
    assert m.trial == 2 and noise.calls == [(11, 0, 0, 20.0), (11, 1, 0, 20.0)]
    # the bitwise equalities here replay the same generator keys through the same ops (an addition commutes exactly)
    assert torch.equal(first.noise, noise.sequence(5, (4, 6), seed=11, trial=0))
    assert not torch.equal(first.noise, second.noise) and not torch.equal(first.x, second.x)
    m.trial = 0
    again = m.run(u)
    assert torch.equal(again.x, first.x) and torch.equal(again.outputs, first.outputs)
    # passed noise and intrinsic noise add up; forward draws (and advances) too
    extra = randn(5, 4, 6, seed=13, dtype=torch.float32)
    m.trial = 1
    both = m.run(u, extra)
    assert torch.equal(both.noise, extra + second.noise)
    m(u)
    assert m.trial == 3
    hidden = RateRNN(2, 6, 1, seed=11, intrinsic=StandIn(0.2, accessible=False)).run(u)
    assert not hidden.noise_accessible and torch.equal(hidden.x, first.x)


def test_trial_counter_is_saved_and_restored() -> None:
    m = RateRNN(2, 6, 1, seed=14, intrinsic=StandIn(0.1))
    u = randn(4, 3, 2, seed=15, dtype=torch.float32)
    for _ in range(3):
        m.run(u)
    state = m.state_dict()
    assert int(state["trial_counter"]) == 3
    other = RateRNN(2, 6, 1, seed=14, intrinsic=StandIn(0.1))
    other.load_state_dict(state)
    assert other.trial == 3
    assert torch.equal(other.run(u).x, m.run(u).x)
    m.double()  # a dtype change leaves the integer counter alone
    assert m.trial_counter.dtype == torch.int64 and m.trial == 4
    with pytest.raises(UnigradError, match="trial"):
        m.trial = -1


def test_seeded_init_statistics_and_global_rng_untouched() -> None:
    state = torch.random.get_rng_state()
    m = RateRNN(50, 400, 30, gain=1.5, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    # the sample std of N Gaussian draws has relative SE 1/√(2N): 0.0018, 0.005 and 0.0065 for the 160,000,
    # 20,000 and 12,000 weights, so the tolerances are 11, 6 and 4.6 SE
    assert m.rec.weight.std().item() == pytest.approx(1.5 / 20, rel=0.02)
    assert m.inp.weight.std().item() == pytest.approx(50**-0.5, rel=0.03)
    assert m.out.weight.std().item() == pytest.approx(400**-0.5, rel=0.03)
    assert float(m.inp.bias.detach().abs().max()) == float(m.out.bias.detach().abs().max()) == 0.0
    same, other = RateRNN(50, 400, 30, gain=1.5, seed=3), RateRNN(50, 400, 30, gain=1.5, seed=4)
    assert torch.equal(same.rec.weight, m.rec.weight) and not torch.equal(other.rec.weight, m.rec.weight)


def test_float32_is_the_rounded_float64_model() -> None:
    m32, m64 = RateRNN(3, 20, 2, seed=5), RateRNN(3, 20, 2, seed=5, dtype=F64)
    assert torch.equal(m32.rec.weight, m64.rec.weight.float())
    u = randn(10, 4, 3, seed=6)
    out32, out64 = m32(u.float()), m64(u)
    assert out32.dtype == torch.float32 and out64.dtype == F64
    # float32 rounding: ≲ 27 roundings of eps32 per unit and step (terms of size ≤ 2.3), carried on by the Jacobians
    # (‖W‖₂ = 3 at gain 1.5) over 10 steps: a first-order bound of 2.5e-4 on the outputs (measured error 1.5e-7)
    assert torch.allclose(out32.double(), out64, rtol=0, atol=5e-4)


def delayed_copy(T: int = 30, B: int = 32, delay: int = 3, hold: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Piecewise-constant scalar input; target: the input ``delay`` steps earlier."""
    levels = torch.randn(T // hold + 1, B, 1, generator=generator(5, 1))
    u = levels.repeat_interleave(hold, 0)[:T]
    y = torch.zeros_like(u)
    y[delay:] = u[:-delay]
    return u, y


def test_bptt_learns_a_delayed_copy() -> None:
    u, y = delayed_copy()
    m = RateRNN(1, 32, 1, tau=40.0, dt=20.0, seed=0)
    objective = unigrad.objective(lambda model: (model(u) - y)[3:].square().mean(dim=(0, 2)), n_samples=32)
    est, opt = unigrad.make_estimator("backprop"), torch.optim.Adam(m.parameters(), lr=0.02)
    losses = []
    for _ in range(50):
        opt.zero_grad()
        losses.append(est.estimate(m, objective).loss)
        opt.step()
    with torch.no_grad():
        final = float(objective(m).mean())
    best_constant = float(y[3:].var())  # what ignoring the input achieves
    # measured final/best_constant 0.078 and final/losses[0] 0.067 (0.054–0.10 and 0.035–0.145 over init seeds 0–5,
    # SDs 0.016 and 0.043; unchanged when the initial weights are perturbed by 1 ulp): 4.5 and 5 SDs of margin
    assert final < 0.3 * losses[0] and final < 0.15 * best_constant, (losses[0], final, best_constant)


def test_functional_call_and_spsa() -> None:
    m = with_biases(RateRNN(2, 8, 2, tau=60.0, dt=20.0, seed=16, dtype=F64))
    u = randn(6, 4, 2, seed=17)
    shifted = {n: p.detach() + 0.1 * randn(*p.shape, seed=i) for i, (n, p) in enumerate(m.named_parameters())}
    copy_ = copy.deepcopy(m)
    copy_.load_state_dict({**copy_.state_dict(), **shifted})
    assert torch.equal(functional_call(m, shifted, (u,)), copy_(u))

    objective = unigrad.objective(lambda model: model(u).square().mean(dim=(0, 2)), n_samples=4)
    before = [p.detach().clone() for p in m.parameters()]
    e = unigrad.make_estimator("spsa", probes=1, sigma=1e-5, seed=3).estimate(m, objective)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))
    g_spsa = torch.cat([p.grad.flatten() for p in m.parameters()])
    assert e.cost.forwards == 2 * 4 and m not in _NO_FAST_PATH  # the linear fast path applied
    # one Rademacher probe: g = c·Δ with c = (f(θ+σΔ) − f(θ−σΔ))/2σ ≈ ∇f·Δ, so ∇f·g ≈ c² = |g_i|²
    for p in m.parameters():
        p.grad = None
    unigrad.make_estimator("backprop").estimate(m, objective)
    g_bp = torch.cat([p.grad.flatten() for p in m.parameters()])
    c2 = float(g_spsa.abs().mean()) ** 2
    # float64 central difference at σ = 1e-5: truncation σ²·|f‴|/6 and rounding eps64·|f|/σ ≈ 2e-11·|f|, both ≪ 1e-6·c²
    assert abs(float(g_bp @ g_spsa) - c2) < 1e-6 * c2 + 1e-12


def test_bad_options_and_inputs() -> None:
    for kwargs, match in [
        ({"tau": 0.0}, "tau"),
        ({"dt": -1.0}, "dt"),
        ({"dt": 30.0, "tau": 20.0}, "dt must be <= tau"),
        ({"activation": "sigmoid"}, "activation"),
        ({"gain": -1.0}, "gain"),
        ({"seed": -2}, "seed"),
        ({"dtype": torch.int32}, "dtype"),
        ({"intrinsic": 0.1}, "intrinsic"),
    ]:
        with pytest.raises(UnigradError, match=match):
            RateRNN(2, 4, 1, **kwargs)
    for sizes in [(0, 4, 1), (2, 4.0, 1), (2, 4, -1)]:
        with pytest.raises(UnigradError, match="must be an integer"):
            RateRNN(*sizes)
    m = RateRNN(2, 4, 1)
    with pytest.raises(UnigradError, match="time first"):
        m(torch.zeros(5, 2))
    with pytest.raises(UnigradError, match="noise must be"):
        m(torch.zeros(5, 3, 2), torch.zeros(5, 3, 3))
