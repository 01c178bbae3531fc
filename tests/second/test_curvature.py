"""Curvature products against explicit matrices: Hessian, Gauss-Newton, per-sample gradients; CG.

Tolerances: the products, gradients and losses are float64 computations of the same sums (≤ 227 parameters, 64
samples, 3 outputs) by two routes (double backward against torch.func's explicit matrices): rounding ≲ 10³·eps64·scale
≈ 2e-13 with entries of order 1 (measured ≤ 7e-16), far below assert_close's float64 defaults (rtol = atol = 1e-7) and
the 1e-12 on losses of about 1.1.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.func import functional_call

from tests.problems import mlp, quadratic
from unigrad import UnigradError
from unigrad.core.params import trainable
from unigrad.second.curvature import FlatLoss, conjugate_gradient


def _flat_fns(problem):
    params = trainable(problem.model)
    names, shapes, sizes = [n for n, _ in params], [p.shape for _, p in params], [p.numel() for _, p in params]
    obj = problem.objective

    def values(theta):
        return {n: t.view(s) for n, t, s in zip(names, theta.split(sizes), shapes, strict=True)}

    def outputs(theta):
        return functional_call(problem.model, values(theta), (obj.inputs,))

    def f(theta):
        return obj.score(outputs(theta)).mean()

    return params, outputs, f


def test_hvp_and_ggn_products_match_the_explicit_matrices() -> None:
    problem = mlp(dtype=torch.float64)
    params, outputs, f = _flat_fns(problem)
    before = [p.detach().clone() for _, p in params]
    fl = FlatLoss(problem.model, problem.objective, params, outputs=True)
    theta = fl.theta0
    h = torch.func.hessian(f)(theta)
    jac = torch.func.jacrev(outputs)(theta)  # (B, k, d)
    z = outputs(theta).detach()
    hz = torch.func.hessian(lambda zz: problem.objective.score(zz).mean())(z)  # (B, k, B, k)
    b, k, d = jac.shape
    ggn = jac.reshape(b * k, d).T @ hz.reshape(b * k, b * k) @ jac.reshape(b * k, d)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(d, generator=g, dtype=torch.float64)
        torch.testing.assert_close(fl.hvp(v), h @ v)
        torch.testing.assert_close(fl.ggn_vp(v), ggn @ v)
    assert abs(fl.loss - float(f(theta))) < 1e-12
    torch.testing.assert_close(fl.grad, torch.func.grad(f)(theta))
    # GGN is positive semi-definite, the Hessian of this tanh network is not: forming G and eigvalsh err by
    # ≲ d·eps64·‖G‖ ≈ 227 · 2.2e-16 · 0.71 ≈ 4e-14 (measured λ_min = −1e-16) ≪ 1e-10; λ_min(H) = −0.38, far from 0
    assert float(torch.linalg.eigvalsh(0.5 * (ggn + ggn.T))[0]) > -1e-10
    assert float(torch.linalg.eigvalsh(h)[0]) < 0
    for (_, p), p0 in zip(params, before, strict=True):
        assert torch.equal(p.detach(), p0)  # the products never write the parameters
    batch = problem.objective.n_samples
    assert (fl.cost.forwards, fl.cost.backwards, fl.cost.hvps, fl.cost.jvps) == (batch, 4 * batch, 3 * batch, 3 * batch)


def test_per_sample_gradients_and_values_elsewhere() -> None:
    problem = mlp(dtype=torch.float64)
    params, outputs, f = _flat_fns(problem)
    fl = FlatLoss(problem.model, problem.objective, params)
    jac = fl.per_sample_grads()
    per_sample = torch.func.jacrev(lambda t: problem.objective.score(outputs(t)))(fl.theta0)
    torch.testing.assert_close(jac, per_sample)
    torch.testing.assert_close(jac.mean(0), fl.grad)
    other = fl.theta0 + 0.1
    value, grad = fl.value_and_grad(other)
    assert abs(value - float(f(other))) < 1e-12 and abs(fl.value(other) - value) < 1e-12
    torch.testing.assert_close(grad, torch.func.grad(f)(other))


def test_gauss_newton_needs_a_supervised_objective() -> None:
    problem = quadratic(4)
    with pytest.raises(UnigradError, match="supervised objective"):
        FlatLoss(problem.model, problem.objective, trainable(problem.model), outputs=True)
    fl = FlatLoss(problem.model, problem.objective, trainable(problem.model))
    with pytest.raises(UnigradError, match="outputs=True"):
        fl.ggn_vp(torch.ones(4))


def test_conjugate_gradient_solves_spd_systems_in_at_most_d_products() -> None:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    a = (q * torch.logspace(0, 2, 12, dtype=torch.float64)) @ q.T
    b = torch.randn(12, generator=g, dtype=torch.float64)
    res = conjugate_gradient(lambda v: a @ v, b, max_iter=100, tol=1e-8)
    # stopped at ‖r‖ ≤ 1e-8‖b‖ with λ_min = 1: ‖x − x*‖ ≤ ‖r‖/λ_min ≤ 3.7e-8 < the default atol 1e-7 (measured ≤ 5e-11)
    torch.testing.assert_close(res.x, torch.linalg.solve(a, b))
    # d = 12 in exact arithmetic; rounding leaves ‖r‖/‖b‖ = 7e-8 after 12 products, 3e-10 to 1.4e-9 after 13:
    # measured 13 (AVX-512 and AVX2), slack for two more
    assert res.iterations <= 12 + 3 and not res.negative_curvature
    # with few iterations the quadratic model still decreases monotonically along the saved iterates
    res = conjugate_gradient(lambda v: a @ v, b, max_iter=5, save_at=lambda i: True)
    phis = [float(0.5 * x @ a @ x - b @ x) for _, x in res.iterates]
    # (the smallest decrease, 0.093, is ~10¹³ times φ's rounding error, 12·eps64·|φ| ≈ 1e-14)
    assert len(phis) == 5 and all(p2 < p1 for p1, p2 in itertools.pairwise(phis))
    # relative-progress stopping ends earlier than the residual test on the same system (measured 12 products
    # against 16); the test looks back k = 10 iterations, so it cannot stop before 11, and 100 is max_iter
    early = conjugate_gradient(lambda v: a @ v, b, max_iter=100, tol=1e-14, progress_tol=0.05)
    assert 10 < early.iterations < 100
    assert float(0.5 * early.x @ a @ early.x - b @ early.x) < 0  # measured −2.03


def test_conjugate_gradient_stops_on_negative_curvature_with_a_descent_direction() -> None:
    a = torch.diag(torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64))
    b = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    res = conjugate_gradient(lambda v: a @ v, b, max_iter=10)
    assert res.negative_curvature
    assert float(b @ res.x) > 0  # a descent direction for φ(x) = ½xᵀAx − bᵀx at 0 (bᵀx = 2.25 exactly)
