"""ZO-SGD-Sign: the :class:`SignSGD` optimizer (a step along the sign of each coordinate of ``.grad``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from unigrad.core.errors import UnigradError, check_positive


class SignSGD(torch.optim.Optimizer):
    """signSGD: ``θ ← θ − lr·(sign(g) + weight_decay·θ)`` for the direction ``g`` in ``.grad``.

    With a zeroth-order estimator this is ZO-SGD-Sign of ZO-Bench: every coordinate moves by exactly ``lr``
    (zero where ``g`` is exactly zero), so the step does not depend on the scale of the estimate, only on its
    signs. For a two-point estimate ``g = c·z`` (one probe), ``sign(g) = sign(c)·sign(z)``. ZO-Bench's code steps
    along ``sign(c)·z`` instead (the commented-out alternative there is this one): the two agree in the sign of
    every coordinate and differ in size (``|z_j|`` against 1).

    Args:
        params: parameters or parameter groups, as for ``torch.optim.SGD``.
        lr: step per coordinate (> 0).
        weight_decay: L2 coefficient (≥ 0).

    References:
        J. Bernstein, Y.-X. Wang, K. Azizzadenesheli, A. Anandkumar, "signSGD: Compressed Optimisation for
        Non-Convex Problems", ICML 2018, arXiv:1802.04434. Y. Zhang et al., "Revisiting Zeroth-Order Optimization
        for Memory-Efficient LLM Fine-Tuning: A Benchmark" (ZO-Bench), ICML 2024, arXiv:2402.11592.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, weight_decay: float = 0.0) -> None:
        check_positive("lr", lr)
        if not weight_decay >= 0:
            raise UnigradError(f"option weight_decay must be a number >= 0, got {weight_decay!r}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.sign()
                if group["weight_decay"]:
                    d = d.add(p, alpha=group["weight_decay"])
                p.add_(d, alpha=-group["lr"])
        return loss
