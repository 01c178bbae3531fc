"""Curvature: the products, solvers and estimators that the order-2 and order-3 methods and the
training diagnostics share — one home for each.

It lives in ``second/`` because of the floor plan's dependency rule: the estimators of ``second/``
(``kfac``, ``natural-gradient``, ``hessian-free``, ``newton``, ``diag-hessian``) and of ``higher/``
(``cubic-newton``, which may import ``second/``) use it, and so do the diagnostics of ``dynamics/``
(which may import ``second/`` and ``core/``), while no estimator may import ``dynamics/``. ``core/``
would also be reachable from all three, but nothing in ``core/`` may import from above it, and
:class:`FlatLoss` needs the objective machinery of an estimator (:mod:`unigrad.core.probe`) and is
second-order machinery, not part of the contract. The module itself imports only ``core/``.

Notation: ``f(θ)`` is the mean loss of an objective, ``θ`` the trainable parameters flattened in
:func:`unigrad.core.params.trainable` order, ``H = ∇²f(θ)``, ``z`` the model's outputs.

**Products** (:class:`FlatLoss`). :class:`FlatLoss` views ``f`` as a function of one flat vector ``θ``,
evaluated through ``torch.func.functional_call`` so the model's own parameters are never modified. It
builds the autograd graph of ``f`` (and, for supervised objectives, of the outputs ``z(θ)``) once, at the
current point; every product then reuses that graph:

* ``hvp(v) = ∇²f(θ) v`` — Pearlmutter's R-operator by double backward (``∂(∇f·v)/∂θ``; Pearlmutter
  1994, "Fast exact multiplication by the Hessian"). Cost: one HVP per sample.
* ``ggn_vp(v) = Jᵀ H_z J v`` — the generalized Gauss-Newton product (Schraudolph 2002), with
  ``J = ∂z/∂θ`` the Jacobian of the model's outputs and ``H_z = ∂²f/∂z²`` the Hessian of the loss in
  the outputs (positive semi-definite for a convex loss such as cross-entropy or squared error, so
  ``G ⪰ 0`` even where ``∇²f`` is indefinite). ``J v`` by the double-vjp trick (the gradient of
  ``(Jᵀu)·v`` with respect to a dummy ``u``), ``Jᵀ(·)`` by one backward. Cost: one JVP and one
  backward per sample. When the loss is the negative log-likelihood of an exponential family whose
  natural parameter is ``z`` (the :class:`Likelihood` models below), ``G`` *is* the Fisher
  information matrix (Martens 2020, "New insights and perspectives on the natural gradient method", §9).
* ``per_sample_grads()`` — the ``(B, d)`` matrix of per-sample gradients ``∇ℓ_b`` (for the empirical
  Fisher ``(1/B) Σ_b ∇ℓ_b ∇ℓ_bᵀ``). Cost: one backward per sample.

**Trust.** :func:`reduction_ratio` compares a step's actual decrease with the one its local model
predicted (``newton``'s trust region, ``cubic-newton``'s regularisation weight).

**Solver.** :func:`conjugate_gradient` solves ``A x = b`` for a symmetric ``A`` given only ``v ↦ A v``,
stopping on the residual, on Martens' relative-progress test of the quadratic model, or on negative
curvature.

**Lanczos, Hutchinson, likelihoods.** Lanczos tridiagonalisation (:func:`lanczos`) lives in
:mod:`unigrad.second.lanczos`, Hutchinson's diagonal and trace estimates (:func:`hutchinson_diagonal`,
:func:`hutchinson_trace`, :func:`keyed_probes`) in :mod:`unigrad.second.hutchinson`, and the predictive
distributions of the sampled Fisher (:class:`Likelihood`, :func:`likelihood_of`) in
:mod:`unigrad.second.likelihood`, each with its math; this module imports their names, so
``unigrad.second.curvature`` stays the one place to import the curvature pieces from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError
from unigrad.core.objective import Objective, Supervised, check_differentiable, n_samples, reduce
from unigrad.core.probe import _Bound
from unigrad.second.hutchinson import hutchinson_diagonal, hutchinson_trace, keyed_probes
from unigrad.second.lanczos import FORMS, Lanczos, lanczos, orthogonalize, tridiagonal
from unigrad.second.likelihood import LOSSES, Likelihood, likelihood_of, loss_kind


class FlatLoss:
    """The mean loss of ``objective`` as a function of the flat parameter vector (module docs).

    Args:
        model: the model; its parameters are read, never written.
        objective: what to minimise.
        params: the trainable ``(name, parameter)`` pairs, in order.
        outputs: also build the graph of the model's outputs (needs a :class:`Supervised` objective),
            for :meth:`ggn_vp`.
        method: the estimator's name, for the error raised when the losses cannot be differentiated.

    Attributes:
        theta0: the current parameters, flattened (detached).
        loss: ``f(θ₀)`` as a float.
        losses: the per-sample losses at ``θ₀`` (detached; 0-d for an objective that returns a scalar).
        grad: ``∇f(θ₀)`` (detached).
        batch: samples one evaluation of the objective costs.
        cost: the work done so far (the loss and gradient, then every product).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        params: list[tuple[str, nn.Parameter]],
        *,
        outputs: bool = False,
        method: str = "this estimator",
    ) -> None:
        self.model, self.objective, self.method = model, objective, method
        self.shapes = [p.shape for _, p in params]
        self.sizes = [p.numel() for _, p in params]
        self.names = [n for n, _ in params]
        self.theta0 = torch.cat([p.detach().reshape(-1) for _, p in params])
        self.batch = n_samples(objective, None)
        self.cost = Cost()
        self._bound = _Bound(model, objective)
        self._u: Tensor | None = None
        with torch.enable_grad():
            self._theta = self.theta0.clone().requires_grad_(True)
            if outputs:
                if not isinstance(objective, Supervised):
                    raise UnigradError(
                        "Gauss-Newton and Fisher products need a supervised objective (unigrad.supervised(loss_fn, "
                        "inputs, targets)) to see the model's outputs; use the Hessian instead"
                    )
                self._z = functional_call(model, self._values(self._theta), (objective.inputs,), strict=False)
                self._losses = objective.score(self._z)
            else:
                self._z = None
                self._losses = functional_call(self._bound, self._prefixed(self._theta), (), strict=False)
            check_differentiable(self._losses, method)
            self._f = reduce(self._losses)
            (self._g,) = torch.autograd.grad(self._f, self._theta, create_graph=True)
        self.cost.forwards += self.batch
        self.cost.backwards += self.batch
        self.loss = float(self._f.detach())
        self.losses = self._losses.detach()
        self.grad = self._g.detach()

    @property
    def dim(self) -> int:
        return self.theta0.numel()

    def _values(self, theta: Tensor) -> dict[str, Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, theta.split(self.sizes), self.shapes, strict=True)}

    def _prefixed(self, theta: Tensor) -> dict[str, Tensor]:
        return {"model." + n: t for n, t in self._values(theta).items()}

    def unflatten(self, flat: Tensor) -> list[Tensor]:
        """Split a flat vector into tensors shaped like the parameters."""
        return [t.view(s) for t, s in zip(flat.split(self.sizes), self.shapes, strict=True)]

    def value(self, theta: Tensor) -> float:
        """``f(θ)`` at another point (no gradient; one forward per sample)."""
        with torch.no_grad():
            out = reduce(functional_call(self._bound, self._prefixed(theta), (), strict=False))
        self.cost.forwards += self.batch
        return float(out)

    def value_and_grad(self, theta: Tensor) -> tuple[float, Tensor]:
        """``f(θ)`` and ``∇f(θ)`` at another point (one forward and one backward per sample)."""
        with torch.enable_grad():
            t = theta.detach().clone().requires_grad_(True)
            losses = functional_call(self._bound, self._prefixed(t), (), strict=False)
            check_differentiable(losses, self.method)
            out = reduce(losses)
            (g,) = torch.autograd.grad(out, t)
        self.cost.forwards += self.batch
        self.cost.backwards += self.batch
        return float(out.detach()), g

    def hvp(self, v: Tensor) -> Tensor:
        """``∇²f(θ₀) v`` (double backward through the stored gradient graph)."""
        with torch.enable_grad():
            (hv,) = torch.autograd.grad(self._g, self._theta, grad_outputs=v, retain_graph=True)
        self.cost.hvps += self.batch
        return hv.detach()

    def hessian(self, chunk: int = 256) -> Tensor:
        """The full ``d×d`` Hessian ``∇²f(θ₀)``: ``d`` HVPs with the unit vectors, ``chunk`` at a time
        (batched double backward; one HVP per sample and column)."""
        d = self.dim
        eye = torch.eye(d, dtype=self.theta0.dtype, device=self.theta0.device)
        cols = []
        with torch.enable_grad():
            for start in range(0, d, chunk):
                block = eye[start : start + chunk]
                try:
                    (h,) = torch.autograd.grad(
                        self._g, self._theta, grad_outputs=block, retain_graph=True, is_grads_batched=True
                    )
                except RuntimeError:  # an op without a batching rule: one product per column
                    h = torch.stack(
                        [torch.autograd.grad(self._g, self._theta, grad_outputs=v, retain_graph=True)[0] for v in block]
                    )
                cols.append(h.detach())
        self.cost.hvps += d * self.batch
        h = torch.cat(cols)
        return 0.5 * (h + h.T)

    def ggn_vp(self, v: Tensor) -> Tensor:
        """``Jᵀ H_z J v``: the generalized Gauss-Newton matrix times ``v`` (``outputs=True`` only)."""
        if self._z is None:
            raise UnigradError("FlatLoss was built without outputs=True; Gauss-Newton products need the outputs")
        with torch.enable_grad():
            if self._u is None:  # dummy cotangent for the double-vjp trick, and ∂f/∂z with its graph
                self._u = torch.zeros_like(self._z, requires_grad=True)
                (self._jtu,) = torch.autograd.grad(self._z, self._theta, grad_outputs=self._u, create_graph=True)
                (self._gz,) = torch.autograd.grad(self._f, self._z, create_graph=True)
            (jv,) = torch.autograd.grad(self._jtu, self._u, grad_outputs=v, retain_graph=True)
            (hjv,) = torch.autograd.grad(self._gz, self._z, grad_outputs=jv, retain_graph=True)
            (out,) = torch.autograd.grad(self._z, self._theta, grad_outputs=hjv, retain_graph=True)
        self.cost.jvps += self.batch
        self.cost.backwards += self.batch
        return out.detach()

    def per_sample_grads(self) -> Tensor:
        """The ``(B, d)`` gradients of the per-sample losses ``ℓ_b`` (not divided by ``B``)."""
        losses = self._losses
        if losses.dim() == 0:
            raise UnigradError("per-sample gradients need per-sample losses; this objective returns one scalar")
        b = losses.numel()
        with torch.enable_grad():
            try:
                (jac,) = torch.autograd.grad(
                    losses,
                    self._theta,
                    grad_outputs=torch.eye(b, dtype=losses.dtype),
                    retain_graph=True,
                    is_grads_batched=True,
                )
            except RuntimeError:  # an op without a batching rule: one backward per sample
                jac = torch.stack([torch.autograd.grad(losses[i], self._theta, retain_graph=True)[0] for i in range(b)])
        self.cost.backwards += self.batch
        return jac.detach()


