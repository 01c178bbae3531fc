"""Evolution strategies (``es``, ``eggroll``): population throughput against inference throughput.

MLP 784-256-256-10 (the P1 MLP), float32, CPU. An ES step with a population of ``N`` (``N/2`` antithetic pairs)
evaluates ``N·B`` samples; inference evaluates ``B`` per forward. Throughput ratio = (``N·B`` / median step
time) / (``B`` / median time of one plain forward + loss) = ``N`` forwards' time / step time, both timed in the
same run (one step, then ``N`` forwards, repeated). The step is the whole ``estimate()``: noise, the
perturbed evaluations (the linear fast path of ``unigrad.core.probe``, which shares the first layer's
unperturbed-input product), fitness shaping and the combination into ``.grad``. Goal: ≥ 0.8 for populations
of 256 to 4,096.

``--method eggroll`` times EGGROLL instead (rank-r perturbations, the population in one batched forward:
``unigrad.zeroth.eggroll``; rank ``--rank``, default 1), at populations of 64 to 4,096 by default.

    .venv/bin/python benchmarks/es_throughput.py [--threads 2] [--batch 256] [--population 256 1024 4096]
    .venv/bin/python benchmarks/es_throughput.py --method eggroll

Prints a table and writes ``benchmarks/results/es_throughput.json`` (``eggroll_throughput.json`` for eggroll;
``--out`` to change).
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
    ap.add_argument("--population", type=int, nargs="+", default=None)
    ap.add_argument("--method", choices=["es", "eggroll"], default="es")
    ap.add_argument("--rank", type=int, default=1, help="eggroll's rank r")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    eggroll = args.method == "eggroll"
    populations = args.population or ([64, 256, 1024, 4096] if eggroll else [256, 1024, 4096])
    out = args.out or (RESULTS.with_name("eggroll_throughput.json") if eggroll else RESULTS)
    torch.set_num_threads(args.threads)
    model, x, y = build("mlp", args.batch)
    objective = unigrad.supervised(F.cross_entropy, x, y)
    rows = []
    head = f"{'population':>10} {'step s':>8} {'N fwd s':>8} {'samples/s ES':>13} {'samples/s inference':>20}"
    print(head, f"{'ratio':>6}")
    for n in populations:
        options = {"rank": args.rank} if eggroll else {}
        est = unigrad.make_estimator(args.method, probes=n // 2, sigma=0.02, seed=0, **options)

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
        if eggroll:  # also against inference of the same batched shape: the population's rows in the same chunks
            copies = min(n, 2 * est._pairs_per_chunk(objective, [(m, {}) for m in model], []))
            big_x, big_y = x.repeat(copies, 1), y.repeat(copies)

            def batched(n: int = n, copies: int = copies, bx: torch.Tensor = big_x, by: torch.Tensor = big_y) -> None:
                with torch.no_grad():
                    for _ in range(n // copies):
                        F.cross_entropy(model(bx), by)

            s2, b = interleaved(lambda est=est: est.estimate(model, objective), batched, args.repeats, warmup=1)
            row.update(batched_rows=copies * args.batch, batched_inference_s=b, ratio_to_batched=b / s2)
        rows.append(row)
        extra = f"  (batched inference of {row['batched_rows']} rows: {row['ratio_to_batched']:.2f})" if eggroll else ""
        print(
            f"{n:>10} {s:8.3f} {f:8.3f} {row['es_samples_per_s']:13.0f} {row['inference_samples_per_s']:20.0f} "
            f"{row['ratio']:6.2f}{extra}",
            flush=True,
        )
    setup = {"model": "MLP 784-256-256-10", "batch": args.batch, "dtype": "float32", "device": "cpu"}
    payload = {
        "goal": f"{args.method} population throughput / inference throughput >= 0.8",
        "setup": {**setup, "rank": args.rank} if eggroll else setup,
        "repeats": args.repeats,
        "rows": rows,
    }
    write_results(out, f"{args.method}_throughput", payload)


if __name__ == "__main__":
    main()
