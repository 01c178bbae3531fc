"""The convergence-order experiment: error against iteration for derivative orders 0, 1, 2 and 3.

On the 2-D Rosenbrock function from ``(−1.2, 1)`` and an ill-conditioned quadratic
(``unigrad.data.classic``), every method starts from the same point and runs until the error
``f(x_k) − f*`` falls below ``tol`` or its iteration budget is spent:

=====  ==========================  ===================================================================
order  method                      step
=====  ==========================  ===================================================================
0      ``rge`` (1 Gaussian probe,  ``x ← x − η g``, ``η = 1/((d+4)L)`` (Nesterov & Spokoiny 2017): linear,
       central differences)        about ``d`` times slower per iteration than gradient descent
1      gradient descent            ``x ← x − η∇f``; on the quadratic ``η = 2/(λ_min+λ_max)``, whose
       (``backprop`` + SGD)        error contracts by ``((κ−1)/(κ+1))²`` per step (drawn as a dashed line)
2      ``lbfgs``                   strong-Wolfe line search: superlinear
2      ``newton``                  exact Hessian in a trust region: quadratic near the solution
3      ``cubic-newton``            adaptive cubic regularization: quadratic, second-order stationary
=====  ==========================  ===================================================================

Every record also carries the cumulative forward-pass equivalents (FE) the method spent, so the
figure's second row plots the same error against work: Newton's iterations are few but each costs
``d`` Hessian–vector products.

Outputs (in ``out``): ``convergence-orders.png``, ``results.json`` (every trace) and ``report.md``
(iterations and FE to reach ``1e-10``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from unigrad.core.errors import check_positive
from unigrad.core.objective import Objective, reduce
from unigrad.core.options import check_number
from unigrad.data.classic import quadratic, rosenbrock
from unigrad.experiments import _common
from unigrad.experiments._common import (
    Progress,
    Settings,
    check_positive_all,
    finish,
    grid,
    output_dir,
    pyplot,
    runner,
    save_figure,
)
from unigrad.registry import make_estimator
from unigrad.train.loop import Batch, Every, TrainingLoop

TARGET = 1e-10
"""The error level the report counts iterations and FE to."""


@dataclass(frozen=True)
class MethodSpec:
    label: str
    order: int
    method: str
    options: dict[str, Any]
    lr: Callable[[dict[str, float]], float]
    long: bool  # first-order-like methods get the long iteration budget


METHODS: tuple[MethodSpec, ...] = (
    MethodSpec(
        "order 0: rge (q=1)", 0, "rge", {"probes": 1, "sigma": 1e-7}, lambda p: 1.0 / ((p["d"] + 4) * p["L"]), True
    ),
    MethodSpec("order 1: gradient descent", 1, "backprop", {}, lambda p: p["gd_lr"], True),
    MethodSpec("order 2: lbfgs", 2, "lbfgs", {}, lambda p: 1.0, False),
    MethodSpec("order 2: newton (trust region)", 2, "newton", {}, lambda p: 1.0, False),
    MethodSpec("order 3: cubic-newton", 3, "cubic-newton", {}, lambda p: 1.0, False),
)


def _problems(n: int, kappa: float) -> dict[str, dict[str, Any]]:
    """Builders and step-size constants for the two problems."""
    return {
        "rosenbrock": {
            "title": "Rosenbrock 2-D from (−1.2, 1)",
            "build": lambda: rosenbrock((-1.2, 1.0)),
            "f_star": 0.0,
            # the Hessian's largest eigenvalue on the path from (−1.2, 1) to (1, 1) is about 1,500: a stable
            # fixed step for gradient descent is 1/1,500 (larger steps oscillate across the valley)
            "d": 2,
            "L": 1500.0,
            "gd_lr": 1.0 / 1500.0,
            "rate": None,
        },
        "quadratic": {
            "title": f"quadratic, n = {n}, κ = {kappa:g}",
            "build": lambda: quadratic(n, kappa),
            "f_star": 0.0,
            "d": n,
            "L": kappa,
            "gd_lr": 2.0 / (1.0 + kappa),
            "rate": ((kappa - 1.0) / (kappa + 1.0)) ** 2,
        },
    }


Builder = Callable[[], tuple[nn.Module, Objective]]


def _trace(spec: MethodSpec, build: Builder, lr: float, f_star: float, budget: int, tol: float) -> dict[str, Any]:
    model, objective = build()
    est = make_estimator(spec.method, seed=0, **spec.options)
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def error() -> float:
        with torch.no_grad():
            return max(float(reduce(objective(model))) - f_star, 0.0)

    errors: list[float] = []
    fe: list[float] = []

    def evaluate(loop: TrainingLoop) -> dict[str, Any]:
        """Record the error after ``loop.step`` steps; stop at ``tol`` or when it is no longer finite."""
        errors.append(error())
        fe.append(loop.forward_equivalents)
        if errors[-1] <= tol or not math.isfinite(errors[-1]):
            loop.stop()
        return {"error": errors[-1]}

    loop = TrainingLoop(
        model,
        est,
        opt,
        lambda loop: Batch(objective),
        spent=lambda loop: loop.step / budget,
        evaluate=evaluate,
        schedule=Every(1, budget),
    )
    start = time.perf_counter()
    loop.run()
    seconds = time.perf_counter() - start
    reached = next((k for k, v in enumerate(errors) if v <= TARGET), None)
    return {
        "label": spec.label,
        "order": spec.order,
        "method": spec.method,
        "options": spec.options,
        "lr": lr,
        "errors": errors,
        "fe": fe,
        "iterations": len(errors) - 1,
        "iterations_to_target": reached,
        "fe_to_target": None if reached is None else fe[reached],
        "seconds": seconds,
    }


def run(
    out: str | Path,
    *,
    iterations: int = 20000,
    second_order_iterations: int = 200,
    n: int = 20,
    kappa: float = 1000.0,
    tol: float = 1e-24,
    progress: Progress = None,
) -> dict[str, Any]:
    """Run every method on both problems, write the figure, ``results.json`` and ``report.md`` to ``out``."""
    check_positive_all(integer=True, iterations=iterations, second_order_iterations=second_order_iterations, n=n)
    check_number("kappa", kappa, low=1, what="a number >= 1")
    check_positive("tol", tol)
    out = output_dir(out)
    results: dict[str, Any] = {"target": TARGET, "tol": tol, "problems": {}}
    for key, prob in _problems(n, kappa).items():
        traces = []
        for spec in METHODS:
            if progress:
                progress(f"{key}: {spec.label}")
            budget = iterations if spec.long else second_order_iterations
            traces.append(_trace(spec, prob["build"], spec.lr(prob), prob["f_star"], budget, tol))
        results["problems"][key] = {"title": prob["title"], "gd_rate": prob["rate"], "traces": traces}
    finish(out, results, report, plot, "convergence-orders.png")
    return results


def plot(results: dict[str, Any], path: Path) -> None:
    """Error against iteration (top) and against forward-pass equivalents (bottom), one column per problem."""
    plt = pyplot()

    problems = results["problems"]
    fig, axes = plt.subplots(2, len(problems), figsize=(6.0 * len(problems), 8.0), squeeze=False)
    colors = {0: "tab:gray", 1: "tab:blue", 2: "tab:green", 3: "tab:red"}
    styles = {"lbfgs": "--", "newton": "-", "cubic-newton": "-", "backprop": "-", "rge": "-"}
    for col, prob in enumerate(problems.values()):
        for tr in prob["traces"]:
            err = [max(e, 1e-30) for e in tr["errors"]]
            kw = {"color": colors[tr["order"]], "linestyle": styles.get(tr["method"], "-"), "label": tr["label"]}
            axes[0][col].plot(range(1, len(err) + 1), err, **kw)
            axes[1][col].plot([max(f, 1.0) for f in tr["fe"]], err, **kw)
        if prob["gd_rate"] is not None:
            gd = next(t for t in prob["traces"] if t["order"] == 1)
            k = list(range(len(gd["errors"])))
            axes[0][col].plot(
                [i + 1 for i in k],
                [max(gd["errors"][0] * prob["gd_rate"] ** i, 1e-30) for i in k],
                color="black",
                linestyle=":",
                label="((κ−1)/(κ+1))^(2k)",
            )
        axes[0][col].set_title(prob["title"])
        for row, xlabel in enumerate(("iteration", "forward-pass equivalents")):
            ax = axes[row][col]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("f(x) − f*")
            ax.set_ylim(1e-26, None)
        grid(axes[:, col])
        axes[0][col].legend(fontsize=8)
    save_figure(fig, path)


def report(results: dict[str, Any]) -> str:
    """A markdown table per problem: iterations and FE to the target error, wall time."""
    lines = ["# Convergence orders", ""]
    for prob in results["problems"].values():
        lines += [f"## {prob['title']}", ""]
        if prob["gd_rate"] is not None:
            lines += [f"Gradient descent's predicted contraction of f − f* per step: {prob['gd_rate']:.6f}", ""]
        lines += [
            f"| method | iterations run | iterations to f − f* ≤ {results['target']:g} | FE to it | final f − f* | s |",
            "|---|---|---|---|---|---|",
        ]
        for tr in prob["traces"]:
            reached = tr["iterations_to_target"]
            fe = "–" if reached is None else f"{tr['fe_to_target']:,.0f}"
            lines.append(
                f"| {tr['label']} | {tr['iterations']} | {'not reached' if reached is None else reached} | "
                f"{fe} | {tr['errors'][-1]:.2e} | {tr['seconds']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class Config(_common.Config):
    """Options of ``unigrad experiment convergence-orders`` (deterministic: ``seeds`` is not used):
    ``iterations`` (budget of the order-0 and order-1 methods: 20,000; quick 300), ``second_order_iterations``
    (of the order-2 and order-3 methods: 200), ``n`` (dimension of the quadratic: 20; quick 6) and ``kappa``
    (its condition number: 1,000; quick 50)."""

    iterations: int | None = None
    second_order_iterations: int | None = None
    n: int | None = None
    kappa: float | None = None

    NAME = "convergence-orders"
    FULL: ClassVar[Settings] = {"iterations": 20000, "second_order_iterations": 200, "n": 20, "kappa": 1000.0}
    QUICK: ClassVar[Settings] = {"iterations": 300, "second_order_iterations": 200, "n": 6, "kappa": 50.0}
    USES_SEEDS = False


run_experiment = runner(Config, run)
