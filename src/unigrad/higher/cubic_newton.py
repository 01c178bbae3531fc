"""Cubic-regularized Newton: the :class:`CubicNewton` estimator (ARC on a Lanczos subspace) and its cubic subproblem
solver (:func:`solve_cubic_subproblem`, :func:`krylov_cubic_step`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from unigrad.core.errors import UnigradError
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective
from unigrad.core.options import check_fraction, check_number, check_positive
from unigrad.core.params import write_grad
from unigrad.core.rng import generator
from unigrad.second.curvature import FlatLoss, Lanczos, lanczos, reduction_ratio

_RESTART_KEY = 0xA4C3
"""Names the stream of Lanczos restart vectors: ``(seed, step, _RESTART_KEY, restart)``."""

_HARD_CASE_TOL = 1e-13
"""The root of the secular equation this close (relative) to ``−λ_min`` is taken as the hard case."""

_CLUSTER_TOL = 1e-9
"""Eigenvalues of ``T`` within this fraction of ``‖T‖`` of ``λ_min`` form its eigenspace."""


# -- the cubic subproblem ---------------------------------------------------------------------------


@dataclass
class CubicSolution:
    """The global minimiser of ``bᵀy + ½ yᵀTy + (σ/3)‖y‖³`` (:func:`solve_cubic_subproblem`).

    Attributes:
        y: the minimiser.
        multiplier: ``λ = σ‖y‖`` with ``(T + λI) y = −b``.
        min_eigenvalue: ``λ_min(T)``.
        hard_case: whether the hard case was taken (``b`` without weight on the eigenspace of ``λ_min < 0``).
        model_decrease: ``−(bᵀy + ½ yᵀTy + (σ/3)‖y‖³) ≥ 0``.
    """

    y: np.ndarray
    multiplier: float
    min_eigenvalue: float
    hard_case: bool
    model_decrease: float


def solve_cubic_subproblem(t: np.ndarray, b: np.ndarray, sigma: float) -> CubicSolution:
    """Global minimiser of ``bᵀy + ½ yᵀTy + (σ/3)‖y‖³`` for a small symmetric ``T`` (:class:`CubicNewton`, step 2)."""
    t = np.asarray(t, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    lam, v = np.linalg.eigh(0.5 * (t + t.T))
    c = v.T @ b
    lmin = float(lam[0])
    low = max(0.0, -lmin)
    b_norm = float(np.linalg.norm(b))
    size = max(float(np.abs(lam).max()), 1e-300)

    def norm_y(x: float) -> float:
        return float(np.linalg.norm(c / (lam + x)))

    hard = False
    if b_norm == 0.0 or (lmin < 0 and norm_y(low * (1 + _HARD_CASE_TOL)) <= low * (1 + _HARD_CASE_TOL) / sigma):
        x = low
        hard = lmin < 0
        rest = lam - lmin > _CLUSTER_TOL * size
        y_eig = np.zeros_like(c)
        y_eig[rest] = -c[rest] / (lam[rest] + x)  # λ_i + x > 0 on these
        if hard:
            cluster = ~rest
            u = -c[cluster]
            u_norm = float(np.linalg.norm(u))
            if u_norm > 0:
                u = u / u_norm
            else:
                u = np.zeros_like(u)
                u[0] = 1.0
            tau = math.sqrt(max(0.0, (x / sigma) ** 2 - float(y_eig @ y_eig)))
            y_eig[cluster] = tau * u
    else:
        lo = low
        hi = 0.5 * (-lmin + math.sqrt(lmin * lmin + 4.0 * sigma * b_norm))  # ‖y(hi)‖ ≤ ‖b‖/(hi + λ_min) ≤ hi/σ
        hi = max(hi, lo)
        x = hi
        for _ in range(200):
            ny = norm_y(x)
            psi = ny - x / sigma
            if psi > 0:
                lo = x
            else:
                hi = x
            if abs(psi) <= 4 * np.finfo(np.float64).eps * max(ny, x / sigma) or hi - lo <= 4e-16 * hi:
                break
            dpsi = -float(np.sum(c * c / (lam + x) ** 3)) / ny - 1.0 / sigma
            nxt = x - psi / dpsi
            x = nxt if lo < nxt < hi else 0.5 * (lo + hi)
        y_eig = -c / (lam + x)
    y = v @ y_eig
    decrease = -(float(b @ y) + 0.5 * float(y @ t @ y) + sigma / 3.0 * float(np.linalg.norm(y)) ** 3)
    return CubicSolution(y=y, multiplier=float(x), min_eigenvalue=lmin, hard_case=hard, model_decrease=decrease)


def krylov_cubic_step(
    matvec: Callable[[Tensor], Tensor],
    g: Tensor,
    sigma: float,
    k: int,
    random_vector: Callable[[int], Tensor],
) -> tuple[Tensor, CubicSolution, Lanczos]:
    """The minimiser ``s = Qy`` of ``gᵀs + ½ sᵀHs + (σ/3)‖s‖³`` over the ``k``-dimensional Lanczos space
    (``H`` given by ``matvec``); also the subproblem's solution and the Lanczos data."""
    lz = lanczos(matvec, g, k, random_vector=random_vector)
    b = (lz.basis @ g).double().cpu().numpy()
    sol = solve_cubic_subproblem(lz.tridiagonal.numpy(), b, sigma)
    step = lz.basis.T @ torch.as_tensor(sol.y, dtype=g.dtype, device=g.device)
    return step, sol, lz


