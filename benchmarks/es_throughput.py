"""Evolution strategies: population throughput against inference throughput.

MLP 784-256-256-10 (the P1 MLP), float32, CPU. An ES step with a population of ``N`` (``N/2`` antithetic pairs)
evaluates ``N·B`` samples; inference evaluates ``B`` per forward. Throughput ratio = (``N·B`` / median step
time) / (``B`` / median time of one plain forward + loss) = ``N`` forwards' time / step time, both timed in the
same run (one step, then ``N`` forwards, repeated). The step is the whole ``estimate()``: noise, the
perturbed evaluations (the linear fast path of ``unigrad.core.probe``, which shares the first layer's
unperturbed-input product), fitness shaping and the combination into ``.grad``. Goal: ≥ 0.8 for populations
of 256 to 4,096.

    .venv/bin/python benchmarks/es_throughput.py [--threads 2] [--batch 256] [--population 256 1024 4096]

Prints a table and writes ``benchmarks/results/es_throughput.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import unigrad
from _common import cpu_name

RESULTS = Path(__file__).parent / "results" / "es_throughput.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--population", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    x = torch.randn(args.batch, 784, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    objective = unigrad.supervised(F.cross_entropy, x, y)
    rows = []
    head = f"{'population':>10} {'step s':>8} {'N fwd s':>8} {'samples/s ES':>13} {'samples/s inference':>20}"
    print(head, f"{'ratio':>6}")
    for n in args.population:
        est = unigrad.make_estimator("es", probes=n // 2, sigma=0.02, seed=0)

        def forwards(n: int = n) -> None:
            with torch.no_grad():
                for _ in range(n):
                    F.cross_entropy(model(x), y)

        est.estimate(model, objective)  # warm-up
        forwards(min(n, 64))
        t_step, t_fwd = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            est.estimate(model, objective)
            t1 = time.perf_counter()
            forwards()
            t2 = time.perf_counter()
            t_step.append(t1 - t0)
            t_fwd.append(t2 - t1)
        s, f = statistics.median(t_step), statistics.median(t_fwd)
        row = {
            "population": n,
            "step_s": s,
            "forwards_s": f,
            "es_samples_per_s": n * args.batch / s,
            "inference_samples_per_s": n * args.batch / f,
            "ratio": f / s,
        }
        rows.append(row)
        print(
            f"{n:>10} {s:8.3f} {f:8.3f} {row['es_samples_per_s']:13.0f} {row['inference_samples_per_s']:20.0f} "
            f"{row['ratio']:6.2f}",
            flush=True,
        )
    out = {
        "benchmark": "es_throughput",
        "goal": "ES population throughput / inference throughput >= 0.8",
        "setup": {"model": "MLP 784-256-256-10", "batch": args.batch, "dtype": "float32", "device": "cpu"},
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": cpu_name(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
