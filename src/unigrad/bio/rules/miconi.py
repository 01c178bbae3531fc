"""Miconi's rule: the :class:`Miconi` estimator, and what the trial-level reward-modulated rules share
(:class:`TrialRule`, :class:`RewardBaselines` and the checks and trial helpers that
:mod:`unigrad.bio.rules.exploratory_hebb` uses too).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.bio.rate_rnn import Trajectory
from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective
from unigrad.core.options import check_number, check_optional
from unigrad.core.params import write_grad
from unigrad.noise import NoiseProcess, SparseKicks, make_noise

SUPRALINEAR = ("cube", "signed-square", "none")
CONDITIONS = ("inputs", "labels", "global")
KICK_RATE = 0.003  # kicks per unit per ms (3 Hz)
KICK_SIZE = 0.5  # half-width of the jump in x (Miconi: 16·dt/τ ≈ 0.53)


# -- helpers shared by the reward-modulated rules ---------------------------------------------------------------
def check_fraction(option: str, value: Any, *, low_open: bool, high_open: bool) -> float:
    """``value`` as a float in the interval [0, 1] with the given open ends, or a one-line error."""
    v = check_number(option, value, what="a number")
    if (v <= 0 if low_open else v < 0) or (v >= 1 if high_open else v > 1):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise UnigradError(f"option {option} must lie in {interval}, got {value!r}")
    return v


def check_noise_option(noise: Any, marker: str | None = None) -> NoiseProcess | str | None:
    """A noise option: a process, a ``make_noise`` spec (parsed now), the rule's default ``marker`` or None."""
    if noise is None or isinstance(noise, NoiseProcess):
        return noise
    if isinstance(noise, str):
        return noise if noise == marker else make_noise(noise)
    also = f", {marker!r}" if marker else ""
    raise UnigradError(
        f"option noise must be a noise process, a spec such as 'sparse-kicks:p=0.06:sigma=0.5'{also} or None; "
        f"got {type(noise).__name__}"
    )


def rate_network(model: nn.Module, rule: str) -> nn.Module:
    """``model`` after checking it looks like a RateRNN (``run``, ``rec`` and ``inp`` linear layers)."""
    if not (
        callable(getattr(model, "run", None))
        and isinstance(getattr(model, "rec", None), nn.Linear)
        and isinstance(getattr(model, "inp", None), nn.Linear)
    ):
        raise UnigradError(f"{rule} trains a rate network: pass a unigrad.bio.RateRNN, got {type(model).__name__}")
    return model


def trial_inputs(objective: Objective, model: nn.Module, rule: str) -> Tensor:
    """The objective's ``(T, B, n_in)`` inputs, after checking it also gives rewards."""
    inputs = getattr(objective, "inputs", None)
    if not isinstance(inputs, Tensor) or inputs.dim() != 3 or not callable(getattr(objective, "reward", None)):
        raise UnigradError(
            f"{rule} needs a task objective with (T, B, n_in) inputs and a reward(outputs) (task.objective(batch))"
        )
    return inputs.to(dtype=model.rec.weight.dtype, device=model.rec.weight.device)


def run_trials(
    model: nn.Module, inputs: Tensor, noise: NoiseProcess | None, seed: int, step: int, rule: str
) -> Trajectory:
    """One run of the trials with ``noise`` (keyed by ``(seed, step)``) injected into the units."""
    if noise is None and getattr(model, "intrinsic", None) is None:
        raise UnigradError(f"{rule} with noise=None learns from the network's intrinsic noise, but it has none")
    xi = None
    if noise is not None:
        steps, batch = inputs.shape[0], inputs.shape[1]
        xi = noise.sequence(
            steps,
            (batch, model.rec.weight.shape[0]),
            seed=seed,
            trial=step,
            stream=0,
            dt=float(getattr(model, "dt", 1.0)),
            dtype=inputs.dtype,
            device=inputs.device,
        )
    traj = model.run(inputs, xi)
    if not isinstance(traj, Trajectory):
        raise UnigradError(f"{rule} needs model.run(...) to return a Trajectory (a unigrad.bio.RateRNN)")
    return traj


