"""The modern zeroth-order family on one task at equal forward passes: MeZO, Sparse MeZO, LOZO, SubZero, HiZOO,
FZOO, MeZO-SVRG and EGGROLL, each a registered estimator behind the same contract.

    .venv/bin/python examples/zo_family.py

Every method writes ``.grad`` (LOZO here in its memory-lean form: a compressed direction that ``ReplaySGD``
replays) and counts its forward passes, so each trains until the same budget of forward-pass equivalents is
spent: FZOO's steps cost N + 1 forwards, HiZOO's 2q + 1, MeZO-SVRG's 4q (and 2q on its anchor batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import unigrad
from unigrad.data.tasks import get_task
from unigrad.optim import ReplaySGD

METHODS: list[tuple[str, dict, str, float]] = [
    ("mezo", {"probes": 4}, "adam", 3e-3),
    ("sparse-mezo", {"probes": 4, "sparsity": 0.5}, "adam", 3e-3),
    ("lozo", {"probes": 4, "rank": 2, "lazy": 20, "write_grad": False}, "replay-sgd", 1e-2),
    ("subzero", {"probes": 4, "rank": 4, "refresh": 50}, "adam", 3e-3),
    ("hizoo", {"probes": 4, "hessian_smooth": 1e-3}, "adam", 3e-3),
    ("fzoo", {"probes": 8}, "sgd", 3e-2),
    ("mezo-svrg", {"probes": 4, "refresh": 10}, "adam", 3e-3),
    ("eggroll", {"probes": 4, "rank": 1}, "adam", 3e-3),
]


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def main(budget: float = 2e5, batch: int = 64, threads: int | None = 1) -> dict[str, float]:
    """Train each method on ``digits-mlp`` until ``budget`` forward-pass equivalents are spent; test accuracies."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(budget, batch)
    finally:
        torch.set_num_threads(before)


def _run(budget: float, batch: int) -> dict[str, float]:
    task = get_task("digits-mlp")
    data = task.data()
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))
    results = {}
    for name, options, optimizer_name, lr in METHODS:
        model = task.build_model(seed=0)
        estimator = unigrad.make_estimator(name, seed=0, **options)
        if name == "mezo-svrg":  # its anchor: a larger batch of training data
            estimator.set_anchor_data(data.x_train[:512], data.y_train[:512], F.cross_entropy)
        kind = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "replay-sgd": ReplaySGD}[optimizer_name]
        optimizer = kind(model.parameters(), lr=lr)
        spent, step = 0.0, 0
        while spent < budget:
            idx = order[(step * batch) % len(order) :][:batch]
            objective = unigrad.supervised(F.cross_entropy, data.x_train[idx], data.y_train[idx])
            optimizer.zero_grad()
            est = estimator.estimate(model, objective)
            optimizer.step(est.info["direction"]) if optimizer_name == "replay-sgd" else optimizer.step()
            spent += est.cost.forward_equivalents
            step += 1
        results[name] = accuracy(model, data.x_test, data.y_test)
        print(f"{name:12s} test accuracy {results[name]:.3f}  {step:4d} steps  {spent:,.0f} forward-pass equivalents")
    return results


if __name__ == "__main__":
    main()