def reduction_ratio(f0: float, trial: float, predicted: float, dtype: torch.dtype) -> float:
    """How well a local model predicted a step: ``ρ = (f(θ₀) − f(θ₀ + s) + δ) / (predicted + δ)``.

    ``predicted`` is the model's decrease ``m(0) − m(s)``. Both changes are shifted by
    ``δ = 10ε·max(1, |f(θ₀)|)`` (``ε`` of ``dtype``): where they are at the rounding level of ``f`` (at
    convergence) ``ρ`` reads as agreement instead of noise that would shrink a trust region forever. A trial
    value that is not finite gives ``ρ = −∞`` (reject the step).
    """
    if not math.isfinite(trial):
        return -math.inf
    shift = 10.0 * torch.finfo(dtype).eps * max(1.0, abs(f0))
    return (f0 - trial + shift) / (predicted + shift)


@dataclass
class CGResult:
    """What :func:`conjugate_gradient` returns.

    Attributes:
        x: the approximate solution.
        iterations: matrix–vector products used.
        residual: ``‖b − A x‖`` at the end (from the recurrence).
        negative_curvature: whether it stopped on a direction with ``pᵀAp ≤ 0``.
        iterates: ``(i, x_i)`` saved at the iterations listed in ``save_at`` (for backtracking).
    """

    x: Tensor
    iterations: int
    residual: float
    negative_curvature: bool = False
    iterates: list[tuple[int, Tensor]] = field(default_factory=list)


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    x0: Tensor | None = None,
    max_iter: int = 50,
    tol: float = 1e-10,
    progress_tol: float | None = None,
    save_at: Callable[[int], bool] | None = None,
) -> CGResult:
    """Solve ``A x = b`` by conjugate gradients (Hestenes & Stiefel 1952) from ``x0`` (default 0).

    Stops after ``max_iter`` products, when ``‖r‖ ≤ tol·‖b‖``, when a search direction has
    ``pᵀAp ≤ 0`` (the solution so far is returned: a descent direction for the quadratic model), or,
    with ``progress_tol = ε``, on Martens' (2010, §4.4) relative-progress test of
    ``φ(x) = ½ xᵀAx − bᵀx``: at iteration ``i`` with ``k = max(10, ⌈0.1 i⌉)``, stop when
    ``φ_i < 0`` and ``(φ_i − φ_{i−k}) / φ_i < k ε``.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None and bool(x0.any()) else b.clone()
    iterations = 1 if x0 is not None and bool(x0.any()) else 0
    p = r.clone()
    rr = float(r @ r)
    b_norm = float(b.norm())
    phis: list[float] = []
    iterates: list[tuple[int, Tensor]] = []
    negative = False
    for i in range(1, max_iter + 1):
        if math.sqrt(rr) <= tol * b_norm:
            break
        ap = matvec(p)
        iterations += 1
        curv = float(p @ ap)
        if curv <= 0:
            negative = True
            if not bool(x.any()):  # no progress yet: the steepest direction scaled to the model's step
                x = p * (rr / max(abs(curv), 1e-300)) if curv < 0 else p.clone()
            break
        alpha = rr / curv
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
        if save_at is not None and save_at(i):
            iterates.append((i, x.clone()))
        if progress_tol is not None:
            # φ(x) = ½xᵀAx − bᵀx = −½ bᵀx − ½ rᵀx  (since Ax = b − r)
            phis.append(float(-0.5 * (b @ x) - 0.5 * (r @ x)))
            k = max(10, math.ceil(0.1 * i))
            if i > k and phis[-1] < 0 and (phis[-1] - phis[-1 - k]) / phis[-1] < k * progress_tol:
                break
    return CGResult(x=x, iterations=iterations, residual=math.sqrt(rr), negative_curvature=negative, iterates=iterates)


__all__ = [
    "FORMS",
    "LOSSES",
    "CGResult",
    "FlatLoss",
    "Lanczos",
    "Likelihood",
    "conjugate_gradient",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "keyed_probes",
    "lanczos",
    "likelihood_of",
    "loss_kind",
    "orthogonalize",
    "reduction_ratio",
    "tridiagonal",
]
