"""Measures of training: curvature, gradient-estimate quality and weight movement, as pure functions.

Pure functions (each leaves the model's parameters, ``.grad``, buffers and the global RNG as it
found them; ``f`` is the mean loss of ``objective`` over its batch, ``θ`` the trainable parameters
flattened in :func:`unigrad.core.params.trainable` order, ``d`` the estimator's direction, i.e. what
it wrote into ``.grad``, ``g = ∇f(θ)`` the true gradient on the same batch):

* :func:`top_hessian_eigenvalue` — the *sharpness* ``λ_max(∇²f(θ))``, the largest **algebraic**
  eigenvalue of the Hessian (not the largest magnitude: a negative eigenvalue of larger modulus
  is ignored), by the Lanczos iteration on Hessian–vector products
  (:func:`unigrad.second.curvature.lanczos`, modified form; Lanczos 1950; as used for
  sharpness by Ghorbani, Krishnan & Xiao 2019, arXiv:1901.10159, and Cohen et al. 2021,
  arXiv:2103.00065, "edge of stability": for gradient descent with step ``η`` the sharpness
  rises to about ``2/η``). After ``j`` products, the Krylov basis ``V_j`` (re-orthogonalized
  in full) and the tridiagonal ``T_j = V_jᵀ ∇²f V_j`` give Ritz values; the top one increases
  monotonically to ``λ_max``. It stops when the residual of the top Ritz pair ``(μ, y)``,
  ``‖∇²f y − μ y‖ = β_j |s_j|`` (``s_j`` the last component of ``T_j``'s top eigenvector), is at
  most ``tol · |μ|``, or after ``iters`` products. Cost: one forward and one backward per sample
  (the gradient graph) plus one HVP per sample and iteration.
* :func:`hessian_trace` — Hutchinson's estimator (Hutchinson 1989;
  :func:`unigrad.second.curvature.hutchinson_trace`) ``tr ∇²f = E[vᵀ ∇²f v]`` with
  Rademacher ``v`` (``E[vvᵀ] = I``; among distributions with that property it has the smallest
  variance, ``2 Σ_{i≠j} H_ij²``): the mean of ``probes`` samples and its standard error
  ``sd/√probes``. Cost: one forward and one backward, plus ``probes`` HVPs, per sample.
* :func:`alignment` — ``cos(d, g) = ⟨d, g⟩ / (‖d‖ ‖g‖)`` over all parameters at once (1 for
  backprop; for a random-direction estimator with ``q`` Gaussian probes in ``d`` dimensions,
  ``E cos² = q/(d + q − 1)`` exactly for exact directional derivatives (1/d at q = 1; see
  :mod:`unigrad.experiments.estimator_variance`), so ``cos ≈ √(q/d)`` when ``q ≪ d``).
* :func:`relative_variance` — from ``k`` estimates ``d_1 … d_k`` made at the same parameters and
  batch with independent noise: ``tr Cov / ‖r‖² = (1/(k−1)) Σ_i ‖d_i − d̄‖² / ‖r‖²``, with ``r``
  the true gradient when given (the usual choice: comparable across estimators) or ``d̄`` itself
  otherwise. ``0`` for a deterministic estimator (backprop, Newton, feedback alignment with fixed
  feedback weights). :func:`relative_bias` is ``‖d̄ − g‖² / ‖g‖²`` (it includes the noise of
  ``d̄``, whose expectation is ``tr Cov / (k ‖g‖²)``).
* :func:`norm_ratio` — ``‖d‖ / ‖g‖``.
* :func:`drift` — ``‖θ_t − θ_0‖`` and ``‖θ_t‖``.
* :func:`effective_step` — the step the optimizer actually took, ``Δ = θ_{t+1} − θ_t``: its
  norm ``‖Δ‖``, the *effective learning rate* ``‖Δ‖ / ‖g‖`` (the rate plain gradient descent
  would need to move as far; for SGD with rate ``η`` it equals ``η ‖d‖/‖g‖``) and the descent
  cosine ``cos(−Δ, g)`` (whether the step, after the optimizer's preconditioning and momentum,
  still points downhill).

The named diagnostics that the trainer records (:mod:`unigrad.dynamics.diagnostics`) are made of these.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.estimator import Estimator
from unigrad.core.objective import Objective, reduce
from unigrad.core.params import trainable
from unigrad.core.probe import _Bound
from unigrad.core.rng import ProbeNoise
from unigrad.second.curvature import FlatLoss, hutchinson_trace, keyed_probes, lanczos, tridiagonal

_LANCZOS_TAG = 0x1A2C05
_TRACE_TAG = 0x7ACE


# ------------------------------------------------------------------------------------------ guards


@contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Run a block that evaluates ``model`` without leaving a trace: buffers (batch-norm running
    statistics), the input statistics recorded by decorrelation layers, the train/eval mode and the
    global RNG state (dropout) are restored on exit."""
    from unigrad.nn.decorrelation import Decorrelation

    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    decors = [(m, m._rows, m._last) for m in model.modules() if isinstance(m, Decorrelation)]
    modes = [(m, m.training) for m in model.modules()]
    devices = sorted({b.device.index or 0 for b, _ in buffers if b.device.type == "cuda"} | _cuda_devices(model))
    with torch.random.fork_rng(devices=devices, enabled=True):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    if not torch.equal(b, saved):  # an unchanged buffer keeps its version (graphs saved it)
                        b.copy_(saved)
            for m, rows, last in decors:
                m._rows, m._last = rows, last
            for m, mode in modes:
                m.training = mode


