"""The black-box functions (minimum, gradient) and the cartpole objective's cost unit."""

from __future__ import annotations

import math

import pytest
import torch

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError
from unigrad.core.objective import evaluate
from unigrad.suite.problems import FUNCTIONS, CartPoleProblem, FunctionProblem, rastrigin, rosenbrock, sphere


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("dim", [2, 10, 1000])
def test_minimum_is_zero_and_a_minimum(name, dim):
    fn = FUNCTIONS[name]
    x_star = fn.minimizer(dim)
    assert float(fn.f(x_star)) == pytest.approx(0.0, abs=1e-9)  # exact: sums of integers (cos 0 = 1) at x*
    g = torch.Generator().manual_seed(dim)
    for _ in range(5):
        # f rises by ≳ 1e-6 per coordinate, ≫ the float64 rounding of sums of size 10·D (≲ D·eps64·10 ≈ 2e-12)
        assert float(fn.f(x_star + 1e-3 * torch.randn(dim, generator=g, dtype=torch.float64))) > 0


def _formula_gradients(x: torch.Tensor) -> dict[str, torch.Tensor]:
    rb = torch.zeros_like(x)
    a, b = x[:-1], x[1:]
    rb[:-1] += -400 * a * (b - a**2) - 2 * (1 - a)
    rb[1:] += 200 * (b - a**2)
    return {
        "sphere": 2 * x,
        "rosenbrock": rb,
        "rastrigin": 2 * x + 20 * math.pi * torch.sin(2 * math.pi * x),
    }


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_autograd_gradient_matches_the_formula(name):
    x = torch.randn(7, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    FUNCTIONS[name].f(x).backward()
    # float64, the same derivative written two ways: a few eps64 relative to terms ≤ 1e4 ≪ 1e-7 (the defaults)
    torch.testing.assert_close(x.grad, _formula_gradients(x.detach())[name])


def test_known_values():
    assert float(sphere(torch.tensor([1.0, 2.0]))) == 5.0
    assert float(rosenbrock(torch.tensor([0.0, 0.0]))) == 1.0
    # float32 10 + 1 − 10·cos(2π): exact when cos rounds to 1, 1 + 6e-7 if it is 1 ulp low: < rel 1e-6
    assert float(rastrigin(torch.tensor([1.0]))) == pytest.approx(1.0)


def test_start_points_are_keyed_by_seed():
    p = FunctionProblem("rastrigin", 100)
    a, b, c = (p.build_model(s).x.detach() for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float64 and a.abs().max() <= 5.12  # (2u − 1)·5.12: |2u − 1| ≤ 1 and rounding is monotone
    x = FunctionProblem("sphere", 10).build_model(3)
    cost = Cost()
    evaluate(FunctionProblem("sphere", 10).objective(3, 0), x, cost)
    assert cost.forward_equivalents == 1  # one function evaluation is one unit
    with pytest.raises(UnigradError, match="unknown function"):
        FunctionProblem("ackley", 10)


def test_cartpole_objective_costs_one_unit_per_episode():
    pytest.importorskip("gymnasium")
    problem = CartPoleProblem(episodes=3, eval_episodes=5)
    model = problem.build_model(0)
    obj = problem.objective(0, 7)
    cost = Cost()
    loss = evaluate(obj, model, cost)
    assert cost.forward_equivalents == 3  # three episodes, whatever their length in steps
    assert loss.dim() == 0 and 1 <= -float(loss) <= 500
    assert float(problem.objective(0, 7)(model)) == float(loss)  # the same keyed episodes
    score = problem.metric(model, 0)
    assert 1 <= score <= 500 and score == problem.metric(model, 0)
