"""Iteration counts of the order-2/3 estimators against scipy.optimize on the classic problems.

Same function, same start, same stopping rule (a gradient-norm threshold, in the norm scipy's method
uses) for each pair::

    python benchmarks/scipy_crosscheck.py [--out benchmarks/results/scipy-crosscheck.md]

Pairs: ``newton`` (trust region) vs ``trust-exact``; ``lbfgs`` vs ``L-BFGS-B`` (m = 10; its ``pgtol``
is on the max-norm); ``hessian-free`` (Hessian, λ₀ = 1e-3) vs ``Newton-CG``; ``cubic-newton`` next to
them. Problems: Rosenbrock 2-D from (−1.2, 1), Rosenbrock 10-D from (−1.2, 1, −1.2, 1, …), the
quadratic n = 20, κ = 1000 from 0, softmax regression on all 1,437 digits (l2 = 1e-3) from 0.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize
from torch import nn

from unigrad import make_estimator
from unigrad.core.objective import Objective
from unigrad.core.params import trainable
from unigrad.data.classic import logistic_digits, quadratic, rosenbrock
from unigrad.second.curvature import FlatLoss

Builder = Callable[[], tuple[nn.Module, Objective]]

PROBLEMS: dict[str, Builder] = {
    "Rosenbrock 2-D": lambda: rosenbrock((-1.2, 1.0)),
    "Rosenbrock 10-D": lambda: rosenbrock(torch.tensor([-1.2, 1.0] * 5, dtype=torch.float64)),
    "quadratic n=20, κ=1000": lambda: quadratic(20, 1000.0),
    "softmax regression, digits": lambda: logistic_digits(l2=1e-3),
}

PAIRS = (
    ("newton", {"max_params": 1000}, "trust-exact", 2.0),
    ("lbfgs", {}, "L-BFGS-B", float("inf")),
    ("hessian-free", {"curvature": "hessian", "damping": 1e-3, "max_cg": 250}, "Newton-CG", 2.0),
    ("cubic-newton", {"krylov_dim": 50}, None, 2.0),
)


def _flat(build: Builder) -> tuple[Callable, Callable, Callable, np.ndarray]:
    model, obj = build()
    params = trainable(model)

    def at(w: np.ndarray) -> FlatLoss:
        t = torch.from_numpy(w)
        with torch.no_grad():
            for (_, p), v in zip(params, t.split([p.numel() for _, p in params]), strict=True):
                p.copy_(v.view(p.shape))
        return FlatLoss(model, obj, params)

    x0 = torch.cat([p.detach().reshape(-1) for _, p in params]).numpy().copy()

    def fun(w):
        fl = at(w)
        return fl.loss, fl.grad.numpy()

    return fun, (lambda w: at(w).hessian().numpy()), (lambda w, v: at(w).hvp(torch.from_numpy(v)).numpy()), x0


def ours(name: str, options: dict, build: Builder, gtol: float, norm: float, limit: int = 3000) -> int | None:
    model, obj = build()
    est = make_estimator(name, **options)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for k in range(limit):
        if float(FlatLoss(model, obj, trainable(model)).grad.norm(p=norm)) < gtol:
            return k
        opt.zero_grad()
        est.estimate(model, obj)
        opt.step()
    return None


def reference(method: str, build: Builder, gtol: float) -> tuple[int, bool]:
    fun, hess, hessp, x0 = _flat(build)
    if method == "trust-exact":
        r = minimize(fun, x0, jac=True, hess=hess, method=method, options={"gtol": gtol, "maxiter": 3000})
    elif method == "L-BFGS-B":
        options = {"gtol": gtol, "maxcor": 10, "ftol": 0.0, "maxiter": 5000}
        r = minimize(fun, x0, jac=True, method=method, options=options)
    else:  # Newton-CG stops on the step size; a tiny xtol makes it run to the same accuracy
        r = minimize(fun, x0, jac=True, hessp=hessp, method=method, options={"xtol": 1e-14, "maxiter": 3000})
    return int(r.nit), bool(r.success)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gtol", type=float, default=1e-8)
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lines = [
        f"Iterations to ‖∇f‖ < {args.gtol:g} (L-BFGS pairs: max-norm), from the same start",
        "",
        "| problem | newton | trust-exact | lbfgs | L-BFGS-B | hessian-free | Newton-CG | cubic-newton |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, build in PROBLEMS.items():
        cells = []
        for name, options, method, norm in PAIRS:
            k = ours(name, options, build, args.gtol, norm)
            cells.append("–" if k is None else str(k))
            if method is not None:
                nit, ok = reference(method, build, args.gtol)
                cells.append(f"{nit}" + ("" if ok else " (not converged)"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    lines += ["", "Command: `python benchmarks/scipy_crosscheck.py`", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
