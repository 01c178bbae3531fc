"""Probe-parallel zeroth-order steps on 1 and 2 processes: probes per second, bytes, and a cost model.

Task ``fashion-mlp`` (Fashion-MNIST, MLP 784-256-256-10, d = 269,322; falls back to ``mnist1d-mlp``,
and says so, when Fashion-MNIST is not installed), batch 256, float32, CPU, one thread per process,
Gloo over localhost. For each probe count ``q`` the script launches ``W = 1`` (no exchange: the
plain estimator) and ``W = 2`` processes (``TorchExchange``: each evaluates its block of probes, the
losses are all-gathered, every process combines all ``q`` probes), alternating the two for
``--rounds`` rounds; each launch times ``--steps`` calls of ``estimate()`` (all processes released
together by a barrier before each), and the figure kept is the median over rounds of the per-launch
medians. Probes/s = q / t_step.

It also measures, in the same run, the pieces of the model

    t_step(W, q) = t_probe · ⌈q/W⌉ + t_allgather(W, bytes) + t_combine(q, d)

``t_probe`` (one antithetic probe: two forwards of the batch, from the 1-process step minus its
combine), ``t_allgather`` (median of back-to-back all-gathers of the ``(2, ⌈q/2⌉)`` float64 table
between the two processes) and ``t_combine`` (regenerating and summing q directions, ``Σ c_i u_i``,
timed for several q to fit a cost per direction element, for the shared noise table and for the
per-key generator). The model's prediction for W = 2 is printed next to the measurement, and the
model is then projected to 1,000 workers for this MLP and for a 100M-parameter model under stated
assumptions (see ``docs/distributed.md``).

    .venv/bin/python benchmarks/distributed_probes.py [--q 16 64] [--rounds 3] [--steps 9]

Writes ``benchmarks/results/distributed/distributed_probes.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "distributed"
BATCH = 256
SIGMA = 0.02

# assumptions of the projection (documented in docs/distributed.md)
LATENCY_S = 10e-6  # per message hop of a small all-gather on a datacenter network (InfiniBand/RoCE class)
BANDWIDTH_BPS = 10e9  # bytes/s per link (100 Gb/s class)
WORKERS = 1000


def _task_name() -> tuple[str, str]:
    from unigrad.core.errors import UnigradError
    from unigrad.data.tasks import get_task

    try:
        get_task("fashion-mlp").data()
        return "fashion-mlp", ""
    except UnigradError as e:
        return "mnist1d-mlp", f"Fashion-MNIST missing ({e}); fell back to mnist1d-mlp"


# ---------------------------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    from unigrad import make_estimator
    from unigrad.core.exchange import gather_bytes
    from unigrad.core.objective import supervised
    from unigrad.core.params import trainable
    from unigrad.core.probe import probes_per_chunk
    from unigrad.data.tasks import get_task
    from unigrad.zeroth._probing import combine

    task = get_task(args.task)
    data = task.data()
    x, y = data.x_train[:BATCH], data.y_train[:BATCH]
    objective = supervised(task.loss_fn, x, y)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    exchange, rank = None, 0
    if world > 1:
        from unigrad.distributed import TorchExchange, init

        rank, world = init("gloo", timeout=120.0)
        exchange = TorchExchange(timeout=120.0)

    def barrier() -> None:
        if exchange is not None:
            exchange.all_gather(torch.zeros(1))

    out: dict = {"world": world, "rank": rank, "steps": {}, "allgather": {}, "combine": {}}
    for q in args.q:
        model = task.build_model(0)
        est = make_estimator(args.method, probes=q, sigma=SIGMA, seed=0, exchange=exchange)
        times, cpu, sent = [], [], []
        for s in range(args.steps + 2):  # two warm-up steps
            barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            e = est.estimate(model, objective)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if s >= 2:
                times.append(dt)
                cpu.append(dc)
                sent.append(e.cost.bytes)
        cpu_s = statistics.median(cpu)
        if exchange is not None:  # the busiest process's CPU time
            cpu_s = float(exchange.all_gather(torch.tensor([cpu_s], dtype=torch.float64)).max())
        out["steps"][q] = {"median_s": statistics.median(times), "cpu_s": cpu_s, "times": times, "bytes": sent}
        if exchange is not None:  # the all-gather alone, back to back after one barrier
            table = torch.zeros(2, math.ceil(q / world), dtype=torch.float64)
            reps = []
            for _ in range(5):
                barrier()
                t0 = time.perf_counter()
                for _ in range(50):
                    exchange.all_gather(table)
                reps.append((time.perf_counter() - t0) / 50)
            out["allgather"][q] = {"median_s": statistics.median(reps), "bytes": gather_bytes(q, 2, world)}
    if world == 1:  # t_combine(q) for the table and the generator
        params = trainable(task.build_model(0))
        d = sum(p.numel() for _, p in params)
        for source in ("auto", "generator"):
            est = make_estimator(args.method, probes=1, sigma=SIGMA, seed=0, noise_source=source)
            rows = {}
            for q in sorted(set(args.combine_q) | set(args.q)):
                if source == "generator" and q > 16:
                    continue
                chunk = probes_per_chunk(params, 2, None, est.memory_budget)
                coeffs = torch.randn(q, dtype=torch.float64)
                reps = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    combine(params, est.noise, 0, 0, coeffs, chunk)
                    reps.append(time.perf_counter() - t0)
                rows[q] = statistics.median(reps)
            out["combine"][source] = rows
        out["d"] = d
    if rank == 0:
        Path(args.out).write_text(json.dumps(out))
    if exchange is not None:
        from unigrad.distributed import shutdown

        barrier()
        shutdown()


# ---------------------------------------------------------------------------------------------- launcher
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, args: argparse.Namespace, task: str) -> dict:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    port = _free_port()
    cmd = [sys.executable, __file__, "--worker", "--task", task, "--method", args.method, "--out", str(out)]
    cmd += ["--steps", str(args.steps), "--q", *map(str, args.q), "--combine-q", *map(str, args.combine_q)]
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(cmd, env=env))
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"a worker of the {world}-process launch failed")
    res = json.loads(out.read_text())
    out.unlink()
    return res


def fit_slope(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares ``t = a + b·q``; returns ``(a, b)``."""
    qs, ts = list(points), list(points.values())
    mq, mt = statistics.fmean(qs), statistics.fmean(ts)
    b = sum((q - mq) * (t - mt) for q, t in zip(qs, ts)) / sum((q - mq) ** 2 for q in qs)
    return mt - b * mq, b