def trial_rewards(objective: Objective, outputs: Tensor, rule: str) -> tuple[Tensor, Tensor]:
    """Per-trial rewards and losses (float64, ``(B,)``) of the outputs."""
    batch = outputs.shape[1]
    rewards = objective.reward(outputs)  # type: ignore[attr-defined]
    if not isinstance(rewards, Tensor) or tuple(rewards.shape) != (batch,):
        got = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise UnigradError(f"{rule}: objective.reward must return one reward per trial, shape ({batch},); got {got}")
    score = getattr(objective, "score", None)
    losses = score(outputs) if callable(score) else -rewards
    return rewards.detach().double(), losses.detach().double().reshape(-1)


def condition_keys(objective: Objective, inputs: Tensor, mode: str) -> list[str]:
    """One key per trial naming its condition: a hash of its input sequence, its label, or one global key."""
    batch = inputs.shape[1]
    if mode == "global":
        return ["all"] * batch
    if mode == "labels":
        labels = getattr(getattr(objective, "batch", None), "labels", None)
        if labels is None:
            raise UnigradError("condition='labels' needs an objective whose batch has labels (a choice task)")
        return [f"label:{int(v)}" for v in labels.reshape(-1).tolist()]
    data = inputs.detach().to(device="cpu", dtype=torch.float64).transpose(0, 1).contiguous().numpy()
    return [hashlib.blake2b(data[b].tobytes(), digest_size=8).hexdigest() for b in range(batch)]


