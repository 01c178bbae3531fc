"""A decorrelated method as one estimator: :class:`Decorrelated` (``make_estimator("danp"|"dnp"|"dinp"|"dbp")``)
wraps the estimator that trains the weights and adds the decorrelation of the model and its update after every
step; :func:`check_decorrelation` checks the decorrelation options (of the method, of the trainer's
``decorrelation`` option) and :data:`DECORRELATION_DEFAULTS` are the methods' defaults.

The layers and rules it uses are described in :mod:`unigrad.nn.decorrelation`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice, check_positive, unknown_name
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective
from unigrad.nn.decorrelated_layers import decorrelate, is_decorrelated, update_decorrelation
from unigrad.nn.decorrelation_matrix import RULES, Decorrelation

DECORRELATION_OPTIONS = ("rule", "lr", "sample", "compensate", "conv")


def check_decorrelation(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate decorrelation options (the trainer's ``decorrelation`` option, those of :class:`Decorrelated`);
    return a copy (``None`` stays ``None``)."""
    if options is None:
        return None
    if not isinstance(options, dict):
        raise UnigradError(f"option decorrelation must be a dict of {', '.join(DECORRELATION_OPTIONS)} or None")
    if "seed" in options:
        raise UnigradError("decorrelation option seed is set by the run's seed; remove it")
    for key in options:
        if key not in DECORRELATION_OPTIONS:
            raise unknown_name("decorrelation option", str(key), DECORRELATION_OPTIONS)
    opts = dict(options)
    if "rule" in opts:
        check_choice("decorrelation rule", opts["rule"], RULES)
    if "lr" in opts:
        lr = opts["lr"]
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or not lr > 0:
            raise UnigradError(f"option decorrelation lr must be a finite number > 0, got {lr!r}")
    if opts.get("sample") is not None:
        check_positive("decorrelation sample", opts["sample"], integer=True)
    for key in ("compensate", "conv"):
        if key in opts and not isinstance(opts[key], bool):
            raise UnigradError(f"option decorrelation {key} must be true or false, got {opts[key]!r}")
    return opts


# the decorrelation options of the decorrelated methods (dbp, dnp, dinp, danp) unless given; why lr 1e-3 and not
# the 1e-4 of :func:`decorrelate` (the rate used with DANP in recurrent networks): unigrad.train.methods' docstring
DECORRELATION_DEFAULTS: dict[str, Any] = {
    "rule": "cov-identity",
    "lr": 1e-3,
    "sample": 1024,
    "compensate": False,
    "conv": True,
}


def _unrecorded(model: nn.Module) -> bool:
    """Whether some decorrelation of ``model`` has recorded no statistics since its last update."""
    return any(m.last is None for m in model.modules() if isinstance(m, Decorrelation))


