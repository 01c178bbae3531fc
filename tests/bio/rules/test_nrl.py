"""NRL: the trace's geometric decay and its closed form, no update at the baseline, the expected update is the
policy gradient of E[(R − R̄)/|R|] on a contextual bandit, CartPole improves, contract and bad options."""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest
import torch
from torch import nn

from tests.problems import Problem, assert_contract, assert_mean_matches, cosine, flat_grad
from unigrad import UnigradError, supervised
from unigrad.bio.control import ControlTask, EpisodeObjective, evaluate, policy_mlp
from unigrad.bio.rules.nrl import NRL
from unigrad.core.rng import generator
from unigrad.noise import WhiteGaussian


class Bandit(gymnasium.Env):
    """A contextual bandit: one of four contexts (uniform), two actions, a fixed positive reward table."""

    CONTEXTS = np.array([[1.0, 0.5, -0.3], [-0.8, 1.0, 0.2], [0.3, -1.2, 0.9], [0.6, 0.4, 1.1]], dtype=np.float32)
    REWARDS = np.array([[1.0, 2.0], [1.5, 0.5], [0.7, 1.8], [2.0, 1.2]])
    observation_space = gymnasium.spaces.Box(-5.0, 5.0, (3,), np.float32)
    action_space = gymnasium.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.context = int(self.np_random.integers(4))
        return self.CONTEXTS[self.context].copy(), {}

    def step(self, action):
        return self.CONTEXTS[self.context].copy(), float(self.REWARDS[self.context, action]), True, False, {}


def bandit_value(model: nn.Module, utility) -> torch.Tensor:
    """``(1/4) Σ_s Σ_a π(a|s)·utility(r(s, a))``: the exact expectation over contexts and actions."""
    probs = torch.softmax(model(torch.from_numpy(Bandit.CONTEXTS).to(torch.float64)), dim=1)
    return (probs * utility(torch.from_numpy(Bandit.REWARDS))).sum(1).mean()


def exact_grad(model: nn.Module, utility) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(bandit_value(model, utility), params)])


class Corridor(gymnasium.Env):
    """``length`` steps whatever the actions, reward 1 per step; observation ``t`` from ``observe(t)``."""

    observation_space = gymnasium.spaces.Box(-5.0, 5.0, (3,), np.float32)
    action_space = gymnasium.spaces.Discrete(2)

    def __init__(self, length: int, observe) -> None:
        self.length, self.observe = length, observe

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observe(0), {}

    def step(self, action):
        self.t += 1
        return self.observe(self.t), 1.0, self.t >= self.length, False, {}


def linear_policy(seed: int = 0) -> nn.Sequential:
    layer = nn.Linear(3, 2, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(2, 3, generator=generator(seed, 77), dtype=torch.float64))
    return nn.Sequential(layer)


