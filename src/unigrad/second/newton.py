"""Newton's method with the exact Hessian: Levenberg–Marquardt damping or a trust region.

With ``f`` the mean loss, ``g = ∇f(θ)`` and ``H = ∇²f(θ)`` (formed exactly by ``torch.func.hessian``
over the flattened trainable parameters, so only for small models), the step is ``s`` and the
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
  ``Δ ← min(2Δ, max_radius)`` — the radius rule of scipy's trust-region methods. (The hard case,
  ``g`` orthogonal to the eigenvectors of ``λ_min``, is not treated specially.)

References: J. Nocedal & S. Wright, *Numerical Optimization*, 2nd ed., ch. 3–4 (2006); J. Moré &
D. Sorensen, "Computing a trust region step", SIAM J. Sci. Stat. Comput. 4 (1983); K. Levenberg
1944, D. Marquardt 1963.

Options:
    trust_region: use the trust region (default ``True``) or damping only.
    damping: ``λ ≥ 0`` added to the Hessian's diagonal without a trust region (default 0).
    radius: initial trust radius ``Δ₀ > 0`` (default 1.0); max_radius: its cap (default 1000).
    eta: acceptance threshold on ``ρ``, in ``[0, 1/4)`` (default 0.15, scipy's).
    max_params: refuse models with more trainable values than this (default 2,000: the Hessian
        holds ``d²`` numbers and costs ``d`` Hessian–vector products).

Cost per estimate, for ``B`` samples and ``d`` parameters: ``forwards`` B (the loss) plus B for the
trial point with a trust region, ``backwards`` B (the gradient), ``hvps`` ``d·B`` (the Hessian's
``d`` columns). State (``state_dict``): the trust radius and the number of accepted steps.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, n_samples, reduce
from unigrad.core.params import write_grad
from unigrad.core.probe import _Bound


class Newton(Estimator):
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
        if isinstance(damping, bool) or not isinstance(damping, int | float) or not damping >= 0:
            raise UnigradError(f"option damping must be a number >= 0, got {damping!r}")
        check_positive("radius", radius)
        check_positive("max_radius", max_radius)
        if not radius <= max_radius:
            raise UnigradError(f"option radius ({radius}) must not exceed max_radius ({max_radius})")
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not 0 <= eta < 0.25:
            raise UnigradError(f"option eta must be in [0, 0.25), got {eta!r}")
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
        shapes = [p.shape for _, p in params]
        sizes = [p.numel() for _, p in params]
        d = sum(sizes)
        if d > self.max_params:
            raise UnigradError(
                f"newton forms the exact Hessian: {d:,} parameters exceed max_params={self.max_params:,} "
                f"(use hessian-free, kfac or lbfgs for larger models, or raise max_params)"
            )
        names = ["model." + n for n, _ in params]
        bound = _Bound(model, objective)
        theta0 = torch.cat([p.detach().reshape(-1) for _, p in params])

        def f(theta: Tensor) -> Tensor:
            values = [t.view(s) for t, s in zip(theta.split(sizes), shapes, strict=True)]
            return reduce(functional_call(bound, dict(zip(names, values, strict=True)), (), strict=False))

        cost = Cost()
        with torch.enable_grad():
            theta = theta0.clone().requires_grad_(True)
            loss = f(theta)
            (g,) = torch.autograd.grad(loss, theta)
        with warnings.catch_warnings():  # PyTorch's forward-AD decompositions use a deprecated torch.jit.script
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=DeprecationWarning)
            h = torch.func.hessian(f)(theta0)
        batch = n_samples(objective, None)
        cost.forwards += batch
        cost.backwards += batch
        cost.hvps += d * batch
        f0 = float(loss.detach())
        g, h = g.detach(), 0.5 * (h + h.T)
        info: dict[str, Any] = {}
        if self.trust_region:
            step, on_boundary = _trust_region_step(g, h, self.radius)
            predicted = -float(g @ step + 0.5 * step @ h @ step)
            with torch.no_grad():
                trial = float(f(theta0 + step))
            cost.forwards += batch
            rho = (f0 - trial) / predicted if predicted > 0 else -math.inf
            if not math.isfinite(trial):
                rho = -math.inf
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
        write_grad(params, [(-t).view(s) for t, s in zip(step.split(sizes), shapes, strict=True)], owned=True)
        info["gradient_norm"] = float(g.norm())
        return Estimate(loss=f0, cost=cost, info=info)


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
    """Exact solution of ``min gᵀs + ½ sᵀHs`` over ``‖s‖ ≤ radius``; and whether it lies on the boundary."""
    lam_h, q = torch.linalg.eigh(h)
    a = q.T @ g

    def step(lam: float) -> Tensor:
        return -(q @ (a / (lam_h + lam)))

    low = max(0.0, -float(lam_h[0]))
    if float(lam_h[0]) > 0:
        s = step(0.0)
        if float(s.norm()) <= radius:
            return s, False
    # ‖s(λ)‖ decreases in λ > low: bracket ‖s‖ = radius and bisect in log-space
    lo = low + 1e-14 * max(1.0, low)
    if float(step(lo).norm()) <= radius:  # (nearly) the hard case: take the boundary step along s(lo)
        s = step(lo)
        norm = float(s.norm())
        return (s * (radius / norm) if norm > 0 else s), True
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
