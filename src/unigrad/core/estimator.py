"""The one contract every way of obtaining a descent direction follows.

``Estimator.estimate(model, objective)``

1. evaluates ``objective`` as often as the method needs (perturbed, differentiated, …),
2. writes its direction ``d`` into ``p.grad`` of every trainable parameter, so any
   ``torch.optim`` optimizer takes the step ``θ ← θ − η·d``,
3. leaves the parameters exactly (bitwise) as it found them, and
4. returns an :class:`Estimate`: the loss it saw, the :class:`~unigrad.core.cost.Cost` and
   diagnostics.

``state_dict()`` / ``load_state_dict()`` hold everything needed to resume exactly (the step
counter that keys the noise, histories, curvature factors).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError
from unigrad.core.objective import Objective, check_finite
from unigrad.core.params import trainable


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

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UnigradError(f"option seed must be an integer >= 0, got {seed!r}")
        self.seed = seed
        self.step = 0

    def estimate(self, model: nn.Module, objective: Objective) -> Estimate:
        """Write the direction into ``.grad`` and return the :class:`Estimate` (see module docs)."""
        params = trainable(model)
        if not params:
            raise UnigradError("the model has no trainable parameters (none with requires_grad=True)")
        est = self._estimate(model, objective, params)
        check_finite(est.loss)
        self.step += 1
        return est

    @abc.abstractmethod
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        """Compute the direction for ``params`` (the trainable ones, in order) and write ``.grad``."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: seed and step (subclasses add their state)."""
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.step = int(state["step"])

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    def min_forwards_per_sample(self) -> float:
        """A lower bound on the forward-pass equivalents one :meth:`estimate` costs per sample of the batch.

        Each of the ``probes`` evaluations runs the batch through the model at least once, so the default is
        that count, and 1 for an estimator without one. The trainer multiplies it by the batch size and the
        steps to refuse plans no machine finishes (:func:`unigrad.train.trainer.check_plan`). An estimator
        whose probes do not run on every step overrides it.
        """
        probes = getattr(self, "probes", None)
        if isinstance(probes, int) and not isinstance(probes, bool) and probes >= 1:
            return float(probes)
        return 1.0

    def options(self) -> dict[str, Any]:
        """The constructor options (for reports); subclasses list theirs in ``_options``."""
        return {k: getattr(self, k) for k in ("seed", *getattr(self, "_options", ()))}
