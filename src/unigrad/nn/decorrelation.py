"""Decorrelation layers: a learned whitening-like matrix ``R`` in front of each linear layer.

A :class:`Decorrelation` module holds a square matrix ``R`` (initialised to ``I``) and maps a layer's
input ``x`` to ``x̂ = R·x`` (for a batch of rows, ``x̂ = x·Rᵀ``). ``R`` is *not* trained by gradient
estimators: it is a buffer (saved in the ``state_dict``, absent from ``model.parameters()``, so no
estimator perturbs it and no optimizer steps it) and is changed only by an explicit call to
:meth:`Decorrelation.update` after a training step, with one of two local rules. With
``C = x̂ᵀx̂ / B`` the second-moment matrix of the recorded inputs (``B`` rows):

``"offdiag"`` (Ahmad et al., arXiv:2310.00965 as used in arXiv:2405.02385)
    ``R ← R − η_d · offdiag(C) · R``: only cross-correlations are penalised, the scale of each unit
    is left to the forward weights.

``"cov-identity"`` (Ahmad, "Correlations are ruining your gradient descent", arXiv:2407.10780)
    ``R ← R − η_d · (C − I) · R``: drives ``C`` towards ``I`` (decorrelates *and* normalises the
    variances), usually computed on a random subsample of the batch to save cost.

Both updates have the form ``R ← A·R`` with ``A = I − η_d·M``. When the decorrelation is paired with
the linear layer it feeds (:class:`DecorrelatedLinear`), the update can *compensate* the forward
weight, ``W ← W·A⁻¹``, so that ``W·x̂`` (hence the network's function) is unchanged by the update:
``W·A⁻¹·(A·R·x) = W·R·x``. Decorrelated backprop (DBP, Dalm et al., arXiv:2405.02385) and the
decorrelated node/activity perturbation rules (DNP, DINP, DANP; Dalm et al., arXiv:2310.00965)
train ``W`` with their usual estimator and ``R`` with these rules.

:func:`decorrelate` turns a model into its decorrelated version in place (every ``nn.Linear``
becomes a :class:`DecorrelatedLinear` reusing the *same* ``Parameter`` objects, so existing
optimizers still see them; parameter names gain a ``.linear`` component) and
:func:`update_decorrelation` updates every decorrelation of a model. ``nn.Conv2d`` layers are left
untouched unless ``conv=True``, which wraps them in :class:`DecorrelatedConv2d` (patch-wise
decorrelation: ``R`` acts on each flattened ``C_in·k_h·k_w`` input patch).

Options (of :class:`Decorrelation`, :class:`DecorrelatedLinear` and :func:`decorrelate`):

``rule``
    ``"offdiag"`` or ``"cov-identity"`` (default ``"cov-identity"``); overridable per update.
``lr``
    Decorrelation rate ``η_d > 0`` (default ``1e-4``, the rate used with DANP in recurrent networks);
    overridable per update. Too large a rate (``η_d·‖C‖ ≳ 1``) makes the iteration diverge.
``sample``
    Number of rows of the batch recorded for the update (``None``: all rows). The subsample is drawn
    without replacement by a generator keyed by ``(seed, step)`` (:func:`unigrad.core.rng.generator`;
    ``step`` counts the updates done so far), never by the global RNG. Inputs with more than two
    dimensions ``(…, n)`` are flattened to rows first.
``seed``
    Key of the subsample stream (:func:`decorrelate` gives layer ``i`` the key ``(seed, i)``).
``compensate``
    (:class:`DecorrelatedLinear`, :func:`decorrelate`) default for :meth:`DecorrelatedLinear.update`:
    whether to apply ``W ← W·A⁻¹`` after each update (default ``False``, as in the papers).

The inputs are recorded (detached) by ``forward`` only in training mode (``module.train()``), so
evaluation passes do not overwrite the statistics of the last training batch, and never inside a
``torch.func`` transform (the batched probes of ``vmap``, the forward-mode passes of ``jvp``): the
statistics are those of the last plain training-mode pass.

This module is where they are imported from; each piece has its own home:

- :mod:`unigrad.nn.decorrelation_matrix`: :class:`Decorrelation` (``R``, the recorded inputs, the two rules),
  :data:`RULES`, :func:`mean_offdiag`;
- :mod:`unigrad.nn.decorrelated_layers`: :class:`DecorrelatedLinear`, :class:`DecorrelatedConv2d`,
  :func:`decorrelate`, :func:`update_decorrelation`;
- :mod:`unigrad.nn.decorrelated_method`: the :class:`Decorrelated` estimator (the DBP, DNP, DINP and DANP
  methods), :func:`check_decorrelation` and the methods' :data:`DECORRELATION_DEFAULTS`.
"""

from __future__ import annotations

from unigrad.nn.decorrelated_layers import (
    DecorrelatedConv2d,
    DecorrelatedLinear,
    decorrelate,
    is_decorrelated,
    update_decorrelation,
)
from unigrad.nn.decorrelated_layers import _DecorrelatedLayer as _DecorrelatedLayer  # the pairs' base (kfac)
from unigrad.nn.decorrelated_method import (
    DECORRELATION_DEFAULTS,
    DECORRELATION_OPTIONS,
    Decorrelated,
    check_decorrelation,
)
from unigrad.nn.decorrelation_matrix import RULES, Decorrelation, mean_offdiag

__all__ = [
    "DECORRELATION_DEFAULTS",
    "DECORRELATION_OPTIONS",
    "RULES",
    "Decorrelated",
    "DecorrelatedConv2d",
    "DecorrelatedLinear",
    "Decorrelation",
    "check_decorrelation",
    "decorrelate",
    "is_decorrelated",
    "mean_offdiag",
    "update_decorrelation",
]
