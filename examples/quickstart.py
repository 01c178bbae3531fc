"""Train one model three ways with the same torch.optim optimizer: backprop, SPSA, and memory-lean MeZO.

    .venv/bin/python examples/quickstart.py

Every estimator writes ``.grad`` and reports what it cost; the optimizer step is plain PyTorch.
MeZO with ``write_grad=False`` instead returns its direction as noise keys and is applied by
``ReplaySGD``, which regenerates the noise: no ``.grad``, memory of inference.

It runs on one torch thread (``threads=1``), as ``unigrad train`` and ``unigrad.train.train`` do by
default: this small model gains nothing from more, and torch's default (one thread per core) is many
times slower when other processes share the cores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import unigrad
from unigrad.data.tasks import get_task
from unigrad.optim import ReplaySGD


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def main(steps: int = 300, batch: int = 64, threads: int | None = 1, every: int = 50) -> dict[str, float]:
    """Train with each method for ``steps`` steps, printing the loss every ``every`` steps.

    ``threads``: torch's intra-op threads while this runs (None: leave torch's setting alone).
    """
    before = torch.get_num_threads()
    if threads is not None:
        # one thread: a model this small runs no faster on more, and far slower when the cores are busy
        torch.set_num_threads(threads)
    try:
        return _run(steps, batch, every)
    finally:
        torch.set_num_threads(before)


def _run(steps: int, batch: int, every: int) -> dict[str, float]:
    print(f"{steps} steps per method, {torch.get_num_threads()} torch thread(s)")
    task = get_task("digits-mlp")
    data = task.data()
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))
    results = {}
    for name, options, lr in [
        ("backprop", {}, 3e-3),
        ("spsa", {"probes": 16, "sigma": 1e-3}, 3e-3),
        ("mezo", {"probes": 8, "sigma": 1e-3, "write_grad": False}, 3e-2),
    ]:
        model = task.build_model(seed=0)
        estimator = unigrad.make_estimator(name, seed=0, **options)
        lean = options.get("write_grad") is False
        optimizer = ReplaySGD(model.parameters(), lr=lr) if lean else torch.optim.Adam(model.parameters(), lr=lr)
        forward_equivalents = 0.0
        for step in range(steps):
            idx = order[(step * batch) % len(order) :][:batch]
            objective = unigrad.supervised(F.cross_entropy, data.x_train[idx], data.y_train[idx])
            optimizer.zero_grad()
            est = estimator.estimate(model, objective)
            if lean:
                optimizer.step(est.info["direction"])
            else:
                optimizer.step()
            forward_equivalents += est.cost.forward_equivalents
            if (step + 1) % every == 0 and step + 1 < steps:
                print(f"{name:9s} step {step + 1:4d}/{steps}  batch loss {est.loss:.3f}", flush=True)
        results[name] = accuracy(model, data.x_test, data.y_test)
        print(f"{name:9s} test accuracy {results[name]:.3f}  forward-pass equivalents {forward_equivalents:,.0f}")
    return results


if __name__ == "__main__":
    main()
