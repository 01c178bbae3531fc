"""ZO-SGD-Conserve: the :class:`ConserveSGD` optimizer (take the SGD step only if the batch loss says so)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from unigrad.core.errors import UnigradError, check_positive


class ConserveSGD(torch.optim.Optimizer):
    """Conservative SGD: of ``θ``, ``θ − lr·g`` and ``θ + lr·g``, keep the one with the lowest batch loss.

    ``step(closure)`` needs a closure that returns the loss of the current batch at the current parameters
    (without a backward pass). With ``g`` in ``.grad`` it evaluates::

        L_0 = f(θ),   L_1 = f(θ − lr·g),   L_2 = f(θ + lr·g)

    and keeps ``θ`` if ``L_0`` is below both, else ``θ − lr·g`` if ``L_1 ≤ L_0`` and ``L_1 < L_2``, else
    ``θ + lr·g`` (ZO-Bench's rule, ties included). A zeroth-order estimate points the wrong way about half the
    time in high dimension; this rule never takes a step that raised the batch loss, at the price of three
    more forward passes per step (five with a two-point estimate, as in ZO-Bench). The candidates are formed
    from a copy of θ (``d`` floats), so the kept point is exactly ``θ``, ``θ − lr·g`` or ``θ + lr·g``.

    The training loop (:mod:`unigrad.train.loop`) passes the closure (``needs_closure``) and counts its forward
    passes in the step's cost.

    Args:
        params: parameters or parameter groups, as for ``torch.optim.SGD``.
        lr: learning rate (> 0).

    References:
        Y. Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A Benchmark"
        (ZO-Bench, ZO-SGD-Cons), ICML 2024, arXiv:2402.11592.
    """

    needs_closure = True
    """The step evaluates the batch loss through a closure."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3) -> None:
        check_positive("lr", lr)
        super().__init__(params, {"lr": lr})
        self.kept = [0, 0, 0]  # how often each candidate was kept: θ, θ − lr·g, θ + lr·g

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> float:  # type: ignore[override]
        if closure is None:
            raise UnigradError("ConserveSGD.step needs a closure that returns the batch loss at the current parameters")
        live = [(p, group["lr"]) for group in self.param_groups for p in group["params"] if p.grad is not None]
        saved = [p.detach().clone() for p, _ in live]

        def move(sign: float) -> None:
            for (p, lr), theta in zip(live, saved, strict=True):
                torch.add(theta, p.grad, alpha=sign * lr, out=p.data)

        losses = [float(closure())]
        move(-1.0)
        losses.append(float(closure()))
        move(1.0)
        losses.append(float(closure()))
        l0, l1, l2 = losses
        if l1 > l0 and l0 < l2:
            choice = 0
            for (p, _), theta in zip(live, saved, strict=True):
                p.data.copy_(theta)
        elif l1 <= l0 and l1 < l2:
            choice = 1
            move(-1.0)
        else:
            choice = 2
        self.kept[choice] += 1
        return losses[choice]
