"""Classic optimisation problems as a model (one parameter vector) and an objective.

* :func:`rosenbrock`: ``f(x) = Σ_{i<n−1} 100 (x_{i+1} − x_i²)² + (1 − x_i)²`` (Rosenbrock 1960), minimum
  0 at ``x = (1, …, 1)``; the classic start for n = 2 is ``(−1.2, 1)``.
* :func:`quadratic`: ``f(x) = ½ (x − x*)ᵀ A (x − x*)`` with ``A`` diagonal, eigenvalues spaced
  geometrically from 1 to ``κ`` (condition number ``κ``), minimum 0 at ``x*``.
* :func:`logistic_digits`: multinomial logistic regression on scikit-learn's digits (the 1,437 training
  images, full batch), ``f(W, b) = (1/N) Σ_n CE(W x_n + b, y_n) + (l2/2)‖W‖²``: smooth and, with
  ``l2 > 0``, strongly convex (a unique minimiser), 650 parameters.

Each returns ``(model, objective)``. For the first two ``model`` is a :class:`Point` (``model.x`` is the
variable) and ``objective(model)`` is the loss as a one-element tensor (one "sample"); for
:func:`logistic_digits` the model is an ``nn.Linear(64, 10)`` and the objective returns the 1,437
per-sample losses (each with the penalty added, so their mean is ``f``). Every estimator and
optimizer of the library applies unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.objective import Objective, objective
from unigrad.core.options import check_number


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


def logistic_digits(
    l2: float = 1e-3, samples: int | None = None, dtype: torch.dtype = torch.float64
) -> tuple[nn.Linear, Objective]:
    """Softmax regression on the digits training set (its first ``samples`` images, default all 1,437)
    with an L2 penalty ``l2`` on the weights, from zero."""
    from unigrad.data.digits import load_digits

    check_number("l2", l2, low=0, what="a number >= 0", subject="the penalty l2")
    x, y, _, _ = load_digits()
    if samples is not None:
        check_positive("samples", samples, integer=True)
        x, y = x[:samples], y[:samples]
    x = x.to(dtype)
    model = nn.Linear(64, 10, dtype=dtype)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()

    def losses(m: nn.Module) -> Tensor:
        return F.cross_entropy(m(x), y, reduction="none") + 0.5 * l2 * (m.weight**2).sum()

    return model, objective(losses, n_samples=x.shape[0])