class Decorrelated(Estimator):
    """A decorrelated method (DBP, DNP, DINP, DANP): ``base`` trains the weights of a model whose layers get
    decorrelation matrices ``R`` (:func:`decorrelate`), and ``R`` learns by its local rule after every
    optimizer step (:func:`update_decorrelation`). ``unigrad.make_estimator("danp")`` builds one.

    A method is an estimator, a model transformation and an update, so using it takes two calls more than a
    plain estimator: :meth:`prepare` once, before the optimizer is made, and :meth:`update` after every
    ``optimizer.step()``::

        est = unigrad.make_estimator("danp", probes=4, sigma=1e-3, seed=0)
        model = est.prepare(model)                   # nn.Linear -> DecorrelatedLinear, same Parameters
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for x, y in loader:
            optimizer.zero_grad()
            est.estimate(model, unigrad.supervised(F.cross_entropy, x, y))
            optimizer.step()
            est.update(model)                        # R <- (I - lr·M)·R from the step's statistics

    This is the training loop of :func:`unigrad.train.train` for a decorrelated method, step for step, so the
    two end bitwise equal. :meth:`estimate` is ``base``'s; when none of ``base``'s passes was a plain
    training-mode forward (the batched probes of ``spsa``, the forward-mode passes of ``forward-gradient``),
    it runs the objective once more, without gradients, to record the statistics of the update, and adds that
    forward (the batch, in samples) to the cost. The state (:meth:`state_dict`) is ``base``'s; the matrices
    ``R`` (buffers) and the update counters (each :class:`Decorrelation`'s extra state) are in the model's
    ``state_dict``.

    Args:
        base: the estimator that trains the weights (its ``seed`` also keys the update's subsample).
        name: the method's name (``"danp"``); ``"<base name>+decorrelation"`` by default.
        rule: ``"offdiag"`` or ``"cov-identity"`` (default ``"cov-identity"``), as in :func:`decorrelate`.
        lr: decorrelation rate ``η_d > 0`` (default ``1e-3``).
        sample: rows of a batch recorded for an update (default 1024; ``None``: all).
        compensate: apply ``W ← W·A⁻¹`` after each update, keeping the function unchanged (default False).
        conv: decorrelate ``nn.Conv2d`` layers patch-wise too (default True).
    """

    def __init__(self, base: Estimator, name: str | None = None, **decorrelation: Any) -> None:
        if not isinstance(base, Estimator) or isinstance(base, Decorrelated):
            raise UnigradError(f"Decorrelated wraps an estimator that is not decorrelated, got {type(base).__name__}")
        self.base = base
        self.name = f"{base.name}+decorrelation" if name is None else name  # type: ignore[misc]
        self.order = base.order  # type: ignore[misc]
        self.description = base.description  # type: ignore[misc]
        opts = check_decorrelation({**DECORRELATION_DEFAULTS, **decorrelation})
        assert opts is not None
        self.decorrelation: dict[str, Any] = opts

    def __getattr__(self, key: str) -> Any:
        """The wrapped estimator's options and attributes (``probes``, ``local_losses``)."""
        if key == "base":  # not set yet: no recursion during construction
            raise AttributeError(key)
        return getattr(self.base, key)

    @property
    def seed(self) -> int:  # type: ignore[override]
        return self.base.seed

    @property
    def write_grad(self) -> bool:  # type: ignore[override]
        """``base``'s: whether it writes ``.grad``."""
        return self.base.write_grad

    def prepare_model(self, model: nn.Module, example_inputs: Tensor, seed: int) -> nn.Module:
        """``base``'s (the decorrelation itself is :meth:`prepare`)."""
        return self.base.prepare_model(model, example_inputs, seed)

    @property
    def step(self) -> int:  # type: ignore[override]
        """``base``'s step counter (settable, as on every estimator: it keys the next estimate's noise)."""
        return self.base.step

    @step.setter
    def step(self, value: int) -> None:
        self.base.step = value

    def prepare(self, model: nn.Module) -> nn.Module:
        """Decorrelate ``model`` in place (:func:`decorrelate` with this method's options, keyed by the seed) and
        return it. Call it once, before the optimizer is made (the parameters stay the same objects)."""
        return decorrelate(model, seed=self.seed, **self.decorrelation)

    def estimate(self, model: nn.Module, objective: Objective) -> Estimate:
        """``base``'s estimate on the decorrelated ``model``, recording the statistics of :meth:`update` (above)."""
        if isinstance(model, nn.Module) and not is_decorrelated(model):
            raise UnigradError(
                f"{self.name} trains a decorrelated model, and this one has no decorrelation layer: call "
                "model = estimator.prepare(model) once, before making the optimizer"
            )
        est = self.base.estimate(model, objective)
        if model.training and _unrecorded(model):
            with torch.no_grad():
                losses = objective(model)
            samples = int(losses.shape[0]) if isinstance(losses, Tensor) and losses.dim() > 0 else 1
            est = replace(est, cost=est.cost + Cost(forwards=samples))
        return est

    def update(self, model: nn.Module) -> dict[str, float]:
        """Update every decorrelation of ``model`` from the statistics of the step (:func:`update_decorrelation`);
        call it after ``optimizer.step()``."""
        return update_decorrelation(model)

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        raise NotImplementedError  # estimate() is base's

    def state_dict(self) -> dict[str, Any]:
        """``base``'s state."""
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``, a :meth:`state_dict` of the same method."""
        self.base.load_state_dict(state)

    def min_forwards_per_sample(self) -> float:
        return self.base.min_forwards_per_sample()

    def options(self) -> dict[str, Any]:
        """``base``'s options and the decorrelation's (under ``decor_<key>``, as in a method spec)."""
        return {**self.base.options(), **{f"decor_{k}": v for k, v in self.decorrelation.items()}}
