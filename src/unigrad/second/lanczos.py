"""Lanczos tridiagonalisation of a symmetric operator given only by its products.

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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from unigrad.core.errors import UnigradError, check_choice

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


class _Basis:
    """The Lanczos vectors ``q_j``, as the rows (classical form) or the columns (modified form) of one
    preallocated ``steps × d`` store; :meth:`rows` views the ``m`` stored so far as rows either way."""

    def __init__(self, like: Tensor, steps: int, *, by_rows: bool) -> None:
        d = like.numel()
        self.by_rows, self.m = by_rows, 0
        self.store = torch.zeros((steps, d) if by_rows else (d, steps), dtype=like.dtype, device=like.device)

    def append(self, q: Tensor) -> None:
        if self.by_rows:
            self.store[self.m] = q
        else:
            self.store[:, self.m] = q
        self.m += 1

    def rows(self) -> Tensor:
        return self.store[: self.m] if self.by_rows else self.store[:, : self.m].T


class _Restarts:
    """The random vectors that start or continue a Lanczos run at a breakdown (``β_j ≤ √ε·s``)."""

    def __init__(self, random_vector: Callable[[int], Tensor] | None, tol: float) -> None:
        self.random_vector, self.tol, self.count = random_vector, tol, 0

    def draw(self, basis: Tensor) -> Tensor:
        """The next random vector orthogonalised against the rows of ``basis``, normalised."""
        if self.random_vector is None:
            raise UnigradError("lanczos needs a nonzero start vector or a random_vector to draw one")
        for _ in range(8):  # a random vector has a component outside an m < d dimensional space
            r = self.random_vector(self.count)
            self.count += 1
            size = float(r.norm())
            r = orthogonalize(r, basis)
            norm = float(r.norm())
            if norm > self.tol * size:
                return r / norm
        raise UnigradError("lanczos: could not extend the basis with random vectors (non-finite products?)")

    def next_vector(self, w: Tensor, beta: float, scale: float, basis: _Basis) -> tuple[Tensor | None, float]:
        """``(q_{j+1}, β_j)`` from the residual ``w`` with ``β_j = ‖w‖``: ``w/β_j``, or at a breakdown a random
        vector with the coupling ``q_{j+1}ᵀw`` as ``β_j``; ``(None, β_j)`` where nothing continues the run."""
        if beta > self.tol * scale or (self.random_vector is None and beta != 0):
            return w / beta, beta
        if self.random_vector is None:
            return None, beta
        q = self.draw(basis.rows())
        return q, float(q @ w)


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
            (:func:`unigrad.core.rng.generator` or :class:`~unigrad.core.rng.ProbeNoise`; never the global
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
    classical = form == "classical"
    basis = _Basis(start, steps, by_rows=classical)
    restarts = _Restarts(random_vector, math.sqrt(torch.finfo(start.dtype).eps))
    alphas: list[float] = []
    betas: list[float] = []
    norm0 = float(start.norm())
    q = start / norm0 if norm0 > 0 else restarts.draw(basis.rows())
    q_prev = q
    scale = 0.0
    for j in range(steps):
        basis.append(q)
        w = matvec(q)
        if classical:
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
        if classical and j > 0:
            w = w - betas[j - 1] * q_prev
        if reorthogonalize:
            w = orthogonalize(w, basis.rows())
        beta = float(w.norm())
        if stop is not None and stop(alphas, betas, beta):
            break
        q_prev = q
        q, beta = restarts.next_vector(w, beta, scale, basis)
        if q is None:  # β = 0: the Krylov space is invariant and nothing continues it
            break
        betas.append(beta)
        scale = max(scale, abs(beta))
    return Lanczos(basis=basis.rows(), alphas=alphas, betas=betas, restarts=restarts.count)


__all__ = ["FORMS", "Lanczos", "lanczos", "orthogonalize", "tridiagonal"]
