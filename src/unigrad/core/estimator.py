"""The one contract every way of obtaining a descent direction follows.

``Estimator.estimate(model, objective)``

1. evaluates ``objective`` as often as the method needs (perturbed, differentiated, …),
2. writes its direction ``d`` into ``p.grad`` of every trainable parameter, so any
   ``torch.optim`` optimizer takes the step ``θ ← θ − η·d`` (if it raises, ``.grad`` stays as it was),
3. leaves the parameters exactly (bitwise) as it found them, and the buffers as one forward would
   (updated at most once; every evaluation in the step draws the same dropout masks): see
   :mod:`unigrad.core.step_state`, and
4. returns an :class:`Estimate`: the loss it saw, the :class:`~unigrad.core.cost.Cost` and
   diagnostics.

``state_dict()`` / ``load_state_dict()`` hold everything needed to resume exactly (the step
counter that keys the noise, histories, curvature factors).

Capabilities a training loop asks of an estimator, instead of guessing from its attributes:

* :attr:`Estimator.supports_exchange`: it spreads its probes over processes through its ``exchange``
  attribute (a :class:`~unigrad.core.exchange.ProbeExchange`);
* :attr:`Estimator.write_grad`: it writes its direction into ``.grad`` (a loop that steps ``torch.optim``
  from ``.grad`` refuses one that does not);
* :meth:`Estimator.prepare_model`: the model it trains, made from the freshly built network before the
  optimizer is made (local heads for local losses; the network itself by default).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError
from unigrad.core.objective import Objective, check_finite
from unigrad.core.options import check_seed
from unigrad.core.params import trainable
from unigrad.core.rowwise import rowwise
from unigrad.core.step_state import StepState


@dataclass
class Estimate:
    """What one call of :meth:`Estimator.estimate` saw and spent.

    Attributes:
        loss: mean loss at the current parameters; if the method never evaluated the unperturbed
            parameters, the mean over its probes (``loss_is_probe_mean`` is then True).
        cost: the work done, in samples.
        loss_is_probe_mean: whether ``loss`` is a probe mean rather than the exact loss.
        info: method-specific diagnostics (projected gradients, probe losses, …).
    """

    loss: float
    cost: Cost
    loss_is_probe_mean: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class Estimator(abc.ABC):
    """Base class: subclasses set ``name``, ``order``, ``description`` and implement :meth:`_estimate`.

    Args:
        seed: names this estimator's noise stream; the step counter advances once per call.
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 0
    description: ClassVar[str] = ""
    buffer_rule: ClassVar[str | None] = None
    """How a step's evaluations update the buffers (:mod:`unigrad.core.step_state`): ``"mean"`` (the
    default of order 0: the evaluations are probes around ``θ``) or ``"first"`` (the default of higher
    orders: the first evaluation is at ``θ``)."""
    supports_exchange: ClassVar[bool] = False
    """Whether the estimator can spread its probes over processes: it then has an ``exchange`` attribute (a
    :class:`~unigrad.core.exchange.ProbeExchange` or ``None``) that a multi-process run sets
    (:mod:`unigrad.distributed`)."""
    write_grad: bool = True
    """Whether :meth:`estimate` writes the direction into ``.grad``. MeZO with ``write_grad=False`` does not (it
    returns the direction compressed, for :class:`~unigrad.optim.ReplaySGD`), so a loop that steps a
    ``torch.optim`` optimizer from ``.grad`` cannot train with it."""

    def __init__(self, seed: int = 0) -> None:
        check_seed("seed", seed)
        self.seed = seed
        self.step = 0
        self._step_state: StepState | None = None  # the buffer and RNG rules of the step under way

    def estimate(self, model: nn.Module, objective: Objective) -> Estimate:
        """Write the direction into ``.grad`` and return the :class:`Estimate` (see module docs).

        If the call raises (a :class:`~unigrad.core.errors.NonFiniteLossError` for a NaN or infinite loss,
        a :class:`UnigradError` for a bad objective, …), ``.grad`` is left as it was before the call: the
        direction is written into tensors of its own, which replace the caller's only when it succeeds.

        Args:
            model: the ``nn.Module`` whose trainable parameters get ``.grad``.
            objective: a callable ``objective(model) -> losses`` (per-sample ``(B,)`` or a 0-d scalar).
        """
        if not isinstance(model, nn.Module):
            if isinstance(objective, nn.Module) and callable(model):
                raise UnigradError(
                    "estimate got the objective first and the model second; the order is estimate(model, objective)"
                )
            raise UnigradError(f"estimate(model, objective) needs an nn.Module as model, got {type(model).__name__}")
        if not callable(objective):
            raise UnigradError(
                f"estimate(model, objective) needs a callable objective(model) -> losses (e.g. "
                f"unigrad.supervised(loss_fn, x, y)), got {type(objective).__name__}"
            )
        params = trainable(model)
        if not params:
            raise UnigradError("the model has no trainable parameters (none with requires_grad=True)")
        before = [p.grad for _, p in params]
        for _, p in params:
            p.grad = None
        try:
            rule = self.buffer_rule or ("mean" if self.order == 0 else "first")
            with StepState(model, self.seed, self.step, rule, quiet=rowwise(model, objective)) as state:
                self._step_state = state
                try:
                    est = self._estimate(model, objective, params)
                    check_finite(est.loss)
                finally:
                    self._step_state = None
        except BaseException:
            for (_, p), grad in zip(params, before, strict=True):
                p.grad = grad
            raise
        for (_, p), grad in zip(params, before, strict=True):
            if p.grad is None:  # a method that leaves .grad alone (mezo with write_grad=False)
                p.grad = grad
        self.step += 1
        return est

    def prepare_model(self, model: nn.Module, example_inputs: Tensor, seed: int) -> nn.Module:
        """The model this estimator trains, made from a freshly built ``model`` once, before the optimizer is made
        (so the optimizer sees every parameter): ``model`` itself here. An estimator that needs parts the network
        lacks adds them (``activity-forward-gradient`` with local losses: local heads). ``example_inputs`` are a
        few training inputs the model accepts; ``seed`` keys any new parameters."""
        return model

    @abc.abstractmethod
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        """Compute the direction for ``params`` (the trainable ones, in order) and write ``.grad``."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: seed and step (subclasses add their state), and the
        estimator's name, so a state is not loaded into another method."""
        return {"name": self.name, "seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``, a :meth:`state_dict` of an estimator of the same name.

        Raises :class:`UnigradError`, before anything is changed, for something other than a dict, a state
        of another estimator, or missing or unexpected keys. States saved without a name load as before.
        """
        self._check_state(state)
        try:
            seed, step = int(state["seed"]), int(state["step"])
        except (TypeError, ValueError):
            raise UnigradError(
                f"{self.name} state: seed and step must be integers, got {state['seed']!r} and {state['step']!r}"
            ) from None
        self.seed, self.step = seed, step

    def _check_state(self, state: Any) -> None:
        if not isinstance(state, Mapping):
            raise UnigradError(
                f"{self.name}: load_state_dict needs a dict from state_dict(), got {type(state).__name__}"
            )
        if "name" in state and state["name"] != self.name:
            raise UnigradError(
                f"this state belongs to the estimator {state['name']}; it cannot be loaded into {self.name}"
            )
        keys = self.__dict__.get("_state_keys")
        if keys is None:  # the keys this estimator's state_dict has (always the same ones)
            keys = self.__dict__["_state_keys"] = frozenset(self.state_dict()) - {"name"}
        missing, unexpected = sorted(keys - set(state)), sorted(set(state) - keys - {"name"})
        if missing or unexpected:
            found = "; ".join(
                f"{what} key{'s' if len(ks) > 1 else ''} {', '.join(map(repr, ks))}"
                for what, ks in (("missing", missing), ("unexpected", unexpected))
                if ks
            )
            raise UnigradError(
                f"{self.name} state: {found}; {self.name}'s state_dict() has the keys {', '.join(sorted(keys))}"
            )

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    def min_forwards_per_sample(self) -> float:
        """A lower bound on the forward-pass equivalents one :meth:`estimate` costs per sample of the batch.

        Each of the ``probes`` evaluations runs the batch through the model at least once, so the default is
        that count, and 1 for an estimator without one. The trainer multiplies it by the batch size and the
        steps to refuse plans no machine finishes (its ``check_plan``). An estimator
        whose probes do not run on every step overrides it.
        """
        probes = getattr(self, "probes", None)
        if isinstance(probes, int) and not isinstance(probes, bool) and probes >= 1:
            return float(probes)
        return 1.0

    def options(self) -> dict[str, Any]:
        """The constructor options (for reports); subclasses list theirs in ``_options``."""
        return {k: getattr(self, k) for k in ("seed", *getattr(self, "_options", ()))}
