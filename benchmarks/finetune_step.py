"""Step cost of order-0 fine-tuning: one zeroth-order step over the forward passes it makes.

On the real all-MiniLM-L6-v2 under the prototype head (task ``minilm-sentiment-k16``: its whole training set,
a batch of 32 sentences "It was [word]." of 8 tokens), in training mode (dropout on), with 2 threads, the
wall time of one step of each method divided by the time of the plain forwards it makes (2q for a two-point
step), both medians over the same repeats, interleaved, in the same run:

- ``mezo`` q = 1 in place with a dense ``.grad`` and ``torch.optim.SGD`` (``noise_source="generator"``, the
  default, and the variants below);
- ``mezo`` memory-lean: ``write_grad=False`` and :class:`unigrad.optim.ReplaySGD`;
- ``spsa`` q = 1 and ``es`` q = 1 (one antithetic pair; batched probes, ``torch.optim.SGD``);
- ``spsa`` and ``rge`` q = 4 with every tensor's noise from the shared table (the embedding in row windows), and
  ``spsa`` q = 4 with the default ``noise_source="auto"`` (the embedding from the generator).

MeZO variants: ``noise_source="table"`` with a table covering the word embedding (``table_size=2**24``:
64 MiB of float32, held for the process) or a 4 MiB one (``2**20``, the embedding read in row windows, see
:mod:`unigrad.core.rng`), ``"auto"`` (the embedding from the generator), and ``perturb="forward"`` (θ is never
modified: each parameter is perturbed where the forward uses it, see :class:`unigrad.zeroth.mezo.MeZO`). The fast
step is ``mezo lean forward table 2^20``: its peak memory is in ``benchmarks/finetune_memory.py``.

    .venv/bin/python benchmarks/finetune_step.py [--threads 2] [--repeats 7] [--only NAME ...] [--out FILE]

Prints a table and writes ``benchmarks/results/finetune_step.json`` (``--out`` to change). Needs ``unigrad[finetune]``.
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

import unigrad
from unigrad.data.tasks import get_task
from unigrad.optim import ReplaySGD
from unigrad.zeroth.mezo import MeZO

TASK = "minilm-sentiment-k16"
BATCH = 32
LR = 1e-6
TABLE = 1 << 24  # entries: larger than the word embedding (30,522 × 384 = 11,720,448)
RESULTS = Path(__file__).parent / "results" / "finetune_step.json"


def mezo(lean: bool = False, **options) -> Callable:
    """A step function factory for MeZO q = 1: in place with ``.grad`` + SGD, or memory-lean + ReplaySGD."""

    def make(model, obj):
        est = MeZO(probes=1, seed=0, write_grad=not lean, **options)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = ReplaySGD(params, lr=LR) if lean else torch.optim.SGD(params, lr=LR)

        def step() -> None:
            e = est.estimate(model, obj)
            opt.step(e.info["direction"]) if lean else opt.step()

        return step, 2

    return make


def probing(name: str, probes: int, forwards: int, **options) -> Callable:
    """A step function factory for a registered probing estimator with ``torch.optim.SGD``."""

    def make(model, obj):
        est = unigrad.make_estimator(name, probes=probes, seed=0, **options)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)

        def step() -> None:
            est.estimate(model, obj)
            opt.step()

        return step, forwards

    return make


METHODS: dict[str, Callable] = {
    "mezo": mezo(),
    "mezo lean": mezo(lean=True),
    "mezo table": mezo(noise_source="table", table_size=TABLE),
    "mezo lean table": mezo(lean=True, noise_source="table", table_size=TABLE),
    "mezo forward table": mezo(perturb="forward", noise_source="table", table_size=TABLE),
    "mezo lean forward table": mezo(lean=True, perturb="forward", noise_source="table", table_size=TABLE),
    "mezo lean forward": mezo(lean=True, perturb="forward"),
    "mezo lean forward auto 2^20": mezo(lean=True, perturb="forward", noise_source="auto", table_size=1 << 20),
    "mezo lean forward table 2^20": mezo(lean=True, perturb="forward", noise_source="table", table_size=1 << 20),
    "mezo forward table 2^20": mezo(perturb="forward", noise_source="table", table_size=1 << 20),
    "spsa": probing("spsa", 1, 2),
    "es": probing("es", 1, 2),
    "spsa q4 table": probing("spsa", 4, 8, noise_source="table"),
    "rge q4 table": probing("rge", 4, 8, noise_source="table"),
    "spsa q4": probing("spsa", 4, 8),
}


def elapsed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(make: Callable, repeats: int) -> dict:
    """Median step time and median time of the step's forwards, interleaved over ``repeats``."""
    task = get_task(TASK)
    data = task.data()
    x, y = data.x_train[:BATCH], data.y_train[:BATCH]
    model = task.build_model(0).train()
    obj = unigrad.supervised(task.loss_fn, x, y)
    step, n_forwards = make(model, obj)

    @torch.no_grad()
    def forwards() -> None:
        for _ in range(n_forwards):
            task.loss_fn(model(x), y)

    step(), forwards()  # warm-up (builds a noise table where one is used)
    t_step, t_fwd = [], []
    for _ in range(repeats):
        t_step.append(elapsed(step))
        t_fwd.append(elapsed(forwards))
    s, f = statistics.median(t_step), statistics.median(t_fwd)
    return {"step_s": s, "forwards_s": f, "forwards": n_forwards, "ratio": s / f, "shape": list(x.shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--only", nargs="*", choices=sorted(METHODS), help="measure only these methods")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    print(f"{'method':<30} {'step s':>8} {'fwd s':>8} {'ratio':>6}")
    for name in args.only or METHODS:
        r = rows[name] = measure(METHODS[name], args.repeats)
        print(f"{name:<30} {r['step_s']:8.3f} {r['forwards_s']:8.3f} {r['ratio']:6.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__, "machine": platform.machine()}
    args.out.write_text(json.dumps({"meta": meta, "methods": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
