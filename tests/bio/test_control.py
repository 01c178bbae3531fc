"""Control tasks and rollouts: reproducible episodes keyed by (seed, episode), lockstep = one by one, greedy
objective and evaluation, inverse-CDF action sampling, the global RNG left alone."""

from __future__ import annotations

import math
import random

import gymnasium
import numpy as np
import pytest
import torch
from torch import nn

from unigrad import UnigradError
from unigrad.bio.control import (
    ControlTask,
    EpisodeObjective,
    evaluate,
    policy_logits,
    policy_mlp,
    sample_action,
)


class Endless(gymnasium.Env):
    """Never terminates; observation = the step count, reward = the action."""

    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gymnasium.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0, 1.0], dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t, 1.0], dtype=np.float32), float(action), False, False, {}


def _lean(obs: torch.Tensor, t: int) -> int:
    """A deterministic CartPole controller: push towards the side the pole leans to."""
    return int(obs[2] + 0.5 * obs[3] > 0)


def test_named_tasks_and_bad_names() -> None:
    cart, acro = ControlTask("cartpole"), ControlTask("acrobot", max_steps=200)
    assert (cart.obs_dim, cart.n_actions, cart.max_steps) == (4, 2, 500)
    assert (acro.obs_dim, acro.n_actions, acro.max_steps) == (6, 3, 200)
    with pytest.raises(UnigradError, match="acrobot, cartpole"):
        ControlTask("mountaincar")
    with pytest.raises(UnigradError, match="max_steps"):
        ControlTask(Endless)  # no limit of its own
    with pytest.raises(UnigradError, match="max_steps"):
        ControlTask("cartpole", max_steps=0)
    with pytest.raises(UnigradError, match="Discrete"):
        ControlTask(lambda: gymnasium.make("Pendulum-v1"), max_steps=10)


def test_same_seed_and_episode_replay_bitwise_and_the_global_rng_is_untouched() -> None:
    task = ControlTask("cartpole")
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    first = EpisodeObjective(task, seed=3, episode=7).rollout(_lean)
    EpisodeObjective(task, seed=3, episode=8).rollout(_lean)  # reuses the environment in between
    again = EpisodeObjective(task, seed=3, episode=7).rollout(_lean)
    other = EpisodeObjective(task, seed=4, episode=7).rollout(_lean)
    # bitwise: the same environment seed, physics and controller ops replayed on the same machine
    assert torch.equal(first.observations, again.observations) and torch.equal(first.actions, again.actions)
    assert first.total_return == again.total_return == float(first.rewards.sum()) == first.steps  # sums of 1.0s: exact
    assert not torch.equal(first.observations[0], other.observations[0])
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    # actions[t] was taken in observations[t]: the controller's choices replay from the record
    assert [_lean(o, t) for t, o in enumerate(first.observations)] == first.actions.tolist()
    assert first.terminated != first.truncated


def test_lockstep_rollouts_equal_one_by_one_rollouts() -> None:
    task = ControlTask("cartpole", max_steps=60)
    obj = EpisodeObjective(task, seed=0, episode=2, episodes=5)
    seen: list[int] = []

    def poor(obs: torch.Tensor, t: int) -> int:
        return int(obs[2] > 0.05)

    def batch_fn(obs: torch.Tensor, t: int, active: list[int]) -> list[int]:
        seen.append(len(active))
        return [poor(o, t) for o in obs]

    together = obj.rollouts(batch_fn)
    alone = [obj.rollout(poor, index=i) for i in range(5)]
    # bitwise: each episode's environment steps its own (scalar numpy) physics with the same actions; only the
    # controller calls are batched, and `poor` reads one entry of each row, so no arithmetic differs
    for a, b in zip(together, alone):
        assert torch.equal(a.observations, b.observations) and a.total_return == b.total_return
    assert len({e.total_return for e in together}) > 1  # the episodes differ
    assert seen == sorted(seen, reverse=True) and seen[0] == 5  # finished episodes leave the batch
    with pytest.raises(UnigradError, match="index"):
        obj.rollout(poor, index=5)


