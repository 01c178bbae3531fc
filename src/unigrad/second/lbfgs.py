"""L-BFGS: the :class:`LBFGS` estimator (a limited-memory quasi-Newton direction, optional strong-Wolfe line search)."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, check_differentiable, n_samples, reduce
from unigrad.core.options import check_fraction
from unigrad.core.params import write_grad
from unigrad.core.probe import _Bound

_LINE_SEARCHES = ("strong-wolfe", "none")
_XTOL = 1e-14
"""The zoom stops once its bracket is narrower than this, relative to the step size."""


def _ref(obj: Any) -> Callable[[], Any]:
    """A weak reference to ``obj`` where possible (a strong one otherwise), so a cache cannot outlive it
    and match a new object that reuses its ``id``."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


class _FlatEvaluation:
    """``f`` and ``∇f`` at a flat parameter vector, the model untouched (``functional_call``); each call adds one
    forward and one backward per sample to ``cost`` and counts itself in ``count``."""

    def __init__(
        self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]], cost: Cost, method: str
    ) -> None:
        self.shapes = [p.shape for _, p in params]
        self.sizes = [p.numel() for _, p in params]
        self.names = ["model." + n for n, _ in params]
        self.bound, self.objective, self.cost, self.method = _Bound(model, objective), objective, cost, method
        self.count = 0

    def unflatten(self, flat: Tensor, *, negate: bool = False) -> list[Tensor]:
        """The flat vector as one tensor per parameter: views, or with ``negate`` a negated copy of each."""
        return [(-t if negate else t).view(s) for t, s in zip(flat.split(self.sizes), self.shapes, strict=True)]

    def __call__(self, point: Tensor) -> tuple[float, Tensor]:
        with torch.enable_grad():
            t = point.detach().clone().requires_grad_(True)
            values = dict(zip(self.names, self.unflatten(t), strict=True))
            losses = functional_call(self.bound, values, (), strict=False)
            check_differentiable(losses, self.method)
            loss = reduce(losses)
            (grad,) = torch.autograd.grad(loss, t, allow_unused=True)
        batch = n_samples(self.objective, losses)
        self.cost.forwards += batch
        self.cost.backwards += batch
        self.count += 1
        return float(loss.detach()), torch.zeros_like(point) if grad is None else grad.detach()


