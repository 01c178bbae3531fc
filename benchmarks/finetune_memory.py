"""Fine-tuning all-MiniLM-L6-v2: peak memory of training with each order against inference.

Peak tensor memory (``unigrad.core.memory.peak_memory``: the largest number of bytes of tensor storage held at
once, counting everything allocated inside the measured function) on the pretrained model of the
``minilm-sentiment`` task (all-MiniLM-L6-v2 + the prototype head, 22,566,146 parameters), for a batch of 32
sentences "It was [word]." of 8 tokens each (padding included), of:

* ``inference``: building the model and one forward of the batch in ``torch.no_grad`` (eval mode);
* ``mezo_lean``: building the model, MeZO with ``write_grad=False`` (q = 1, σ = 1e-3, as in MeZO) and
  ``unigrad.optim.ReplaySGD``, two training steps (train mode: dropout on);
* ``mezo_lean_fast``: the same in the fast step's configuration (``perturb="forward"``, a noise table of 2²⁰
  entries read in row windows for the word embedding, ``benchmarks/finetune_step.py``); the table (4 MiB) is
  built inside the measurement, so it counts;
* ``mezo_grad_sgd``: the same as ``mezo_lean`` with a dense ``.grad`` and ``torch.optim.SGD``;
* ``backprop_adam``: backprop with ``torch.optim.Adam``, two steps (Adam's state is allocated at the first).

With ``--family``, also the modern zeroth-order family (``sparse-mezo``, ``hizoo``, ``lozo``, LOZO-M,
``subzero``, ``fzoo``) in the memory-lean form (``write_grad=False`` + ``ReplaySGD``, ``perturb="forward"``),
``mezo-svrg`` with its dense ``.grad`` (it holds θ̄ and g̃ anyway) and ``eggroll`` with Adam (its population
through the generic probe path).

The model is built inside every measurement, so the weights (86 MiB) count in each; the pretrained weights are
read from the package once beforehand (a copy is what is measured, as ``load_encoder`` makes it). Goals:
``mezo_lean / inference <= 1.1`` and ``backprop_adam / mezo_lean >= 3``, for both MeZO configurations.

    .venv/bin/python benchmarks/finetune_memory.py [--threads N] [--batch 32] [--tokens 8] [--family]

Prints a table and writes ``benchmarks/results/finetune_memory.json``. Needs ``pip install 'unigrad[finetune]'``.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

import unigrad
from unigrad.core.memory import peak_memory
from unigrad.core.rng import _TABLES
from unigrad.data import get_task
from unigrad.nn.text import PAD_ID
from unigrad.optim import ReplaySGD

RESULTS = Path(__file__).parent / "results" / "finetune_memory.json"
TASK = "minilm-sentiment"
STEPS = 2
FAST = {"perturb": "forward", "noise_source": "table", "table_size": 1 << 20}  # the fast step's configuration
FAMILY: dict[str, dict[str, object]] = {
    "sparse-mezo": {"probes": 1, "sigma": 1e-3},
    "hizoo": {"probes": 1, "sigma": 1e-3},
    "lozo": {"probes": 1, "sigma": 1e-3},
    "lozo-m": {"probes": 1, "sigma": 1e-3, "momentum": 0.9},
    "subzero": {"probes": 1, "sigma": 1e-3},
    "fzoo": {"probes": 8, "sigma": 1e-3},
}
"""``--family``: the structured estimators in their memory-lean form (``lozo-m`` is ``lozo`` with momentum)."""


def batch(size: int, tokens: int) -> tuple[Tensor, Tensor]:
    """The first ``size`` training sentences of at most ``tokens`` tokens, padded to exactly ``tokens``."""
    data = get_task(TASK).data()
    lengths = (data.x_train != PAD_ID).sum(dim=1)
    rows = torch.nonzero(lengths <= tokens).flatten()[:size]
    if len(rows) < size:
        raise SystemExit(f"only {len(rows)} training sentences have at most {tokens} tokens")
    x = torch.full((size, tokens), PAD_ID, dtype=torch.long)
    width = min(tokens, data.x_train.shape[1])
    x[:, :width] = data.x_train[rows, :width]
    return x, data.y_train[rows]


def model() -> nn.Module:
    return get_task(TASK).build_model(0)


def inference(x: Tensor) -> Callable[[], None]:
    def run() -> None:
        m = model().eval()
        with torch.no_grad():
            m(x)

    return run


def training(x: Tensor, y: Tensor, method: str, make_optimizer: Callable, **options: object) -> Callable[[], None]:
    """Two steps of ``method`` with the optimizer ``make_optimizer(params)`` on a fresh model."""
    lean = options.get("write_grad") is False

    def run() -> None:
        _TABLES.clear()  # a noise table is built inside the measurement, so it counts
        m = model().train()
        name, extra = ("lozo", {}) if method == "lozo-m" else (method, {})
        estimator = unigrad.make_estimator(name, seed=0, **options, **extra)
        optimizer = make_optimizer(m.parameters())
        objective = unigrad.supervised(torch.nn.functional.cross_entropy, x, y)
        for _ in range(STEPS):
            optimizer.zero_grad()
            estimate = estimator.estimate(m, objective)
            optimizer.step(estimate.info["direction"]) if lean else optimizer.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--batch", type=int, default=32, help="sentences per batch (default 32)")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per sentence, padding included (default 8)")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON file (default {RESULTS})")
    parser.add_argument(
        "--family", action="store_true", help="also the modern zeroth-order family (writes finetune_memory_family.json)"
    )
    args = parser.parse_args()
    args.out = args.out or (RESULTS.with_name("finetune_memory_family.json") if args.family else RESULTS)
    torch.set_num_threads(args.threads)
    x, y = batch(args.batch, args.tokens)
    model()  # loads and checks the pretrained weights once, outside the measurements
    mezo = {"probes": 1, "sigma": 1e-3}
    runs = {
        "inference": inference(x),
        "mezo_lean": training(x, y, "mezo", lambda p: ReplaySGD(p, lr=1e-6), write_grad=False, **mezo),
        "mezo_lean_fast": training(x, y, "mezo", lambda p: ReplaySGD(p, lr=1e-6), write_grad=False, **mezo, **FAST),
        "mezo_grad_sgd": training(x, y, "mezo", lambda p: torch.optim.SGD(p, lr=1e-6), **mezo),
        "backprop_adam": training(x, y, "backprop", lambda p: torch.optim.Adam(p, lr=2e-5)),
    }
    if args.family:  # memory-lean forms (write_grad=False + ReplaySGD, perturbed where the forward reads θ)
        lean_sgd = lambda p: ReplaySGD(p, lr=1e-6)  # noqa: E731
        for name, options in FAMILY.items():
            runs[f"{name}_lean"] = training(x, y, name, lean_sgd, write_grad=False, perturb="forward", **options)
        runs["mezo-svrg_grad_sgd"] = training(x, y, "mezo-svrg", lambda p: torch.optim.SGD(p, lr=1e-6), **mezo)
        runs["eggroll_adam"] = training(x, y, "eggroll", lambda p: torch.optim.Adam(p, lr=1e-4), **mezo)
    peaks = {name: peak_memory(fn) for name, fn in runs.items()}
    inf, lean, fast = peaks["inference"], peaks["mezo_lean"], peaks["mezo_lean_fast"]
    out = {
        "task": TASK,
        "parameters": sum(p.numel() for p in model().parameters()),
        "batch": args.batch,
        "tokens": args.tokens,
        "steps": STEPS,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "peak_bytes": peaks,
        "ratio_to_inference": {k: v / inf for k, v in peaks.items()},
        "mezo_lean_over_inference": lean / inf,
        "backprop_adam_over_mezo_lean": peaks["backprop_adam"] / lean,
        "goals": {
            "mezo_lean / inference <= 1.1": lean / inf <= 1.1,
            "backprop_adam / mezo_lean >= 3": peaks["backprop_adam"] / lean >= 3,
            "mezo_lean_fast / inference <= 1.1": fast / inf <= 1.1,
            "backprop_adam / mezo_lean_fast >= 3": peaks["backprop_adam"] / fast >= 3,
        },
    }
    shape = f"batch {args.batch} x {args.tokens} tokens, {STEPS} steps"
    print(f"peak tensor memory, {TASK}, {shape}, torch {torch.__version__}, {out['threads']} threads")
    print(f"{'run':16s} {'peak MiB':>9s}  x inference")
    for name, v in peaks.items():
        print(f"{name:16s} {v / 2**20:9.1f}  {v / inf:.3f}")
    for goal, met in out["goals"].items():
        print(f"goal {goal}: {'met' if met else 'NOT met'}")
    print(f"backprop_adam / mezo_lean = {out['backprop_adam_over_mezo_lean']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