def test_trace_decays_as_gamma_to_the_k_and_matches_its_closed_form() -> None:
    x0 = np.array([0.5, -1.0, 2.0], dtype=np.float32)

    def first_only(t: int) -> np.ndarray:
        return x0.copy() if t == 0 else np.zeros(3, dtype=np.float32)  # no presynaptic input after step 0

    sigma, gamma = 0.05, 0.7
    grads = {}
    for length in (1, 5):
        task = ControlTask(lambda length=length: Corridor(length, first_only), max_steps=8)
        for g in (gamma, 1.0):
            model = linear_policy()
            est = NRL(sigma=sigma, gamma=g)
            est.baseline = length / 2.0  # RPE = (R − R/2)/R = 1/2 for both lengths
            est.estimate(model, EpisodeObjective(task, seed=0, episode=0))
            grads[length, g] = model[0].weight.grad.clone()
    # float64. Only step 0 has input (later steps add exact zeros) and the RPE is 1/2 exactly for both lengths; the
    # 5-row and 1-row policy passes may round the 3-term logits differently (≲ 3·eps64·4), which the log-ratio's
    # difference (|Δ log π| ≥ 0.012 measured) turns into ≲ 5e-13 relative; γ⁴ from torch's and Python's pow: ≤ 1 ulp
    assert torch.allclose(grads[5, gamma], gamma**4 * grads[1, gamma], rtol=1e-10, atol=0)
    assert torch.allclose(grads[5, 1.0], grads[1, 1.0], rtol=1e-10, atol=0)
    assert torch.equal(grads[1, gamma], grads[1, 1.0])  # one step: the decay is γ⁰ = 1 exactly, the same ops
    # one step: grad = −N·RPE·[log π̃(a) − log π(a)]·ε/‖ε‖²·x0ᵀ with N = 2 output units, RPE = 1/2
    eps = WhiteGaussian(sigma).sequence(8, (2,), seed=0, trial=0, stream=0, dtype=torch.float64)[0]
    model = linear_policy()
    x = torch.from_numpy(x0).double()
    with torch.no_grad():
        clean = torch.log_softmax(model(x[None])[0], 0)
        noisy = torch.log_softmax(model(x[None])[0] + eps, 0)
    candidates = [-2 * 0.5 * (noisy[a] - clean[a]) * torch.outer(eps / eps.square().sum(), x) for a in (0, 1)]
    # float64 on both sides; the log-ratio's cancellation (|log π| ≤ 2.3, |Δ| ≥ 0.012) costs ≲ 200·eps64 ≈ 4e-14
    # relative, so rtol = 1e-6 is loose
    assert any(torch.allclose(grads[1, gamma], c, rtol=1e-6, atol=1e-12) for c in candidates)


def test_no_update_when_the_return_equals_the_baseline() -> None:
    def wave(t: int) -> np.ndarray:
        return np.sin(np.arange(3) + t).astype(np.float32)

    task = ControlTask(lambda: Corridor(6, wave), max_steps=10)  # return 6 whatever the policy does
    model = policy_mlp(3, 2, (5,), seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    est = NRL(sigma=0.1)
    for k in range(3):  # the first call starts R̄ at the first return; then R = R̄ every time
        opt.zero_grad()
        out = est.estimate(model, EpisodeObjective(task, seed=0, episode=k))
        assert out.info["rpe"] == [0.0] and out.info["mean_abs_log_ratio"] > 0
        assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())
        opt.step()
    assert est.baseline == 6.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("action_from", ["clean", "noisy"])
def test_mean_update_is_the_policy_gradient_of_the_scaled_rpe_on_a_bandit(action_from: str) -> None:
    """With N_l = all noisy units, E[grad] = −∇ E[(R − b)/|R|] up to O(σ²) (isotropic noise: E[εεᵀ/‖ε‖²] = I/n)."""
    task = ControlTask(Bandit, max_steps=1)
    model = policy_mlp(3, 2, (6,), seed=4).double()
    b = 1.3
    est = NRL(sigma=1e-3, normalization="total", action_from=action_from, seed=1)
    samples = []
    for k in range(300):
        est.baseline = b
        est.estimate(model, EpisodeObjective(task, seed=2, episode=k, episodes=16))
        samples.append(flat_grad(model))
    samples = torch.stack(samples)
    target = -exact_grad(model, lambda r: (r - b) / r.abs())
    # 5 SE (the O(σ²) = 1e-6 bias is far below the SE); cosine measured 0.993 (0.988–0.993 over seeds 0–3)
    assert_mean_matches(samples, target, k=5.0)
    assert cosine(samples.mean(0), target) > 0.95


def test_default_normalisation_still_points_up_the_expected_reward() -> None:
    """The paper's per-layer N_l rescales layers; the mean update keeps a clear positive cosine with −∇E[R]."""
    task = ControlTask(Bandit, max_steps=1)
    model = policy_mlp(3, 2, (6,), seed=4).double()
    est = NRL(sigma=1e-3, seed=3)
    samples = []
    for k in range(300):
        est.baseline = 1.3
        est.estimate(model, EpisodeObjective(task, seed=5, episode=k, episodes=16))
        samples.append(flat_grad(model))
    samples = torch.stack(samples)
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(len(samples))
    true = -exact_grad(model, lambda r: r)
    c = cosine(mean, true)
    # error bar of the projection onto the true direction: more than 5 standard errors above zero
    v = true / true.norm()
    z = samples @ v
    assert float(z.mean()) > 5 * float(z.std() / math.sqrt(len(z))), (float(z.mean()), float(z.std()))
    assert c > 0.6, (c, float(se.norm()))  # 21 SE and cosine 0.80 measured (19.5–21 SE, 0.79–0.81 over seeds 0–3)


