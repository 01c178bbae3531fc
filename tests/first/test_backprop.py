"""Backprop: the estimate is the autograd gradient; one forward and one backward per sample; exact loss."""

from __future__ import annotations

import pytest
import torch

from tests.problems import assert_contract, flat_grad, logistic, mlp, quadratic, train_losses
from unigrad import make_estimator
from unigrad.first.backprop import Backprop

PROBLEMS = [quadratic, logistic, mlp]
IDS = ["quadratic", "logistic", "mlp"]


@pytest.mark.parametrize("build", PROBLEMS, ids=IDS)
def test_equals_autograd(build) -> None:
    problem = build()
    e = Backprop().estimate(problem.model, problem.objective)
    # both sides are autograd of the same float32 graph (the same forward and backward ops): equal on any machine
    # (measured bitwise), so these tolerances are slack, not rounding budgets
    assert torch.allclose(flat_grad(problem.model), problem.grad(), rtol=1e-6, atol=1e-7)
    assert e.loss == pytest.approx(problem.loss(), rel=1e-7)  # the exact loss, not a probe mean
    assert not e.loss_is_probe_mean


def test_quadratic_gradient_is_a_times_residual() -> None:
    # an independent check of the reference itself: ∇½(θ−θ*)ᵀA(θ−θ*) = A(θ−θ*)
    problem = quadratic(16)
    Backprop().estimate(problem.model, problem.objective)
    # float32 16-term sums by two routes (A·r vs the backward of ½ rᵀ(A r)): ≲ 2·16·eps32·max|g| (4.9) ≈ 2e-5
    # (atol was 1e-6, below that bound for the small entries; measured ≤ 5e-7)
    assert torch.allclose(flat_grad(problem.model), problem.model.exact_grad().double(), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize(("build", "batch"), [(lambda: quadratic(8), 1), (lambda: mlp(batch=32), 32)])
def test_cost_is_one_forward_and_one_backward_per_sample(build, batch: int) -> None:
    problem = build()
    e = make_estimator("backprop").estimate(problem.model, problem.objective)
    assert e.cost.forwards == e.cost.backwards == batch
    assert e.cost.jvps == e.cost.hvps == 0
    assert e.cost.forward_equivalents == 3 * batch


def test_contract() -> None:
    assert_contract(lambda seed: Backprop(seed=seed), mlp(), seeded=False)


def test_frozen_parameters_are_left_alone() -> None:
    problem = mlp()
    first = problem.model[0]
    first.weight.requires_grad_(False)
    Backprop().estimate(problem.model, problem.objective)
    assert first.weight.grad is None
    assert first.bias.grad is not None


def test_training_lowers_the_loss() -> None:
    problem = mlp(batch=128, seed=1)
    first, last = train_losses(Backprop(), problem)
    assert last < 0.5 * first, (first, last)  # measured 0.094
