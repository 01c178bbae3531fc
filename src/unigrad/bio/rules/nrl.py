"""Noise-based reward-modulated learning: the :class:`NRL` estimator, and the checks the episodic rules share
(:func:`check_episodic`, :func:`check_unit_interval`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.bio.control import ControlTask, Episode, policy_logits, sample_action
from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective
from unigrad.core.options import check_fraction, check_number
from unigrad.core.rng import generator
from unigrad.nn.perturbation import LayerTaps, layer_owners, perturbable_layers, write_layer_grads
from unigrad.noise import NoiseProcess, WhiteGaussian, make_noise

_ACTION_TAG = 0xA7_10_4E
_TINY = 1e-8


def check_episodic(objective: Objective, method: str) -> ControlTask:
    """The objective's task, after checking it is an episodic objective (``rollouts`` and a ``ControlTask``)."""
    task = getattr(objective, "task", None)
    if not callable(getattr(objective, "rollouts", None)) or not isinstance(task, ControlTask):
        raise UnigradError(
            f"{method} learns from episodes: pass an EpisodeObjective (unigrad.bio.control), "
            f"got {type(objective).__name__}"
        )
    return task


def check_unit_interval(option: str, value: float, *, open_left: bool) -> float:
    """``value`` as a float in [0, 1] (``(0, 1]`` with ``open_left``)."""
    return check_fraction(option, value, low_inclusive=not open_left, high_inclusive=True)


