"""The reverse-mode gradient: the :class:`Backprop` estimator, the reference every other estimator is compared with."""

from __future__ import annotations

from torch import nn

from unigrad.core.cost import Cost
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, loss_and_gradient
from unigrad.core.params import write_grad


class Backprop(Estimator):
    """Backprop — the reverse-mode gradient.

    The exact gradient of the mean loss over the batch::

        g = ∇_θ (1/B) Σ_b ℓ_b(θ)

    The reference every other estimator is compared with.

    Cost: one forward and one backward pass per sample (``B`` each for a batch of B).

    Args:
        seed: unused (the gradient draws no noise); it has no options besides ``seed`` (default: 0).

    References:
        D. E. Rumelhart, G. E. Hinton, R. J. Williams, "Learning representations by back-propagating
        errors", Nature 323:533–536 (1986).
    """

    name = "backprop"
    order = 1
    description = "reverse-mode autodiff gradient"

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        cost = Cost()
        loss, grads = loss_and_gradient(objective, model, params, cost, self.name)
        write_grad(params, grads)
        return Estimate(loss=loss, cost=cost)
