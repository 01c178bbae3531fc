"""Exploratory Hebb: the :class:`ExploratoryHebb` estimator (reward-modulated Hebbian learning from exploration)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unigrad.bio.rules.miconi import (
    CONDITIONS,
    RewardBaselines,
    TrialRule,
    check_fraction,
    check_noise_option,
    condition_keys,
    hebbian,
    low_pass_deviation,
    rate_network,
    run_trials,
    trial_inputs,
    trial_rewards,
)
from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice
from unigrad.core.estimator import Estimate
from unigrad.core.objective import Objective
from unigrad.core.options import check_number, check_optional
from unigrad.noise import NoiseProcess

SIGNALS = ("activity", "noise")
DEFAULT_NOISE = "gaussian:sigma=0.1"


def eligibility(post: Tensor, pre: Tensor, gamma: float, coeff: Tensor | None = None) -> Tensor:
    """The trace at the end of the trial, ``e(T) = Σ_{t=1}^{T} γ^{T−t}·post(t)·pre(t−1)ᵀ`` (from ``e(0) = 0``),
    for ``post`` ``(T, B, n_post)`` (the rows ``t = 1 … T``) and ``pre`` ``(T, B, n_pre)`` (``t = 0 … T−1``): per
    trial ``(B, n_post, n_pre)``, or with ``coeff`` ``(B,)`` the weighted sum over trials ``(n_post, n_pre)``."""
    steps = post.shape[0]
    decay = gamma ** torch.arange(steps - 1, -1, -1, dtype=post.dtype, device=post.device)
    return hebbian(post * decay[:, None, None], pre, coeff)


class ExploratoryHebb(TrialRule):
    """Exploratory Hebb (reward-modulated Hebbian learning): noise-driven traces, reinforced by a reward error.

    The reward error is a reward-prediction error: the reward minus its running average.

    Every unit of a rate network (:class:`~unigrad.bio.rate_rnn.RateRNN`) explores: noise ``ξ`` is added to its state
    each step. Each synapse ``j → i`` keeps an eligibility trace of the product of the unit's exploratory deviation
    and the presynaptic rate, decaying by ``γ`` per step over the trial ``t = 1 … T`` (``e(0) = 0`` at the start of
    every trial)::

        e_ij(t) = γ·e_ij(t−1) + d_i(t)·r_j(t−1)

    with ``d_i(t)`` either the noise that entered the unit's state at that step, ``d(t) = ξ(t−1)`` (``signal="noise"``;
    ``x(t) = (1 − α)x(t−1) + α(W r(t−1) + …) + ξ(t−1)``, so ``r_j(t−1)`` is exactly the input through which ``W_ij``
    acts on ``x_i(t)``), or the deviation of the state from its running average, ``d(t) = x(t) − x̄(t−1)`` with
    ``x̄(t) = β·x̄(t−1) + (1 − β)·x(t)``, ``x̄(0) = x(0)`` (``signal="activity"``: the rule needs only activity, so it
    also works when the noise is not accessible). At the end of the trial the reward ``R`` arrives and::

        ΔW = η·(R − R̄)·e(T)            then      R̄ ← R̄ + ρ·(R − R̄)

    so the trace holds ``e(T) = Σ_t γ^{T−t}·d(t)·r(t−1)ᵀ``. The direction written into ``rec.weight.grad`` is
    ``−(R − R̄)·e(T)`` (averaged over the ``B`` trials of a batch), so ``torch.optim.SGD(lr=η)`` applies the rule's
    ``ΔW``. With ``signal="noise"`` and ``γ = 1`` this is node perturbation through time (Williams 1992; Fiete & Seung
    2006): for small noise of variance ``σ²`` per step, ``E[(R − R̄)·e] ≈ (σ²/α)·∂E[R]/∂W`` when the baseline
    predicts the reward; ``γ < 1`` discounts the credit of early perturbations.

    What is trained: the recurrent weights ``W_rec``, and with ``train_input=True`` the input weights and bias (traces
    ``d_i(t)·u_j(t−1)`` and ``d_i(t)``). Every other trainable parameter (the readout ``out``) gets a zero direction;
    ``Estimate.info["plastic"]`` names what was trained.

    Requirements: a :class:`~unigrad.bio.rate_rnn.RateRNN` and an objective with ``inputs`` ``(T, B, n_in)`` and
    ``reward(outputs) → (B,)``, such as ``task.objective(batch)`` of :mod:`unigrad.bio.tasks`.

    Cost per call: one noisy run of the ``B`` trials, counted as ``B`` forwards; no backward. ``Estimate.loss`` is the
    mean task loss of those noisy trials (``loss_is_probe_mean=True``); ``info`` holds ``reward``, ``rpe``, ``fresh``,
    ``conditions`` and ``plastic`` as :class:`~unigrad.bio.rules.miconi.Miconi` does.

    State (``state_dict``): seed, step and the reward average of every condition seen (the trace is reset at the start
    of every trial, so it is no state).

    Args:
        signal: ``"activity"`` (``d = x − x̄``) or ``"noise"`` (``d = ξ``, which needs noise the rule may
            read: an injected process or intrinsic noise with ``accessible=False`` is refused)
            (default: ``"activity"``).
        noise: the exploration noise injected into the units each trial: a
            :class:`~unigrad.noise.base.NoiseProcess` or ``make_noise`` spec, or ``None``: inject nothing and
            learn from the network's own ``intrinsic`` noise (which it must have). The noise of call ``k`` is
            ``noise.sequence(T, (B, n_rec), seed=seed, trial=k, stream=0, dt=dt)``. With ``signal="noise"``
            the rule reads the trajectory's total noise (injected plus intrinsic)
            (default: ``"gaussian:sigma=0.1"``).
        gamma: ``γ`` in ``(0, 1]``, the per-step decay of the eligibility trace; 1: the reward comes once, at
            the end of the trial, and every perturbation of the trial may have caused it (default: 1.0).
        activity_decay: ``β`` in ``[0, 1)``, the per-step decay of the running average ``x̄``
            (``signal="activity"`` only) (default: 0.05).
        baseline_rate: ``ρ`` in ``(0, 1]``, the rate of the running reward average. A condition seen for the
            first time starts its average at the mean reward of its trials in that batch (default: 0.1).
        condition: what names a trial condition for the reward average: ``"global"`` (one running
            average), ``"inputs"`` (trials with the same input sequence) or ``"labels"`` (the batch's labels)
            (default: ``"global"``).
        clip: clip every entry of the direction to ``[−clip, clip]``; ``None``: no clipping (default: None).
        train_input: also train the input weights and bias (default: False).
        seed: keys the injected noise (default: 0).

    References:
        [1] R. Legenstein, S. M. Chase, A. B. Schwartz, W. Maass, "A reward-modulated Hebbian learning rule can
            explain experimentally observed network reorganization in a brain control task", J. Neurosci. 30(25):
            8400–8410 (2010) (the exploratory-Hebb rule: exploratory fluctuations times presynaptic activity times
            the reward deviation from its running average).
        [2] G. M. Hoerzer, R. Legenstein, W. Maass, "Emergence of complex computational structures from chaotic
            neural networks through reward-modulated Hebbian learning", Cerebral Cortex 24(3):677–690, 2014
            (deviations of activity and of reward from their low-pass averages).
    """

    name = "exploratory-hebb"
    order = 0
    description = "exploratory Hebb: e ← γe + (x − x̄ or ξ)·rᵀ, ΔW = η·(R − R̄)·e (Legenstein et al. 2010)"
    _options = (
        "signal",
        "noise",
        "gamma",
        "activity_decay",
        "baseline_rate",
        "condition",
        "clip",
        "train_input",
    )

    def __init__(
        self,
        signal: str = "activity",
        noise: NoiseProcess | str | None = DEFAULT_NOISE,
        *,
        gamma: float = 1.0,
        activity_decay: float = 0.05,
        baseline_rate: float = 0.1,
        condition: str = "global",
        clip: float | None = None,
        train_input: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_choice("signal", signal, SIGNALS)
        self.noise = check_noise_option(noise)
        if signal == "noise" and self.noise is not None and not self.noise.accessible:
            raise UnigradError(
                "signal='noise' reads the injected noise, but it is marked accessible=False; use signal='activity'"
            )
        self.gamma = check_fraction("gamma", gamma, low_open=True, high_open=False)
        self.activity_decay = check_fraction("activity_decay", activity_decay, low_open=False, high_open=True)
        self.baseline_rate = check_fraction("baseline_rate", baseline_rate, low_open=True, high_open=False)
        check_choice("condition", condition, CONDITIONS)
        check_optional(check_number, "clip", clip, low=0, low_inclusive=False, what="a number > 0 or None")
        if not isinstance(train_input, bool):
            raise UnigradError(f"option train_input must be True or False, got {train_input!r}")
        self.signal, self.condition, self.train_input = signal, condition, train_input
        self.clip = None if clip is None else float(clip)
        self.baselines = RewardBaselines(self.baseline_rate)

    @torch.no_grad()
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        net = rate_network(model, self.name)
        inputs = trial_inputs(objective, net, self.name)
        assert self.noise is None or isinstance(self.noise, NoiseProcess)
        traj = run_trials(net, inputs, self.noise, self.seed, self.step, self.name)
        if self.signal == "noise":
            if traj.noise is None or not traj.noise_accessible:
                raise UnigradError(
                    "signal='noise' reads the network's noise, but its intrinsic noise is accessible=False; "
                    "use signal='activity'"
                )
            post = traj.noise.double()
        else:
            post = low_pass_deviation(traj.x.double(), self.activity_decay)
        batch = inputs.shape[1]
        cost = Cost(forwards=batch)
        rewards, losses = trial_rewards(objective, traj.outputs, self.name)
        keys = condition_keys(objective, inputs, self.condition)
        rpe, _, fresh = self.baselines.observe(keys, rewards)
        coeff = rpe / batch
        updates = {"rec.weight": eligibility(post, traj.r[:-1].double(), self.gamma, coeff)}
        if self.train_input:
            updates["inp.weight"] = eligibility(post, traj.inputs.double(), self.gamma, coeff)
            updates["inp.bias"] = eligibility(post, post.new_ones(*post.shape[:2], 1), self.gamma, coeff)[:, 0]
        return self._finish(params, net, updates, rewards, rpe, fresh, losses, cost)
