"""Training diagnostics: named measures of curvature, estimate quality and weight movement, taken on the side.

The measures themselves are pure functions of :mod:`unigrad.dynamics.measures` (re-exported here):
:func:`top_hessian_eigenvalue`, :func:`hessian_trace`, :func:`alignment`, :func:`relative_variance`,
:func:`relative_bias`, :func:`norm_ratio`, :func:`drift`, :func:`effective_step` (their equations and costs
are in that module's docs). Each leaves the model's parameters, ``.grad``, buffers and the global RNG as it
found them.

Named diagnostics (:data:`DIAGNOSTICS`, with the values each records in :data:`VALUES`), as
``train(..., diagnostics=[...])`` and ``unigrad train/compare --diagnostics`` take them:

=========  ==========================================  ============================================
name       values                                      extra cost per measurement (per sample)
=========  ==========================================  ============================================
alignment  ``alignment`` = cos(d, g)                   the true gradient: 1 forward + 1 backward
variance   ``variance``, ``bias`` (k = 8 estimates)    7 more estimates + the true gradient
norms      ``estimate_norm``, ``gradient_norm``,       the true gradient
           ``norm_ratio``
sharpness  ``sharpness`` = λ_max (20 Lanczos steps)    1 forward + 1 backward + ≤ 20 HVPs
trace      ``hessian_trace``, ``hessian_trace_se``     1 forward + 1 backward + 32 HVPs
           (32 Rademacher probes)
drift      ``drift`` = ‖θ − θ₀‖, ``weight_norm``       none
step       ``step_norm``, ``effective_lr``,            the true gradient
           ``descent_cosine``
=========  ==========================================  ============================================

The true gradient is computed once and shared; ``sharpness`` and ``trace`` share one gradient graph.
The trainer calls :func:`measure` after the estimate is written into ``.grad`` and before the
optimizer steps, and :func:`measure_step` after it. The repeated estimates of ``variance``
(:func:`repeated_estimates`) restart the estimator from its ``state_dict()`` of before the training
estimate with the step counter advanced by ``1 … k−1``, so their noise is that of other keys and
independent of the training estimate's; the state, ``.grad`` and parameters are restored after.
Nothing a diagnostic does changes the training trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from unigrad.core.errors import NonFiniteLossError, UnigradError, check_positive, unknown_name
from unigrad.core.estimator import Estimator
from unigrad.core.objective import Objective
from unigrad.core.params import trainable
from unigrad.dynamics.measures import (
    _check_trace_probes,
    _flat,
    _flat_loss,
    _grads,
    _hutchinson,
    _lanczos_top,
    alignment,
    drift,
    effective_step,
    hessian_trace,
    norm_ratio,
    relative_bias,
    relative_variance,
    repeated_estimates,
    top_hessian_eigenvalue,
    true_gradient,
    untouched,
)

DIAGNOSTICS: dict[str, tuple[str, str]] = {
    "alignment": (
        "cosine between the estimate and the true gradient of the batch",
        "1 forward + 1 backward per sample (the true gradient, shared)",
    ),
    "variance": (
        "spread of repeated estimates at the same parameters and batch, relative to the true gradient: "
        "variance = tr Cov/‖g‖², bias = ‖mean − g‖²/‖g‖²",
        "k − 1 extra estimates (k = 8 by default) + the true gradient",
    ),
    "norms": (
        "norms of the estimate and of the true gradient, and their ratio",
        "the true gradient (shared)",
    ),
    "sharpness": (
        "largest algebraic eigenvalue of the Hessian of the batch loss (Lanczos)",
        "1 forward + 1 backward + up to 20 HVPs per sample",
    ),
    "trace": (
        "Hutchinson estimate of the Hessian trace with its standard error",
        "1 forward + 1 backward + 32 HVPs per sample",
    ),
    "drift": (
        "distance from the initial weights ‖θ − θ₀‖ and weight norm ‖θ‖",
        "free (no passes)",
    ),
    "step": (
        "the update taken: ‖Δθ‖, effective learning rate ‖Δθ‖/‖g‖ and descent cosine cos(−Δθ, g)",
        "the true gradient (shared)",
    ),
}
"""Named diagnostics: ``name -> (what it measures, its cost)``."""

VALUES: dict[str, tuple[str, ...]] = {
    "alignment": ("alignment",),
    "variance": ("variance", "bias"),
    "norms": ("estimate_norm", "gradient_norm", "norm_ratio"),
    "sharpness": ("sharpness",),
    "trace": ("hessian_trace", "hessian_trace_se"),
    "drift": ("drift", "weight_norm"),
    "step": ("step_norm", "effective_lr", "descent_cosine"),
}
"""The values each named diagnostic records (keys of a ``RunResult.diagnostics`` entry)."""

_NEEDS_GRADIENT = frozenset({"alignment", "variance", "norms", "step"})


# ------------------------------------------------------------------------------------------ registry


def check_diagnostics(names: str | Sequence[str] | None) -> tuple[str, ...]:
    """Validate diagnostic names (a comma-separated string or a sequence); return them in order,
    without repeats. Unknown names raise :class:`UnigradError` listing the valid ones."""
    if names is None:
        return ()
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise UnigradError(f"diagnostic names must be strings, got {item!r}")
        name = item.strip()
        if not name:
            continue
        if name not in DIAGNOSTICS:
            raise unknown_name("diagnostic", name, DIAGNOSTICS)
        if name not in out:
            out.append(name)
    return tuple(out)


def describe() -> str:
    """One line per diagnostic: name, what it measures, its cost."""
    width = max(map(len, DIAGNOSTICS)) + 2
    return "\n".join(f"{k:<{width}}{what} (cost: {cost})" for k, (what, cost) in DIAGNOSTICS.items())


@dataclass
class Pending:
    """What :func:`measure` hands to :func:`measure_step` (the part measured after the optimizer step)."""

    values: dict[str, float | None]
    before: list[Tensor] | None
    gradient: list[Tensor] | None


def measure(
    names: Sequence[str],
    model: nn.Module,
    objective: Objective,
    *,
    estimator: Estimator | None = None,
    state_before: dict[str, Any] | None = None,
    initial: Sequence[Tensor] | None = None,
    seed: int = 0,
    repeats: int = 8,
    lanczos_iters: int = 20,
    trace_probes: int = 32,
) -> Pending:
    """The diagnostics ``names`` after an estimate was written into ``.grad`` and before the optimizer
    steps: ``objective`` is the step's batch, the parameters are those the step starts from.

    ``estimator`` and ``state_before`` (its ``state_dict()`` before the estimate) are needed for
    ``"variance"`` (``repeats`` estimates in all, the training one included); ``initial`` (``θ₀``)
    for ``"drift"``. ``seed`` keys the Lanczos start and the Hutchinson probes; ``lanczos_iters``
    (``"sharpness"``) must be at least 1 and ``trace_probes`` (``"trace"``) at least 2, for the standard
    error. Values are floats (NaN where undefined); pass the result to :func:`measure_step` after the
    optimizer step.
    """
    if "sharpness" in names:
        check_positive("lanczos_iters", lanczos_iters, integer=True)
    if "trace" in names:
        _check_trace_probes("trace_probes", trace_probes)
    params = trainable(model)
    values: dict[str, float | None] = {}
    gradient: list[Tensor] | None = None
    if _NEEDS_GRADIENT & set(names):
        _, gradient = true_gradient(model, objective)
    estimate = [p.grad for _, p in params]
    if "alignment" in names:
        assert gradient is not None
        values["alignment"] = alignment(estimate, gradient)
    if "norms" in names:
        assert gradient is not None
        values["estimate_norm"] = float(_flat(estimate, gradient).norm())
        values["gradient_norm"] = float(_flat(gradient).norm())
        values["norm_ratio"] = norm_ratio(estimate, gradient)
    if "variance" in names:
        assert gradient is not None
        if estimator is None or state_before is None:
            raise UnigradError("the variance diagnostic needs the estimator and its state before the estimate")
        values["variance"], values["bias"] = _variance(estimator, model, objective, state_before, gradient, repeats)
    if "sharpness" in names or "trace" in names:
        with untouched(model):
            flat = _flat_loss(model, objective)
            if "sharpness" in names:
                values["sharpness"], _ = _lanczos_top(flat, lanczos_iters, seed, 1e-4)
            if "trace" in names:
                values["hessian_trace"], values["hessian_trace_se"] = _hutchinson(flat, trace_probes, seed)
    if "drift" in names:
        if initial is None:
            raise UnigradError("the drift diagnostic needs the initial parameters")
        values["drift"], values["weight_norm"] = drift([p for _, p in params], initial)
    before = [p.detach().clone() for _, p in params] if "step" in names else None
    return Pending(values, before, gradient)


def _variance(
    estimator: Estimator, model: nn.Module, objective: Objective, state: dict[str, Any], gradient: list[Tensor], k: int
) -> tuple[float, float]:
    """``(variance, bias)`` of the training estimate (in ``.grad``) and ``k − 1`` repeats; NaN if a repeat diverged."""
    if k < 2:
        raise UnigradError(f"the variance diagnostic needs repeats >= 2, got {k}")
    first = _grads(trainable(model))
    try:
        samples = [first, *repeated_estimates(estimator, model, objective, state, k - 1)]
    except NonFiniteLossError:  # a repeat met a non-finite loss: no value (the training step is unaffected)
        return float("nan"), float("nan")
    return relative_variance(samples, gradient), relative_bias(samples, gradient)


def measure_step(pending: Pending, model: nn.Module) -> dict[str, float | None]:
    """Finish :func:`measure` after the optimizer step: the ``"step"`` values, if asked for."""
    values = dict(pending.values)
    if pending.before is not None and pending.gradient is not None:
        after = [p.detach() for _, p in trainable(model)]
        values.update(effective_step(pending.before, after, pending.gradient))
    return values


__all__ = [
    "DIAGNOSTICS",
    "VALUES",
    "alignment",
    "check_diagnostics",
    "drift",
    "effective_step",
    "hessian_trace",
    "measure",
    "measure_step",
    "norm_ratio",
    "relative_bias",
    "relative_variance",
    "repeated_estimates",
    "top_hessian_eigenvalue",
    "true_gradient",
]
