"""P1 — an antithetic zeroth-order step costs what its forward passes cost.

MLP 784-256-256-10, batch 256, float32, CPU. For q = 1, 4, 16 antithetic probes (RGE central with
Gaussian directions, and SPSA: Rademacher), the median wall time of one full ``estimate()`` (probe,
measure, combine, write ``.grad``) divided by the median time of the 2q plain forward passes it
replaces: ``loss_fn(model(x), y)`` under ``torch.no_grad()``, same batch. Both are timed in the same
run, interleaved (step, forwards, step, forwards, …), medians over repeats. Goal: ratio ≤ 1.05.

Rows cover both noise sources (``generator``: exact per-key RNG; ``table``: views into the shared
noise table) and both evaluation paths (``fast``: the linear fast path of
``unigrad.core.probe.perturbed_losses``, which shares the first layer's product ``x·Wᵀ`` across all
probes and ``x·Uᵢᵀ`` across each ± pair; ``generic``: every probe evaluated with its own perturbed
weights).

With ``--model cnn`` the network is ``fashion-cnn``'s (two 3×3 convolutions with pooling, then a linear layer)
on a batch of 64 images.

    .venv/bin/python benchmarks/p1_step_time.py [--threads 2] [--repeats 31] [--q 1 4 16] [--model mlp|cnn]

Prints a table and writes ``benchmarks/results/p1_step_time.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import unigrad
from _common import interleaved, write_results
from unigrad.core import probe
from unigrad.nn.models import small_cnn

BATCH = 256
RESULTS = Path(__file__).parent / "results" / "p1_step_time.json"


MODELS = {"mlp": "MLP 784-256-256-10, batch 256", "cnn": "fashion-cnn (conv16-conv32-linear), batch 64"}


def build(kind: str = "mlp", batch: int = BATCH) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """MLP 784-256-256-10 (PyTorch's default initialisation) and a fixed batch (of 256 by default), or the
    ``fashion-cnn`` network (``small_cnn(1, 28, (16, 32), 10)``) and a fixed batch of 64 images."""
    g = torch.Generator().manual_seed(0)
    if kind == "cnn":
        x = torch.randn(64, 1, 28, 28, generator=g)
        return small_cnn(1, 28, (16, 32), 10, seed=0), x, torch.randint(0, 10, (64,), generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    x = torch.randn(batch, 784, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return model, x, y


def measure(
    method: str, source: str, q: int, path: str, repeats: int, kind: str = "mlp"
) -> dict[str, float | int | str]:
    model, x, y = build(kind)
    objective = unigrad.supervised(F.cross_entropy, x, y)
    est = unigrad.make_estimator(method, probes=q, sigma=1e-3, noise_source=source)
    probe.LINEAR_FAST_PATH = path == "fast"

    def step() -> None:
        est.estimate(model, objective)

    def forwards() -> None:
        with torch.no_grad():
            for _ in range(2 * q):
                F.cross_entropy(model(x), y)

    s, f = interleaved(step, forwards, repeats)  # warm-up included: the noise table, allocator, vmap caches
    probe.LINEAR_FAST_PATH = True
    return {
        "method": method,
        "noise_source": source,
        "path": path,
        "q": q,
        "step_ms": 1e3 * s,
        "forwards_ms": 1e3 * f,
        "ratio": s / f,
        "repeats": repeats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--q", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--methods", nargs="+", default=["rge", "spsa"])
    ap.add_argument("--sources", nargs="+", default=["generator", "table"])
    ap.add_argument("--paths", nargs="+", default=["generic", "fast"])
    ap.add_argument("--model", choices=sorted(MODELS), default="mlp")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    print(f"{'method':6} {'source':9} {'path':7} {'q':>3} {'step ms':>9} {'2q fwd ms':>10} {'ratio':>7}")
    for method in args.methods:
        for source in args.sources:
            for path in args.paths:
                for q in args.q:
                    r = measure(method, source, q, path, args.repeats, args.model)
                    rows.append(r)
                    print(
                        f"{method:6} {source:9} {path:7} {q:>3} {r['step_ms']:9.2f} {r['forwards_ms']:10.2f} "
                        f"{r['ratio']:7.3f}",
                        flush=True,
                    )
    payload = {
        "goal": "step / 2q forwards <= 1.05",
        "setup": {"model": MODELS[args.model], "dtype": "float32", "device": "cpu"},
        "rows": rows,
    }
    write_results(args.out, "p1_step_time", payload)


if __name__ == "__main__":
    main()
