"""Newton's method with the exact Hessian: the :class:`Newton` estimator (damped, or in a trust region)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective
from unigrad.core.options import check_number
from unigrad.core.params import write_grad
from unigrad.second.curvature import FlatLoss, reduction_ratio


class Newton(Estimator):
    """Newton's method with the exact Hessian: Levenberg–Marquardt damping or a trust region.

    With ``f`` the mean loss, ``g = ∇f(θ)`` and ``H = ∇²f(θ)`` (formed exactly over the flattened trainable
    parameters from ``d`` Hessian–vector products by batched double backward,
    ``unigrad.second.curvature.FlatLoss.hessian``, so only for small models), the step is ``s`` and the
    estimate written to ``.grad`` is ``−s``, so that ``torch.optim.SGD(lr=1)`` (no momentum) moves
    ``θ ← θ + s``:

    * ``trust_region=False`` (damped Newton / Levenberg–Marquardt)::

          s = −(H + λI)⁻¹ g

      with ``λ = damping``, raised (×10 from ``max(damping, 1e-12·‖H‖)``) until ``H + λI`` is positive
      definite, so ``s`` is always a descent direction.

    * ``trust_region=True`` (default; Moré & Sorensen 1983, as ``scipy.optimize.minimize(method="trust-exact")``)::

          s = argmin_{‖s‖ ≤ Δ}  gᵀs + ½ sᵀHs

      solved exactly through the eigendecomposition ``H = QΛQᵀ``: ``s(λ) = −Q (Λ + λI)⁻¹ Qᵀg`` with
      ``λ = 0`` if ``H`` is positive definite and the Newton step fits, else the ``λ > max(0, −λ_min)``
      with ``‖s(λ)‖ = Δ`` (bisection in log-space). The step is tried with one extra evaluation:
      ``ρ = (f(θ) − f(θ + s)) / (−gᵀs − ½ sᵀHs)``; ``ρ > eta`` accepts it (else ``.grad`` is zero and
      ``θ`` stays), ``ρ < 1/4`` shrinks ``Δ ← Δ/4``, ``ρ > 3/4`` with ``‖s‖ = Δ`` grows
      ``Δ ← min(2Δ, max_radius)`` — the radius rule of scipy's trust-region methods. Both the actual and
      the predicted change are shifted by ``10ε·max(1, |f|)`` before dividing, so that at convergence,
      where both are rounding noise, the step counts as agreeing with the model rather than as a failure.
      In the hard case (``g`` orthogonal to the eigenvectors of ``λ_min``) the step is ``s(−λ_min)`` plus
      the eigenvector of ``λ_min`` out to the boundary (Moré & Sorensen §3).

    Cost per estimate, for ``B`` samples and ``d`` parameters: ``forwards`` B (the loss) plus B for the
    trial point with a trust region, ``backwards`` B (the gradient), ``hvps`` ``d·B`` (the Hessian's
    ``d`` columns). State (``state_dict``): the trust radius and the number of accepted steps.

    Args:
        trust_region: use the trust region (True) or damping only (False) (default: True).
        damping: ``λ ≥ 0`` added to the Hessian's diagonal without a trust region (default: 0.0).
        radius: initial trust radius ``Δ₀ > 0`` (default: 1.0).
        max_radius: the cap of the trust radius (default: 1000.0).
        eta: acceptance threshold on ``ρ``, in ``[0, 1/4)``; 0.15 is scipy's (default: 0.15).
        max_params: refuse models with more trainable values than this (the Hessian holds ``d²``
            numbers and costs ``d`` Hessian–vector products) (default: 2000).
        seed: unused (the method draws no noise) (default: 0).

    References:
        J. Nocedal & S. Wright, *Numerical Optimization*, 2nd ed., ch. 3–4 (2006).
        J. Moré & D. Sorensen, "Computing a trust region step", SIAM J. Sci. Stat. Comput. 4 (1983).
        K. Levenberg (1944); D. Marquardt (1963).
    """

    name = "newton"
    order = 2
    description = "exact-Hessian Newton step, damped (Levenberg–Marquardt) or in a trust region"
    _options = ("trust_region", "damping", "radius", "max_radius", "eta", "max_params")

    def __init__(
        self,
        trust_region: bool = True,
        damping: float = 0.0,
        radius: float = 1.0,
        max_radius: float = 1000.0,
        eta: float = 0.15,
        max_params: int = 2000,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if not isinstance(trust_region, bool | int) or trust_region not in (0, 1):
            raise UnigradError(f"option trust_region must be true or false, got {trust_region!r}")
        check_number("damping", damping, low=0)
        check_positive("radius", radius)
        check_positive("max_radius", max_radius)
        if not radius <= max_radius:
            raise UnigradError(f"option radius ({radius}) must not exceed max_radius ({max_radius})")
        check_number("eta", eta, low=0, high=0.25, high_inclusive=False, what="in [0, 0.25)")
        check_positive("max_params", max_params, integer=True)
        self.trust_region, self.damping = bool(trust_region), float(damping)
        self.radius, self.max_radius, self.eta = float(radius), float(max_radius), float(eta)
        self.max_params = max_params
        self.accepted = 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "radius": self.radius, "accepted": self.accepted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.radius, self.accepted = float(state["radius"]), int(state["accepted"])

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        d = sum(p.numel() for _, p in params)
        if d > self.max_params:
            raise UnigradError(
                f"newton forms the exact Hessian: {d:,} parameters exceed max_params={self.max_params:,} "
                f"(use hessian-free, kfac or lbfgs for larger models, or raise max_params)"
            )
        fl = FlatLoss(model, objective, params, method=self.name)
        g, h, f0 = fl.grad, fl.hessian(), fl.loss
        info: dict[str, Any] = {}
        if self.trust_region:
            step, on_boundary = _trust_region_step(g, h, self.radius)
            predicted = -float(g @ step + 0.5 * step @ h @ step)
            trial = fl.value(fl.theta0 + step)
            rho = reduction_ratio(f0, trial, predicted, g.dtype) if predicted > 0 else -math.inf
            accept = rho > self.eta
            info.update(rho=rho, radius=self.radius, accepted=accept)
            if rho < 0.25:
                self.radius *= 0.25
            elif rho > 0.75 and on_boundary:
                self.radius = min(2.0 * self.radius, self.max_radius)
            if not accept:
                step = torch.zeros_like(step)
            else:
                self.accepted += 1
        else:
            step, lam = _damped_step(g, h, self.damping)
            info["damping"] = lam
        write_grad(params, [-t for t in fl.unflatten(step)])
        info["gradient_norm"] = float(g.norm())
        return Estimate(loss=f0, cost=fl.cost, info=info)


def _damped_step(g: Tensor, h: Tensor, damping: float) -> tuple[Tensor, float]:
    """``−(H + λI)⁻¹g`` with the smallest ``λ ≥ damping`` (×10 steps) that makes ``H + λI`` positive definite."""
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    lam = damping
    floor = 1e-12 * max(float(h.abs().max()), 1e-300)
    for _ in range(60):
        chol, bad = torch.linalg.cholesky_ex(h + lam * eye)
        if int(bad) == 0:
            return -torch.cholesky_solve(g[:, None], chol)[:, 0], lam
        lam = max(10.0 * lam, floor)
    raise UnigradError("newton: could not make the Hessian positive definite by damping (non-finite values?)")


def _trust_region_step(g: Tensor, h: Tensor, radius: float) -> tuple[Tensor, bool]:
    """Exact solution of ``min gᵀs + ½ sᵀHs`` over ``‖s‖ ≤ radius``; and whether it lies on the boundary.

    Eigenvalues within ``1e-12·max|λ|`` of zero count as zero: a positive semi-definite ``H`` (softmax
    regression's Hessian is singular along the shift of all biases) whose gradient has no component
    along its null space still gets the interior minimum-norm Newton step when it fits.
    """
    lam_h, q = torch.linalg.eigh(h)
    a = q.T @ g
    tiny = 1e-12 * max(float(lam_h.abs().max()), 1e-300)

    def step(lam: float) -> Tensor:
        return -(q @ (a / (lam_h + lam)))

    model = lambda s: float(g @ s + 0.5 * s @ h @ s)  # noqa: E731
    if float(lam_h[0]) > -tiny:
        keep = lam_h > tiny
        if not bool(keep.all()) and float(a[~keep].abs().max()) > 1e-10 * max(float(a.abs().max()), 1e-300):
            keep = None  # g reaches into the null space: the model decreases without bound there
        if keep is not None:
            s = -(q[:, keep] @ (a[keep] / lam_h[keep]))
            if float(s.norm()) <= radius:
                return s, False
    # ‖s(λ)‖ decreases in λ > low: bracket ‖s‖ = radius and bisect in log-space
    low = max(0.0, -float(lam_h[0]))
    lo = low + 1e-14 * max(1.0, low)
    s_lo = step(lo)
    if float(s_lo.norm()) <= radius:
        # the hard case (g ⟂ the eigenvectors of λ_min): s(λ_min) plus the eigenvector to the boundary,
        # with the sign of the lower model value
        v = q[:, 0]
        b, c = float(v @ s_lo), float(s_lo @ s_lo) - radius**2
        root = math.sqrt(max(b * b - c, 0.0))
        return min((s_lo + (-b + root) * v, s_lo + (-b - root) * v), key=model), True
    hi = max(low, 1.0) * 2.0
    while float(step(hi).norm()) > radius:
        hi *= 2.0
    for _ in range(200):
        mid = math.sqrt(lo * hi) if lo > 0 else 0.5 * hi
        if float(step(mid).norm()) > radius:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return step(hi), True
