"""Classic optimisation problems as a model (one parameter vector) and an objective.

* :func:`rosenbrock`: ``f(x) = Σ_{i<n−1} 100 (x_{i+1} − x_i²)² + (1 − x_i)²`` (Rosenbrock 1960), minimum
  0 at ``x = (1, …, 1)``; the classic start for n = 2 is ``(−1.2, 1)``.
* :func:`quadratic`: ``f(x) = ½ (x − x*)ᵀ A (x − x*)`` with ``A`` diagonal, eigenvalues spaced
  geometrically from 1 to ``κ`` (condition number ``κ``), minimum 0 at ``x*``.

Each returns ``(model, objective)``: ``model`` is a :class:`Point` (``model.x`` is the variable) and
``objective(model)`` is the loss as a one-element tensor (one "sample"), so every estimator and
optimizer of the library applies unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.objective import Objective, objective


class Point(nn.Module):
    """A single trainable vector ``x``; ``forward()`` returns it."""

    def __init__(self, x0: Sequence[float] | Tensor, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.as_tensor(x0, dtype=dtype).clone().reshape(-1))

    def forward(self) -> Tensor:
        return self.x


def rosenbrock_value(x: Tensor) -> Tensor:
    """``Σ 100 (x_{i+1} − x_i²)² + (1 − x_i)²`` of a vector ``x`` (n ≥ 2)."""
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


def rosenbrock(
    x0: Sequence[float] | Tensor = (-1.2, 1.0), dtype: torch.dtype = torch.float64
) -> tuple[Point, Objective]:
    """The n-D Rosenbrock function from ``x0`` (default the classic 2-D start)."""
    model = Point(x0, dtype)
    if model.x.numel() < 2:
        raise UnigradError("the Rosenbrock function needs at least 2 variables")
    return model, objective(lambda m: rosenbrock_value(m()).reshape(1), n_samples=1)


def quadratic(
    n: int, kappa: float, x0: Sequence[float] | Tensor | None = None, dtype: torch.dtype = torch.float64
) -> tuple[Point, Objective]:
    """``½ (x − 1)ᵀ A (x − 1)``, ``A = diag(κ^{i/(n−1)})``, from ``x0`` (default 0)."""
    check_positive("n", n, integer=True)
    if not kappa >= 1:
        raise UnigradError(f"the condition number kappa must be >= 1, got {kappa!r}")
    eig = torch.logspace(0, float(torch.log10(torch.tensor(float(kappa)))), n, dtype=dtype) if n > 1 else torch.ones(1)
    model = Point(torch.zeros(n) if x0 is None else x0, dtype)
    if model.x.numel() != n:
        raise UnigradError(f"x0 has {model.x.numel()} values, expected {n}")
    return model, objective(lambda m: (0.5 * (eig.to(m.x.dtype) * (m() - 1.0) ** 2).sum()).reshape(1), n_samples=1)