def test_max_steps_truncates_and_bad_actions_are_refused() -> None:
    task = ControlTask(Endless, max_steps=7)
    ep = EpisodeObjective(task, seed=0, episode=0).rollout(lambda obs, t: t % 3)
    assert ep.steps == 7 and ep.truncated and not ep.terminated
    assert ep.rewards.tolist() == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0]
    assert ep.observations[:, 0].tolist() == list(range(7))
    with pytest.raises(UnigradError, match="outside"):
        EpisodeObjective(task, seed=0, episode=0).rollout(lambda obs, t: 3)


def test_objective_is_minus_the_mean_greedy_return_and_counts_its_steps() -> None:
    task = ControlTask("cartpole", max_steps=100)
    model = policy_mlp(4, 2, (8,), seed=1)
    obj = EpisodeObjective(task, seed=0, episode=0, episodes=3)
    assert obj.n_samples == 300  # before any call: the upper bound
    loss = obj(model)
    assert loss.dim() == 0

    gaps: list[float] = []

    def greedy(obs: torch.Tensor, t: int) -> int:
        with torch.no_grad():
            logits = model(obs[None])[0]
        gaps.append(float((logits[0] - logits[1]).abs()))
        return int(logits.argmax())

    manual = [obj.rollout(greedy, index=i) for i in range(3)]
    # the objective's batched forward and this one-row forward may round the float32 logits differently (≲ 1e-6
    # for an 8-unit MLP), which cannot flip an arg-max whose gap is wider (0.097 measured): the same actions, the
    # same integer returns and the same Python float expression, so equal to rounding
    assert min(gaps) > 1e-4
    assert float(loss) == pytest.approx(-sum(e.total_return for e in manual) / 3, abs=1e-12)
    assert obj.n_samples == sum(e.steps for e in manual)


def test_evaluate_uses_its_own_episodes_and_sampled_evaluation_replays() -> None:
    task = ControlTask("cartpole", max_steps=50)
    model = policy_mlp(4, 2, (8,), seed=2)
    greedy = evaluate(model, task, 6, seed=0)
    assert greedy == evaluate(model, task, 6, seed=0)  # replays (same seeds, same ops): exact
    sampled = evaluate(model, task, 6, seed=0, greedy=False)
    assert sampled == evaluate(model, task, 6, seed=0, greedy=False)
    train = EpisodeObjective(task, seed=0, episode=0, episodes=6)
    evals = EpisodeObjective(task, seed=0, episode=0, episodes=6, stream=1)
    assert set(train.env_seeds).isdisjoint(evals.env_seeds)
    assert greedy == pytest.approx(sum(e.total_return for e in evals.play(model)) / 6)  # what evaluate runs: exact


def test_sample_action_is_the_inverse_cdf_of_the_softmax() -> None:
    logits = [0.3, -1.2, 1.5, 0.0]
    p = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0).tolist()
    n = 100_000
    counts = [0] * 4
    for i in range(n):
        counts[sample_action(logits, (i + 0.5) / n)] += 1
    # stratified u: a CDF interval of length q holds n·q ± 1 of the grid points (i + 0.5)/n, exactly; each CDF
    # boundary lies ≥ 0.02 grid steps (2e-7) from a grid point, so the ~1e-16 rounding of the CDF changes no count
    assert all(abs(c / n - q) <= 1.0 / n for c, q in zip(counts, p))
    assert sample_action(logits, 0.0) == 0 and sample_action(logits, math.nextafter(1.0, 0.0)) == 3


def test_policy_mlp_and_policy_logits_shapes() -> None:
    model = policy_mlp(4, 2, (16, 8), bias=False, seed=0)
    assert all("bias" not in name for name, _ in model.named_parameters())
    assert policy_logits(model, torch.zeros(5, 4), 2).shape == (5, 2)
    assert torch.equal(policy_mlp(4, 2, seed=3)[1].weight, policy_mlp(4, 2, seed=3)[1].weight)
    with pytest.raises(UnigradError, match="logits"):
        policy_logits(nn.Linear(4, 3), torch.zeros(5, 4), 2)