def allgather_model(world: int, nbytes_per_rank: float) -> float:
    """Recursive-doubling all-gather: log2(W) latency hops, (W−1)·block bytes through each link."""
    return math.ceil(math.log2(world)) * LATENCY_S + (world - 1) * nbytes_per_rank / BANDWIDTH_BPS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--task", default=None)
    ap.add_argument("--method", default="es", choices=["es", "spsa", "rge"])
    ap.add_argument("--q", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--combine-q", type=int, nargs="+", default=[4, 16, 64, 256])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=9)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    from unigrad.core.exchange import ddp_bytes, gather_bytes

    task, note = (args.task, "") if args.task else _task_name()
    if note:
        print(note)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for r in range(args.rounds):
        for world in (1, 2):
            runs[world].append(launch(world, args, task))
            print(f"round {r + 1}/{args.rounds}: {world} process(es) done", flush=True)

    def med(world: int, q: int, key: str = "median_s") -> float:
        return statistics.median(run["steps"][str(q)][key] for run in runs[world])

    comb = {
        s: {int(q): statistics.median(run["combine"][s][q] for run in runs[1]) for q in runs[1][0]["combine"][s]}
        for s in ("auto", "generator")
    }
    d = runs[1][0]["d"]
    c_table = fit_slope(comb["auto"])[1] / d  # seconds per direction element (slope per probe / d)
    c_gen = fit_slope(comb["generator"])[1] / d
    rows = []
    for q in args.q:
        t1, t2 = med(1, q), med(2, q)
        ag = statistics.median(run["allgather"][str(q)]["median_s"] for run in runs[2])
        t_probe = (t1 - comb["auto"][q]) / q
        predicted = t_probe * math.ceil(q / 2) + ag + comb["auto"][q]
        sent = {b for run in runs[2] for b in run["steps"][str(q)]["bytes"]}
        c1, c2 = med(1, q, "cpu_s"), med(2, q, "cpu_s")
        rows.append(
            {
                "q": q,
                "t_step_1": t1,
                "t_step_2": t2,
                "cpu_step_1": c1,
                "cpu_step_2": c2,
                "cpu_speedup": c1 / c2,
                "probes_per_s_1": q / t1,
                "probes_per_s_2": q / t2,
                "speedup": t1 / t2,
                "t_probe": t_probe,
                "t_combine": comb["auto"][q],
                "t_allgather_2": ag,
                "predicted_t_step_2": predicted,
                "bytes_per_step_2": sorted(sent),
                "bytes_theory_2": gather_bytes(q, 2, 2),
                "ddp_bytes_2": ddp_bytes(d, 2),
            }
        )

    # projection: q = WORKERS probes (one antithetic probe per worker), this MLP and a 100M-parameter model
    t_probe_small = statistics.median(r["t_probe"] for r in rows)
    projections = []
    for label, dd in ((task, d), ("100M-parameter model", 100_000_000)):
        t_probe = t_probe_small * dd / d  # forward cost ∝ d at the same batch (dense layers, one core per worker)
        for q in (WORKERS, 8 * WORKERS):
            for source, c in (("table", c_table), ("generator", c_gen)):
                per_worker = t_probe * math.ceil(q / WORKERS)
                ag = allgather_model(WORKERS, 2 * math.ceil(q / WORKERS) * 8)
                t_comb = c * q * dd
                t_step = per_worker + ag + t_comb
                single = t_probe * q + t_comb
                projections.append(
                    {
                        "model": label,
                        "d": dd,
                        "q": q,
                        "noise": source,
                        "t_probes_s": per_worker,
                        "t_allgather_s": ag,
                        "t_combine_s": t_comb,
                        "t_step_s": t_step,
                        "probes_per_s": q / t_step,
                        "speedup_vs_1": single / t_step,
                        "bytes_per_step": gather_bytes(q, 2, WORKERS),
                        "ddp_bytes_per_step": ddp_bytes(dd, WORKERS),
                    }
                )
    result = {
        "task": task,
        "note": note,
        "method": args.method,
        "batch": BATCH,
        "d": d,
        "cpu": _cpu(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rounds": args.rounds,
        "steps": args.steps,
        "rows": rows,
        "combine": {s: {str(q): t for q, t in v.items()} for s, v in comb.items()},
        "combine_s_per_element": {"table": c_table, "generator": c_gen},
        "assumptions": {"latency_s": LATENCY_S, "bandwidth_Bps": BANDWIDTH_BPS, "workers": WORKERS},
        "projections": projections,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "distributed_probes.json").write_text(json.dumps(result, indent=1))
    md = _markdown(result)
    (RESULTS / "distributed_probes.md").write_text(md)
    print(md)


def _cpu() -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import cpu_name

    return cpu_name()


def _markdown(r: dict) -> str:
    lines = [
        f"# Probe-parallel {r['method']} on {r['task']} (d = {r['d']:,}, batch {r['batch']})",
        "",
        f"{r['cpu']}, torch {r['torch']}, one thread per process, Gloo on localhost; medians of "
        f"{r['rounds']} rounds × {r['steps']} steps; CPU s/step: the busiest process's CPU time per step "
        f"(process_time), which contention for the cores does not inflate. {r['note']}",
        "",
        "| q | t_step 1 proc (ms) | t_step 2 procs (ms) | probes/s 1 | probes/s 2 | speed-up | model 2 procs (ms) "
        "| CPU s/step 1 → 2 (ms) | CPU ratio | t_probe (ms) | t_combine (ms) | t_allgather (µs) "
        "| bytes/step (theory) | DDP bytes/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['q']} | {1e3 * x['t_step_1']:.1f} | {1e3 * x['t_step_2']:.1f} | {x['probes_per_s_1']:.0f} "
            f"| {x['probes_per_s_2']:.0f} | {x['speedup']:.2f}× | {1e3 * x['predicted_t_step_2']:.1f} "
            f"| {1e3 * x['cpu_step_1']:.1f} → {1e3 * x['cpu_step_2']:.1f} | {x['cpu_speedup']:.2f}× "
            f"| {1e3 * x['t_probe']:.2f} | {1e3 * x['t_combine']:.2f} | {1e6 * x['t_allgather_2']:.0f} "
            f"| {x['bytes_per_step_2']} ({x['bytes_theory_2']}) | {x['ddp_bytes_2']:,.0f} |"
        )
    c = r["combine_s_per_element"]
    lines += [
        "",
        f"Combine cost per direction element: {1e9 * c['table']:.3f} ns (noise table), "
        f"{1e9 * c['generator']:.3f} ns (per-key generator).",
        "",
        f"## Projection to {r['assumptions']['workers']:,} workers (q probes, ⌈q/W⌉ per worker)",
        "",
        f"Latency {1e6 * r['assumptions']['latency_s']:.0f} µs per hop, {r['assumptions']['bandwidth_Bps'] / 1e9:.0f} "
        "GB/s links, recursive-doubling all-gather; forward time ∝ d; every worker regenerates all q directions.",
        "",
        "| model | q | noise | probes (s) | all-gather (s) | combine (s) | step (s) | probes/s | speed-up vs 1 "
        "| bytes/step | DDP bytes/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in r["projections"]:
        lines.append(
            f"| {p['model']} | {p['q']} | {p['noise']} | {p['t_probes_s']:.3g} | {p['t_allgather_s']:.2g} "
            f"| {p['t_combine_s']:.3g} | {p['t_step_s']:.3g} | {p['probes_per_s']:.3g} | {p['speedup_vs_1']:.3g}× "
            f"| {p['bytes_per_step']:,} | {p['ddp_bytes_per_step']:,.0f} |"
        )
    lines += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
