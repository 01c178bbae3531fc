"""REINFORCE: unbiased for the exact policy gradient on a contextual bandit (with or without a baseline),
returns-to-go in closed form, CartPole learned quickly, contract, cost and bad options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.bio.rules.test_nrl import Bandit, exact_grad
from tests.problems import Problem, assert_contract, assert_mean_matches, flat_grad
from unigrad import UnigradError, supervised
from unigrad.bio.control import ControlTask, EpisodeObjective, evaluate, policy_mlp
from unigrad.bio.rules.reinforce import Reinforce


@pytest.mark.parametrize("baseline", ["running", "none"])
def test_mean_direction_is_minus_the_exact_policy_gradient_on_a_bandit(baseline: str) -> None:
    task = ControlTask(Bandit, max_steps=1)
    model = policy_mlp(3, 2, (6,), seed=4).double()
    est = Reinforce(discount=1.0, baseline=baseline, seed=0)
    samples = []
    for k in range(300):
        est.baseline_value = 1.3  # fixed before each update: independent of the update's own actions
        est.estimate(model, EpisodeObjective(task, seed=1, episode=k, episodes=16))
        samples.append(flat_grad(model))
    assert_mean_matches(torch.stack(samples), -exact_grad(model, lambda r: r), k=5.0)  # unbiased: 5 SE


def test_a_batch_baseline_or_normalisation_only_rescales_the_mean_a_little() -> None:
    """The batch-mean baseline and the std normalisation depend on the update's own returns (a small bias),
    yet the mean direction stays close to the exact gradient's."""
    task = ControlTask(Bandit, max_steps=1)
    model = policy_mlp(3, 2, (6,), seed=4).double()
    target = -exact_grad(model, lambda r: r)
    for est in (Reinforce(baseline="batch", seed=0), Reinforce(normalize=True, seed=0)):
        samples = []
        for k in range(200):
            est.baseline_value = 1.3
            est.estimate(model, EpisodeObjective(task, seed=1, episode=k, episodes=16))
            samples.append(flat_grad(model))
        mean = torch.stack(samples).mean(0)
        # measured cosines 0.993–1.000 for both over seeds 0–3
        assert float(mean @ target / (mean.norm() * target.norm())) > 0.9


def test_returns_to_go_closed_form() -> None:
    est = Reinforce(discount=0.9)
    g = est.returns_to_go(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    # float64, three terms: a few eps64, far inside allclose's defaults; the discount-1 sums of 1.0s are exact
    assert torch.allclose(g, torch.tensor([1 + 0.9 * 2 + 0.81 * 3, 2 + 0.9 * 3, 3.0], dtype=torch.float64))
    assert Reinforce(discount=1.0).returns_to_go(torch.ones(4, dtype=torch.float64)).tolist() == [4, 3, 2, 1]


def test_cartpole_is_learned_in_twenty_updates() -> None:
    task = ControlTask("cartpole", max_steps=200)
    model = policy_mlp(4, 2, (32,), seed=1)
    before = evaluate(model, task, 20, seed=9)
    est = Reinforce(normalize=True, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for k in range(20):
        opt.zero_grad()
        est.estimate(model, EpisodeObjective(task, seed=0, episode=k, episodes=4))
        opt.step()
    after = evaluate(model, task, 20, seed=9)
    # measured 9.0 → 167 (unchanged when the initial weights are perturbed by 1 ulp); over seeds 0–5 the start is
    # 9–27 and the end 75–200, every seed inside the bounds
    assert before < 30 and after > 60, (before, after)


def test_contract_cost_and_resume() -> None:
    task = ControlTask("cartpole", max_steps=40)
    model = policy_mlp(4, 2, (8,), seed=0)
    problem = Problem(model, EpisodeObjective(task, seed=0, episode=0, episodes=2), "cartpole")
    assert_contract(lambda seed: Reinforce(seed=seed), problem)
    est = Reinforce(seed=0)
    out = est.estimate(model, problem.objective)
    steps = out.info["steps"]
    assert steps == sum(out.info["returns"])
    assert (out.cost.forwards, out.cost.backwards) == (2 * steps, steps)  # integer counts: exact
    resumed = Reinforce(seed=0)
    resumed.load_state_dict(est.state_dict())
    assert resumed.baseline_value == est.baseline_value is not None and resumed.step == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"discount": 1.1},
        {"discount": -0.5},
        {"baseline": "critic"},
        {"baseline_rate": 0.0},
        {"baseline_rate": 2.0},
        {"normalize": "yes"},
        {"seed": 1.5},
    ],
)
def test_bad_options_are_refused(kwargs: dict) -> None:
    with pytest.raises(UnigradError):
        Reinforce(**kwargs)


def test_non_episodic_objective_is_refused() -> None:
    with pytest.raises(UnigradError, match="EpisodeObjective"):
        Reinforce().estimate(nn.Linear(4, 2), supervised(nn.functional.mse_loss, torch.zeros(3, 4), torch.zeros(3, 2)))
