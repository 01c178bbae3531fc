"""Convergence orders: gradient descent's linear rate (κ−1)/(κ+1), and the experiment that draws them."""

from __future__ import annotations

import itertools
import json
import math
import re

import pytest
import torch

from unigrad import make_estimator
from unigrad.cli import main
from unigrad.data.classic import quadratic


@pytest.mark.parametrize("kappa", [10.0, 100.0])
def test_gradient_descent_is_linear_with_rate_kappa_minus_one_over_kappa_plus_one(kappa: float) -> None:
    model, obj = quadratic(8, kappa)
    est = make_estimator("backprop")
    opt = torch.optim.SGD(model.parameters(), lr=2.0 / (1.0 + kappa))  # the step that minimises the worst rate
    errors = []
    for _ in range(60):
        opt.zero_grad()
        est.estimate(model, obj)
        opt.step()
        errors.append(float((model.x.detach() - 1.0).norm()))
    ratios = [b / a for a, b in itertools.pairwise(errors)]
    rate = (kappa - 1.0) / (kappa + 1.0)
    # never slower than the bound, and the bound is attained: the extreme modes both contract by exactly `rate`.
    # In exact arithmetic r ≤ rate; one step's float64 rounding of x ≈ 1 moves e by ≲ 3·√8·eps64 ≈ 2e-15, i.e. the
    # ratio by ≲ 2e-10 while ‖e‖ ≥ 8e-6 (κ = 10 at step 60), so 1e-9 (was 1e-12; measured max r − rate: −7.8e-7).
    assert all(r <= rate + 1e-9 for r in ratios), (max(ratios), rate)
    # the approach to the bound is exact arithmetic: rate − r = 7.8e-7 (κ = 10) and 9.5e-4 (κ = 100) at step 60
    # (the inner modes' remaining share); the 1e-3 margin to 2e-3 dwarfs rounding (≲ 2e-10)
    assert ratios[-1] > rate - 2e-3, (ratios[-1], rate)
    # a larger step than 2/L diverges: the stiffest mode's factor is |1 − 2.2| = 1.2, and 1.2^200 ≈ 7e15 ≫ 1
    model, obj = quadratic(8, kappa)
    opt = torch.optim.SGD(model.parameters(), lr=2.2 / kappa)
    for _ in range(200):
        opt.zero_grad()
        est.estimate(model, obj)
        opt.step()
    assert float((model.x.detach() - 1.0).norm()) > 1.0


def test_experiment_orders_the_methods_by_convergence_and_writes_its_figure(tmp_path, capsys) -> None:
    out = tmp_path / "co"
    code = main(
        ["experiment", "convergence-orders", "--out", str(out), "--iterations", "300", "--n", "6", "--kappa", "50"]
    )
    assert code == 0
    assert (out / "convergence-orders.png").stat().st_size > 10_000
    assert "Rosenbrock" in (out / "report.md").read_text() and "wrote" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    for key in ("rosenbrock", "quadratic"):
        traces = {t["method"]: t for t in results["problems"][key]["traces"]}
        assert set(traces) == {"rge", "backprop", "lbfgs", "newton", "cubic-newton"}
        assert all(t["errors"][-1] < t["errors"][0] for t in traces.values())
        # orders 2 and 3 reach 1e-10 within their budget; orders 0 and 1 are slower per iteration. Iterations to
        # 1e-10 measured (rosenbrock / quadratic): lbfgs 35 / 16, newton 24 / 2, cubic-newton 30 / 4 of a 200-step
        # budget; rge and GD never reach it in 300 (GD on the quadratic ends at 9.6e-10, ≈ 28 steps short), so a
        # step or two either way from rounding in the line searches changes none of these verdicts
        for name in ("lbfgs", "newton", "cubic-newton"):
            assert traces[name]["iterations_to_target"] is not None, name
        newton = traces["newton"]["iterations_to_target"]
        for name in ("rge", "backprop"):
            reached = traces[name]["iterations_to_target"]
            assert reached is None or reached > 5 * newton, (name, reached, newton)
        assert all(b > a for t in traces.values() for a, b in itertools.pairwise(t["fe"]))  # work accumulates
    quad = {t["method"]: t for t in results["problems"]["quadratic"]["traces"]}
    # one Newton step solves a quadratic (plus the radius): f − f* is then at rounding level (measured 0.0) ≪ 1e-10
    assert quad["newton"]["iterations_to_target"] <= 2


def test_unknown_experiment_lists_the_valid_ones(capsys) -> None:
    assert main(["experiment", "scaling-lawz"]) == 2
    assert re.search(r"valid experiments: .*convergence-orders", capsys.readouterr().err)


@pytest.mark.parametrize("kappa", [math.inf, math.nan, 0.5, True, "10"])
def test_run_refuses_a_condition_number_that_is_not_a_finite_number_at_least_one(kappa, tmp_path) -> None:
    from unigrad.core.errors import UnigradError
    from unigrad.experiments.convergence_orders import run

    # an infinite κ gave a zero gradient-descent step and a NaN predicted rate before
    with pytest.raises(UnigradError, match=rf"^option kappa must be a number >= 1, got {re.escape(repr(kappa))}$"):
        run(tmp_path / "out", kappa=kappa)
    assert not (tmp_path / "out").exists()