class NRL(Estimator):
    """NRL — noise-based reward-modulated learning (noisy neurons, eligibility traces, a reward-prediction error).

    Rule [1]. Every ``nn.Linear`` layer ``l`` of the policy network (logits → softmax π) has noisy neurons. At each
    step ``t`` of an episode the network runs twice on the state ``s_t``: a clean pass gives ``π(·|s_t)`` and a noisy
    pass, whose layer outputs receive ``h_l ← h_l + ε_{l,t}``, gives ``π̃(·|s_t)`` and the layer inputs ``x_{l−1,t}``
    (the noisy pass's activity). The action ``a_t`` is sampled from the clean ``π`` (as in [1]'s code;
    ``action_from="noisy"`` samples from ``π̃``). Each synapse keeps an eligibility trace::

        e_l ← γ·e_l + [log π̃(a_t|s_t) − log π(a_t|s_t)] · ε_{l,t}/‖ε_t‖² · x̃_{l−1,t}ᵀ

    with ``‖ε_t‖²`` summed over *all* layers' noise at step ``t`` and ``x̃ = [x; 1]`` (the bias is the weight of a
    constant input 1). When the episode ends (delayed reward, return ``R``)::

        RPE = (R − R̄)/|R|            R̄ ← R̄ + γ_avg·(R − R̄)   (after the update; R̄ starts at the first return)
        ΔW_l = η·N_l·RPE·e_l

    Why it works: to first order ``log π̃(a) − log π(a) = δ·ε`` with ``δ = ∂log π(a)/∂h`` over all nodes, and for
    isotropic noise ``E[ε εᵀ/‖ε‖²] = I/n`` (``n`` noisy nodes), so ``E[e_l] = Σ_t γ^{T−1−t} ∇_{W_l} log π(a_t|s_t)/n
    + O(σ²)``: with ``N_l = n`` the update is REINFORCE with the baseline ``R̄`` and the advantage scaled by ``1/|R|``
    (the gradient of ``E[g(R)]`` for the increasing ``g``), computed from noise and local activity only.

    Written as a direction (the library's contract: an optimizer steps ``θ ← θ − lr·grad``)::

        grad(W_l) = −N_l · (1/E) Σ_k RPE_k · e_{l,k}

    so ``torch.optim.SGD(lr=η)`` performs ``W_l ← W_l + η·N_l·RPE·e_l`` exactly as in [1] (``E`` episodes per
    update, the objective's ``episodes``; [1] uses ``E = 1``, plain SGD, η = 5e-2). The trace of an episode is
    accumulated in one batched pass after it ends (the weights do not change within an episode, so this equals the
    step-by-step recursion): ``e_l = Σ_t γ^{T−1−t} u_{l,t}``.

    Cost per call: 2 forwards per environment step (the clean and the noisy pass; one of them runs online to act,
    the other batched over the episode afterwards). No backward pass. ``Estimate.loss`` is minus the mean return of
    the update's (sampled) episodes, not the greedy ``objective(model)``, hence ``loss_is_probe_mean=True``;
    ``info`` holds the returns, the RPEs, the baseline used, the steps and the mean ``|log π̃(a) − log π(a)|``.

    State: ``step`` (keys the noise and the action uniforms) and the baseline ``R̄`` (``None`` before the first
    episode). Needs an :class:`~unigrad.bio.control.EpisodeObjective`; every trainable parameter must be the weight
    or bias of an ``nn.Linear``.

    Args:
        sigma: standard deviation σ of the Gaussian node noise; 1e-3 as in [1] (default: 1e-3).
        gamma: trace decay γ ∈ [0, 1]; 1: [1]'s code sums over the whole episode (default: 1.0).
        gamma_avg: rate γ_avg ∈ (0, 1] of the running return baseline R̄; 0.66 as in [1] (default: 0.66).
        normalization: ``N_l``: ``"layer"`` ([1]'s code): the number of output units of layer ``l``;
            ``"total"``: ``n``, all noisy units (the expected update is then the policy gradient of ``E[g(R)]``, up to
            O(σ²)); ``"none"``: 1 (default: ``"layer"``).
        rpe_scale: ``"return"`` divides by ``|R|`` (a return within 1e-8 of 0 is not divided); ``"none"`` uses
            ``R − R̄`` ([1]'s code does so for the reaching task) (default: ``"return"``).
        action_from: ``"clean"`` or ``"noisy"``: the policy the actions are sampled from (keyed uniforms
            ``(seed, step)``) (default: ``"clean"``).
        noise: replaces the Gaussian noise of ``sigma`` with any additive, accessible :mod:`unigrad.noise` process or
            spec (e.g. ``"ou:sigma=0.01:tau=5"``), drawn per episode as a ``(max_steps, n)`` sequence keyed
            ``(seed, trial=step, stream=episode index)``; ``None``: the Gaussian noise of ``sigma`` (default: None).
        seed: names the noise and action streams (default: 0).

    References:
        [1] J. García Fernández, N. Ahmad, M. van Gerven, "Noise-based reward-modulated learning", arXiv:2503.23972.
    """

    name = "nrl"
    order = 0
    description = "noise-based reward-modulated learning: (log π̃ − log π)·ε/‖ε‖²·xᵀ traces × RPE (arXiv 2503.23972)"
    _options = ("sigma", "gamma", "gamma_avg", "normalization", "rpe_scale", "action_from", "noise")

    def __init__(
        self,
        sigma: float = 1e-3,
        gamma: float = 1.0,
        gamma_avg: float = 0.66,
        normalization: str = "layer",
        rpe_scale: str = "return",
        action_from: str = "clean",
        noise: str | NoiseProcess | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_number("sigma", sigma, what="a number > 0")
        check_positive("sigma", sigma)
        self.sigma = float(sigma)
        self.gamma = check_unit_interval("gamma", gamma, open_left=False)
        self.gamma_avg = check_unit_interval("gamma_avg", gamma_avg, open_left=True)
        check_choice("normalization", normalization, ("layer", "total", "none"))
        check_choice("rpe_scale", rpe_scale, ("return", "none"))
        check_choice("action_from", action_from, ("clean", "noisy"))
        self.normalization, self.rpe_scale, self.action_from = normalization, rpe_scale, action_from
        process = WhiteGaussian(self.sigma) if noise is None else make_noise(noise)
        if not process.accessible:
            raise UnigradError(f"nrl reads its noise ε; noise {process.spec!r} is marked accessible=false")
        if process.multiplicative:
            raise UnigradError(f"nrl needs additive node noise; {process.spec!r} is a multiplicative mask")
        self.noise = noise if noise is None else process.spec
        self._process = process
        self.baseline: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.baseline = None if state["baseline"] is None else float(state["baseline"])

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        task = check_episodic(objective, "nrl")
        layers = perturbable_layers(model)
        for lname, layer in layers:
            if type(layer) is not nn.Linear:
                raise UnigradError(f"nrl supports nn.Linear layers only; layer {lname!r} is {type(layer).__name__}")
        owners = layer_owners(model, params, "nrl")
        sizes = [layer.out_features for _, layer in layers]
        bounds = [0, *torch.tensor(sizes).cumsum(0).tolist()]
        n_total = bounds[-1]
        dtype, device = params[0][1].dtype, params[0][1].device
        n_ep = objective.episodes
        eps = [
            self._process.sequence(
                task.max_steps, (n_total,), seed=self.seed, trial=self.step, stream=k, dtype=dtype, device=device
            )
            for k in range(n_ep)
        ]
        episodes, logged, online_inputs = self._roll_out(model, objective, task, layers, bounds, eps, dtype)
        lengths = [e.steps for e in episodes]
        n_steps = sum(lengths)
        obs = torch.cat([e.observations for e in episodes]).to(device)
        actions = torch.cat([e.actions for e in episodes]).to(device)
        noise = torch.cat([eps[k][:t_k] for k, t_k in enumerate(lengths)])
        with torch.no_grad():
            if self.action_from == "noisy":
                noisy, clean = logged, policy_logits(model, obs, task.n_actions, dtype)
                inputs: list[Tensor | None] = [
                    torch.stack([x for k in range(n_ep) for x in online_inputs[k][i]]) for i in range(len(layers))
                ]
            else:
                with LayerTaps(
                    model, record_inputs=True, node_noise=lambda i, out: noise[:, bounds[i] : bounds[i + 1]]
                ) as taps:
                    noisy = policy_logits(model, obs, task.n_actions, dtype)
                _check_ran(taps, layers)
                clean, inputs = logged, list(taps.inputs)
        idx = actions.view(-1, 1)
        dp = (_log_prob(noisy, idx) - _log_prob(clean, idx)).view(-1)
        sq = noise.double().square().sum(1)
        ratio = torch.where(sq > 0, dp / sq.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(dp))

        returns = [e.total_return for e in episodes]
        baseline = returns[0] if self.baseline is None else self.baseline
        rpe = [self._rpe(r, baseline) for r in returns]
        decay = torch.cat([self.gamma ** torch.arange(t_k - 1, -1, -1, dtype=torch.float64) for t_k in lengths])
        per_step = torch.cat([torch.full((t_k,), rpe[k] / n_ep, dtype=torch.float64) for k, t_k in enumerate(lengths)])
        coeff = (per_step * decay * ratio).to(device)
        signals: list[Tensor | None] = []
        for i, n_l in enumerate(sizes):
            scale = {"layer": n_l, "total": n_total, "none": 1}[self.normalization]
            signals.append((-scale * coeff).view(-1, 1).to(dtype) * noise[:, bounds[i] : bounds[i + 1]])
        write_layer_grads(params, owners, layers, inputs, signals)
        self._update_baseline(baseline, returns)
        info = {"returns": returns, "rpe": rpe, "baseline": baseline, "steps": n_steps}
        info["mean_abs_log_ratio"] = float(dp.abs().mean())
        return Estimate(
            loss=-sum(returns) / len(returns), cost=Cost(forwards=2 * n_steps), loss_is_probe_mean=True, info=info
        )

    def _roll_out(
        self,
        model: nn.Module,
        objective: Any,
        task: ControlTask,
        layers: list[tuple[str, nn.Module]],
        bounds: list[int],
        eps: list[Tensor],
        dtype: torch.dtype,
    ) -> tuple[list[Episode], Tensor, list[list[list[Tensor]]]]:
        """Run the episodes, acting on clean logits (``action_from="clean"``) or on logits with episode ``k``'s
        node noise ``eps[k][t]`` (``"noisy"``); returns the episodes, the logits acted on (all steps, in
        episode order) and, when acting on noisy logits, each episode's recorded layer inputs."""
        n_ep, n_actions = objective.episodes, task.n_actions
        g = generator(_ACTION_TAG, self.seed, self.step)
        uniforms = torch.rand((task.max_steps, n_ep), generator=g, dtype=torch.float64).tolist()
        noisy_online = self.action_from == "noisy"
        online_logits: list[list[Tensor]] = [[] for _ in range(n_ep)]
        online_inputs: list[list[list[Tensor]]] = [[[] for _ in layers] for _ in range(n_ep)]

        @torch.no_grad()
        def act(obs: Tensor, t: int, active: list[int]) -> list[int]:
            if noisy_online:
                rows = torch.stack([eps[k][t] for k in active])
                with LayerTaps(
                    model, record_inputs=True, node_noise=lambda i, out: rows[:, bounds[i] : bounds[i + 1]]
                ) as taps:
                    logits = policy_logits(model, obs, n_actions, dtype)
                _check_ran(taps, layers)
                for b, k in enumerate(active):
                    for i in range(len(layers)):
                        online_inputs[k][i].append(taps.inputs[i][b])
            else:
                logits = policy_logits(model, obs, n_actions, dtype)
            for b, k in enumerate(active):
                online_logits[k].append(logits[b])
            return [sample_action(row, uniforms[t][k]) for row, k in zip(logits.tolist(), active)]

        episodes: list[Episode] = objective.rollouts(act)
        logged = torch.stack([row for rows in online_logits for row in rows])
        return episodes, logged, online_inputs

    def _update_baseline(self, baseline: float, returns: list[float]) -> None:
        """``b ← b + γ_avg (R_k − b)`` over the episodes' returns, in order."""
        b = baseline
        for r in returns:
            b += self.gamma_avg * (r - b)
        self.baseline = b

    def _rpe(self, ret: float, baseline: float) -> float:
        diff = ret - baseline
        if self.rpe_scale == "return" and abs(ret) > _TINY:
            return diff / abs(ret)
        return diff


def _check_ran(taps: LayerTaps, layers: list[tuple[str, nn.Module]]) -> None:
    missing = [name for (name, _), x in zip(layers, taps.inputs) if x is None]
    if missing:
        raise UnigradError(f"nrl: layer(s) {', '.join(missing)} did not run in the policy's forward pass")


def _log_prob(logits: Tensor, actions: Tensor) -> Tensor:
    """``log softmax(logits)[a]`` in float64, ``(N, 1)``."""
    return F.log_softmax(logits.double(), 1).gather(1, actions)
