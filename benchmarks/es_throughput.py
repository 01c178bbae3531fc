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
from pathlib import Path

import torch
import torch.nn.functional as F

import unigrad
from _common import interleaved, write_results
from p1_step_time import build

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
    model, x, y = build("mlp", args.batch)
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

        s, f = interleaved(lambda est=est: est.estimate(model, objective), forwards, args.repeats, warmup=1)
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
    payload = {
        "goal": "ES population throughput / inference throughput >= 0.8",
        "setup": {"model": "MLP 784-256-256-10", "batch": args.batch, "dtype": "float32", "device": "cpu"},
        "repeats": args.repeats,
        "rows": rows,
    }
    write_results(args.out, "es_throughput", payload)


if __name__ == "__main__":
    main()
