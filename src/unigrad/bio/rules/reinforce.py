"""REINFORCE: the :class:`Reinforce` estimator (the likelihood-ratio policy gradient with a baseline)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.bio.control import Episode, policy_logits, sample_action
from unigrad.bio.rules.nrl import check_episodic, check_unit_interval
from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective
from unigrad.core.params import write_grad
from unigrad.core.rng import generator

_ACTION_TAG = 0x5E1F0CE


class Reinforce(Estimator):
    """REINFORCE — the likelihood-ratio policy gradient with a baseline (Williams 1992).

    Direction. ``E`` episodes are sampled from the softmax policy ``π_θ(a|s)`` (the objective's ``episodes``;
    actions from keyed uniforms ``(seed, step)``). With the returns-to-go ``G_t = Σ_{t'≥t} γ^{t'−t} r_{t'}`` and a
    baseline ``b``::

        grad = −(1/E) Σ_k Σ_t ∇_θ log π_θ(a_{k,t}|s_{k,t}) · A_{k,t},     A_{k,t} = (G_{k,t} − b) / c

    written to ``.grad``, so any optimizer minimising it ascends the expected return; ``E[grad] = −∇_θ E[Σ_t γ^t r_t]``
    (for ``discount = 1``, the gradient of minus the expected return) whenever ``b`` and ``c`` do not depend on the
    update's own actions [1, 2].

    Cost per call: the rollout's policy forwards (one per environment step) plus one taped forward and one backward
    over all the update's steps, batched: ``forwards = 2·steps``, ``backwards = steps`` (in samples). ``Estimate.loss``
    is minus the mean return of the update's sampled episodes (``loss_is_probe_mean=True``: not the greedy
    ``objective(model)``); ``info`` holds the returns, the baseline used and the steps.

    State: ``step`` (keys the action uniforms) and the running baseline ``b`` (``None`` before the first update).
    Needs an :class:`~unigrad.bio.control.EpisodeObjective` and a policy network ``obs (B, obs_dim) → logits``.

    Args:
        discount: γ ∈ [0, 1] of the returns-to-go (default: 0.99).
        baseline: ``"running"``: ``b`` is a running mean, ``b ← b + rate·(Ḡ − b)`` after each update, with ``Ḡ``
            the mean return-to-go over the update's steps (the first update starts ``b`` at its own ``Ḡ``);
            ``"batch"``: ``b = Ḡ`` of this update (lower variance, a small bias); ``"none"``: ``b = 0``
            (default: ``"running"``).
        baseline_rate: the running mean's rate in (0, 1] (default: 0.1).
        normalize: ``c`` = the standard deviation of ``G − b`` over the update's steps (plus 1e-8), so the step size
            does not depend on the scale of the rewards (a positive rescaling of the direction); False: ``c = 1``
            (default: False).
        seed: keys the action uniforms ``(seed, step)`` (default: 0).

    References:
        [1] R. J. Williams, "Simple statistical gradient-following algorithms for connectionist reinforcement
            learning", Machine Learning 8 (1992) 229–256.
        [2] R. S. Sutton, A. G. Barto, *Reinforcement Learning: An Introduction* (2nd ed., 2018), §13.3–13.4.
    """

    name = "reinforce"
    order = 1
    description = "REINFORCE policy gradient −Σ∇log π(a|s)(G_t − b), running-mean baseline (Williams 1992)"
    _options = ("discount", "baseline", "baseline_rate", "normalize")

    def __init__(
        self,
        discount: float = 0.99,
        baseline: str = "running",
        baseline_rate: float = 0.1,
        normalize: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.discount = check_unit_interval("discount", discount, open_left=False)
        check_choice("baseline", baseline, ("running", "batch", "none"))
        self.baseline = baseline
        self.baseline_rate = check_unit_interval("baseline_rate", baseline_rate, open_left=True)
        if not isinstance(normalize, bool):
            raise UnigradError(f"option normalize must be True or False, got {normalize!r}")
        self.normalize = normalize
        self.baseline_value: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "baseline_value": self.baseline_value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        v = state["baseline_value"]
        self.baseline_value = None if v is None else float(v)

    def returns_to_go(self, rewards: Tensor) -> Tensor:
        """``G_t = Σ_{t'≥t} γ^{t'−t} r_{t'}`` of one episode's rewards (float64)."""
        values = rewards.tolist()
        acc = 0.0
        for t in range(len(values) - 1, -1, -1):
            acc = values[t] + self.discount * acc
            values[t] = acc
        return torch.tensor(values, dtype=torch.float64)

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        task = check_episodic(objective, "reinforce")
        n_ep, n_actions = objective.episodes, task.n_actions
        dtype, device = params[0][1].dtype, params[0][1].device
        g = generator(_ACTION_TAG, self.seed, self.step)
        uniforms = torch.rand((task.max_steps, n_ep), generator=g, dtype=torch.float64).tolist()

        @torch.no_grad()
        def act(obs: Tensor, t: int, active: list[int]) -> list[int]:
            logits = policy_logits(model, obs, n_actions, dtype)
            return [sample_action(row, uniforms[t][k]) for row, k in zip(logits.tolist(), active)]

        episodes: list[Episode] = objective.rollouts(act)
        n_steps = sum(e.steps for e in episodes)
        g_t = torch.cat([self.returns_to_go(e.rewards) for e in episodes])
        mean_g = float(g_t.mean())
        if self.baseline == "none":
            b = 0.0
        elif self.baseline == "batch" or self.baseline_value is None:
            b = mean_g
        else:
            b = self.baseline_value
        adv = g_t - b
        if self.normalize:
            adv = adv / (float(adv.std(correction=0)) + 1e-8)
        if self.baseline == "running":
            prev = mean_g if self.baseline_value is None else self.baseline_value
            self.baseline_value = prev + self.baseline_rate * (mean_g - prev)

        obs = torch.cat([e.observations for e in episodes]).to(device)
        actions = torch.cat([e.actions for e in episodes]).to(device).view(-1, 1)
        with torch.enable_grad():
            logp = F.log_softmax(policy_logits(model, obs, n_actions, dtype), dim=1).gather(1, actions).view(-1)
            surrogate = -(logp * adv.to(logp.dtype).to(device)).sum() / n_ep
            tensors = [p for _, p in params]
            grads = torch.autograd.grad(surrogate, tensors, allow_unused=True)
        write_grad(params, [torch.zeros_like(p) if gr is None else gr for p, gr in zip(tensors, grads)], owned=True)
        returns = [e.total_return for e in episodes]
        return Estimate(
            loss=-sum(returns) / len(returns),
            cost=Cost(forwards=2 * n_steps, backwards=n_steps),
            loss_is_probe_mean=True,
            info={"returns": returns, "baseline": b, "steps": n_steps},
        )
