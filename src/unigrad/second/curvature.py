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

**Solver.** :func:`conjugate_gradient` solves ``A x = b`` for a symmetric ``A`` given only ``v ↦ A v``,
stopping on the residual, on Martens' relative-progress test of the quadratic model, or on negative
curvature.

**Lanczos** (:func:`lanczos`; Lanczos 1950). From a unit vector ``q₀``, ``k`` products with a symmetric
``A`` build an orthonormal basis ``Q = [q₀ … q_{k−1}]`` of the Krylov space ``span{q₀, Aq₀, …}`` and
the tridiagonal ``T = QᵀAQ`` (diagonal ``α``, off-diagonal ``β``) by the three-term recurrence::

    w = A q_j − α_j q_j − β_{j−1} q_{j−1},     α_j = q_jᵀ A q_j,     β_j = ‖w‖,     q_{j+1} = w / β_j

The eigenvalues of ``T`` (Ritz values) approximate the extreme eigenvalues of ``A`` from inside, the
top one rising monotonically to ``λ_max``; the residual of a Ritz pair ``(μ, Q y)`` is
``‖A Q y − μ Q y‖ = β_j |y_last|`` (Parlett, *The Symmetric Eigenvalue Problem*, 1998, ch. 13). In
floating point the ``q_j`` lose orthogonality as Ritz values converge; full reorthogonalisation
(``w ← w − Q(Qᵀw)``, twice: "twice is enough", Parlett) keeps ``Q`` orthonormal to rounding. Two
orderings of the step are in use (Paige 1972, "Computational variants of the Lanczos method for the
eigenproblem"): the classical one above, and the modified one ``w = Aq_j − β_{j−1}q_{j−1}``,
``α_j = q_jᵀw``, ``w ← w − α_j q_j``, which is the more stable without reorthogonalisation. When the
Krylov space becomes invariant (``β_j ≤ √ε·‖T‖``) a keyed random vector orthogonalised against ``Q``
continues the process (keeping the coupling ``q_{j+1}ᵀw`` in ``T``, so ``T = QᵀAQ`` stays exact).

**Hutchinson** (:func:`hutchinson_diagonal`, :func:`hutchinson_trace`; Hutchinson 1989, "A stochastic
estimator of the trace of the influence matrix for Laplacian smoothing splines"; Bekas, Kokiopoulou &
Saad 2007, "An estimator for the diagonal of a matrix"). For probes ``z`` with ``E[zzᵀ] = I``::

    diag A ≈ (1/q) Σ_i z_i ⊙ (A z_i),       tr A ≈ (1/q) Σ_i z_iᵀ A z_i

both unbiased (``E[z_j (Az)_j] = Σ_k A_jk E[z_j z_k] = A_jj``). With Rademacher ``z`` (±1 entries) the
diagonal estimate has variance ``(1/q) Σ_{k≠j} A_jk²`` (exact for a diagonal ``A``) and the trace
``(2/q) Σ_{j≠k} A_jk²``, the smallest among probes with ``E[zzᵀ] = I``; Gaussian ``z`` adds ``2A_jj²/q``
to the first and ``(2/q) Σ_j A_jj²`` to the second. Probe ``i`` comes from a keyed stream
(:func:`keyed_probes`), never the global RNG.

**Likelihoods** (:class:`Likelihood`, :func:`likelihood_of`). The sampled (Monte Carlo) Fisher
``F = E_{ŷ∼p(y|z)}[∇_θ ℓ(z, ŷ) ∇_θ ℓ(z, ŷ)ᵀ]`` needs the model's predictive distribution ``p(y|z)``,
the one whose negative log-likelihood the loss ``ℓ`` is. Three losses name one (per sample, with ``k``
output elements, the loss averaged over them as ``F.mse_loss`` and ``F.binary_cross_entropy_with_logits``
do):

=================  =====================================  ==========================================  ================
loss               ``p(y|z)``                             sampled target ``ŷ``                        ``g``
=================  =====================================  ==========================================  ================
``cross_entropy``  categorical, ``softmax(z)``            a class index ``ŷ ∼ softmax(z)``            ``p − e_ŷ``
``bce``            Bernoulli ``σ(z_i)`` per element       ``ŷ_i = [u_i < σ(z_i)]``, ``u ∼ U(0, 1)``   ``(σ(z) − ŷ)/√k``
``mse``            Gaussian ``N(z, (k/2)·I)``             ``ŷ = z − √(k/2)·ε``, ``ε ∼ N(0, I)``       ``√(2/k)·ε``
=================  =====================================  ==========================================  ================

``g`` is the output gradient ``∂ℓ(z, ŷ)/∂z`` for ``cross_entropy`` and ``mse`` (there ``ℓ`` is the
negative log-likelihood itself, up to a constant); the ``bce`` loss is the Bernoulli negative
log-likelihood divided by ``k``, and ``g`` is ``√k·∂ℓ/∂z``. So in every case ``E[g gᵀ] = ∇²_z ℓ``, the
Hessian of the per-sample loss in the outputs: the output Fisher of the exponential family, and the
``H_z`` of the Gauss-Newton matrix (Martens 2020, §9.2). Any other loss is
refused: the sampled Fisher of an unknown likelihood is not defined.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.objective import Objective, Supervised, check_differentiable, n_samples, reduce
from unigrad.core.probe import _Bound
from unigrad.core.rng import Noise


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


# -- Lanczos ------------------------------------------------------------------------------------------

FORMS = ("classical", "modified")
"""The orderings of the Lanczos step (module docs)."""


def tridiagonal(alphas: Sequence[float], betas: Sequence[float]) -> Tensor:
    """The symmetric tridiagonal ``T`` (float64) with diagonal ``alphas`` and off-diagonal ``betas``."""
    t = torch.diag(torch.tensor(list(alphas), dtype=torch.float64))
    if len(betas):
        off = torch.tensor(list(betas), dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return t


@dataclass
class Lanczos:
    """What :func:`lanczos` returns.

    Attributes:
        basis: the orthonormal basis ``Q``, one vector per row (``m × d``, ``m`` the steps taken).
        alphas: the diagonal ``α_0 … α_{m−1}`` of ``T = QᵀAQ``.
        betas: its off-diagonal ``β_0 … β_{m−2}``.
        restarts: random vectors drawn (a start from a zero vector counts as one).
    """

    basis: Tensor
    alphas: list[float]
    betas: list[float]
    restarts: int

    @property
    def tridiagonal(self) -> Tensor:
        """``T = QᵀAQ`` (``m × m``, float64)."""
        return tridiagonal(self.alphas, self.betas)


def orthogonalize(v: Tensor, basis: Tensor) -> Tensor:
    """``v`` minus its projection on the rows of ``basis``: ``v − Qᵀ(Qv)``, twice (classical Gram–Schmidt
    repeated, which is orthogonal to rounding; Parlett's "twice is enough")."""
    if basis.shape[0] == 0:
        return v
    for _ in range(2):
        v = v - basis.T @ (basis @ v)
    return v


def lanczos(
    matvec: Callable[[Tensor], Tensor],
    start: Tensor,
    steps: int,
    *,
    form: str = "classical",
    reorthogonalize: bool = True,
    random_vector: Callable[[int], Tensor] | None = None,
    stop: Callable[[list[float], list[float], float], bool] | None = None,
) -> Lanczos:
    """At most ``steps`` Lanczos steps (``steps`` products with the symmetric ``A`` of ``matvec``) from
    ``start/‖start‖`` (module docs for the recurrence).

    Args:
        matvec: ``v ↦ A v`` (same dtype and device as ``start``, the working precision).
        start: the first direction; a zero vector draws ``random_vector(0)`` instead.
        steps: the most products, ``1 ≤ steps ≤ d``.
        form: ``"classical"`` (``α_j = q_jᵀAq_j`` first, then both subtractions) or ``"modified"``
            (``β_{j−1}q_{j−1}`` subtracted first, ``α_j`` from what remains; Paige 1972). The classical
            form stores the basis as rows, the modified one as columns: the layout fixes the summation
            order of the reorthogonalisation's matrix products, and so belongs to each form's bit-for-bit
            results (the cubic-newton steps use the classical form, the sharpness diagnostic the modified).
        reorthogonalize: orthogonalise every new vector against the whole basis (twice).
        random_vector: ``i ↦`` the ``i``-th random vector, drawn from a keyed stream
            (:func:`unigrad.core.rng.generator` or :class:`~unigrad.core.rng.Noise`; never the global
            RNG). With it, a breakdown (``β_j ≤ √ε·s``, ``s`` the largest ``|α|``, ``|β|`` so far, ``ε``
            the working precision's) continues with a random vector orthogonalised against the basis,
            keeping the coupling ``q_{j+1}ᵀw`` as ``β_j``. Without it, only ``β_j = 0`` ends the run.
        stop: ``stop(alphas, betas, β_j)``, asked after each step but the last with the ``α`` so far, the
            ``β`` before this step's and this step's ``β_j``; ``True`` ends the run there (a convergence
            test on the Ritz values of ``tridiagonal(alphas, betas)``, whose top Ritz pair has the
            residual ``β_j·|y_last|``).

    The last step computes ``α`` only. Cost: one ``matvec`` per step; memory: the ``steps × d`` basis.
    """
    check_choice("form", form, FORMS)
    d = start.numel()
    if not 1 <= steps <= d:
        raise UnigradError(f"lanczos needs 1 <= steps <= {d}, got {steps}")
    tol = math.sqrt(torch.finfo(start.dtype).eps)
    if form == "classical":
        store = torch.zeros(steps, d, dtype=start.dtype, device=start.device)

        def rows(m: int) -> Tensor:
            return store[:m]

    else:
        store = torch.zeros(d, steps, dtype=start.dtype, device=start.device)

        def rows(m: int) -> Tensor:
            return store[:, :m].T

    alphas: list[float] = []
    betas: list[float] = []
    restarts = 0

    def fresh(m: int) -> Tensor:
        nonlocal restarts
        if random_vector is None:
            raise UnigradError("lanczos needs a nonzero start vector or a random_vector to draw one")
        for _ in range(8):  # a random vector has a component outside an m < d dimensional space
            r = random_vector(restarts)
            restarts += 1
            size = float(r.norm())
            r = orthogonalize(r, rows(m))
            norm = float(r.norm())
            if norm > tol * size:
                return r / norm
        raise UnigradError("lanczos: could not extend the basis with random vectors (non-finite products?)")

    norm0 = float(start.norm())
    q = start / norm0 if norm0 > 0 else fresh(0)
    q_prev = q
    scale, m = 0.0, 0
    for j in range(steps):
        if form == "classical":
            store[j] = q
        else:
            store[:, j] = q
        m = j + 1
        w = matvec(q)
        if form == "classical":
            alpha = float(q @ w)
        else:
            if j > 0:
                w = w - betas[j - 1] * q_prev
            alpha = float(w @ q)
        alphas.append(alpha)
        scale = max(scale, abs(alpha))
        if j == steps - 1:
            break
        w = w - alpha * q
        if form == "classical" and j > 0:
            w = w - betas[j - 1] * q_prev
        if reorthogonalize:
            w = orthogonalize(w, rows(m))
        beta = float(w.norm())
        if stop is not None and stop(alphas, betas, beta):
            break
        q_prev = q
        if beta > tol * scale or (random_vector is None and beta != 0):
            q = w / beta
        elif random_vector is not None:  # invariant subspace: continue with a random direction
            q = fresh(m)
            beta = float(q @ w)
        else:  # β = 0: the Krylov space is invariant and nothing continues it
            break
        betas.append(beta)
        scale = max(scale, abs(beta))
    return Lanczos(basis=rows(m), alphas=alphas, betas=betas, restarts=restarts)


# -- Hutchinson ---------------------------------------------------------------------------------------


def keyed_probes(noise: Noise, seed: int, step: int, like: Sequence[Tensor]) -> Callable[[int], Tensor]:
    """``i ↦`` probe ``i``: ``noise``'s direction keyed ``(seed, step, i, tensor)`` for tensors shaped
    like ``like``, concatenated flat (a single flat tensor in ``like`` is one stream)."""

    def probe(i: int) -> Tensor:
        return torch.cat([t.reshape(-1) for t in noise.direction(seed, step, i, like)])

    return probe


def hutchinson_diagonal(matvec: Callable[[Tensor], Tensor], probe: Callable[[int], Tensor], probes: int) -> Tensor:
    """Hutchinson's estimate ``(1/q) Σ_i z_i ⊙ (A z_i)`` of ``diag A`` from ``q = probes`` probes
    ``z_i = probe(i)``, in their dtype (module docs). Cost: ``probes`` products."""
    check_positive("probes", probes, integer=True)
    total: Tensor | None = None
    for i in range(probes):
        z = probe(i)
        if total is None:
            total = torch.zeros_like(z)
        total += z * matvec(z)
    assert total is not None
    return total / probes


def hutchinson_trace(
    matvec: Callable[[Tensor], Tensor], probe: Callable[[int], Tensor], probes: int
) -> tuple[float, float]:
    """Hutchinson's estimate of ``tr A``: the mean of the ``q = probes`` samples ``z_iᵀ A z_i``
    (``z_i = probe(i)``, each dot product in float64) and its standard error ``sd/√q`` (NaN for
    ``q = 1``). Cost: ``probes`` products."""
    check_positive("probes", probes, integer=True)
    samples = []
    for i in range(probes):
        z = probe(i)
        samples.append(float(z.to(torch.float64) @ matvec(z).to(torch.float64)))
    s = torch.tensor(samples, dtype=torch.float64)
    return float(s.mean()), float(s.std(correction=1) / math.sqrt(probes))


# -- likelihoods of the sampled Fisher ----------------------------------------------------------------

LOSSES = {"cross_entropy": "categorical", "bce": "Bernoulli", "mse": "Gaussian"}
"""The losses whose predictive distribution :class:`Likelihood` knows: ``loss -> distribution``."""

_SUPPORTED = (
    "cross-entropy (categorical), binary cross-entropy with logits (Bernoulli) and mean squared error (Gaussian)"
)


@dataclass(frozen=True)
class Likelihood:
    """The predictive distribution ``p(y|z)`` of a model trained with ``loss`` (module docs, table).

    Args:
        loss: ``"cross_entropy"``, ``"bce"`` (binary cross-entropy with logits) or ``"mse"``; any other
            is refused with a :class:`~unigrad.core.errors.UnigradError`.

    Both methods take the outputs ``z`` (``(B, k)`` logits for ``cross_entropy``; ``(B, …)`` with ``k``
    elements per sample otherwise), a keyed ``torch.Generator`` and ``samples = M`` draws per input, and
    consume the generator in the same way, so the same key gives corresponding targets and gradients.
    ``dtype`` is the precision of the draw (default ``z``'s); results are in ``z``'s dtype.
    """

    loss: str

    def __post_init__(self) -> None:
        if not isinstance(self.loss, str) or self.loss not in LOSSES:
            raise UnigradError(
                "Likelihood knows the losses cross_entropy (categorical), bce (binary cross-entropy with logits, "
                f"Bernoulli) and mse (mean squared error, Gaussian), got {self.loss!r}"
            )

    @property
    def distribution(self) -> str:
        """``"categorical"``, ``"Bernoulli"`` or ``"Gaussian"``."""
        return LOSSES[self.loss]

    def _draw(self, z: Tensor, generator: torch.Generator, samples: int, dtype: torch.dtype | None) -> Tensor:
        """Class indices ``(B, M)``; uniforms ``u`` or normals ``ε`` ``(B, M, *z.shape[1:])`` in ``dtype``."""
        check_positive("samples", samples, integer=True)
        dtype = z.dtype if dtype is None else dtype
        shape = (z.shape[0], samples, *z.shape[1:])
        if self.loss == "cross_entropy":
            if z.dim() != 2:
                raise UnigradError(f"cross-entropy sampling needs (batch, classes) logits, got {tuple(z.shape)}")
            p = torch.softmax(z, dim=1)
            return torch.multinomial(p.to(dtype), samples, replacement=True, generator=generator)
        if self.loss == "bce":
            return torch.rand(shape, generator=generator, dtype=dtype, device=z.device)
        return torch.randn(shape, generator=generator, dtype=dtype, device=z.device)

    def sample(
        self, z: Tensor, generator: torch.Generator, samples: int = 1, *, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Targets ``ŷ ∼ p(y|z)``: class indices ``(B, M)`` for ``cross_entropy``, else ``(B, M, *z.shape[1:])``."""
        z = z.detach()
        draw = self._draw(z, generator, samples, dtype)
        if self.loss == "cross_entropy":
            return draw
        if self.loss == "bce":
            return (draw < torch.sigmoid(z).to(draw.dtype)[:, None]).to(z.dtype)
        return z[:, None] - math.sqrt(z[0].numel() / 2.0) * draw.to(z.dtype)

    def output_grads(
        self, z: Tensor, generator: torch.Generator, samples: int = 1, *, dtype: torch.dtype | None = None
    ) -> Tensor:
        """The output gradients ``g`` at sampled targets (module docs), ``(B, M, *z.shape[1:])``, with
        ``E[g gᵀ] = ∇²_z ℓ`` for each input."""
        z = z.detach()
        draw = self._draw(z, generator, samples, dtype)
        if self.loss == "cross_entropy":
            p = torch.softmax(z, dim=1)
            return p[:, None] - F.one_hot(draw, z.shape[1]).to(p.dtype)
        k = z[0].numel()
        if self.loss == "bce":
            p = torch.sigmoid(z)
            y = (draw < p.to(draw.dtype)[:, None]).to(z.dtype)
            return (p[:, None] - y) / math.sqrt(k)
        return draw.to(z.dtype) * math.sqrt(2.0 / k)


def loss_kind(objective: Supervised, z: Tensor, losses: Tensor) -> str | None:
    """Which loss of :data:`LOSSES` the objective computes on this batch, by comparing its per-sample
    ``losses`` at the outputs ``z`` with each candidate's (relative 1e-4, absolute 1e-6); None if none
    matches (per-sample losses are needed)."""
    y = objective.targets
    b = z.shape[0]
    if losses.dim() != 1 or losses.shape[0] != b or z.dim() < 2:
        return None

    def close(candidate: Tensor) -> bool:
        candidate = candidate.reshape(b, -1).mean(dim=1).to(losses.dtype)
        return bool(torch.allclose(losses, candidate, rtol=1e-4, atol=1e-6))

    with torch.no_grad():
        if z.dim() == 2:
            if not y.is_floating_point() and y.shape == (b,) and bool(((y >= 0) & (y < z.shape[1])).all()):
                if close(F.cross_entropy(z, y, reduction="none")):
                    return "cross_entropy"
            if y.is_floating_point() and y.shape == z.shape and close(F.cross_entropy(z, y, reduction="none")):
                return "cross_entropy"
        if y.is_floating_point() and y.numel() == z.numel():
            t = y.reshape(z.shape).to(z.dtype)
            if bool(((t >= 0) & (t <= 1)).all()) and close(F.binary_cross_entropy_with_logits(z, t, reduction="none")):
                return "bce"
            if close((z - t).square()):
                return "mse"
    return None


def likelihood_of(objective: Supervised, z: Tensor, losses: Tensor, *, method: str, instead: str) -> Likelihood:
    """The :class:`Likelihood` of the loss ``objective`` computes (found by :func:`loss_kind` from its
    per-sample ``losses`` at the outputs ``z``), or a one-line :class:`~unigrad.core.errors.UnigradError`
    naming the supported losses, ``method`` (who asks) and ``instead`` (what to do)."""
    kind = loss_kind(objective, z.detach(), losses.detach())
    if kind is None:
        raise UnigradError(
            f"{method} samples targets from the model's predictive distribution, known for {_SUPPORTED} "
            f"losses on per-sample outputs; this objective's loss matches none of them ({instead})"
        )
    return Likelihood(kind)


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
    "tridiagonal",
]