def test_cartpole_return_improves_well_above_a_random_policy() -> None:
    task = ControlTask("cartpole", max_steps=150)
    model = policy_mlp(4, 2, (64,), activation="leaky_relu", bias=False, seed=0)  # the paper's network
    before = evaluate(model, task, 20, seed=9, greedy=False)
    est = NRL(seed=0)  # σ = 1e-3, γ = 1, γ_avg = 0.66, N_l = layer width
    opt = torch.optim.SGD(model.parameters(), lr=2e-2)
    returns = []
    for k in range(400):
        opt.zero_grad()
        returns += est.estimate(model, EpisodeObjective(task, seed=0, episode=k)).info["returns"]
        opt.step()
    # measured: before 25.3 (a forward pass of the seed-0 network with keyed sampling: 20–25.5 over seeds 0–5); the
    # last 100 returns 58.7 and the evaluation 71.6 (55–59 and 69–76 over three 1-ulp perturbations of the initial
    # weights, SDs 1.6 and 3, so ≥ 9 SDs above 40; over seeds 0–5, 42–60 and 56–80, every seed above 40)
    assert before < 30  # a random-looking start (a uniformly random policy averages about 22)
    assert sum(returns[-100:]) / 100 > 40, (before, sum(returns[-100:]) / 100)
    assert evaluate(model, task, 20, seed=9, greedy=False) > 40


def test_contract_cost_and_resume() -> None:
    task = ControlTask("cartpole", max_steps=40)
    model = policy_mlp(4, 2, (8,), seed=0)
    problem = Problem(model, EpisodeObjective(task, seed=0, episode=0, episodes=2), "cartpole")
    assert_contract(lambda seed: NRL(sigma=0.01, seed=seed), problem)
    est = NRL(seed=0)
    out = est.estimate(model, problem.objective)
    assert out.cost.forwards == 2 * out.info["steps"] == 2 * sum(out.info["returns"])
    # exact: integer returns, and the baseline is the same Python float expression (correctly rounded on any machine)
    assert out.cost.backwards == 0 and out.loss == -sum(out.info["returns"]) / 2
    state = est.state_dict()
    assert state["baseline"] == out.info["returns"][0] + 0.66 * (out.info["returns"][1] - out.info["returns"][0])
    resumed = NRL(seed=0)
    resumed.load_state_dict(state)
    assert resumed.baseline == est.baseline and resumed.step == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma": 0.0},
        {"sigma": -1.0},
        {"sigma": float("nan")},
        {"sigma": True},
        {"gamma": 1.5},
        {"gamma": -0.1},
        {"gamma_avg": 0.0},
        {"normalization": "batch"},
        {"rpe_scale": "std"},
        {"action_from": "both"},
        {"noise": "release:p=0.5"},
        {"noise": "gaussian:sigma=0.1:accessible=false"},
        {"noise": "pink:sigma=1"},
        {"seed": -1},
    ],
)
def test_bad_options_are_refused(kwargs: dict) -> None:
    with pytest.raises(UnigradError):
        NRL(**kwargs)


def test_bad_models_and_objectives_are_refused() -> None:
    task = ControlTask("cartpole", max_steps=10)
    obj = EpisodeObjective(task, seed=0, episode=0)
    with pytest.raises(UnigradError, match="EpisodeObjective"):
        NRL().estimate(nn.Linear(4, 2), supervised(nn.functional.mse_loss, torch.zeros(3, 4), torch.zeros(3, 2)))
    with pytest.raises(UnigradError, match=r"nn\.Linear"):
        NRL().estimate(nn.Sequential(nn.Linear(4, 2), nn.LayerNorm(2)), obj)
    assert NRL(noise="ou:sigma=0.01:tau=5").noise == "ou:sigma=0.01:tau=5"
