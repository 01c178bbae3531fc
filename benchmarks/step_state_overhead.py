"""What the step contract for buffers and dropout costs (``unigrad.core.step_state``).

One ``spsa`` step (q = 1: two forwards) with the contract, against the same step with it switched off,
interleaved in the same run, medians over repeats, one thread:

- MLP 784-256-256-10, batch 256 (no buffers, no dropout): the generator save/seed/restore and the
  forward pre-hook;
- MLP 64-32-10 with BatchNorm1d, batch 64: also the buffer copies, the per-call reset and the mean.

    .venv/bin/python benchmarks/step_state_overhead.py [--repeats 201]

Prints the ratios (with / without); the cost is per step, so it shrinks relative to the step as the
probes (2q forwards) grow.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import unigrad
import unigrad.core.estimator as estimator_module


class _Off:
    """Stands in for StepState: no buffer rules, no generator seeding."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _cases() -> list[tuple[str, nn.Module, int]]:
    g = torch.Generator().manual_seed(0)
    big = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    small = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    for m in (big, small):
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return [("MLP 784-256-256-10, batch 256", big, 256), ("MLP 64-32-10 + BatchNorm1d, batch 64", small, 64)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=201)
    args = ap.parse_args()
    torch.set_num_threads(1)
    real = estimator_module.StepState
    g = torch.Generator().manual_seed(1)
    try:
        for name, model, batch in _cases():
            x = torch.randn(batch, model[0].in_features, generator=g)
            y = torch.randint(0, 10, (batch,), generator=g)
            objective = unigrad.supervised(F.cross_entropy, x, y)
            est = unigrad.make_estimator("spsa", probes=1)
            times: dict[str, list[float]] = {"with": [], "without": []}
            for _ in range(args.repeats):
                for key, guard in (("with", real), ("without", _Off)):
                    estimator_module.StepState = guard  # type: ignore[misc]
                    t0 = time.perf_counter()
                    est.estimate(model, objective)
                    times[key].append(time.perf_counter() - t0)
            with_, without = statistics.median(times["with"]), statistics.median(times["without"])
            print(f"{name}: {without * 1e3:.3f} ms a step without, {with_ * 1e3:.3f} ms with: {with_ / without:.3f}")
    finally:
        estimator_module.StepState = real  # type: ignore[misc]


if __name__ == "__main__":
    main()