class RewardBaselines:
    """Running reward averages per condition: ``R̄_c ← R̄_c + ρ·(R − R̄_c)``, one trial at a time."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.values: dict[str, float] = {}

    def observe(self, keys: list[str], rewards: Tensor) -> tuple[Tensor, Tensor, int]:
        """``(R − R̄, R̄, fresh)``: the prediction errors against the averages before this batch (a new condition
        starts at the mean reward of its trials here), then the averages take in the trials in order."""
        r = rewards.tolist()
        start = dict(self.values)
        fresh = 0
        for k in set(keys) - start.keys():
            mine = [v for key, v in zip(keys, r) if key == k]
            start[k] = mine[0] if min(mine) == max(mine) else math.fsum(mine) / len(mine)  # exact if all equal
            fresh += len(mine)
        base = torch.tensor([start[k] for k in keys], dtype=torch.float64)
        self.values.update({k: start[k] for k in keys})
        for k, v in zip(keys, r):
            self.values[k] += self.rate * (v - self.values[k])
        return rewards - base, base, fresh

    def state_dict(self) -> dict[str, float]:
        return dict(self.values)

    def load_state_dict(self, values: dict[str, float]) -> None:
        self.values = {str(k): float(v) for k, v in values.items()}


def low_pass_deviation(x: Tensor, decay: float) -> Tensor:
    """``δx(t) = x(t) − x̄(t−1)`` for ``t = 1 … T`` from states ``x`` ``(T+1, …)``, with ``x̄(0) = x(0)`` and
    ``x̄(t) = decay·x̄(t−1) + (1 − decay)·x(t)``; returns ``(T, …)``."""
    mean = x[0]
    out = torch.empty_like(x[1:])
    for t in range(1, x.shape[0]):
        out[t - 1] = x[t] - mean
        mean = decay * mean + (1.0 - decay) * x[t]
    return out


def supralinear(z: Tensor, kind: str) -> Tensor:
    """``S(z)``: ``z³``, ``z·|z|`` or ``z``. Each is multiplicative, ``S(ab) = S(a)·S(b)``."""
    if kind == "cube":
        return z * z * z
    if kind == "signed-square":
        return z * z.abs()
    return z


def hebbian(post: Tensor, pre: Tensor, coeff: Tensor | None = None) -> Tensor:
    """``Σ_t post(t)·pre(t)ᵀ`` per trial, ``(B, n_post, n_pre)`` from ``(T, B, n_post)`` and ``(T, B, n_pre)``; with
    ``coeff`` ``(B,)`` the weighted sum over trials ``Σ_b coeff_b Σ_t post pre ᵀ``, ``(n_post, n_pre)``."""
    if coeff is None:
        return torch.einsum("tbi,tbj->bij", post, pre)
    return torch.einsum("tbi,tbj->ij", post * coeff.to(post.dtype)[None, :, None], pre)


def plastic_grads(
    params: list[tuple[str, nn.Parameter]], model: nn.Module, updates: dict[str, Tensor], clip: float | None
) -> tuple[list[Tensor], list[str]]:
    """The direction for every trainable parameter: ``−update`` (clipped) for the plastic ones, zero elsewhere."""
    by_id = {
        id(model.rec.weight): "rec.weight",
        id(model.inp.weight): "inp.weight",
    }
    if model.inp.bias is not None:
        by_id[id(model.inp.bias)] = "inp.bias"
    grads, plastic = [], []
    for name, p in params:
        role = by_id.get(id(p))
        if role in updates:
            g = -updates[role].to(dtype=p.dtype, device=p.device)
            if clip is not None:
                g = g.clamp(-clip, clip)
            grads.append(g)
            plastic.append(name)
        else:
            grads.append(torch.zeros_like(p))
    return grads, plastic


# -- the rule --------------------------------------------------------------------------------------------------
class TrialRule(Estimator):
    """What the trial-level rules share: per-condition reward baselines (saved in the state) and the write-out."""

    baselines: RewardBaselines
    clip: float | None

    def _finish(
        self,
        params: list[tuple[str, nn.Parameter]],
        net: nn.Module,
        updates: dict[str, Tensor],
        rewards: Tensor,
        rpe: Tensor,
        fresh: int,
        losses: Tensor,
        cost: Cost,
    ) -> Estimate:
        """Write the plastic parameters' directions (zero for the rest) and report the trial's reward."""
        grads, plastic = plastic_grads(params, net, updates, self.clip)
        write_grad(params, grads, owned=True)
        info: dict[str, Any] = {
            "reward": float(rewards.mean()),
            "rpe": float(rpe.mean()),
            "fresh": fresh,
            "conditions": len(self.baselines.values),
            "plastic": plastic,
        }
        return Estimate(loss=float(losses.mean()), cost=cost, loss_is_probe_mean=True, info=info)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["baselines"] = self.baselines.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.baselines.load_state_dict(state["baselines"])


class Miconi(TrialRule):
    """Miconi's rule: supralinear Hebbian traces of activity fluctuations, reinforced by one reward per trial.

    A chaotic rate network (:class:`~unigrad.bio.rate_rnn.RateRNN`, gain about 1.5) is perturbed by rare kicks: each
    unit, at each step, with probability ``p`` (about 3 Hz, ``p = 0.003·dt`` with ``dt`` in ms) receives a jump
    uniform in ``[−σ, σ]`` (:class:`unigrad.noise.SparseKicks`). The rule never reads the kicks. Each unit
    high-pass filters its own state, ``δx_i(t) = x_i(t) − x̄_i(t−1)`` with the fast running average
    ``x̄_i(t) = β·x̄_i(t−1) + (1 − β)·x_i(t)`` (``x̄(0) = x(0)``), and each synapse ``j → i`` accumulates over
    the trial ``t = 1 … T`` a supralinear function of the product of its presynaptic rate and that fluctuation::

        e_ij = Σ_t S(r_j(t−1)·δx_i(t))                      S(z) = z³ (default)

    At the end of the trial a single reward ``R`` arrives (the task's reward on its response window), is compared with
    a running average ``R̄_c`` of the rewards of the same trial condition ``c``, and::

        ΔW_ij = η·e_ij·(R − R̄_c)            then      R̄_c ← R̄_c + ρ·(R − R̄_c)

    The direction written into ``rec.weight.grad`` is ``−e·(R − R̄_c)`` (averaged over the ``B`` trials of a batch),
    so ``torch.optim.SGD(lr=η)`` applies ``W ← W + η·e·(R − R̄_c)``, the rule's own step; any other optimizer rescales
    it. The kicks drive large, sparse fluctuations whose cube dominates the trace (the small fluctuations of the
    deterministic dynamics are cubed away), so ``e`` approximately correlates the kicks, as seen through the
    activity, with the presynaptic rates: node perturbation with noise the rule cannot read. That needs a step that is
    short against ``τ`` (the paper's ``dt/τ = 1/30``): the deterministic change of ``x`` per step grows with ``dt/τ``
    while a kick does not, and at coarse steps (``dt/τ = 0.2``) the cubed deterministic motion is already a large
    share of the trace (measured in ``docs/biology.md``), a term that only the reward baseline keeps from biasing the
    update.

    What is trained
        The recurrent weights ``W_rec`` (``rec.weight``), as in the paper. With ``train_input=True`` also the input
        weights and bias (``inp.weight``, ``inp.bias``), whose traces pair ``δx_i(t)`` with ``u_j(t−1)`` and with 1.
        Miconi's output is one of the recurrent units and his input weights are fixed; the RateRNN's readout
        (``out``) has no activity fluctuation of its own to correlate, so the rule leaves it alone: every trainable
        parameter the rule does not train gets a zero direction (freeze it, or give the network a fixed readout,
        to reproduce the paper's setting; ``Estimate.info["plastic"]`` names what was trained).

    Inaccessible noise
        The rule reads only the trajectory's states and rates (``x`` and ``r``), never ``Trajectory.noise``: it works
        unchanged whether the kicks are marked ``accessible`` or not, and with the network's own intrinsic noise.

    Requirements: a :class:`~unigrad.bio.rate_rnn.RateRNN` (anything whose ``run(inputs, noise)`` returns a
    :class:`~unigrad.bio.rate_rnn.Trajectory` and that has ``rec``/``inp`` ``nn.Linear`` layers), and an objective with
    ``inputs`` ``(T, B, n_in)`` and ``reward(outputs) → (B,)``, such as ``task.objective(batch)`` of
    :mod:`unigrad.bio.tasks`.

    Cost per call: one noisy run of the ``B`` trials, counted as ``B`` forwards (one trial is one sample of the
    unrolled network, whatever its length); no backward. ``Estimate.loss`` is the mean task loss of those noisy trials
    (``loss_is_probe_mean=True``); ``info`` holds ``reward`` and ``rpe`` (means over the batch), ``fresh`` (trials
    whose condition was new), ``conditions`` (known so far) and ``plastic``.

    State (``state_dict``): seed, step and the reward average of every condition seen.

    Args:
        noise: the exploration noise injected into the units each trial: ``"miconi"`` (sparse kicks with
            ``p = min(1, 0.003·dt)`` and ``σ = 0.5``, ``accessible=False``, built from the network's ``dt``), any
            :class:`~unigrad.noise.base.NoiseProcess` or ``make_noise`` spec (``"sparse-kicks:p=0.06:sigma=0.5"``),
            or ``None``: inject nothing and learn from the network's own ``intrinsic`` noise (which it must have).
            The injected noise of call ``k`` is ``noise.sequence(T, (B, n_rec), seed=seed, trial=k, stream=0,
            dt=dt)`` (default: ``"miconi"``).
        activity_decay: ``β`` in ``[0, 1)``, the per-step decay of the running average ``x̄``; 0.05 as in the
            published code; ``β = 0`` makes ``δx(t) = x(t) − x(t−1)`` (default: 0.05).
        supralinear: ``S``: ``"cube"`` (``z³``), ``"signed-square"`` (``z·|z|``, which the author's code notes
            works too) or ``"none"`` (``z``: a plain Hebbian trace, for comparison) (default: ``"cube"``).
        baseline_rate: ``ρ`` in ``(0, 1]``, the rate of the running reward average; 0.25 as in the published
            code. A condition seen for the first time starts its average at the mean reward of its trials in that
            batch, so with one trial per batch its first trial changes nothing (default: 0.25).
        condition: what names a trial condition for the reward average: ``"inputs"`` (the paper's trial
            type: trials with the same input sequence share an average; only meaningful for tasks with a few
            discrete conditions, such as ``dnms`` — with noisy inputs every trial is new and nothing is learned),
            ``"labels"`` (the batch's ``labels``) or ``"global"`` (one average for all trials)
            (default: ``"inputs"``).
        scale_by_baseline: multiply the change by ``|R̄_c|``, as the paper's code does (with the reward a
            negative error, ``|R̄_c|`` is the condition's recent error: steps shrink as it is learned)
            (default: False).
        clip: clip every entry of the direction to ``[−clip, clip]``; ``None``: no clipping. With ``SGD(lr=η)``
            the paper's clipping of ``ΔW`` to ``±c`` is ``clip = c/η`` (default: None).
        train_input: also train the input weights and bias (default: False).
        seed: keys the injected noise (default: 0).

    References:
        [1] T. Miconi, "Biologically plausible learning in recurrent neural networks reproduces neural dynamics
            observed during cognitive tasks", eLife 6:e20899 (2017), and the author's code
            (github.com/ThomasMiconi/BiologicallyPlausibleLearningRNN): a 200-unit network with ``τ = 30`` ms,
            ``dt = 1`` ms, kicks with probability 0.003 per ms of amplitude uniform in ``±16`` on the input
            (a jump of up to ``16·dt/τ ≈ 0.53`` in ``x``), ``β = 0.05``, ``S(z) = z³``, a per-condition reward
            average with ``ρ = 0.25``, ``η = 0.1``, the weight change clipped to ``±3·10⁻⁴``, and the change
            further multiplied by the condition's mean error ``|R̄_c|``; it reaches about 95% correct on delayed
            non-match-to-sample in about 1,000 trials.
    """

    name = "miconi"
    order = 0
    description = "Miconi 2017: e_ij = Σ_t (r_j(t−1)·(x_i(t) − x̄_i))³, ΔW = η·e·(R − R̄_condition), noise never read"
    _options = (
        "noise",
        "activity_decay",
        "supralinear",
        "baseline_rate",
        "condition",
        "scale_by_baseline",
        "clip",
        "train_input",
    )

    def __init__(
        self,
        noise: NoiseProcess | str | None = "miconi",
        *,
        activity_decay: float = 0.05,
        supralinear: str = "cube",
        baseline_rate: float = 0.25,
        condition: str = "inputs",
        scale_by_baseline: bool = False,
        clip: float | None = None,
        train_input: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.noise = check_noise_option(noise, "miconi")
        self.activity_decay = check_fraction("activity_decay", activity_decay, low_open=False, high_open=True)
        check_choice("supralinear", supralinear, SUPRALINEAR)
        self.baseline_rate = check_fraction("baseline_rate", baseline_rate, low_open=True, high_open=False)
        check_choice("condition", condition, CONDITIONS)
        check_optional(check_number, "clip", clip, low=0, low_inclusive=False, what="a number > 0 or None")
        for option, value in (("scale_by_baseline", scale_by_baseline), ("train_input", train_input)):
            if not isinstance(value, bool):
                raise UnigradError(f"option {option} must be True or False, got {value!r}")
        self.supralinear, self.condition = supralinear, condition
        self.scale_by_baseline, self.train_input = scale_by_baseline, train_input
        self.clip = None if clip is None else float(clip)
        self.baselines = RewardBaselines(self.baseline_rate)

    def noise_for(self, model: nn.Module) -> NoiseProcess | None:
        """The process injected into ``model``'s units (``"miconi"``: 3 Hz sparse kicks at the model's ``dt``)."""
        if self.noise == "miconi":
            dt = float(getattr(model, "dt", 1.0))
            return SparseKicks(min(1.0, KICK_RATE * dt), KICK_SIZE, accessible=False)
        assert self.noise is None or isinstance(self.noise, NoiseProcess)
        return self.noise

    @torch.no_grad()
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        net = rate_network(model, self.name)
        inputs = trial_inputs(objective, net, self.name)
        traj = run_trials(net, inputs, self.noise_for(net), self.seed, self.step, self.name)
        batch = inputs.shape[1]
        cost = Cost(forwards=batch)
        rewards, losses = trial_rewards(objective, traj.outputs, self.name)
        keys = condition_keys(objective, inputs, self.condition)
        rpe, base, fresh = self.baselines.observe(keys, rewards)
        coeff = (rpe * base.abs() if self.scale_by_baseline else rpe) / batch
        # e_ij = Σ_t S(r_j(t−1)·δx_i(t)) = Σ_t S(δx_i(t))·S(r_j(t−1)), S multiplicative
        post = supralinear(low_pass_deviation(traj.x.double(), self.activity_decay), self.supralinear)
        updates = {"rec.weight": hebbian(post, supralinear(traj.r[:-1].double(), self.supralinear), coeff)}
        if self.train_input:
            updates["inp.weight"] = hebbian(post, supralinear(traj.inputs.double(), self.supralinear), coeff)
            updates["inp.bias"] = (post * coeff[None, :, None]).sum(dim=(0, 1))
        return self._finish(params, net, updates, rewards, rpe, fresh, losses, cost)
