"""Classic-control tasks (gymnasium CartPole-v1, Acrobot-v1) and policy rollouts for reward-modulated rules.

Pieces
    :class:`ControlTask` wraps one environment: ``"cartpole"`` (``CartPole-v1``: keep a pole upright, reward 1
    per step, at most 500 steps, so returns lie in [1, 500]; a uniformly random policy scores about 22) or
    ``"acrobot"`` (``Acrobot-v1``: swing the tip above a line, reward −1 per step until it is, at most 500 steps,
    so returns lie in [−500, 0]; a random policy almost always scores −500). Any callable returning a gymnasium
    environment with a ``Box`` observation space and a ``Discrete`` action space works too (``max_steps`` is then
    required unless the environment's spec sets it). Environments are made once and reused; every episode
    reseeds its environment, so reuse never changes a trajectory.

    :class:`EpisodeObjective` is what one estimator update sees: ``episodes`` episodes whose environment seeds
    are the hash of ``(seed, stream, episode, index)`` (:func:`unigrad.core.rng.key_hash`), so episode
    ``index`` of update ``episode`` is the same trajectory whenever it is replayed with the same actions.
    ``rollout(step_fn)`` plays one episode, ``step_fn(obs (obs_dim,), t) -> action``;
    ``rollouts(step_fn)`` plays all of them in lockstep, ``step_fn(obs (B, obs_dim), t, active) -> actions`` for
    the ``B`` episodes still running (``active`` lists their indices), so one batched forward serves every
    running episode. Rule-specific records (noise, layer inputs, log-probabilities) stay with the rule.

    ``objective(model)`` (for generic code: optimisers of a black box, evaluation) plays the ``episodes`` episodes
    with the greedy (arg-max) policy and returns **minus the mean return** as a 0-d tensor. Its ``n_samples``
    is the number of environment steps (policy forwards of one observation) the most recent call took;
    before any call, the upper bound ``episodes · max_steps``.

    :func:`evaluate` is the mean return over ``episodes`` evaluation episodes (environment seeds from
    ``stream=1``, never the training stream ``0``) of the network as it is, without any learning-rule noise.
    ``greedy=True`` (default) takes the arg-max action; ``greedy=False`` samples from the softmax policy
    (keyed uniforms), which is what the NRL paper's learning curves show (the training episodes of the clean
    network, actions sampled). :func:`policy_mlp` builds a policy network ``obs (B, obs_dim) → logits
    (B, n_actions)``.

Randomness: environments draw from their own seeded generators, action sampling from keyed
:func:`unigrad.core.rng.generator` streams; the global torch and numpy RNGs are never touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium
import numpy as np
import torch
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, check_positive, unknown_name
from unigrad.core.options import check_int
from unigrad.core.rng import generator, key_hash
from unigrad.nn.models import mlp

CONTROL_TASKS: dict[str, str] = {"cartpole": "CartPole-v1", "acrobot": "Acrobot-v1"}
"""Name → gymnasium environment id."""

_ENV_TAG = 0xE9150DE
_SAMPLE_TAG = 0x5A3D1E
EVAL_STREAM = 1
"""The environment-seed stream of :func:`evaluate` (training objectives use stream 0)."""

StepFn = Callable[[Tensor, int], int]
BatchStepFn = Callable[[Tensor, int, list[int]], Sequence[int]]


def _check_key(name: str, value: object) -> int:
    return check_int(name, value, subject=name)


class ControlTask:
    """One discrete-action control environment (see module docs).

    Args:
        env: ``"cartpole"``, ``"acrobot"`` or a callable returning a gymnasium environment.
        max_steps: episode length cap (default: the environment's own, 500 for both named tasks).
    """

    def __init__(self, env: str | Callable[[], gymnasium.Env] = "cartpole", max_steps: int | None = None) -> None:
        if isinstance(env, str):
            if env not in CONTROL_TASKS:
                raise unknown_name("control task", env, CONTROL_TASKS)
            if max_steps is not None:
                check_positive("max_steps", max_steps, integer=True)
            self.name = env
            env_id = CONTROL_TASKS[env]
            spec_steps = gymnasium.spec(env_id).max_episode_steps
            steps = spec_steps if max_steps is None else max_steps
            self._factory: Callable[[], gymnasium.Env] = lambda: gymnasium.make(
                env_id, max_episode_steps=steps, disable_env_checker=True
            )
        elif callable(env):
            self.name = getattr(env, "__name__", type(env).__name__)
            self._factory = env
        else:
            raise UnigradError(f"env must be one of {', '.join(CONTROL_TASKS)} or a callable returning an env")
        self._pool: list[gymnasium.Env] = [self._factory()]
        probe = self._pool[0]
        if not isinstance(probe.action_space, gymnasium.spaces.Discrete):
            raise UnigradError(f"control task {self.name!r} needs a Discrete action space, got {probe.action_space}")
        if not isinstance(probe.observation_space, gymnasium.spaces.Box) or len(probe.observation_space.shape) != 1:
            raise UnigradError(f"control task {self.name!r} needs a 1-D Box observation space")
        if max_steps is None:
            spec = getattr(probe, "spec", None)
            max_steps = getattr(spec, "max_episode_steps", None)
            if max_steps is None:
                raise UnigradError(f"control task {self.name!r}: give max_steps (the environment sets no limit)")
        check_positive("max_steps", max_steps, integer=True)
        self.max_steps = int(max_steps)
        self.obs_dim = int(probe.observation_space.shape[0])
        self.n_actions = int(probe.action_space.n)

    def __repr__(self) -> str:
        return f"ControlTask({self.name!r}, max_steps={self.max_steps})"

    def envs(self, n: int) -> list[gymnasium.Env]:
        """``n`` environment instances (made once, then reused; callers reseed them on reset)."""
        while len(self._pool) < n:
            self._pool.append(self._factory())
        return self._pool[:n]

    def env_seed(self, seed: int, episode: int, index: int = 0, stream: int = 0) -> int:
        """The environment seed of episode ``index`` of update ``episode`` (a 63-bit key hash)."""
        return key_hash(_ENV_TAG, seed, stream, episode, index) >> 1

    def objective(self, *, seed: int, episode: int, episodes: int = 1) -> EpisodeObjective:
        """The :class:`EpisodeObjective` of update ``episode``."""
        return EpisodeObjective(self, seed=seed, episode=episode, episodes=episodes)


@dataclass
class Episode:
    """One played episode: ``observations[t]`` is the state action ``actions[t]`` was taken in."""

    observations: Tensor  # (T, obs_dim) float32
    actions: Tensor  # (T,) int64
    rewards: Tensor  # (T,) float64
    total_return: float  # Σ_t rewards[t]
    terminated: bool  # the environment ended it (pole fell, goal reached)
    truncated: bool  # cut at max_steps

    @property
    def steps(self) -> int:
        """Episode length T."""
        return int(self.actions.shape[0])


class EpisodeObjective:
    """The episodes of one update (see module docs).

    Args:
        task: the :class:`ControlTask`.
        seed, episode: key the environment seeds (``episode`` is usually the update counter).
        episodes: episodes per update.
        stream: a further key part separating uses (``0`` training, :data:`EVAL_STREAM` evaluation).
    """

    def __init__(self, task: ControlTask, *, seed: int, episode: int, episodes: int = 1, stream: int = 0) -> None:
        if not isinstance(task, ControlTask):
            raise UnigradError(f"EpisodeObjective needs a ControlTask, got {type(task).__name__}")
        self.task = task
        self.seed = _check_key("seed", seed)
        self.episode = _check_key("episode", episode)
        check_positive("episodes", episodes, integer=True)
        self.episodes = episodes
        self.stream = _check_key("stream", stream)
        self.env_seeds = [task.env_seed(seed, episode, i, stream) for i in range(episodes)]
        self._last_steps: int | None = None

    @property
    def n_samples(self) -> int:
        """Environment steps of the most recent ``objective(model)`` (before any: ``episodes · max_steps``)."""
        return self._last_steps if self._last_steps is not None else self.episodes * self.task.max_steps

    def rollout(self, step_fn: StepFn, index: int = 0) -> Episode:
        """Play episode ``index`` with ``step_fn(obs (obs_dim,), t) -> action``."""
        if not 0 <= index < self.episodes:
            raise UnigradError(f"episode index must be in [0, {self.episodes}), got {index}")
        return self._play([index], lambda obs, t, active: [step_fn(obs[0], t)])[0]

    def rollouts(self, step_fn: BatchStepFn) -> list[Episode]:
        """Play all episodes in lockstep with ``step_fn(obs (B, obs_dim), t, active) -> B actions``."""
        return self._play(list(range(self.episodes)), step_fn)

    def _play(self, indices: list[int], step_fn: BatchStepFn) -> list[Episode]:
        n_actions = self.task.n_actions
        envs = self.task.envs(len(indices))
        obs = [np.array(env.reset(seed=self.env_seeds[i])[0], dtype=np.float32) for env, i in zip(envs, indices)]
        observations: list[list[np.ndarray]] = [[] for _ in indices]
        actions: list[list[int]] = [[] for _ in indices]
        rewards: list[list[float]] = [[] for _ in indices]
        ended = [(False, False)] * len(indices)
        running = list(range(len(indices)))
        for t in range(self.task.max_steps):
            batch = torch.from_numpy(
                obs[running[0]][None] if len(running) == 1 else np.stack([obs[j] for j in running])
            )
            chosen = step_fn(batch, t, [indices[j] for j in running])
            if len(chosen) != len(running):
                raise UnigradError(f"the policy returned {len(chosen)} actions for {len(running)} running episodes")
            still = []
            for j, a in zip(running, chosen):
                a = int(a)
                if not 0 <= a < n_actions:
                    raise UnigradError(f"action {a} is outside [0, {n_actions})")
                observations[j].append(obs[j])
                actions[j].append(a)
                o, r, term, trunc, _ = envs[j].step(a)
                rewards[j].append(float(r))
                if term or trunc or t + 1 == self.task.max_steps:
                    ended[j] = (bool(term), not term)
                else:
                    obs[j] = np.array(o, dtype=np.float32)  # a copy: recorded rows stay intact
                    still.append(j)
            running = still
            if not running:
                break
        return [
            Episode(
                observations=torch.from_numpy(np.stack(observations[j])),
                actions=torch.tensor(actions[j], dtype=torch.int64),
                rewards=torch.tensor(rewards[j], dtype=torch.float64),
                total_return=math.fsum(rewards[j]),
                terminated=ended[j][0],
                truncated=ended[j][1],
            )
            for j in range(len(indices))
        ]

    def play(self, model: nn.Module, *, greedy: bool = True, sample_seed: int = 0) -> list[Episode]:
        """Play every episode with ``model``'s policy: arg-max actions, or sampled from its softmax with
        uniforms keyed ``(sample_seed, stream, episode)`` (the network as it is, no learning-rule noise)."""
        uniforms = None
        if not greedy:
            g = generator(_SAMPLE_TAG, sample_seed, self.stream, self.episode)
            uniforms = torch.rand((self.task.max_steps, self.episodes), generator=g, dtype=torch.float64).tolist()

        p = next(model.parameters(), None)
        dtype = torch.float32 if p is None else p.dtype

        @torch.no_grad()
        def act(obs: Tensor, t: int, active: list[int]) -> list[int]:
            logits = policy_logits(model, obs, self.task.n_actions, dtype)
            if uniforms is None:
                return logits.argmax(dim=1).tolist()
            return [sample_action(row, uniforms[t][k]) for row, k in zip(logits.tolist(), active)]

        return self.rollouts(act)

    def __call__(self, model: nn.Module) -> Tensor:
        """Minus the mean return of the greedy policy over this objective's episodes (0-d float64)."""
        episodes = self.play(model, greedy=True)
        self._last_steps = sum(e.steps for e in episodes)
        return -torch.tensor(sum(e.total_return for e in episodes) / len(episodes), dtype=torch.float64)


def policy_logits(model: nn.Module, obs: Tensor, n_actions: int, dtype: torch.dtype | None = None) -> Tensor:
    """``model(obs)`` as ``(B, n_actions)`` logits (checked); ``obs`` is cast to ``dtype`` (default: the dtype of
    the model's first parameter)."""
    if dtype is None:
        p = next(model.parameters(), None)
        dtype = obs.dtype if p is None else p.dtype
    if obs.dtype != dtype:
        obs = obs.to(dtype)
    logits = model(obs)
    if logits.dim() != 2 or logits.shape != (obs.shape[0], n_actions):
        raise UnigradError(
            f"the policy must map observations (B, obs_dim) to logits (B, {n_actions}), got {tuple(logits.shape)}"
        )
    return logits


def sample_action(logits: Sequence[float], u: float) -> int:
    """The action of the softmax of ``logits`` at uniform ``u`` ∈ [0, 1) (inverse CDF, float64)."""
    m = max(logits)
    weights = [math.exp(v - m) for v in logits]
    threshold = u * math.fsum(weights)
    acc = 0.0
    for a, w in enumerate(weights):
        acc += w
        if threshold < acc:
            return a
    return len(weights) - 1


def evaluate(model: nn.Module, task: ControlTask, episodes: int = 100, *, seed: int = 0, greedy: bool = True) -> float:
    """Mean return of ``model`` over ``episodes`` evaluation episodes (see module docs)."""
    obj = EpisodeObjective(task, seed=seed, episode=0, episodes=episodes, stream=EVAL_STREAM)
    played = obj.play(model, greedy=greedy, sample_seed=seed)
    return sum(e.total_return for e in played) / len(played)


def policy_mlp(
    obs_dim: int,
    n_actions: int,
    hidden: Sequence[int] = (64,),
    *,
    activation: str = "tanh",
    bias: bool = True,
    seed: int = 0,
) -> nn.Sequential:
    """An MLP policy ``obs (B, obs_dim) → logits (B, n_actions)`` (:func:`unigrad.nn.models.mlp`, seeded init);
    ``bias=False`` drops every bias (the NRL paper's networks have none)."""
    model = mlp([obs_dim, *hidden, n_actions], activation=activation, seed=seed)
    if not bias:
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.register_parameter("bias", None)
    return model
