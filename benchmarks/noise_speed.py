"""Noise speed — how fast each noise source produces a probe's directions, against a forward pass.

For the P1 model (MLP 784-256-256-10, d = 269,322 parameters in 6 tensors), the median time to
produce one probe's full direction with ``ProbeNoise.direction`` for each source and distribution, in
normals (entries) per millisecond, and as a multiple of one forward pass of a batch of 256.

- ``generator``: a fresh ``torch.Generator`` per key and 16,384-element chunk (exact, streamable).
- ``table``: a view into the shared noise table (free), and the same view copied (what a consumer
  pays if it needs a private copy).
- ``torch.randn``: one call on a single generator, the floor for drawing normals.

    .venv/bin/python benchmarks/noise_speed.py [--threads 2] [--repeats 51]

Prints a table and writes ``benchmarks/results/noise_speed.json``.
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

from _common import cpu_name
from unigrad import ProbeNoise

RESULTS = Path(__file__).parent / "results" / "noise_speed.json"


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=51)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    x = torch.randn(256, 784, generator=g)
    y = torch.randint(0, 10, (256,), generator=g)
    params = [p.detach() for p in model.parameters()]
    d = sum(p.numel() for p in params)

    def forward() -> None:
        with torch.no_grad():
            F.cross_entropy(model(x), y)

    fwd = median_ms(forward, args.repeats)
    rows = []
    step = iter(range(10**9))  # a new step per call: no caching between calls
    cases: list[tuple[str, str, Callable[[], object]]] = []
    for source in ("generator", "table"):
        for dist in ("gaussian", "rademacher", "sphere"):
            noise = ProbeNoise(dist, source)
            noise.direction(0, 0, 0, params)  # builds the table once, outside the timing
            cases.append((source, dist, lambda n=noise: n.direction(0, next(step), 0, params)))
    noise = ProbeNoise("gaussian", "table")
    cases.append(("table+copy", "gaussian", lambda n=noise: [u.clone() for u in n.direction(0, next(step), 0, params)]))
    gen = torch.Generator().manual_seed(1)
    cases.append(("torch.randn", "gaussian", lambda: torch.randn(d, generator=gen)))

    print(f"d = {d:,} parameters; one forward (batch 256) = {fwd:.3f} ms; threads = {args.threads}")
    print(f"{'source':12} {'distribution':12} {'ms/probe':>9} {'normals/ms':>12} {'forwards':>9}")
    for source, dist, fn in cases:
        ms = median_ms(fn, args.repeats)
        row = {"source": source, "distribution": dist, "ms_per_probe": ms, "per_ms": d / ms, "forwards": ms / fwd}
        rows.append(row)
        print(f"{source:12} {dist:12} {ms:9.3f} {d / ms:12,.0f} {ms / fwd:9.2f}")
    out = {
        "benchmark": "noise_speed",
        "d": d,
        "forward_ms": fwd,
        "threads": args.threads,
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
