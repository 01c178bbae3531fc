"""Ornstein–Uhlenbeck adaptation: the :class:`OUA` estimator (OU noise around the mean, reinforced by the RPE)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, check_finite, reduce
from unigrad.core.options import check_int, check_number
from unigrad.core.params import write_grad
from unigrad.core.probe import losses_at
from unigrad.core.rng import SOURCES, ProbeNoise

SCHEMES = ("euler-maruyama", "heun", "exact")
INITS = ("zero", "stationary")
REWARDS = ("negative-loss",)

_INCREMENT, _INITIAL = 0, 1  # probe part of the noise key: the step's increment ξ, the stationary initial draw


def _number(option: str, value: Any) -> float:
    return check_number(option, value)


class OUA(Estimator):
    """OUA — Ornstein–Uhlenbeck adaptation: parameters wander around a mean that the reward-prediction error drags.

    The system runs with parameters ``θ`` that fluctuate as an Ornstein–Uhlenbeck process around an adaptive
    mean ``μ``; a running average ``r̄`` predicts the reward ``r`` earned at ``θ``, and the mean follows the
    deviations that beat the prediction (García Fernández, Ahmad & van Gerven)::

        dr̄ = ε (r − r̄) dt
        dθ = λ (μ − θ) dt + σ dW
        dμ = η (r − r̄)(θ − μ) dt

    Here ``r = −L(θ)``, the negative mean loss of the objective at the *noisy* parameters (or any reward
    computed from the per-sample losses, see ``reward``). Only loss values and the noise are used: a
    zeroth-order rule, with the reward-prediction error ``r − r̄`` as its global third factor.

    How the SDE maps onto the estimator contract
        The model's trainable parameters hold the mean ``μ``. The estimator keeps the OU deviation
        ``δ = θ − μ`` (one tensor per trainable parameter) as its state and advances it as the OU process
        ``dδ = −λδ dt + σ dW``: the drift ``λ(μ − θ)`` of ``θ`` only involves ``θ − μ``. (In the SDE ``θ`` does
        not move when ``μ`` does, so ``dδ = dθ − dμ`` also carries ``−η(r − r̄)δ dt``; the estimator never sees
        the optimizer's step and leaves that term out, which changes ``δ`` by a relative ``η·|r − r̄|·dt`` per
        call. Equivalently, ``θ`` is carried along with ``μ``.) Call ``k`` (the estimator's step):

        1. advances the deviation by one step, ``δ ← a·δ + b·ξ_k`` with ``ξ_k ~ N(0, I)`` keyed by
           ``(seed, step, probe 0, tensor)`` (see ``scheme`` for ``a`` and ``b``);
        2. evaluates the objective once at ``θ = μ + δ`` with ``torch.func.functional_call`` (the model is
           not touched) and forms ``r``;
        3. writes the direction ``d = −(r − r̄)·δ·dt`` into ``.grad``, so that ``torch.optim.SGD(lr=η)``
           takes ``μ ← μ + η (r − r̄) δ dt``: the Euler step of the ``dμ`` equation, with ``lr`` playing
           ``η`` exactly;
        4. advances the baseline, ``r̄ ← r̄ + ε dt (r − r̄)`` (the direction used ``r̄`` from before the update,
           as an explicit Euler step does).

        With any other optimizer (Adam, momentum) the step is no longer the SDE's: the direction is only a
        reward-correlated search direction that the optimizer rescales.

    Why it descends
        For small ``δ``, ``r − r̄ ≈ −∇L·δ + (−L(μ) − r̄)``; ``δ`` has mean zero and the baseline is built from
        past rewards only, so ``E[d] = dt·v·κ·∇L(μ)`` with ``v`` the stationary variance of ``δ`` and
        ``κ = (1 − a)/(1 − (1 − ε dt)·a)`` (in ``(0, 1]`` for ``a ≥ 0``) the share of the correlation that
        the baseline does not absorb (``r̄`` remembers rewards earned with earlier, correlated deviations;
        ``κ ≈ λ/(λ + ε)`` for small ``dt``). On a quadratic this holds exactly once ``δ`` and ``r̄`` are
        stationary at a fixed ``μ`` (the third moments of a Gaussian vanish).

    Cost: one forward of the objective per call (``n_samples(objective)`` samples), no backward.
    ``Estimate.loss`` is the mean loss at the noisy ``θ`` (``loss_is_probe_mean=True``); ``info`` holds
    ``reward`` (``r``), ``baseline`` (the ``r̄`` the direction used), ``rpe`` (``r − r̄``) and
    ``deviation_norm`` (``‖δ‖``).

    State (``state_dict``): seed, step, the deviation tensors ``δ`` (``None`` before the first call or after
    a reset) and the current ``r̄`` (``None`` until the first reward when ``baseline`` is ``None``).

    Args:
        lam: ``λ`` (> 0), the mean-reversion rate of the deviation; ``1/λ`` is its correlation time
            (default: 1.0).
        sigma: ``σ`` (> 0), the diffusion of the deviation (default: 0.1).
        eps: ``ε`` (≥ 0), the rate of the reward average; ``1/ε`` is its memory. ``ε·dt ≤ 1`` is required
            (an Euler step with ``ε·dt > 1`` overshoots the reward). ``ε = 0`` keeps ``r̄`` at its initial
            value (default: 1.0).
        dt: the integration step (> 0), in the unit of ``1/λ`` and ``1/ε``; one call is one step
            (default: 0.1).
        scheme: how the deviation ``δ ← a·δ + b·ξ`` is advanced, with ``h = λ·dt``:

            - ``"euler-maruyama"`` (the paper's): ``a = 1 − h``, ``b = σ√dt``. Stationary variance
              ``v = b²/(1 − a²) = σ²/(λ(2 − h)) = σ²/(2λ)·(1 − h/2)⁻¹``, an ``O(dt)`` excess over the SDE's
              ``σ²/(2λ)``; lag-1 autocorrelation ``1 − λ dt``.
            - ``"heun"``: the stochastic Heun (predictor–corrector) step, ``a = 1 − h + h²/2``,
              ``b = σ√dt·(1 − h/2)``; ``v = σ²/(2λ)·(1 − h²/4 + O(h³))``. Free here: the drift of ``δ``
              needs no reward, so it costs no extra forward (``μ`` and ``r̄`` keep their Euler steps, since a
              corrector for them would need a second evaluation).
            - ``"exact"``: the exact OU transition, ``a = e^{−h}``, ``b = σ√((1 − a²)/(2λ))``; ``v = σ²/(2λ)``
              and autocorrelation ``e^{−λ dt}`` at any ``dt``.

            ``λ·dt < 2`` is required for the first two (otherwise the recursion diverges).
            :attr:`OUA.stationary_variance` and :attr:`OUA.autocorrelation` give ``v`` and ``a``
            (default: ``"euler-maruyama"``).
        init: the deviation before the first step (and after every reset): ``"zero"`` (``θ = μ``) or
            ``"stationary"`` (a draw from ``N(0, v)``, keyed by ``(seed, step, probe 1, tensor)``, so ``δ`` is
            stationary from the first call) (default: ``"zero"``).
        baseline: the initial ``r̄``; ``None`` sets it to the first reward seen, so the first direction is
            exactly zero (default: None).
        reset_every: re-initialise the deviation (per ``init``) every this many calls (at steps that are
            multiples of it), for episodic use; ``0`` never. :meth:`OUA.reset` does it by hand. ``r̄`` is
            never reset (default: 0).
        reward: ``"negative-loss"`` (``r = −mean loss``) or a callable taking the per-sample losses at ``θ``
            and returning the scalar reward (a task score, a clipped or shaped loss, …)
            (default: ``"negative-loss"``).
        noise_source: ``"generator"`` (one keyed generator stream per step, so the increments are
            independent across steps), ``"table"`` or ``"auto"`` (windows into the shared noise table:
            cheaper, but windows of different steps may overlap); see ``core/rng.py``
            (default: ``"generator"``).
        seed: names the noise stream (default: 0).

    References:
        [1] J. García Fernández, N. Ahmad, M. van Gerven, "Ornstein–Uhlenbeck Adaptation as a Mechanism for
            Learning in Brains and Machines", arXiv:2410.13563; Entropy 26(12):1125, 2024. The SDE is
            integrated with Euler–Maruyama and applied to supervised regression, reinforcement learning,
            recurrent networks and weather forecasting, and, with ``λ`` and ``σ`` themselves adapted, to
            meta-learning (not implemented here).
    """

    name = "oua"
    order = 0
    description = "Ornstein–Uhlenbeck adaptation: OU noise around the mean, reinforced by the reward-prediction error"
    _options = ("lam", "sigma", "eps", "dt", "scheme", "init", "baseline", "reset_every", "reward", "noise_source")

    def __init__(
        self,
        lam: float = 1.0,
        sigma: float = 0.1,
        eps: float = 1.0,
        dt: float = 0.1,
        *,
        scheme: str = "euler-maruyama",
        init: str = "zero",
        baseline: float | None = None,
        reset_every: int = 0,
        reward: str | Callable[[Tensor], Tensor | float] = "negative-loss",
        noise_source: str = "generator",
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        for option, value in (("lam", lam), ("sigma", sigma), ("dt", dt)):
            check_positive(option, _number(option, value))
        if not _number("eps", eps) >= 0:
            raise UnigradError(f"option eps must be a number >= 0, got {eps!r}")
        check_choice("scheme", scheme, SCHEMES)
        check_choice("init", init, INITS)
        check_choice("noise_source", noise_source, SOURCES)
        if eps * dt > 1:
            raise UnigradError(f"eps·dt must be <= 1 (the reward average would overshoot), got {eps}·{dt}")
        if scheme != "exact" and lam * dt >= 2:
            raise UnigradError(
                f"lam·dt must be < 2 for scheme {scheme!r} (the deviation diverges), got {lam}·{dt}; "
                f"lower dt or use scheme='exact'"
            )
        if baseline is not None:
            _number("baseline", baseline)
        check_int("reset_every", reset_every, what="an integer >= 0 (0: never)")
        if not callable(reward):
            check_choice("reward", reward, REWARDS)
        self.lam, self.sigma, self.eps, self.dt = float(lam), float(sigma), float(eps), float(dt)
        self.scheme, self.init, self.reset_every, self.reward = scheme, init, reset_every, reward
        self.baseline = None if baseline is None else float(baseline)
        self.noise_source = noise_source
        self.noise = ProbeNoise("gaussian", noise_source)
        self.a, self.b = self._coefficients()
        self.delta: list[Tensor] | None = None
        self.rbar: float | None = self.baseline

    # -- the discretised OU step ------------------------------------------------------------------
    def _coefficients(self) -> tuple[float, float]:
        """``(a, b)`` of the deviation's step ``δ ← a·δ + b·ξ`` for the chosen scheme."""
        h, s, dt = self.lam * self.dt, self.sigma, self.dt
        if self.scheme == "euler-maruyama":
            return 1.0 - h, s * math.sqrt(dt)
        if self.scheme == "heun":
            return 1.0 - h + 0.5 * h * h, s * math.sqrt(dt) * (1.0 - 0.5 * h)
        a = math.exp(-h)
        return a, s * math.sqrt(-math.expm1(-2.0 * h) / (2.0 * self.lam))

    @property
    def autocorrelation(self) -> float:
        """Lag-one autocorrelation ``a`` of the discretised deviation (``1 − λ dt`` for Euler–Maruyama)."""
        return self.a

    @property
    def stationary_variance(self) -> float:
        """Per-entry stationary variance ``b²/(1 − a²)`` of the discretised deviation (SDE: ``σ²/(2λ)``)."""
        return self.b * self.b / (1.0 - self.a * self.a)

    @property
    def baseline_share(self) -> float:
        """``κ = (1 − a)/(1 − (1 − ε dt)·a)``: in stationarity ``E[d] = dt·v·κ·∇L`` on a quadratic."""
        return (1.0 - self.a) / (1.0 - (1.0 - self.eps * self.dt) * self.a)

    def reset(self) -> None:
        """Re-initialise the deviation (per ``init``) at the next call; ``r̄`` is kept."""
        self.delta = None

    def _initial(self, params: list[tuple[str, nn.Parameter]]) -> list[Tensor]:
        if self.init == "zero":
            return [torch.zeros_like(p) for _, p in params]
        std = math.sqrt(self.stationary_variance)
        return [
            std * self.noise.raw(self.seed, self.step, _INITIAL, i, p.shape, p.dtype, p.device)
            for i, (_, p) in enumerate(params)
        ]

    # -- one call ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        delta = self.delta
        if delta is not None and [d.shape for d in delta] != [p.shape for _, p in params]:
            raise UnigradError(
                "oua: the trainable parameters changed shape since the last call; call reset() or use a new estimator"
            )
        if delta is None or (self.reset_every and self.step % self.reset_every == 0):
            delta = self._initial(params)
        # 1. advance the deviation: δ ← a·δ + b·ξ_k
        delta = [
            self.a * d + self.b * self.noise.raw(self.seed, self.step, _INCREMENT, i, p.shape, p.dtype, p.device)
            for i, (d, (_, p)) in enumerate(zip(delta, params, strict=True))
        ]
        # 2. one evaluation at θ = μ + δ
        cost = Cost()
        losses = losses_at(model, objective, [p.detach() + d for d, (_, p) in zip(delta, params)], cost)
        loss = check_finite(reduce(losses.double()))
        r = -loss if self.reward == "negative-loss" else self.reward(losses)
        r = check_finite(r.double().mean() if isinstance(r, Tensor) else r, "reward")
        rbar = r if self.rbar is None else self.rbar
        rpe = r - rbar
        # 3. the direction −(r − r̄)·δ·dt: SGD(lr=η) steps μ ← μ + η(r − r̄)δ dt
        write_grad(params, [(-rpe * self.dt) * d for d in delta], owned=True)
        # 4. commit the state; the baseline takes its Euler step after being used
        self.delta = delta
        self.rbar = rbar + self.eps * self.dt * rpe
        norm = math.sqrt(sum(float(d.double().square().sum()) for d in delta))
        info: dict[str, Any] = {"reward": r, "baseline": rbar, "rpe": rpe, "deviation_norm": norm}
        return Estimate(loss=loss, cost=cost, loss_is_probe_mean=True, info=info)

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["delta"] = None if self.delta is None else [d.clone() for d in self.delta]
        state["rbar"] = self.rbar
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        delta = state["delta"]
        self.delta = None if delta is None else [d.clone() for d in delta]
        self.rbar = None if state["rbar"] is None else float(state["rbar"])
