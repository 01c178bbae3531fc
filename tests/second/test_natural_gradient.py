"""Natural gradient: directions against explicit Fisher solves (empirical, and the true Fisher built
from softmax/sigmoid covariances — an independent check of Fisher = GGN), the sampled Fisher's mean,
reparametrisation invariance, training, contract, cost."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import unigrad
from tests.problems import (
    Problem,
    _init,
    assert_contract,
    assert_mean_matches,
    flat_grad,
    flat_params,
    logistic,
    mlp,
    quadratic,
)
from unigrad import UnigradError
from unigrad.core.params import trainable
from unigrad.second.curvature import FlatLoss
from unigrad.second.natural_gradient import NaturalGradient


def _functions(problem):
    """Per-sample losses, outputs and the mean loss as functions of the flat parameters."""
    params = trainable(problem.model)
    names, shapes, sizes = [n for n, _ in params], [p.shape for _, p in params], [p.numel() for _, p in params]
    obj = problem.objective

    def outputs(t):
        values = {n: v.view(s) for n, v, s in zip(names, t.split(sizes), shapes, strict=True)}
        return functional_call(problem.model, values, (obj.inputs,))

    def losses(t):
        return obj.score(outputs(t))

    return losses, outputs, lambda t: losses(t).mean()


def _true_fisher_softmax(problem) -> torch.Tensor:
    """``(1/B) Σ_b J_bᵀ (diag(p_b) − p_b p_bᵀ) J_b``: the Fisher of the categorical model, written out."""
    _, outputs, _ = _functions(problem)
    theta = flat_params(problem.model)
    jac = torch.func.jacrev(outputs)(theta)  # (B, k, d)
    p = torch.softmax(outputs(theta), dim=1)
    cov = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (B, k, k)
    return torch.einsum("bkd,bkl,ble->de", jac, cov, jac) / p.shape[0]


def _true_fisher_gaussian(problem) -> torch.Tensor:
    """``(1/B) Σ_b (2/k) J_bᵀ J_b``: the Fisher of the Gaussian whose negative log-likelihood is the mean squared
    error over ``k`` outputs, ``‖z − y‖²/k`` (variance ``k/2``)."""
    _, outputs, _ = _functions(problem)
    jac = torch.func.jacrev(outputs)(flat_params(problem.model))  # (B, k, d)
    return 2.0 / jac.shape[1] * torch.einsum("bkd,bke->de", jac, jac) / jac.shape[0]


def _regression(batch: int = 8) -> Problem:
    """A float64 ``Linear-Tanh-Linear`` 3-4-2 regression with mean squared error (d = 26)."""
    g = torch.Generator().manual_seed(5)
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(torch.float64)
    _init(model, g, gain=2.0)
    x = torch.randn(batch, 3, generator=g, dtype=torch.float64)
    y = torch.randn(batch, 2, generator=g, dtype=torch.float64)
    return Problem(model, unigrad.supervised(F.mse_loss, x, y), "regression")


def _true_fisher_bernoulli(problem) -> torch.Tensor:
    """``(1/B) Σ_b p_b(1 − p_b) x̃_b x̃_bᵀ`` (``x̃ = (x, 1)``): the Fisher of logistic regression."""
    x = problem.objective.inputs
    xt = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    p = torch.sigmoid(problem.model(x)).squeeze(-1).detach()
    return (xt.T * (p * (1 - p))) @ xt / x.shape[0]


def test_empirical_fisher_direction_equals_the_explicit_solve() -> None:
    problem = mlp((4, 5, 3), 16, dtype=torch.float64)
    losses, _, f = _functions(problem)
    theta = flat_params(problem.model)
    rows = torch.func.jacrev(losses)(theta)  # (B, d) per-sample gradients
    fisher = rows.T @ rows / rows.shape[0]
    g = torch.func.grad(f)(theta)
    d, lam = problem.dim, 1e-2
    e = NaturalGradient(fisher="empirical", damping=lam, max_cg=3 * d, cg_tol=1e-13).estimate(
        problem.model, problem.objective
    )
    expected = torch.linalg.solve(fisher + lam * torch.eye(d, dtype=torch.float64), g)
    # CG stops at ‖r‖ ≤ 1e-13‖g‖ (‖g‖ = 1.06) with λ_min ≥ λ = 1e-2: ≤ 1.1e-11; the explicit solve errs by
    # ≲ κ·eps64·‖x‖ with κ = 252: ≈ 4e-14 (measured ≤ 7e-15)
    torch.testing.assert_close(flat_grad(problem.model), expected, atol=1e-9, rtol=1e-7)
    # per-sample gradients once; the products are matrix–vector products that cost no passes
    assert (e.cost.forwards, e.cost.backwards, e.cost.jvps, e.cost.hvps) == (16, 32, 0, 0)
    assert e.info["cg_iterations"] > 1


@pytest.mark.parametrize(
    ("build", "explicit"),
    [
        (lambda: mlp((4, 5, 3), 16, dtype=torch.float64), _true_fisher_softmax),
        (lambda: logistic(5, 32, dtype=torch.float64), _true_fisher_bernoulli),
    ],
)
def test_true_fisher_direction_equals_the_solve_with_the_explicit_fisher(build, explicit) -> None:
    problem = build()
    fisher = explicit(problem)
    g = problem.grad()
    d, lam, batch = problem.dim, 1e-2, problem.objective.n_samples
    e = NaturalGradient(fisher="true", damping=lam, max_cg=3 * d, cg_tol=1e-13).estimate(
        problem.model, problem.objective
    )
    expected = torch.linalg.solve(fisher + lam * torch.eye(d, dtype=torch.float64), g)
    # as above: CG ≤ 1e-13‖g‖/λ ≤ 1.1e-11, the solve ≲ κ·eps64·‖x‖ with κ ≤ 141 (measured ≤ 2.1e-12)
    torch.testing.assert_close(flat_grad(problem.model), expected, atol=1e-9, rtol=1e-7)
    k = e.info["cg_iterations"]
    assert (e.cost.forwards, e.cost.backwards, e.cost.jvps) == (batch, batch * (1 + k), batch * k)


@pytest.mark.parametrize("likelihood", ["categorical", "gaussian", "bernoulli"])
def test_sampled_fisher_is_unbiased_for_the_true_fisher(likelihood: str) -> None:
    # cross-entropy, mean squared error and binary cross-entropy: targets drawn from the likelihood of the loss
    if likelihood == "categorical":
        problem = mlp((3, 4, 3), 8, dtype=torch.float64)  # d = 31
        target = _true_fisher_softmax(problem)
    elif likelihood == "gaussian":
        problem = _regression()  # d = 26
        target = _true_fisher_gaussian(problem)
    else:
        problem = logistic(4, 8, dtype=torch.float64)  # d = 5, (B, 1) logits
        target = _true_fisher_bernoulli(problem)
    m = 400
    est = NaturalGradient(fisher="sampled", mc_samples=m)
    fl = FlatLoss(problem.model, problem.objective, trainable(problem.model))
    rows = est._sampled_grads(fl, problem.objective)  # (B·M, d), row b·M + j: input b, draw j
    batch, d = 8, problem.dim
    rows = rows.view(batch, m, d)
    # draw j gives the unbiased estimate (1/B) Σ_b ∇ℓ(z_b, ŷ_bj) ∇ℓ(z_b, ŷ_bj)ᵀ; draws are independent
    samples = torch.einsum("bjd,bje->jde", rows, rows).reshape(m, d * d) / batch
    assert_mean_matches(samples, target.reshape(-1), atol=1e-10)  # 5 SE; atol: rounding of entries ≲ 1 only
    assert fl.cost.backwards == batch * (1 + m) and fl.cost.forwards == 2 * batch


def test_sampled_fisher_on_mean_squared_error_is_not_the_categorical_one() -> None:
    # squared error on two outputs was once sampled as if the outputs were softmax logits: its Fisher then has the
    # categorical covariance diag(p) − ppᵀ (rank 1 for two outputs) where the Gaussian's is (2/k)·I. On the trace,
    # the sampled mean must be the Gaussian's within 5 SE (measured 0.6 SE off), and far from the categorical one
    # (measured 44 SE off: tr 1.7 against 11.1)
    problem = _regression()
    fl = FlatLoss(problem.model, problem.objective, trainable(problem.model))
    rows = NaturalGradient(fisher="sampled", mc_samples=400)._sampled_grads(fl, problem.objective).view(8, 400, -1)
    traces = torch.einsum("bjd,bjd->j", rows, rows) / 8  # tr of each draw's Fisher estimate
    categorical = float(torch.trace(_true_fisher_softmax(problem)))
    gaussian = float(torch.trace(_true_fisher_gaussian(problem)))
    se = float(traces.std()) / 20.0
    assert abs(float(traces.mean()) - gaussian) < 5 * se
    assert abs(float(traces.mean()) - categorical) > 20 * se


def test_natural_gradient_is_invariant_to_a_linear_reparametrisation_of_the_inputs() -> None:
    # a linear softmax model z = W x + b and the same model on inputs x' = A x with W' = W A⁻¹: to
    # first order the step changes the logits by δz = dW x + db; the exact natural gradient gives the
    # same δz (up to the softmax's free shift of all logits) in both parametrisations, the gradient does not
    g = torch.Generator().manual_seed(3)
    n, k, batch = 4, 3, 40
    x = torch.randn(batch, n, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (batch,), generator=g)
    a = torch.randn(n, n, generator=g, dtype=torch.float64) + 2.0 * torch.eye(n, dtype=torch.float64)
    w = torch.randn(k, n, generator=g, dtype=torch.float64)
    b = torch.randn(k, generator=g, dtype=torch.float64)

    def logit_change(inputs, weight, estimator) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            model = nn.Linear(n, k, dtype=torch.float64)
        with torch.no_grad():
            model.weight.copy_(weight)
            model.bias.copy_(b)
        estimator.estimate(model, unigrad.supervised(F.cross_entropy, inputs, y))
        dz = inputs @ model.weight.grad.T + model.bias.grad
        return dz - dz.mean(dim=1, keepdim=True)

    def make():
        return NaturalGradient(damping=1e-9, max_cg=200, cg_tol=1e-14)

    x2, w2 = x @ a.T, w @ torch.linalg.inv(a)
    natural, natural2 = logit_change(x, w, make()), logit_change(x2, w2, make())
    # the damping breaks the invariance by ≈ 130·λ relative (measured 1.3e-7; 1.3e-5 at λ = 1e-7, 1.3e-3 at 1e-5);
    # rounding (κ(A) = 14, CG to 1e-14) is far smaller
    torch.testing.assert_close(natural2, natural, atol=1e-6 * float(natural.abs().max()), rtol=0)
    backprop = unigrad.make_estimator("backprop")
    plain, plain2 = logit_change(x, w, backprop), logit_change(x2, w2, backprop)
    assert float((plain2 - plain).norm()) > 0.1 * float(plain.norm())  # the test can tell (measured 8.2)


@pytest.mark.parametrize(("fisher", "lr"), [("true", 0.5), ("empirical", 0.5), ("sampled", 0.5)])
def test_natural_gradient_with_sgd_trains_an_mlp(fisher: str, lr: float) -> None:
    # measured loss after / before: 3.3e-3, 1.0e-3, 1.7e-3, the same to 1e-9 relative on AVX-512 and AVX2 and after
    # a 1e-12 change of the start (the runs are not chaotic)
    problem = mlp(dtype=torch.float64)
    est = NaturalGradient(fisher=fisher, mc_samples=4)
    opt = torch.optim.SGD(problem.model.parameters(), lr=lr)
    first = problem.loss()
    for _ in range(15):
        opt.zero_grad()
        est.estimate(problem.model, problem.objective)
        opt.step()
    assert problem.loss() < 0.1 * first, (first, problem.loss())


def test_contract() -> None:
    for fisher in ("true", "empirical"):
        assert_contract(
            lambda seed, fisher=fisher: NaturalGradient(fisher=fisher, seed=seed),
            logistic(5, 32, dtype=torch.float64),
            seeded=False,
        )
    assert_contract(lambda seed: NaturalGradient(fisher="sampled", seed=seed), mlp((4, 5, 3), 16, dtype=torch.float64))
    assert NaturalGradient.order == 2 and NaturalGradient.name == "natural-gradient"


def test_fisher_choices_and_objectives() -> None:
    problem = quadratic(4, dtype=torch.float64)  # not supervised, and one scalar loss
    for fisher in ("true", "sampled"):
        with pytest.raises(UnigradError, match="fisher=empirical"):
            NaturalGradient(fisher=fisher).estimate(problem.model, problem.objective)
    with pytest.raises(UnigradError, match="per-sample"):
        NaturalGradient(fisher="empirical").estimate(problem.model, problem.objective)
    # the sampled Fisher needs the loss's likelihood: label smoothing has none, and is refused in one line that
    # names the supported losses; the empirical and true Fisher take it
    smooth = mlp((4, 5, 3), 16, dtype=torch.float64)
    objective = unigrad.supervised(
        nn.CrossEntropyLoss(label_smoothing=0.2), smooth.objective.inputs, smooth.objective.targets
    )
    with pytest.raises(UnigradError, match=r"mean squared error.*matches none") as info:
        NaturalGradient(fisher="sampled").estimate(smooth.model, objective)
    assert "\n" not in str(info.value) and "fisher=true or fisher=empirical" in str(info.value)
    for fisher in ("true", "empirical"):
        NaturalGradient(fisher=fisher).estimate(smooth.model, objective)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"fisher": "exact"}, "fisher"),
        ({"damping": 0}, "damping"),
        ({"damping": -1.0}, "damping"),
        ({"damping": "1"}, "damping"),
        ({"max_cg": 0}, "max_cg"),
        ({"cg_tol": 0}, "cg_tol"),
        ({"mc_samples": 0}, "mc_samples"),
        ({"mc_samples": 1.5}, "mc_samples"),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(UnigradError, match=match) as info:
        NaturalGradient(**options)
    assert "\n" not in str(info.value)
