"""P2 — MeZO's memory is that of inference.

Peak tensor memory (``unigrad.core.memory.peak_memory``: the largest number of bytes of tensor storage
held at once, counting everything allocated inside the measured function: model, optimizer, data,
activations, noise chunks, fix-up lists) of three training steps, against one inference forward:

(a) MLP 784-256-256-10, batch 256: MeZO (``write_grad=False`` + ``ReplaySGD``, q = 1) / inference.
    Goal ≤ 1.1. Also MeZO with a dense ``.grad`` + ``torch.optim.SGD``, and MeZO reading a shared noise
    table (the table, 4·table_size bytes, is built inside the measurement), for honesty.
(b) MLP 784-2048-2048-10, batch 256: backprop + Adam / MeZO (memory-lean). Goal ≥ 3.

Also the time of one MeZO step relative to 2q plain forwards (medians over repeats, same run),
and the fraction of perturbed entries that needed a fix-up to restore θ bitwise, and two floors under any
in-place step (:func:`floors`: the paper's inexact sequence with the noise already in memory, and generating the
noise alone). Both also for
``perturb="forward"`` (θ never written, so nothing to restore: bitwise the same step), from the generator and
from a table (for (b) a 4 MiB one, its largest weight read in row windows).

With ``--device cuda`` the peaks are the caching allocator's (``torch.cuda.max_memory_allocated``
after a warm-up run); the profiler's replay on CUDA is stored beside them for comparison.

    .venv/bin/python benchmarks/p2_memory.py [--threads N] [--repeats R] [--device cuda]

Prints a table and writes ``benchmarks/results/p2_memory.json`` (``p2_memory_cuda.json`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import unigrad
from unigrad.core import rng
from unigrad.core.memory import peak_memory
from unigrad.optim import ReplaySGD
from unigrad.zeroth.mezo import MeZO

BATCH = 256
STEPS = 3
TABLE_B = 1 << 20  # a 4 MiB table for (b): its 2048 × 2048 weight is read in row windows
RESULTS = Path(__file__).parent / "results" / "p2_memory.json"


DEVICE = torch.device("cpu")


def build(hidden: int) -> tuple[nn.Module, unigrad.Objective]:
    """MLP 784-h-h-10 (PyTorch's default initialisation) and a fixed batch of 256, on ``DEVICE``."""
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )
    x = torch.randn(BATCH, 784, generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    return model.to(DEVICE), unigrad.supervised(F.cross_entropy, x.to(DEVICE), y.to(DEVICE))


def inference(hidden: int) -> Callable[[], None]:
    def run() -> None:
        model, obj = build(hidden)
        with torch.no_grad():
            obj(model)

    return run


def mezo_lean(hidden: int, info: dict, **options) -> Callable[[], None]:
    def run() -> None:
        model, obj = build(hidden)
        est = MeZO(probes=1, write_grad=False, seed=0, **options)
        opt = ReplaySGD(model.parameters(), lr=1e-3)
        for _ in range(STEPS):
            e = est.estimate(model, obj)
            opt.step(e.info["direction"])
            info.setdefault("fixup_fraction", []).append(e.info["fixup_fraction"])
            info.setdefault("fixup_bytes", []).append(e.info["fixup_bytes"])

    return run


def mezo_dense(hidden: int) -> Callable[[], None]:
    def run() -> None:
        model, obj = build(hidden)
        est = MeZO(probes=1, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        for _ in range(STEPS):
            opt.zero_grad()
            est.estimate(model, obj)
            opt.step()

    return run


def backprop_adam(hidden: int) -> Callable[[], None]:
    def run() -> None:
        model, obj = build(hidden)
        est = unigrad.make_estimator("backprop")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(STEPS):
            opt.zero_grad()
            est.estimate(model, obj)
            opt.step()

    return run


PROFILER_CUDA: dict[int, int] = {}


def peak(fn: Callable[[], None], fresh_table: bool = False) -> int:
    """Peak bytes of ``fn()``: ``peak_memory`` on the CPU; on CUDA the caching allocator's own peak,
    after a warm-up run (cuBLAS workspaces are allocated once per process, not per run)."""
    if DEVICE.type != "cuda":
        if fresh_table:
            rng._TABLES.clear()  # so the shared table is built, and counted, inside the measurement
        return peak_memory(fn)
    fn()
    if fresh_table:
        rng._TABLES.clear()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    allocator = torch.cuda.max_memory_allocated() - base
    if fresh_table:
        rng._TABLES.clear()
    PROFILER_CUDA[len(PROFILER_CUDA)] = peak_memory(fn, "cuda")  # for comparison only
    return allocator


def elapsed(fn: Callable[[], object]) -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def timing(hidden: int, repeats: int, **options) -> dict[str, float]:
    """Median seconds of a MeZO step (estimate + ReplaySGD, q = 1) and of 2q plain forwards."""
    model, obj = build(hidden)
    est = MeZO(probes=1, write_grad=False, seed=0, **options)
    opt = ReplaySGD(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.step(est.estimate(model, obj).info["direction"])

    def forwards() -> None:
        with torch.no_grad():
            for _ in range(2):
                obj(model)

    step(), forwards()  # warm-up
    # interleave the two measurements so that load changes on a shared machine hit both alike
    t_step, t_fwd = [], []
    for _ in range(repeats):
        t_step.append(elapsed(step))
        t_fwd.append(elapsed(forwards))
    s, f = statistics.median(t_step), statistics.median(t_fwd)
    return {"mezo_step_s": s, "two_forwards_s": f, "ratio": s / f}


def floors(hidden: int, repeats: int) -> dict[str, float]:
    """What any memory-lean (in-place) MeZO step costs at least, relative to its 2 plain forwards (medians, same
    run). ``naive_in_place``: the paper's sequence θ+σz, θ−σz, θ, then θ − η·c·z, with the noise already in
    memory (free) and no exact restore: four elementwise passes over the parameters. ``generator_noise``: only
    drawing the d normals of z from a ``torch.Generator`` four times (three sweeps and the replayed update), as
    the in-place step with ``noise_source="generator"`` must."""
    model, obj = build(hidden)
    params = [p for p in model.parameters()]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    zs = [torch.randn(p.shape, generator=g, device=DEVICE) for p in params]
    d = sum(p.numel() for p in params)

    @torch.no_grad()
    def naive() -> None:
        losses = []
        for scale in (1e-3, -2e-3, 1e-3):
            for p, z in zip(params, zs, strict=True):
                p.add_(z * scale)
            if len(losses) < 2:
                losses.append(float(obj(model).mean()))
        c = (losses[0] - losses[1]) / 2e-3
        for p, z in zip(params, zs, strict=True):
            p.add_(z, alpha=-1e-9 * c)

    def noise() -> None:
        for _ in range(4):
            torch.randn(d, generator=g, device=DEVICE)

    def forwards() -> None:
        with torch.no_grad():
            for _ in range(2):
                obj(model)

    out: dict[str, float] = {}
    for name, fn in (("naive_in_place", naive), ("generator_noise", noise)):
        fn(), forwards()
        a, b = [], []
        for _ in range(repeats):
            a.append(elapsed(fn))
            b.append(elapsed(forwards))
        out[name] = statistics.median(a) / statistics.median(b)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=15, help="timing repeats (median)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak memory of that device)")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON file (default {RESULTS}, _cuda for cuda)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    out_path = args.out or (RESULTS if DEVICE.type == "cpu" else RESULTS.with_name(f"p2_memory_{DEVICE.type}.json"))

    rows: list[tuple[str, float, str]] = []
    out: dict = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch": BATCH,
        "steps": STEPS,
    }

    # (a) small MLP: MeZO training vs inference
    info_a: dict = {}
    table_size = 1 << 18  # smallest power of two above the largest tensor (784·256 = 200 704)
    a = {
        "inference": peak(inference(256)),
        "mezo_lean": peak(mezo_lean(256, info_a)),
        "mezo_dense_grad_sgd": peak(mezo_dense(256)),
        "mezo_lean_table": peak(mezo_lean(256, {}, noise_source="table", table_size=table_size), fresh_table=True),
        "mezo_lean_forward": peak(mezo_lean(256, {}, perturb="forward")),
        "mezo_lean_forward_table": peak(
            mezo_lean(256, {}, perturb="forward", noise_source="table", table_size=table_size), fresh_table=True
        ),
        "backprop_adam": peak(backprop_adam(256)),
    }
    inf = a["inference"]
    out["a"] = {
        "model": "MLP 784-256-256-10",
        "params": sum(p.numel() for p in build(256)[0].parameters()),
        "peak_bytes": a,
        "ratio_to_inference": {k: v / inf for k, v in a.items()},
        "goal": "mezo_lean / inference <= 1.1",
        "goal_met": a["mezo_lean"] / inf <= 1.1,
        "fixup_fraction": info_a["fixup_fraction"],
        "fixup_bytes": info_a["fixup_bytes"],
        "table_bytes": 4 * table_size,
    }
    for k, v in a.items():
        rows.append((f"(a) {k}", v, f"{v / inf:.3f} x inference"))

    # (b) large MLP: backprop + Adam vs MeZO
    info_b: dict = {}
    b = {
        "inference": peak(inference(2048)),
        "mezo_lean": peak(mezo_lean(2048, info_b)),
        "mezo_dense_grad_sgd": peak(mezo_dense(2048)),
        "mezo_lean_forward": peak(mezo_lean(2048, {}, perturb="forward")),
        "mezo_lean_forward_table": peak(
            mezo_lean(2048, {}, perturb="forward", noise_source="table", table_size=TABLE_B), fresh_table=True
        ),
        "backprop_adam": peak(backprop_adam(2048)),
    }
    out["b"] = {
        "model": "MLP 784-2048-2048-10",
        "params": sum(p.numel() for p in build(2048)[0].parameters()),
        "peak_bytes": b,
        "ratio_to_inference": {k: v / b["inference"] for k, v in b.items()},
        "backprop_adam_over_mezo_lean": b["backprop_adam"] / b["mezo_lean"],
        "goal": "backprop_adam / mezo_lean >= 3",
        "goal_met": b["backprop_adam"] / b["mezo_lean"] >= 3,
        "fixup_fraction": info_b["fixup_fraction"],
        "fixup_bytes": info_b["fixup_bytes"],
    }
    for k, v in b.items():
        rows.append((f"(b) {k}", v, f"{b['backprop_adam'] / v:.2f} x less than backprop+Adam"))

    # time of a MeZO step relative to 2q plain forwards
    out["time"] = {
        "a_generator": timing(256, args.repeats),
        "a_table": timing(256, args.repeats, noise_source="table", table_size=table_size),
        "a_forward": timing(256, args.repeats, perturb="forward"),
        "a_forward_table": timing(256, args.repeats, perturb="forward", noise_source="table", table_size=table_size),
        "b_generator": timing(2048, max(3, args.repeats // 3)),
        "b_forward": timing(2048, max(3, args.repeats // 3), perturb="forward"),
        "b_forward_table": timing(
            2048, max(3, args.repeats // 3), perturb="forward", noise_source="table", table_size=TABLE_B
        ),
    }

    out["floors"] = {"a": floors(256, args.repeats), "b": floors(2048, max(3, args.repeats // 3))}

    print(
        f"P2 memory (peak tensor bytes on {out['device']} over {STEPS} steps, batch {BATCH}; "
        f"torch {torch.__version__}, {out['threads']} threads)"
    )
    print(f"{'run':34s} {'peak MiB':>10s}  ratio")
    for name, v, note in rows:
        print(f"{name:34s} {v / 2**20:10.2f}  {note}")
    met_a = "met" if out["a"]["goal_met"] else "NOT met"
    print(f"goal (a) mezo_lean/inference <= 1.1: {a['mezo_lean'] / inf:.3f} -> {met_a}")
    print(
        f"goal (b) backprop_adam/mezo_lean >= 3: {out['b']['backprop_adam_over_mezo_lean']:.2f} -> "
        f"{'met' if out['b']['goal_met'] else 'NOT met'}"
    )
    fa, fb = out["a"]["fixup_fraction"], out["b"]["fixup_fraction"]
    print(f"fix-up fraction (a): {min(fa):.4f}-{max(fa):.4f}, (b): {min(fb):.4f}-{max(fb):.4f} of perturbed entries")
    for k, t in out["time"].items():
        print(
            f"time {k}: mezo step {t['mezo_step_s'] * 1e3:.2f} ms, 2q forwards {t['two_forwards_s'] * 1e3:.2f} ms, "
            f"ratio {t['ratio']:.2f}"
        )
    for k, fl in out["floors"].items():
        print(
            f"floor ({k}) / 2q forwards: naive in place (inexact, free noise) {fl['naive_in_place']:.2f}, "
            f"generator noise alone {fl['generator_noise']:.2f}"
        )
    if PROFILER_CUDA:
        out["cuda_profiler_peak_bytes_in_order"] = list(PROFILER_CUDA.values())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
