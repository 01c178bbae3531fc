"""The classic problems: values, gradients and minimisers agree with independent computations."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, rosen

from unigrad import UnigradError
from unigrad.core.objective import reduce
from unigrad.data.classic import logistic_digits, quadratic, rosenbrock


def test_rosenbrock_matches_scipy_in_several_dimensions() -> None:
    x0 = torch.tensor([-1.2, 1.0, 0.3, 2.0], dtype=torch.float64)
    model, obj = rosenbrock(x0)
    # float64, the same formula at the same point: ≲ 10 roundings of quantities ≤ 438 (the value) on each side,
    # ≲ 10·eps64·438 ≈ 1e-12 each, so ≤ 2e-12 apart (measured 0)
    assert abs(float(obj(model)) - rosen(x0.numpy())) < 1e-11
    model, obj = rosenbrock((1.0, 1.0, 1.0))
    assert float(obj(model)) == 0.0
    with pytest.raises(UnigradError, match="at least 2"):
        rosenbrock((1.0,))


def test_quadratic_has_the_requested_condition_number_and_minimiser() -> None:
    model, obj = quadratic(6, kappa=1e3)
    h = torch.func.hessian(lambda x: obj_value(obj, model, x))(model.x.detach())
    eig = torch.linalg.eigvalsh(h)
    # float64 diag(κ^{i/5}); eigvalsh is accurate to ≲ 6·eps64·‖H‖ ≈ 1.3e-12 on λ_min = 1, so the ratio to
    # ≲ 1e3·1.3e-12 ≈ 1e-9 ≪ 1e-6 (κ = 10^log10(κ) with log10(1e3) = 3 exactly)
    assert abs(float(eig[-1] / eig[0]) - 1e3) < 1e-6
    assert float(obj_value(obj, model, torch.ones(6, dtype=torch.float64))) == 0.0
    with pytest.raises(UnigradError, match="kappa"):
        quadratic(3, kappa=0.5)


def obj_value(obj, model, x):
    """The objective at ``x`` without touching the model."""
    return reduce(torch.func.functional_call(_Wrap(model, obj), {"model.x": x}, ()))


class _Wrap(torch.nn.Module):
    def __init__(self, model, obj):
        super().__init__()
        self.model, self.obj = model, obj

    def forward(self):
        return self.obj(self.model)


def test_logistic_digits_agrees_with_an_independent_numpy_optimum() -> None:
    model, obj = logistic_digits(l2=1e-2)
    assert obj.n_samples == 1437 and sum(p.numel() for p in model.parameters()) == 650
    loss = float(reduce(obj(model)))
    # zero weights: uniform predictions; the float64 mean of 1437 copies of log 10 is within ≲ 1437·eps64·2.3 ≈ 7e-13
    assert abs(loss - np.log(10)) < 1e-12
    from unigrad.data.digits import load_digits

    x, y, _, _ = load_digits()
    x, y = x.double().numpy(), y.numpy()

    def f(w):  # softmax regression with the same penalty, written in numpy
        wm, b = w[:640].reshape(10, 64), w[640:]
        z = x @ wm.T + b
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        p = np.exp(logp)
        onehot = np.eye(10)[y]
        grad_z = (p - onehot) / len(y)
        g = np.concatenate([(grad_z.T @ x + 1e-2 * wm).ravel(), grad_z.sum(0)])
        return -logp[np.arange(len(y)), y].mean() + 0.5e-2 * (wm**2).sum(), g

    ref = minimize(f, np.zeros(650), jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "maxiter": 5000})
    w = torch.from_numpy(ref.x)
    with torch.no_grad():
        model.weight.copy_(w[:640].reshape(10, 64))
        model.bias.copy_(w[640:])
    # ours and numpy's objective at the same point ref.x, in float64: logits of 64 terms with Σ|x||w| ≲ 200 differ by
    # ≲ 64·eps64·200 ≈ 3e-12, the loss (2-Lipschitz in the logits) by ≲ 6e-12 ≪ 1e-10 (measured ≤ 6e-17)
    assert abs(float(reduce(obj(model))) - ref.fun) < 1e-10
    with pytest.raises(UnigradError, match="l2"):
        logistic_digits(l2=-1.0)


@pytest.mark.parametrize("l2", [math.inf, math.nan, -1e-3, True, "0.1"])
def test_logistic_digits_refuses_a_penalty_that_is_not_a_finite_number_at_least_zero(l2) -> None:
    # an infinite penalty made the loss NaN at the zero start (0·inf) before
    with pytest.raises(UnigradError, match=rf"^the penalty l2 must be a number >= 0, got {re.escape(repr(l2))}$"):
        logistic_digits(l2=l2)
