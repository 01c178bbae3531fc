"""Hessian-free optimization: the :class:`HessianFree` estimator (truncated CG on the damped Newton system)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.errors import UnigradError
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, Supervised
from unigrad.core.options import check_choice, check_number, check_positive
from unigrad.core.params import write_grad
from unigrad.second.curvature import FlatLoss, conjugate_gradient

_CURVATURES = ("ggn", "hessian")
_BACKTRACK_BASE = 1.3  # Martens §4.6: iterates saved at ⌈1.3^j⌉
_ROUNDING = 100.0  # λ is kept when the predicted change is below _ROUNDING·ε·|f(θ)|


def _check_flag(option: str, value: object) -> bool:
    if not isinstance(value, bool | int) or value not in (0, 1):
        raise UnigradError(f"option {option} must be true or false, got {value!r}")
    return bool(value)


def _finite_or_inf(value: float) -> float:
    """``value``, or ``+∞`` where it is NaN or infinite (a step there is never preferred)."""
    return value if math.isfinite(value) else math.inf


def _save_points(max_cg: int) -> set[int]:
    """The CG iterations ``⌈1.3^j⌉`` (j = 0, 1, …) up to ``max_cg``."""
    points, j = set(), 0
    while (i := math.ceil(_BACKTRACK_BASE**j)) <= max_cg:
        points.add(i)
        j += 1
    return points


class HessianFree(Estimator):
    """Hessian-free optimization: a truncated conjugate-gradient solve of the damped Newton system.

    With ``f`` the mean loss, ``θ`` the flattened trainable parameters, ``g = ∇f(θ)`` and ``C`` a
    curvature matrix that is never formed, each call solves::

        (C + λI) s = −g

    by conjugate gradients (:func:`~unigrad.second.curvature.conjugate_gradient`) using only products
    ``v ↦ C v``, and writes ``−s`` into ``.grad``, so ``torch.optim.SGD(lr=1)`` (no momentum, no weight
    decay) takes the step ``θ ← θ + s``; a smaller learning rate takes a fraction of it.

    Cost per estimate, for ``B`` samples: ``B`` forwards and ``B`` backwards (``f`` and ``g``); per CG
    product ``B`` Hessian-vector products (``"hessian"``) or ``B`` JVPs and ``B`` backwards (``"ggn"``);
    with ``adapt_damping`` one more product (``sᵀCs`` for the predicted change) and ``B`` forwards at
    ``θ + s``; with ``backtrack`` ``B`` forwards per iterate evaluated (the one at ``θ + s`` is shared
    with the damping rule).

    ``info``: ``cg_iterations`` (products in the solve, the warm start's included), ``damping`` (the
    ``λ`` used for this step), ``rho`` (``None`` when not computed), ``negative_curvature``,
    ``gradient_norm``, ``step_norm``, ``backtracked_to`` (the CG iteration taken, with ``backtrack``).

    State (``state_dict``): the current damping ``λ`` and the previous CG solution (for the warm start).

    Args:
        curvature: ``"ggn"`` — the generalized Gauss-Newton matrix ``G = Jᵀ H_z J`` (``J`` the
            Jacobian of the model's outputs, ``H_z`` the Hessian of the loss in the outputs), positive
            semi-definite for a convex loss, so ``G + λI`` is positive definite and CG is well posed;
            needs a supervised objective (``unigrad.supervised``). ``"hessian"`` — the exact Hessian
            ``∇²f`` by Pearlmutter products; works on any objective. Where the Hessian is indefinite, CG
            stops at the first search direction ``p`` with ``pᵀ(H + λI)p ≤ 0`` and returns the iterate
            reached so far (a descent direction of the damped model; if that happens on the very first
            direction, ``−g`` scaled by ``‖g‖² / |gᵀ(H + λI)g|``). ``info["negative_curvature"]`` says
            when it happened; the damping rule then usually raises ``λ`` until ``H + λI`` is
            positive definite along the directions CG explores (default: ``"ggn"``).
        damping: the initial ``λ > 0`` (default: 1.0).
        adapt_damping: the Levenberg–Marquardt rule of Martens §4.1: with the reduction
            ratio ``ρ = (f(θ + s) − f(θ)) / (q(s) − q(0))``, where ``q(s) − q(0) = gᵀs + ½ sᵀCs`` is
            the change predicted by the quadratic model with the *undamped* curvature (so ``ρ = 1`` when
            ``C`` predicts ``f`` exactly, as on a quadratic with ``C = ∇²f``), ``ρ < 1/4`` sets
            ``λ ← 3λ/2`` and ``ρ > 3/4`` sets ``λ ← 2λ/3``. A model that predicts no decrease gives
            ``ρ = −∞``, and so does a step to a non-finite loss (NaN or ``±∞``), which is moreover not
            taken: ``.grad`` is zero for that call. Where the predicted decrease is below
            ``100·ε·|f(θ)|`` (``ε`` the machine epsilon of the parameters' dtype) the measured change is
            rounding noise, and ``λ`` is left as it is. The rule assumes the outer optimizer takes the
            full step ``s`` (SGD with ``lr=1``); with a smaller learning rate ``ρ`` still describes the
            full step (default: True).
        min_damping: a floor for the adapted ``λ``. On minibatches the rule measures ``ρ`` on
            the batch the model was fitted to, so it keeps lowering ``λ`` while the steps grow along
            directions that batch's curvature does not see (the Gauss-Newton matrix of ``B`` samples has
            rank at most ``B·k``); a floor near 1 keeps minibatch training stable (on ``digits-mlp``, see
            ``docs/second-order.md``) (default: 0.0).
        max_cg: the most curvature products per CG solve (default: 50).
        cg_tol: CG stops when ``‖r‖ ≤ cg_tol·‖g‖`` (default: 1e-10).
        progress_tol: Martens' relative-progress test of the CG objective ``φ``, with
            ``k = max(10, ⌈0.1 i⌉)``: stop when ``(φ_i − φ_{i−k}) / φ_i < k·progress_tol``;
            0 switches it off (default: 5e-4).
        warm_start: start CG from ``warm_decay·s_prev``, the previous call's CG solution decayed
            (Martens §4.5). The start costs one curvature product. A previous solution of
            another size (another model) is ignored (default: True).
        warm_decay: the decay ``ζ ∈ [0, 1]`` of the warm start (default: 0.95).
        backtrack: evaluate ``f`` at the CG iterates saved at iterations ``⌈1.3^j⌉`` and at the last one,
            walking back from the last while ``f`` decreases, and take the best (Martens §4.6). The warm
            start still uses the last CG iterate (default: False).
        seed: unused (the method draws no noise) (default: 0).

    References:
        J. Martens, "Deep learning via Hessian-free optimization", ICML 2010 (the damping
        heuristic is its §4.1, CG initialisation §4.5, CG-iterate backtracking §4.6, the relative-progress
        stopping rule §4.4); the Hessian-vector product is Pearlmutter's R-operator (Pearlmutter 1994) and
        the Gauss-Newton product Schraudolph's (2002).
    """

    name = "hessian-free"
    order = 2
    description = "Hessian-free (truncated CG on the damped Gauss-Newton or Hessian system), Martens 2010"
    _options = (
        "curvature",
        "damping",
        "adapt_damping",
        "min_damping",
        "max_cg",
        "cg_tol",
        "progress_tol",
        "warm_start",
        "warm_decay",
        "backtrack",
    )

    def __init__(
        self,
        curvature: str = "ggn",
        damping: float = 1.0,
        adapt_damping: bool = True,
        min_damping: float = 0.0,
        max_cg: int = 50,
        cg_tol: float = 1e-10,
        progress_tol: float = 5e-4,
        warm_start: bool = True,
        warm_decay: float = 0.95,
        backtrack: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_choice("curvature", curvature, _CURVATURES)
        check_number("damping", damping, what="a number > 0")
        check_positive("damping", damping)
        self.adapt_damping = _check_flag("adapt_damping", adapt_damping)
        self.min_damping = check_number("min_damping", min_damping, low=0)
        if not damping >= min_damping:
            raise UnigradError(f"option damping ({damping}) must not be below min_damping ({min_damping})")
        check_positive("max_cg", max_cg, integer=True)
        check_number("cg_tol", cg_tol, finite=False, what="a number > 0")
        check_positive("cg_tol", cg_tol)
        self.progress_tol = check_number("progress_tol", progress_tol, low=0, what="a finite number >= 0 (0: off)")
        self.warm_start = _check_flag("warm_start", warm_start)
        self.warm_decay = check_number("warm_decay", warm_decay, low=0, high=1, what="a finite number in [0, 1]")
        self.backtrack = _check_flag("backtrack", backtrack)
        self.curvature, self.damping = curvature, float(damping)
        self.max_cg, self.cg_tol = max_cg, float(cg_tol)
        self.previous: Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        prev = None if self.previous is None else self.previous.clone()
        return {**super().state_dict(), "damping": self.damping, "previous": prev}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.damping = float(state["damping"])
        self.previous = None if state["previous"] is None else state["previous"].clone()

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        ggn = self.curvature == "ggn"
        if ggn and not isinstance(objective, Supervised):
            raise UnigradError(
                "hessian-free with curvature=ggn needs a supervised objective (unigrad.supervised) to see the "
                "model's outputs; use curvature=hessian for other objectives"
            )
        fl = FlatLoss(model, objective, params, outputs=ggn, method=self.name)
        product: Callable[[Tensor], Tensor] = fl.ggn_vp if ggn else fl.hvp
        lam = self.damping
        g = fl.grad

        def damped(v: Tensor) -> Tensor:
            return product(v) + lam * v

        x0 = None
        if self.warm_start and self.previous is not None and self.previous.shape == g.shape:
            x0 = self.warm_decay * self.previous.to(dtype=g.dtype, device=g.device)
        points = _save_points(self.max_cg) if self.backtrack else set()
        res = conjugate_gradient(
            damped,
            -g,
            x0=x0,
            max_iter=self.max_cg,
            tol=self.cg_tol,
            progress_tol=self.progress_tol or None,
            save_at=(lambda i: i in points) if self.backtrack else None,
        )
        if self.warm_start:
            self.previous = res.x.detach().clone()
        warm_product = x0 is not None and bool(x0.any())  # the start's product is counted in res.iterations
        step, f_step, taken = res.x, None, res.iterations - int(warm_product)
        if self.backtrack:
            f_step = _finite_or_inf(fl.value(fl.theta0 + step))
            for i, x in sorted(res.iterates, key=lambda t: t[0], reverse=True):
                if torch.equal(x, step):
                    continue
                f_x = _finite_or_inf(fl.value(fl.theta0 + x))
                if not f_x < f_step:
                    break
                step, f_step, taken = x, f_x, i
        rho = None
        if self.adapt_damping and bool(step.any()):
            if f_step is None:
                f_step = _finite_or_inf(fl.value(fl.theta0 + step))
            predicted = float(g @ step) + 0.5 * float(step @ product(step))
            # a predicted decrease below the rounding level of f leaves ρ to rounding noise: keep λ then
            resolved = -predicted > _ROUNDING * torch.finfo(g.dtype).eps * abs(fl.loss)
            if predicted >= 0 or math.isinf(f_step):
                rho, resolved = -math.inf, True
            else:
                rho = (f_step - fl.loss) / predicted
            if resolved and rho < 0.25:
                self.damping = lam * 1.5
            elif resolved and rho > 0.75:
                self.damping = max(lam * (2.0 / 3.0), self.min_damping)
        if f_step is not None and math.isinf(f_step):  # the step leads to a non-finite loss: not taken
            step = torch.zeros_like(step)
        write_grad(params, [-t for t in fl.unflatten(step)])
        info: dict[str, Any] = {
            "cg_iterations": res.iterations,
            "damping": lam,
            "rho": rho,
            "negative_curvature": res.negative_curvature,
            "gradient_norm": float(g.norm()),
            "step_norm": float(step.norm()),
        }
        if self.backtrack:
            info["backtracked_to"] = taken
        return Estimate(loss=fl.loss, cost=fl.cost, info=info)