# -- the estimator ----------------------------------------------------------------------------------


class CubicNewton(Estimator):
    """Cubic-regularized Newton: adaptive regularization with cubics (ARC) on a Lanczos subspace.

    With ``f`` the mean loss, ``θ`` the flattened trainable parameters, ``g = ∇f(θ)`` and ``H = ∇²f(θ)``
    (used only through Hessian–vector products), each call minimises the cubic model::

        m(s) = f + gᵀs + ½ sᵀHs + (σ/3)‖s‖³

    over a Krylov subspace and writes ``−s`` into ``.grad``, so that ``torch.optim.SGD(lr=1)`` (no
    momentum) moves ``θ ← θ + s``. Where ``H`` is Lipschitz with constant ``L`` and ``σ ≥ L/2``, ``m``
    bounds ``f`` from above, so its minimiser decreases ``f``; unlike a Newton step it is defined
    where ``H`` is indefinite, and it moves along negative curvature, so the iterates approach points
    with ``g = 0`` *and* ``H ⪰ 0`` (second-order stationary points) rather than saddles (Nesterov & Polyak
    2006; Cartis, Gould & Toint 2011, Part I).

    1. *Subspace.* ``k = min(krylov_dim, d)`` steps of Lanczos with full reorthogonalisation
       (:func:`unigrad.second.curvature.lanczos`, the classical form), started at ``g/‖g‖``, give an
       orthonormal basis ``Q`` (``d × k``) and the tridiagonal ``T = QᵀHQ``: one Hessian–vector product per
       step (:class:`~unigrad.second.curvature.FlatLoss`).

       *Breakdown and saddles.* If the Krylov space of ``g`` is invariant under ``H`` before ``k``
       vectors (the residual ``w`` of a Lanczos step has ``‖w‖ ≤ √ε·‖T‖``), the process is restarted
       with a random vector orthogonalised against ``Q`` (the classic continuation of Lanczos past
       breakdown; Parlett, *The Symmetric Eigenvalue Problem*, 1998), keeping the coupling
       ``qᵀw`` in ``T`` so that ``T = QᵀHQ`` stays exact. With ``g = 0`` the process starts from a
       random vector. This is what lets the method leave saddles: the Krylov space of ``g`` never meets
       an eigenvector of ``H`` that ``g`` is orthogonal to, so where ``g = 0`` (a saddle), or where ``g``
       lies in an invariant subspace of positive curvature (``f = x² − y² + y⁴/4`` on the line ``y = 0``),
       a Krylov space grown from ``g`` alone sees no negative curvature and the step would converge to
       the saddle as Newton's does. The random vectors are keyed ``(seed, step, restart)`` through
       :func:`unigrad.core.rng.generator`; when no breakdown occurs (the usual case on a model whose
       gradient is not exactly degenerate) the step is deterministic and does not depend on the seed.
       With ``krylov_dim ≥ d`` the basis spans the whole space, so the step is the exact global
       minimiser of ``m``, the hard case included.

    2. *Subproblem* (Cartis, Gould & Toint 2011, §6). With ``b = Qᵀg`` (``= ‖g‖e₁``), the step is
       ``s = Qy`` for the global minimiser ``y`` of ``bᵀy + ½ yᵀTy + (σ/3)‖y‖³``, characterised by
       (Thm 3.1 there) ``(T + λI) y = −b``, ``λ = σ‖y‖``, ``T + λI ⪰ 0``. Through the eigendecomposition
       ``T = VΛVᵀ`` (``c = Vᵀb``), ``λ`` is the root in ``λ > max(0, −λ_min)`` of the secular equation
       ``‖c/(Λ + λ)‖ = λ/σ``, found by Newton's method safeguarded by bisection on a bracket whose upper
       end ``λ_u = (−λ_min + √(λ_min² + 4σ‖b‖))/2`` is known in closed form. *Hard case* (treated
       approximately): when ``λ_min < 0`` and the root lies within a relative ``10⁻¹³`` of
       ``−λ_min`` (``c`` has no weight on the eigenvectors of ``λ_min``, as at a saddle), ``λ = −λ_min``
       and ``y = −Σ_{λ_i > λ_min} c_i/(λ_i + λ) v_i + τ u`` with ``u`` in the eigenspace of ``λ_min``
       (eigenvalues within ``10⁻⁹‖T‖`` of it; ``u`` against the sign of ``c`` there) and ``τ ≥ 0`` such
       that ``‖y‖ = λ/σ``.

    3. *Acceptance and σ* (Cartis, Gould & Toint 2011, Alg. 2.1). One extra forward evaluates
       ``ρ = (f(θ) − f(θ + s)) / (f(θ) − m(s))`` (both differences shifted by ``δ = 10·ε·max(1, |f|)``
       so that rounding at convergence reads as agreement; Conn, Gould & Toint, *Trust-Region
       Methods*, 2000). ``ρ ≥ eta2`` (very successful): accept, ``σ ← max(sigma_min, σ/gamma)``;
       ``eta1 ≤ ρ < eta2`` (successful): accept, ``σ`` kept; otherwise reject (``.grad`` is zero, so
       ``θ`` stays) and ``σ ← gamma·σ``. Where the model predicts no decrease (``s = 0``: ``g = 0`` and
       ``T ⪰ 0``, a second-order stationary point as far as the subspace sees) nothing is tried and
       ``σ`` is kept.

    Near a nondegenerate minimum ``s`` differs from the Newton step by ``O(σ‖g‖²)``, so convergence is
    quadratic (Nesterov & Polyak 2006; Cartis, Gould & Toint 2011, Part I), with
    ``krylov_dim ≥ d`` (a smaller subspace gives an inexact Newton step and, in general, only a linear rate).

    Cost per estimate, for ``B`` samples: ``forwards`` 2B (the loss, and the trial point when a step
    is tried), ``backwards`` B (the gradient), ``hvps`` ``k·B`` with ``k = min(krylov_dim, d)``.
    Memory: the ``k × d`` Lanczos basis. State (``state_dict``): ``σ``, the number of accepted steps
    and the step counter (which keys the restart vectors).

    Args:
        sigma: initial regularization ``σ₀ > 0``, at least ``sigma_min`` (default: 1.0).
        sigma_min: lower bound on ``σ`` after decreases, > 0 (default: 1e-8).
        eta1: acceptance threshold on ``ρ``, in ``(0, 1)`` (default: 0.1).
        eta2: very-successful threshold on ``ρ``, in ``[eta1, 1)`` (default: 0.9).
        gamma: factor ``> 1`` by which ``σ`` grows after a rejected step and shrinks after a very
            successful one (default: 2.0).
        krylov_dim: Lanczos steps (Hessian–vector products) per call, at most ``d`` (default: 50).
        seed: keys the random Lanczos restart vectors (default: 0).

    References:
        Y. Nesterov & B. Polyak, "Cubic regularization of Newton method and its global performance",
        Math. Prog. 108 (2006).
        C. Cartis, N. Gould & Ph. Toint, "Adaptive cubic regularisation methods for unconstrained
        optimization. Part I: motivation, convergence and numerical results", Math. Prog. 127 (2011).
        C. Lanczos, "An iteration method for the solution of the eigenvalue problem of linear differential
        and integral operators", J. Res. Nat. Bur. Standards 45 (1950).
    """

    name = "cubic-newton"
    order = 3
    description = "adaptive cubic-regularized Newton (ARC) step on a Lanczos subspace; escapes saddles"
    _options = ("sigma", "sigma_min", "eta1", "eta2", "gamma", "krylov_dim")

    def __init__(
        self,
        sigma: float = 1.0,
        sigma_min: float = 1e-8,
        eta1: float = 0.1,
        eta2: float = 0.9,
        gamma: float = 2.0,
        krylov_dim: int = 50,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        for option, value in (("sigma", sigma), ("sigma_min", sigma_min), ("gamma", gamma)):
            check_number(option, value)
            check_positive(option, value)
        if not sigma >= sigma_min:
            raise UnigradError(f"option sigma ({sigma}) must be at least sigma_min ({sigma_min})")
        check_fraction("eta1", eta1, low_inclusive=False, what="in (0, 1)")
        check_fraction("eta2", eta2, low=eta1, what=f"in [{eta1:g}, 1)")
        if not gamma > 1:
            raise UnigradError(f"option gamma must be a number > 1, got {gamma!r}")
        check_positive("krylov_dim", krylov_dim, integer=True)
        self.sigma, self.sigma_min = float(sigma), float(sigma_min)
        self.eta1, self.eta2, self.gamma = float(eta1), float(eta2), float(gamma)
        self.krylov_dim = krylov_dim
        self.accepted = 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sigma": self.sigma, "accepted": self.accepted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.sigma, self.accepted = float(state["sigma"]), int(state["accepted"])

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        fl = FlatLoss(model, objective, params, method=self.name)
        g, f0, d = fl.grad, fl.loss, fl.dim
        step_index = self.step

        def random_vector(i: int) -> Tensor:
            gen = generator(self.seed, step_index, _RESTART_KEY, i, device=g.device)
            return torch.randn(d, generator=gen, dtype=g.dtype, device=g.device)

        sigma = self.sigma
        step, sol, lz = krylov_cubic_step(fl.hvp, g, sigma, min(self.krylov_dim, d), random_vector)
        predicted = sol.model_decrease
        info: dict[str, Any] = {
            "sigma": sigma,
            "gradient_norm": float(g.norm()),
            "krylov_dim": lz.basis.shape[0],
            "restarts": lz.restarts,
            "min_eigenvalue": sol.min_eigenvalue,
            "multiplier": sol.multiplier,
            "hard_case": sol.hard_case,
            "step_norm": float(step.norm()),
        }
        accept = False
        rho = math.nan
        if predicted > 0 and bool(step.any()):
            rho = reduction_ratio(f0, fl.value(fl.theta0 + step), predicted, g.dtype)
            if rho >= self.eta2:
                accept, self.sigma = True, max(self.sigma_min, sigma / self.gamma)
            elif rho >= self.eta1:
                accept = True
            else:
                self.sigma = sigma * self.gamma
        if accept:
            self.accepted += 1
        else:
            step = torch.zeros_like(step)
        info.update(rho=rho, accepted=accept, predicted_decrease=predicted)
        write_grad(params, [-t for t in fl.unflatten(step)], owned=True)
        return Estimate(loss=f0, cost=fl.cost, info=info)