def _grads(params: Sequence[tuple[str, Tensor]]) -> list[Tensor | None]:
    """A copy of each parameter's ``.grad`` (``None`` where it has none)."""
    return [None if p.grad is None else p.grad.detach().clone() for _, p in params]


def _check_trace_probes(name: str, probes: int) -> None:
    check_positive(name, probes, integer=True)
    if probes < 2:
        raise UnigradError(f"option {name} must be >= 2 for a standard error, got {probes}")


def _cuda_devices(model: nn.Module) -> set[int]:
    return {p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"}


def _flat(tensors: Sequence[Tensor | None], like: Sequence[Tensor] | None = None) -> Tensor:
    """Concatenate ``tensors`` flat in float64 (a missing ``.grad`` counts as zeros shaped like ``like``)."""
    parts = []
    for i, t in enumerate(tensors):
        if t is None:
            if like is None:
                raise UnigradError("a gradient is missing")
            parts.append(torch.zeros(like[i].numel(), dtype=torch.float64, device=like[i].device))
        else:
            parts.append(t.detach().reshape(-1).to(torch.float64))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


# ------------------------------------------------------------------------------------------ curvature


def _lanczos_top(flat: FlatLoss, iters: int, seed: int, tol: float) -> tuple[float, int]:
    """Top Ritz value of ``∇²f`` after at most ``iters`` HVPs (module docs); returns it and the products used.

    Lanczos (:func:`unigrad.second.curvature.lanczos`, modified form, full reorthogonalisation) in
    float64 from the Gaussian vector keyed ``(seed, _LANCZOS_TAG)``, stopped by the Ritz residual test
    or where the Krylov space is invariant (``β ≤ 10⁻¹²`` times the largest Ritz value so far).
    """
    d, dtype, dev = flat.dim, flat.theta0.dtype, flat.theta0.device
    start = ProbeNoise("gaussian").raw(seed, _LANCZOS_TAG, 0, 0, (d,), torch.float64, dev)
    scale = 0.0

    def converged(alphas: list[float], betas: list[float], beta: float) -> bool:
        nonlocal scale
        evals, evecs = torch.linalg.eigh(tridiagonal(alphas, betas))
        top = float(evals[-1])
        scale = max(scale, float(evals.abs().max()))
        residual = beta * abs(float(evecs[-1, -1]))
        return residual <= tol * max(abs(top), 1e-30) or beta <= 1e-12 * max(scale, 1e-30)

    def hvp(v: Tensor) -> Tensor:
        return flat.hvp(v.to(dtype)).to(torch.float64)

    lz = lanczos(hvp, start, min(iters, d), form="modified", stop=converged)
    evals, _ = torch.linalg.eigh(lz.tridiagonal)
    return float(evals[-1]), len(lz.alphas)


def top_hessian_eigenvalue(
    model: nn.Module, objective: Objective, *, iters: int = 20, seed: int = 0, tol: float = 1e-4
) -> float:
    """The sharpness ``λ_max(∇²f(θ))``: the largest *algebraic* eigenvalue of the Hessian of the mean
    loss with respect to the trainable parameters, by Lanczos with full re-orthogonalization.

    Args:
        model: the model at ``θ`` (read through ``functional_call``; nothing is modified).
        objective: the batch whose mean loss ``f`` is differentiated.
        iters: at most this many Hessian–vector products (``d`` at most: then the answer is exact
            up to rounding).
        seed: names the Gaussian starting vector (a keyed stream of :mod:`unigrad.core.rng`).
        tol: stop once the top Ritz pair's residual ``‖∇²f y − λ y‖ ≤ tol·|λ|``.

    A Ritz value never exceeds ``λ_max``, so a truncated run errs low; with ``iters ≥ 20`` it is
    usually within ``tol`` for small networks. See the module docs for the cost.
    """
    check_positive("iters", iters, integer=True)
    check_positive("tol", tol)
    with untouched(model):  # the graph lives inside: restoring a buffer it saved would invalidate it
        top, _ = _lanczos_top(_flat_loss(model, objective), iters, seed, tol)
    return top


def _flat_loss(model: nn.Module, objective: Objective) -> FlatLoss:
    params = trainable(model)
    if not params:
        raise UnigradError("the model has no trainable parameters (none with requires_grad=True)")
    return FlatLoss(model, objective, params)


def _hutchinson(flat: FlatLoss, probes: int, seed: int) -> tuple[float, float]:
    """Hutchinson's trace estimate (:func:`unigrad.second.curvature.hutchinson_trace`) of ``∇²f`` with
    Rademacher probes keyed ``(seed, _TRACE_TAG, probe)`` over the flat parameter vector."""
    probe = keyed_probes(ProbeNoise("rademacher", source="generator"), seed, _TRACE_TAG, [flat.theta0])
    return hutchinson_trace(flat.hvp, probe, probes)


def hessian_trace(model: nn.Module, objective: Objective, *, probes: int = 32, seed: int = 0) -> tuple[float, float]:
    """Hutchinson's estimate of ``tr ∇²f(θ)`` with Rademacher probes: ``(mean, standard error)``.

    Each probe ``v ∈ {±1}^d`` (keyed by ``(seed, probe)``) gives the unbiased sample ``vᵀ ∇²f v``;
    the estimate is their mean and the standard error is their sample standard deviation over
    ``√probes`` (``probes ≥ 2``). One HVP per probe (module docs).
    """
    _check_trace_probes("probes", probes)
    with untouched(model):
        return _hutchinson(_flat_loss(model, objective), probes, seed)


# ------------------------------------------------------------------------------------------ estimates


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return float("nan")
    return float(a @ b) / (na * nb)


def alignment(estimate_grads: Sequence[Tensor | None], true_grads: Sequence[Tensor]) -> float:
    """``cos(d, g)`` over all parameters at once (float64); NaN if either is zero. ``None`` entries of
    ``estimate_grads`` (a parameter the estimator left without ``.grad``) count as zeros."""
    if len(estimate_grads) != len(true_grads):
        raise UnigradError(f"alignment needs one estimate per gradient: {len(estimate_grads)} vs {len(true_grads)}")
    return _cos(_flat(estimate_grads, true_grads), _flat(true_grads))


def relative_variance(estimates: Sequence[Sequence[Tensor | None]], reference: Sequence[Tensor] | None = None) -> float:
    """``(1/(k−1)) Σ_i ‖d_i − d̄‖² / ‖r‖²`` for ``k ≥ 2`` estimates ``d_i`` (lists of tensors) at the
    same parameters; ``r`` is ``reference`` (the true gradient) when given, else ``d̄``. NaN if ``‖r‖ = 0``."""
    if len(estimates) < 2:
        raise UnigradError(f"relative_variance needs at least 2 estimates, got {len(estimates)}")
    like = reference if reference is not None else next((e for e in estimates if all(t is not None for t in e)), None)
    flats = torch.stack([_flat(e, like) for e in estimates])
    mean = flats.mean(0)
    spread = float((flats - mean).square().sum()) / (len(estimates) - 1)
    ref = _flat(reference) if reference is not None else mean
    denom = float(ref.square().sum())
    return spread / denom if denom > 0 else float("nan")


def relative_bias(estimates: Sequence[Sequence[Tensor | None]], true_grads: Sequence[Tensor]) -> float:
    """``‖d̄ − g‖² / ‖g‖²`` for the mean ``d̄`` of ``estimates``; NaN if ``g = 0``."""
    g = _flat(true_grads)
    mean = torch.stack([_flat(e, true_grads) for e in estimates]).mean(0)
    denom = float(g.square().sum())
    return float((mean - g).square().sum()) / denom if denom > 0 else float("nan")


def norm_ratio(estimate_grads: Sequence[Tensor | None], true_grads: Sequence[Tensor]) -> float:
    """``‖d‖ / ‖g‖`` (NaN if ``g = 0``)."""
    g = float(_flat(true_grads).norm())
    return float(_flat(estimate_grads, true_grads).norm()) / g if g > 0 else float("nan")


def drift(params: Sequence[Tensor], initial: Sequence[Tensor]) -> tuple[float, float]:
    """``(‖θ − θ₀‖, ‖θ‖)`` over all parameters."""
    theta = _flat(params)
    return float((theta - _flat(initial)).norm()), float(theta.norm())


def effective_step(before: Sequence[Tensor], after: Sequence[Tensor], true_grads: Sequence[Tensor]) -> dict[str, float]:
    """The update ``Δ = after − before``: ``step_norm = ‖Δ‖``, ``effective_lr = ‖Δ‖/‖g‖`` and
    ``descent_cosine = cos(−Δ, g)`` (NaN where undefined)."""
    delta = _flat(after) - _flat(before)
    g = _flat(true_grads)
    gn = float(g.norm())
    step = float(delta.norm())
    return {
        "step_norm": step,
        "effective_lr": step / gn if gn > 0 else float("nan"),
        "descent_cosine": _cos(-delta, g),
    }


def true_gradient(model: nn.Module, objective: Objective) -> tuple[float, list[Tensor]]:
    """The mean loss and its exact gradient for the trainable parameters (one forward and one
    backward per sample), through ``functional_call``: ``.grad`` and the parameters are not touched."""
    params = trainable(model)
    with untouched(model), torch.enable_grad():
        leaves = [p.detach().clone().requires_grad_(True) for _, p in params]
        values = {"model." + n: t for (n, _), t in zip(params, leaves, strict=True)}
        loss = reduce(functional_call(_Bound(model, objective), values, (), strict=False))
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    out = [torch.zeros_like(t) if g is None else g.detach() for t, g in zip(leaves, grads, strict=True)]
    return float(loss.detach()), out


def repeated_estimates(
    estimator: Estimator, model: nn.Module, objective: Objective, state: dict[str, Any], k: int
) -> list[list[Tensor | None]]:
    """``k`` more estimates from the estimator state ``state`` (a ``state_dict()`` taken *before* the
    estimate being repeated), the ``i``-th with its step counter advanced by ``i`` (``i = 1 … k``)
    so its noise is independent of the original's (every estimator keys its noise by step).

    Afterwards the estimator's state, the parameters, their ``.grad`` and the model's buffers are
    exactly as before the call: the training trajectory does not see it.
    """
    params = trainable(model)
    after = copy.deepcopy(estimator.state_dict())
    grads = _grads(params)
    values = [p.detach().clone() for _, p in params]
    out: list[list[Tensor | None]] = []
    try:
        with untouched(model):
            for i in range(1, k + 1):
                st = copy.deepcopy(state)
                st["step"] = int(st["step"]) + i
                estimator.load_state_dict(st)
                for _, p in params:
                    p.grad = None
                estimator.estimate(model, objective)
                out.append(_grads(params))
    finally:
        estimator.load_state_dict(after)
        with torch.no_grad():
            for (_, p), v, g in zip(params, values, grads, strict=True):
                p.copy_(v)
                p.grad = g
    return out


__all__ = [
    "alignment",
    "drift",
    "effective_step",
    "hessian_trace",
    "norm_ratio",
    "relative_bias",
    "relative_variance",
    "repeated_estimates",
    "top_hessian_eigenvalue",
    "true_gradient",
    "untouched",
]