class LBFGS(Estimator):
    """L-BFGS: a limited-memory quasi-Newton direction, with an optional strong-Wolfe line search.

    With ``f`` the mean loss, ``θ`` the flattened trainable parameters and ``g = ∇f(θ)``, each call

    1. evaluates ``f`` and ``g`` at the current ``θ`` (or reuses them, see *Reuse* below);
    2. stores the pair ``s = θ − θ_prev``, ``y = g − g_prev`` from the previous call (the step the
       outer optimizer actually took), keeping the last ``history`` pairs, **unless**
       ``sᵀy ≤ curvature_eps·‖s‖‖y‖``: such a pair (no step, or curvature that is not positive along
       ``s``) would make the inverse-Hessian approximation indefinite or ill-defined and is skipped;
    3. computes the direction ``d = −H g`` by the two-loop recursion (Nocedal & Wright, Alg. 7.4)::

           q ← g;  for i = newest … oldest:  a_i = ρ_i s_iᵀq,  q ← q − a_i y_i        (ρ_i = 1/(y_iᵀs_i))
           r ← γ q,  γ = s_newestᵀy_newest / y_newestᵀy_newest                       (H₀ = γI)
           for i = oldest … newest:  b = ρ_i y_iᵀr,  r ← r + s_i (a_i − b)
           d = −r

       With an empty history (the first call, or after a reset) it is the scaled gradient
       ``d = −g·min(1, 1/‖g‖₁)`` (as ``torch.optim.LBFGS``). If ``gᵀd ≥ 0`` (no descent, which only
       rounding can cause since every stored pair has ``sᵀy > 0``) the history is cleared and the
       scaled gradient is used instead;
    4. chooses the step size ``α``:

       * ``line_search="strong-wolfe"`` (default): the bracketing and zoom line search of Nocedal &
         Wright (Alg. 3.5 and 3.6), trying ``α = 1`` first and interpolating with cubics, until
         ``φ(α) ≤ φ(0) + c1·α·φ'(0)`` and ``|φ'(α)| ≤ c2·|φ'(0)|`` for ``φ(α) = f(θ + α d)``. The trial
         points are evaluated by ``torch.func.functional_call`` (loss and gradient), never by touching
         the model. If ``max_evals`` evaluations find no point that satisfies both, the best point
         with sufficient decrease is taken; if none decreases ``f``, ``α = 0`` (no step) and the
         history is cleared, so the next call restarts from a scaled gradient step.
       * ``line_search="none"``: ``α = 1``; the outer optimizer's learning rate is then the step size.

    5. writes ``−α d`` into ``.grad``, so ``torch.optim.SGD(lr=1)`` (no momentum, no weight decay)
       takes exactly the step ``θ ← θ + α d``.

    Because the pair ``(s, y)`` is formed from the parameters the next call finds, any outer optimizer
    or learning rate may be used; the quasi-Newton model then learns from the steps actually taken.

    *Reuse.* On a deterministic objective the line search has already evaluated ``f`` and ``g`` at the
    point it accepted. If the next call receives the very same objective object and the same model,
    and the parameters are bitwise equal to that point (as after ``SGD(lr=1)``), those values are
    reused: that call then costs nothing but the line search. Any other objective object (a new
    minibatch), other parameters, or ``reuse=False`` evaluate afresh. The cache assumes that calling
    the same objective object again gives the same losses; pass a new object whenever the data change.

    *Minibatches.* ``y = g − g_prev`` then mixes the gradients of two different batches, which adds
    noise to the curvature pairs; the method is meant for deterministic (full-batch) objectives or
    large batches.

    Cost per estimate, for ``B`` samples: ``B`` forwards and ``B`` backwards for ``f`` and ``g`` at the
    current point (none when reused), plus ``B`` forwards and ``B`` backwards per line-search trial.
    Memory: ``2m`` vectors of the parameters' size for the pairs, plus a few more (the current point
    and gradient, the direction, the line search's trials).

    Line-search details: the bracketing phase extrapolates with the cubic through the last two trials,
    clamped to ``[α + 1.1(α − α_prev), α + 4(α − α_prev)]`` (Moré & Thuente's bounds); the zoom takes the
    cubic's minimiser clamped to the inner 80% of the bracket (so the bracket shrinks by at least 10%
    per trial), bisects where the cubic has no minimiser or a trial's loss is not finite (a non-finite
    loss counts as a failed sufficient decrease), and treats a trial whose loss ties the best one by the
    sign of its derivative (N&W's ``φ(α) ≥ φ(α_lo)`` sends ties to the far end, which stalls once the loss
    differences fall below rounding).

    Info: ``alpha`` (the step size ``α``), ``evaluations`` (loss-and-gradient evaluations this call,
    the current point included unless reused), ``reused``, ``pair_stored`` (whether this call's pair
    passed the curvature test), ``history`` (pairs held), ``gradient_norm`` (``‖g‖₂`` at the current
    point) and, with the line search, ``wolfe`` (whether the accepted step satisfies both conditions).

    State (``state_dict``): the step counter, the stored pairs (lists of flat tensors ``s`` and ``y``,
    oldest first), and ``θ_prev``, ``g_prev`` of the last call. The reuse cache holds a (weak where possible)
    reference to the objective and is not part of the state: after ``load_state_dict`` the first call evaluates
    ``f`` and ``g`` afresh — the same values, so the directions continue bitwise as without the
    interruption; only that call's cost differs.

    Args:
        history: number of stored pairs ``m`` (default: 10).
        line_search: ``"strong-wolfe"`` or ``"none"`` (default: ``"strong-wolfe"``).
        c1: sufficient-decrease constant, in ``(0, 1)`` (default: 1e-4).
        c2: curvature constant, in ``(c1, 1)`` (default: 0.9).
        max_evals: the most loss-and-gradient evaluations one line search may make (default: 25).
        curvature_eps: pairs with ``sᵀy ≤ curvature_eps·‖s‖‖y‖`` are skipped; ≥ 0 (default: 1e-8).
        reuse: reuse the line search's last evaluation at the next call when it applies (default: True).
        seed: unused (the method draws no noise) (default: 0).

    References:
        J. Nocedal, "Updating quasi-Newton matrices with limited storage", Math. Comp. 35 (1980).
        D. C. Liu & J. Nocedal, "On the limited memory BFGS method for large scale optimization",
        Math. Prog. 45 (1989).
        J. Nocedal & S. Wright, *Numerical Optimization*, 2nd ed. (2006), Alg. 3.5, 3.6 (line search)
        and 7.4 (two-loop recursion).
    """

    name = "lbfgs"
    order = 2
    description = "limited-memory BFGS direction (two-loop recursion) with a strong-Wolfe line search"
    _options = ("history", "line_search", "c1", "c2", "max_evals", "curvature_eps", "reuse")

    def __init__(
        self,
        history: int = 10,
        line_search: str = "strong-wolfe",
        c1: float = 1e-4,
        c2: float = 0.9,
        max_evals: int = 25,
        curvature_eps: float = 1e-8,
        reuse: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_positive("history", history, integer=True)
        check_choice("line_search", line_search, _LINE_SEARCHES)
        for option, value in (("c1", c1), ("c2", c2)):
            check_fraction(option, value, low_inclusive=False)
        if not c1 < c2:
            raise UnigradError(f"option c2 ({c2}) must be larger than c1 ({c1}) for the strong Wolfe conditions")
        check_positive("max_evals", max_evals, integer=True)
        if (
            isinstance(curvature_eps, bool)
            or not isinstance(curvature_eps, int | float)
            or not 0 <= curvature_eps < math.inf
        ):
            raise UnigradError(f"option curvature_eps must be a finite number >= 0, got {curvature_eps!r}")
        if not isinstance(reuse, bool | int) or reuse not in (0, 1):
            raise UnigradError(f"option reuse must be true or false, got {reuse!r}")
        self.history, self.line_search = history, line_search
        self.c1, self.c2, self.max_evals = float(c1), float(c2), max_evals
        self.curvature_eps, self.reuse = float(curvature_eps), bool(reuse)
        self.s: list[Tensor] = []
        self.y: list[Tensor] = []
        self.theta_prev: Tensor | None = None
        self.g_prev: Tensor | None = None
        # (objective ref, model ref, point, loss, gradient) of the line search's accepted point
        self._cache: tuple[Callable[[], Any], Callable[[], Any], Tensor, float, Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.clone()

        return {
            **super().state_dict(),
            "s": [t.clone() for t in self.s],
            "y": [t.clone() for t in self.y],
            "theta_prev": copy(self.theta_prev),
            "g_prev": copy(self.g_prev),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if len(state["s"]) != len(state["y"]):
            raise UnigradError("lbfgs state is corrupt: the s and y histories differ in length")
        self.s = [t.clone() for t in state["s"]]
        self.y = [t.clone() for t in state["y"]]
        self.theta_prev = None if state["theta_prev"] is None else state["theta_prev"].clone()
        self.g_prev = None if state["g_prev"] is None else state["g_prev"].clone()
        self._cache = None

    def reset(self) -> None:
        """Forget the stored pairs (the next direction is a scaled gradient step)."""
        self.s, self.y = [], []

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        cost = Cost()
        evaluate = _FlatEvaluation(model, objective, params, cost, self.name)
        theta = torch.cat([p.detach().reshape(-1) for _, p in params])
        reused = self._reusable(model, objective, theta)
        if reused:
            _, _, _, f0, g = self._cache  # type: ignore[misc]
        else:
            f0, g = evaluate(theta)
        self._cache = None

        stored = self._update_history(theta, g)
        self.theta_prev, self.g_prev = theta, g

        d = self._direction(g)
        slope = float(g @ d)
        if self.s and not slope < 0:  # rounding made H indefinite along g: restart from the gradient
            self.reset()
            d = self._direction(g)
            slope = float(g @ d)

        info: dict[str, Any] = {"reused": reused, "pair_stored": stored, "gradient_norm": float(g.norm())}
        wolfe = None
        if not slope < 0:  # g = 0: nowhere to go
            step = torch.zeros_like(theta)
            alpha = 0.0
        elif self.line_search == "none":
            alpha, step = 1.0, d
        else:
            alpha, step, wolfe = self._search(evaluate, theta, d, f0, slope, (_ref(objective), _ref(model)))
        write_grad(params, evaluate.unflatten(step, negate=True), owned=True)
        info.update(alpha=alpha, evaluations=evaluate.count, history=len(self.s))
        if wolfe is not None:
            info["wolfe"] = wolfe
        return Estimate(loss=f0, cost=cost, info=info)

    def _search(
        self, evaluate: _FlatEvaluation, theta: Tensor, d: Tensor, f0: float, slope: float, refs: tuple[Any, Any]
    ) -> tuple[float, Tensor, Any]:
        """The strong-Wolfe search along ``d``: ``(α, the step α·d, the search's record)``. With ``reuse``, the
        accepted point's ``f`` and ``∇f`` are cached for the next call (``refs``: the objective and model it
        belongs to); without a decrease, the step is zero and the history restarts."""
        # the search returns its latest trial or the lowest one with sufficient decrease: keep those two
        trials: dict[float, tuple[float, Tensor, Tensor]] = {}
        kept: dict[str, float] = {}

        def phi(a: float) -> tuple[float, float]:
            point = theta + d * a  # the very sum SGD(lr=1) forms from the written −α·d
            fa, ga = evaluate(point)
            trials[a] = (fa, ga, point)
            best = kept.get("best")
            if fa <= f0 + self.c1 * a * slope and (best is None or fa < trials[best][0]):
                kept["best"] = a
            kept["latest"] = a
            for key in [k for k in trials if k not in kept.values()]:
                del trials[key]
            return fa, float(ga @ d)

        alpha, wolfe = _strong_wolfe(phi, f0, slope, 1.0, self.c1, self.c2, self.max_evals)
        if alpha > 0:
            fa, ga, point = trials[alpha]
            if self.reuse:
                self._cache = (*refs, point, fa, ga)
            return alpha, d * alpha, wolfe
        self.reset()  # no decrease found: stay, and restart from a gradient step next time
        return alpha, torch.zeros_like(theta), wolfe

    def _reusable(self, model: nn.Module, objective: Objective, theta: Tensor) -> bool:
        if not self.reuse or self._cache is None:
            return False
        obj_ref, model_ref, point, _, _ = self._cache
        return (
            obj_ref() is objective
            and model_ref() is model
            and point.shape == theta.shape
            and point.dtype == theta.dtype
            and point.device == theta.device
            and torch.equal(point, theta)
        )

    def _update_history(self, theta: Tensor, g: Tensor) -> bool:
        """Store ``(θ − θ_prev, g − g_prev)`` if it satisfies the curvature condition; whether it did."""
        if self.theta_prev is None or self.g_prev is None:
            return False
        prev = self.theta_prev
        if prev.shape != theta.shape or prev.dtype != theta.dtype or prev.device != theta.device:
            self.reset()  # another model (or the same converted): the pairs say nothing about it
            return False
        s, y = theta - self.theta_prev, g - self.g_prev
        sy = float(s @ y)
        if not sy > self.curvature_eps * float(s.norm()) * float(y.norm()):
            return False
        self.s.append(s)
        self.y.append(y)
        if len(self.s) > self.history:
            del self.s[0], self.y[0]
        return True

    def _direction(self, g: Tensor) -> Tensor:
        """``−H g`` by the two-loop recursion; the scaled gradient ``−g·min(1, 1/‖g‖₁)`` without history."""
        if not self.s:
            l1 = float(g.abs().sum())
            return -g * min(1.0, 1.0 / l1) if l1 > 0 else -g
        rho = [1.0 / float(y @ s) for s, y in zip(self.s, self.y)]
        q = g.clone()
        a = [0.0] * len(self.s)
        for i in range(len(self.s) - 1, -1, -1):
            a[i] = rho[i] * float(self.s[i] @ q)
            q.add_(self.y[i], alpha=-a[i])
        gamma = float(self.s[-1] @ self.y[-1]) / float(self.y[-1] @ self.y[-1])
        r = q.mul_(gamma)
        for i in range(len(self.s)):
            b = rho[i] * float(self.y[i] @ r)
            r.add_(self.s[i], alpha=a[i] - b)
        return r.neg_()


def _cubic_min(a1: float, f1: float, g1: float, a2: float, f2: float, g2: float, lo: float, hi: float) -> float:
    """Minimiser of the cubic through ``(a1, f1, g1)`` and ``(a2, f2, g2)`` (N&W eq. 3.59), clamped to
    ``[lo, hi]``; the midpoint where the cubic has no minimiser or the values are not finite."""
    try:
        d1 = g1 + g2 - 3.0 * (f1 - f2) / (a1 - a2)
        disc = d1 * d1 - g1 * g2
        if disc >= 0:
            d2 = math.copysign(math.sqrt(disc), a2 - a1)
            a = a2 - (a2 - a1) * (g2 + d2 - d1) / (g2 - g1 + 2.0 * d2)
            if math.isfinite(a):
                return min(max(a, lo), hi)
    except (ZeroDivisionError, OverflowError, ValueError):
        pass
    return 0.5 * (lo + hi)


def _strong_wolfe(
    phi: Callable[[float], tuple[float, float]],
    f0: float,
    slope: float,
    alpha: float,
    c1: float,
    c2: float,
    max_evals: int,
) -> tuple[float, bool]:
    """Nocedal & Wright Alg. 3.5 (bracketing) and 3.6 (zoom) for ``φ(α)`` with ``φ(0) = f0``, ``φ'(0) = slope < 0``.

    ``phi(α)`` returns ``(φ(α), φ'(α))``. Returns ``(α, whether the strong Wolfe conditions hold)``;
    without a point satisfying them within ``max_evals`` evaluations, the evaluated point with
    sufficient decrease and the lowest ``φ`` (``α = 0`` if there is none).
    """
    evals = 0

    def armijo_fails(a: float, fa: float) -> bool:
        return not math.isfinite(fa) or fa > f0 + c1 * a * slope

    def zoom(lo: tuple[float, float, float], hi: tuple[float, float, float]) -> tuple[float, bool]:
        nonlocal evals
        while evals < max_evals:
            left, right = min(lo[0], hi[0]), max(lo[0], hi[0])
            if right - left <= _XTOL * right:
                break
            margin = 0.1 * (right - left)  # keep away from the ends so the bracket shrinks by ≥ 10%
            a = _cubic_min(*lo, *hi, left + margin, right - margin)
            fa, da = phi(a)
            evals += 1
            if armijo_fails(a, fa) or fa > lo[1]:
                hi = (a, fa, da)
            else:
                if abs(da) <= -c2 * slope:
                    return a, True
                if da * (hi[0] - lo[0]) >= 0:
                    hi = lo
                lo = (a, fa, da)
        return lo[0], False

    prev = (0.0, f0, slope)
    first = True
    while evals < max_evals:
        fa, da = phi(alpha)
        evals += 1
        if armijo_fails(alpha, fa) or (not first and fa >= prev[1]):
            return zoom(prev, (alpha, fa, da))
        if abs(da) <= -c2 * slope:
            return alpha, True
        if da >= 0:
            return zoom((alpha, fa, da), prev)
        # still descending with sufficient decrease: extrapolate (Moré & Thuente's bounds)
        width = alpha - prev[0]
        nxt = _cubic_min(*prev, alpha, fa, da, alpha + 1.1 * width, alpha + 4.0 * width)
        prev, alpha, first = (alpha, fa, da), nxt, False
    return prev[0], False
