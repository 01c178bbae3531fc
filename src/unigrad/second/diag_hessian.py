"""Diagonal-Hessian preconditioning: the :class:`DiagHessian` estimator (Hutchinson's diagonal; Sophia, AdaHessian)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, check_finite, loss_and_gradient
from unigrad.core.options import check_choice, check_fraction, check_positive
from unigrad.core.params import write_grad
from unigrad.core.rng import ProbeNoise
from unigrad.second.curvature import FlatLoss, hutchinson_diagonal, keyed_probes

RULES = ("sophia", "adahessian", "newton")
DISTRIBUTIONS = ("rademacher", "gaussian")
_DEFAULT_BETA = {"sophia": 0.99, "adahessian": 0.999, "newton": 0.99}
_DEFAULT_EPS = {"sophia": 1e-12, "adahessian": 1e-4, "newton": 1e-8}
_DEFAULT_BIAS_CORRECTION = {"sophia": False, "adahessian": True, "newton": True}


class DiagHessian(Estimator):
    """Diagonal-Hessian preconditioning by Hutchinson's estimator (AdaHessian, Sophia, diagonal Newton).

    With ``f`` the mean loss, ``g = ∇f(θ)`` and ``H = ∇²f(θ)``, Hutchinson's estimator of the diagonal
    (Hutchinson 1990, "A stochastic estimator of the trace of the influence matrix"; Bekas, Kokiopoulou &
    Saad 2007, "An estimator for the diagonal of a matrix") is, for ``q`` random probes ``z_i``::

        D̂ = (1/q) Σ_i z_i ⊙ (H z_i)

    Each ``H z_i`` is one Hessian-vector product (Pearlmutter's double backward,
    :class:`~unigrad.second.curvature.FlatLoss`).
    ``E[z zᵀ] = I`` makes it unbiased: ``E[D̂_j] = Σ_k H_jk E[z_j z_k] = H_jj``. With Rademacher ``z``
    (±1 entries) its variance is ``Var D̂_j = (1/q) Σ_{k≠j} H_jk²``, so it is *exact* when ``H`` is diagonal;
    Gaussian ``z`` (Sophia-H's choice) adds ``2H_jj²/q``. ``D̂`` is
    :func:`unigrad.second.curvature.hutchinson_diagonal`, with the probes of
    :func:`~unigrad.second.curvature.keyed_probes`.

    The estimate is smoothed by an exponential moving average, updated on every ``interval``-th call
    (calls ``0, k, 2k, …``; Sophia's ``k``), and the direction written into ``.grad`` (so that
    ``torch.optim.SGD(lr=η)`` steps ``θ ← θ − η·d``) is, with ``u`` the number of curvature updates so far,
    ``c = 1 − β^u`` the bias correction (``c = 1`` when ``bias_correction`` is off) and ``m`` the gradient
    (``momentum = 0``) or its moving average (below):

    * ``rule="sophia"`` (Liu, Li, Hall, Liang & Ma 2023, "Sophia: a scalable stochastic second-order
      optimizer for language model pre-training", Algorithm 3, Sophia-H)::

          h ← β h + (1 − β) D̂,        d = clip(m / max(γ·h/c, ε), −1, 1)

      Entries with small or negative curvature fall back to ``±1`` (sign descent), so ``|d_j| ≤ 1`` and a
      step is at most ``η`` per coordinate. Sophia starts from ``h = 0`` without bias correction (the
      default here), so its first steps are mostly clipped.
    * ``rule="adahessian"`` (Yao, Gholami, Shen, Mustafa, Keutzer & Mahoney 2021, "ADAHESSIAN: an adaptive
      second order optimizer for machine learning", AAAI, Algorithm 1 with Hessian power 1)::

          v ← β v + (1 − β) D̂²,       d = m̂ / (√(v/c) + ε)

      With ``spatial_average=True``, ``D̂`` of every parameter with 3 or more dimensions (a convolution
      kernel ``(out, in, *kernel)``) is first replaced by the mean of ``|D̂|`` over its kernel dimensions,
      AdaHessian's spatial averaging; the default (off) keeps the per-entry estimate.
    * ``rule="newton"`` (diagonal Newton; Becker & LeCun 1988, "Improving the convergence of
      back-propagation learning with second order methods", with the diagonal estimated stochastically)::

          h ← β h + (1 − β) D̂,        d = m / max(|h/c|, ε)

      ``SGD(lr=1)`` then takes the diagonal Newton step: exact in one step on a quadratic with a diagonal
      Hessian, whatever its condition number.

    Momentum. With ``momentum = β₁ > 0`` the estimator keeps ``m ← β₁ m + (1 − β₁) g`` (first call:
    ``m = (1 − β₁) g``) and uses it in place of ``g``: for ``"adahessian"`` bias-corrected as in Adam and
    AdaHessian, ``m̂ = m / (1 − β₁^t)`` (``t`` the number of calls); for ``"sophia"`` and ``"newton"`` not,
    as in Sophia. Then ``SGD(lr=η)`` without momentum reproduces the papers' updates (without their weight
    decay, which the outer optimizer can add). With the default ``momentum = 0`` the direction uses the
    current gradient and the outer optimizer may supply momentum instead, but that is *not* the same
    method for ``"sophia"``: ``SGD(momentum=β₁, dampening=β₁)`` averages the clipped ratios,
    ``Σ_j (1−β₁)β₁^j clip(g_{t−j} / max(γh_{t−j}, ε))``, whereas Sophia clips the ratio of the averaged
    gradient, ``clip(Σ_j (1−β₁)β₁^j g_{t−j} / max(γh_t, ε))``. The two agree only while no coordinate is
    clipped and ``h`` does not change within the averaging window (between curvature updates); otherwise
    averaging after clipping shrinks the steps of coordinates whose gradient changes sign from step to
    step. (For ``"adahessian"`` and ``"newton"`` the maps ``m ↦ d`` are linear for a fixed ``h``, so outer
    momentum differs only in using the curvature of each step rather than the current one, and in Adam's
    bias correction of ``m``.)

    Cost per call, for a batch of ``B`` samples: ``forwards`` B and ``backwards`` B (the loss and the
    gradient); on curvature-update calls ``hvps`` ``q·B`` in addition (and the gradient's graph is kept for
    the double backward). State (``state_dict``): the step counter, the curvature EMA (a flat tensor: of
    ``D̂`` for sophia and newton, of ``D̂²`` for adahessian), the number of curvature updates ``u`` (for the
    bias correction) and the momentum buffer, so a resumed run continues bitwise.

    Args:
        rule: ``"sophia"``, ``"adahessian"`` or ``"newton"`` (above) (default: ``"sophia"``).
        probes: ``q ≥ 1`` probes per curvature update (default: 1).
        beta: EMA factor ``β ∈ [0, 1)`` of the curvature; ``None``: 0.99 for sophia and newton — Sophia's
            ``β₂`` —, 0.999 for adahessian — AdaHessian's ``β₂``. ``β = 0`` uses the latest ``D̂`` only
            (default: None).
        interval: update the curvature on every ``k``-th call (Sophia uses 10). Between updates the stored
            estimate is reused and no Hessian-vector product is done (default: 1).
        eps: ``ε > 0``, a floor on ``γh`` (sophia) or ``|h|`` (newton), added to ``√v`` (adahessian);
            ``None``: 1e-12 for sophia, Sophia's; 1e-4 for adahessian, AdaHessian's; 1e-8 for newton
            (default: None).
        gamma: Sophia's ``γ > 0``; only used by ``"sophia"``. The paper's ``γ = 0.01`` multiplies a
            curvature estimate its code scales by the batch size (``ρ·B·h`` there, with ``h`` the
            curvature of the mean loss, as here), so the comparable value here is ``γ·B``; at
            ``γ = 0.01`` nearly every entry is clipped and the rule becomes sign descent (measured on a
            small MLP in ``docs/second-order.md``), which is why the default is 1 (default: 1.0).
        momentum: ``β₁ ∈ [0, 1)``, the gradient's moving average kept here; 0: none (default: 0.0).
        bias_correction: divide the curvature EMA by ``1 − β^u``; ``None``: as in the rule's paper — off
            for sophia, on for adahessian and newton (default: None).
        spatial_average: AdaHessian's averaging over convolution kernels (``"adahessian"`` only)
            (default: False).
        distribution: probe entries, ``"rademacher"`` or ``"gaussian"`` (Sophia-H's)
            (default: ``"rademacher"``).
        noise_source: ``"generator"`` (an exact RNG stream per key), ``"table"`` or ``"auto"`` (see
            ``core/rng.py``). Probe ``i`` of call ``t`` is keyed ``(seed, t, i, tensor)``
            (default: ``"generator"``).
        seed: names the probe stream (default: 0).

    References:
        M. F. Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
        smoothing splines", Communications in Statistics – Simulation and Computation 19(2) (1990).
        C. Bekas, E. Kokiopoulou, Y. Saad, "An estimator for the diagonal of a matrix", Applied
        Numerical Mathematics 57 (2007).
        H. Liu, Z. Li, D. Hall, P. Liang, T. Ma, "Sophia: a scalable stochastic second-order optimizer for
        language model pre-training", arXiv:2305.14342 (2023).
        Z. Yao, A. Gholami, S. Shen, M. Mustafa, K. Keutzer, M. W. Mahoney, "ADAHESSIAN: an adaptive second
        order optimizer for machine learning", AAAI (2021).
        S. Becker, Y. LeCun, "Improving the convergence of back-propagation learning with second order
        methods", Proceedings of the 1988 Connectionist Models Summer School (1988).
    """

    name = "diag-hessian"
    order = 2
    description = "gradient preconditioned by a Hutchinson estimate of the Hessian diagonal (Sophia, AdaHessian)"
    _options = (
        "rule",
        "probes",
        "beta",
        "interval",
        "eps",
        "gamma",
        "momentum",
        "bias_correction",
        "spatial_average",
        "distribution",
        "noise_source",
    )

    def __init__(
        self,
        rule: str = "sophia",
        probes: int = 1,
        beta: float | None = None,
        interval: int = 1,
        eps: float | None = None,
        gamma: float = 1.0,
        momentum: float = 0.0,
        bias_correction: bool | None = None,
        spatial_average: bool = False,
        distribution: str = "rademacher",
        noise_source: str = "generator",
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_choice("rule", rule, RULES)
        check_positive("probes", probes, integer=True)
        beta = _DEFAULT_BETA[rule] if beta is None else beta
        check_fraction("beta", beta)
        check_positive("interval", interval, integer=True)
        eps = _DEFAULT_EPS[rule] if eps is None else eps
        check_positive("eps", eps)
        check_positive("gamma", gamma)
        check_fraction("momentum", momentum)
        bias_correction = _DEFAULT_BIAS_CORRECTION[rule] if bias_correction is None else bias_correction
        for option, flag in (("bias_correction", bias_correction), ("spatial_average", spatial_average)):
            if not isinstance(flag, bool | int) or flag not in (0, 1):
                raise UnigradError(f"option {option} must be true or false, got {flag!r}")
        if spatial_average and rule != "adahessian":
            raise UnigradError(f"option spatial_average applies to rule adahessian only, not {rule!r}")
        check_choice("distribution", distribution, DISTRIBUTIONS)
        self.noise = ProbeNoise(distribution, noise_source)
        self.rule, self.probes, self.interval = rule, probes, interval
        self.beta, self.eps, self.gamma, self.momentum = float(beta), float(eps), float(gamma), float(momentum)
        self.bias_correction, self.spatial_average = bool(bias_correction), bool(spatial_average)
        self.distribution, self.noise_source = distribution, noise_source
        self.curvature: Tensor | None = None  # EMA of D̂ (sophia, newton) or of D̂² (adahessian), flat
        self.updates = 0
        self.momentum_buffer: Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.clone()

        return {
            **super().state_dict(),
            "curvature": copy(self.curvature),
            "updates": self.updates,
            "momentum_buffer": copy(self.momentum_buffer),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        updates = int(state["updates"])
        if (state["curvature"] is None) != (updates == 0):
            raise UnigradError("diag-hessian state is corrupt: the curvature and its update count disagree")
        self.curvature = None if state["curvature"] is None else state["curvature"].clone()
        self.updates = updates
        self.momentum_buffer = None if state["momentum_buffer"] is None else state["momentum_buffer"].clone()

    def _spatial_average(self, diag: Tensor, flat: FlatLoss) -> Tensor:
        """AdaHessian's averaging of ``|D̂|`` over the kernel dimensions of tensors with ≥ 3 dimensions."""
        pieces = []
        for t in flat.unflatten(diag):
            if t.dim() >= 3:
                t = t.abs().mean(dim=tuple(range(2, t.dim())), keepdim=True).expand_as(t)
            pieces.append(t.reshape(-1))
        return torch.cat(pieces)

    def _gradient(
        self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]], cost: Cost
    ) -> tuple[float, Tensor]:
        """Loss and flat gradient by one plain forward and backward (calls without a curvature update)."""
        loss, grads = loss_and_gradient(objective, model, params, cost, self.name)
        return loss, torch.cat([g.detach().reshape(-1) for g in grads])

    def min_forwards_per_sample(self) -> float:
        """One gradient per step: the ``probes`` HVPs run only on every ``interval``-th step."""
        return 1.0

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        d = sum(p.numel() for _, p in params)
        if self.curvature is not None and self.curvature.numel() != d:
            raise UnigradError(
                f"diag-hessian holds a curvature estimate for {self.curvature.numel():,} parameters but the model "
                f"has {d:,}; use a fresh estimator for a different model"
            )
        update = self.curvature is None or self.step % self.interval == 0
        if update:
            flat = FlatLoss(model, objective, params, method=self.name)
            probe = keyed_probes(self.noise, self.seed, self.step, flat.unflatten(flat.theta0))
            diag = hutchinson_diagonal(flat.hvp, probe, self.probes)
            loss, g, cost = flat.loss, flat.grad, flat.cost
            if self.rule == "adahessian":
                if self.spatial_average:
                    diag = self._spatial_average(diag, flat)
                diag = diag * diag
            if self.curvature is None:
                self.curvature = (1.0 - self.beta) * diag
            else:
                self.curvature = self.beta * self.curvature + (1.0 - self.beta) * diag
            self.updates += 1
        else:
            cost = Cost()
            loss, g = self._gradient(model, objective, params, cost)
        assert self.curvature is not None
        correction = 1.0 - self.beta**self.updates if self.bias_correction else 1.0
        h = self.curvature / correction

        m = g
        if self.momentum > 0:
            if self.momentum_buffer is None:
                self.momentum_buffer = (1.0 - self.momentum) * g
            else:
                self.momentum_buffer = self.momentum * self.momentum_buffer + (1.0 - self.momentum) * g
            m = self.momentum_buffer
            if self.rule == "adahessian":
                m = m / (1.0 - self.momentum ** (self.step + 1))

        info: dict[str, Any] = {"curvature_updated": update, "gradient_norm": float(g.norm())}
        if self.rule == "sophia":
            direction = (m / (self.gamma * h).clamp_min(self.eps)).clamp(-1.0, 1.0)
            info["curvature_mean"] = float(h.mean())
            info["clipped_fraction"] = float((direction.abs() >= 1.0).double().mean())
        elif self.rule == "adahessian":
            root = h.sqrt()
            direction = m / (root + self.eps)
            info["curvature_mean"] = float(root.mean())
        else:
            direction = m / h.abs().clamp_min(self.eps)
            info["curvature_mean"] = float(h.mean())
        check_finite(info["curvature_mean"], "the diag-hessian curvature estimate")
        shapes = [p.shape for _, p in params]
        sizes = [p.numel() for _, p in params]
        write_grad(params, [t.view(s) for t, s in zip(direction.split(sizes), shapes, strict=True)], owned=True)
        return Estimate(loss=loss, cost=cost, info=info)
