"""Per-call overhead on a tiny model: what one ``estimate()`` costs beyond the method's arithmetic.

``nn.Linear(16, 8)``, one sample, mean-squared error, one thread, float32, CPU: the regime of online learning
rules and the Werfel and Hiratani experiments, which make millions of calls on models with a few hundred
parameters. Rows, each the median over rounds of the mean time of a block of calls; every round times one block
of every row in turn, so all rows see the same load:

- ``hand-written np``: a node-perturbation step written directly: clean forward ``F.linear``, Gaussian node
  noise from a ``torch.Generator``, noisy forward, ``δL/σ²·ε·xᵀ`` and ``δL/σ²·ε`` (the direction, not applied);
- ``two forwards``: ``F.mse_loss(model(x), y)`` twice under ``torch.no_grad()``;
- ``two objective calls``: the :func:`unigrad.supervised` objective called twice (module call, per-sample loss
  and its checks): the floor of any two-pass method run through the library's objective;
- one row per estimator (``np``, ``wp``, ``spsa``, ``rge``, ``mezo``; one probe, σ = 1e-3): ``estimate()``,
  which also writes ``.grad``.

Goal: ``np`` / ``hand-written np`` ≤ 1.5.

    .venv/bin/python benchmarks/call_overhead.py [--repeats 15] [--calls 500]

Prints a table and writes ``benchmarks/results/call_overhead.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import unigrad
from _common import write_results

RESULTS = Path(__file__).parent / "results" / "call_overhead.json"
SIGMA = 1e-3


def per_call_us(rows: dict[str, Callable[[], object]], calls: int, repeats: int) -> dict[str, float]:
    """Median µs per call of each row: every round times a block of ``calls`` calls of every row in turn, so load
    changes on a shared machine hit all rows alike."""
    for fn in rows.values():
        for _ in range(calls // 10):
            fn()
    blocks: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(repeats):
        for name, fn in rows.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            blocks[name].append((time.perf_counter() - t0) / calls * 1e6)
    return {name: statistics.median(b) for name, b in blocks.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--methods", nargs="+", default=["np", "wp", "spsa", "rge", "mezo"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(16, 8)
    x, y = torch.randn(1, 16, generator=g), torch.randn(1, 8, generator=g)
    objective = unigrad.supervised(F.mse_loss, x, y)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    noise = torch.Generator().manual_seed(1)

    def hand_np() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            h = F.linear(x, w, b)
            clean = ((h - y) ** 2).mean(1)
            eps = torch.randn(1, 8, generator=noise) * SIGMA
            noisy = ((h + eps - y) ** 2).mean(1)
            signal = ((noisy - clean) / SIGMA**2).view(-1, 1) * eps
            return signal.T @ x, signal.sum(0)

    def two_forwards() -> None:
        with torch.no_grad():
            for _ in range(2):
                F.mse_loss(model(x), y)

    def two_objective_calls() -> None:
        with torch.no_grad():
            for _ in range(2):
                objective(model)

    calls: dict[str, Callable[[], object]] = {
        "hand-written np": hand_np,
        "two forwards": two_forwards,
        "two objective calls": two_objective_calls,
    }
    for method in args.methods:
        est = unigrad.make_estimator(method, probes=1, sigma=SIGMA, seed=0)
        calls[method] = lambda est=est: est.estimate(model, objective)
    rows = per_call_us(calls, args.calls, args.repeats)
    hand = rows["hand-written np"]
    print(f"{'row':22} {'us/call':>8} {'/ hand np':>10}")
    for name, us in rows.items():
        print(f"{name:22} {us:8.1f} {us / hand:10.2f}")
    payload = {
        "goal": "np / hand-written np <= 1.5",
        "setup": {"model": "Linear(16, 8)", "batch": 1, "dtype": "float32", "device": "cpu"},
        "us_per_call": rows,
        "ratio_to_hand_np": {k: v / hand for k, v in rows.items()},
    }
    write_results(args.out, "call_overhead", payload)


if __name__ == "__main__":
    main()
