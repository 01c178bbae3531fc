"""Node perturbation at the cost of its passes: one step against the plain forwards it stands for.

MLP 784-500-500-500-10 (the Fashion-MNIST MLP 3×500), batch 64, float32, CPU. For ``np``, ``anp`` and their
decorrelated variants ``dnp`` and ``danp`` with q noisy passes (default 16), the median wall time of one step
(``estimate()``, plus the decorrelation update for the decorrelated ones) divided by the median time of the
``q + 1`` plain forwards the step stands for: ``loss_fn(model(x), y)`` under ``torch.no_grad()`` in eval mode,
on the same model (the decorrelated model for ``dnp``/``danp``), same batch. Timed in the same run, interleaved
(step, forwards, step, …), medians over repeats. Rows with ``stacked`` run the noisy passes as one batch of
``q·B`` rows (:func:`unigrad.nn.perturbation.noisy_passes`); ``one-by-one`` sets ``STACK_PASSES = False``.
Goal (danp, q = 16): ratio ≤ 1.2. Also one whole training step of danp (q = 16, Adam, decorrelation update) over
one of backprop + Adam on the same MLP with LeakyReLU (the Fashion-MNIST task's), same batch, interleaved.

    .venv/bin/python benchmarks/np_step.py [--threads 2] [--repeats 21] [--q 16]

Prints a table and writes ``benchmarks/results/np_step.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import unigrad
from _common import interleaved, write_results
from unigrad.nn import perturbation
from unigrad.nn.models import mlp

BATCH = 64
SIZES = [784, 500, 500, 500, 10]
RESULTS = Path(__file__).parent / "results" / "np_step.json"


def measure(method: str, q: int, stacked: bool, repeats: int) -> dict[str, float | int | str]:
    perturbation.STACK_PASSES = stacked
    est = unigrad.make_estimator(method, probes=q, sigma=1e-3, seed=0)
    model = mlp(SIZES, seed=0)
    if hasattr(est, "prepare"):
        model = est.prepare(model)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 784, generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    objective = unigrad.supervised(F.cross_entropy, x, y)

    def step() -> None:
        est.estimate(model, objective)
        if hasattr(est, "update"):
            est.update(model)

    def forwards() -> None:
        model.eval()
        with torch.no_grad():
            for _ in range(q + 1):
                F.cross_entropy(model(x), y)
        model.train()

    s, f = interleaved(step, forwards, repeats)
    perturbation.STACK_PASSES = True
    path = "stacked" if stacked else "one-by-one"
    return {"method": method, "q": q, "path": path, "step_ms": 1e3 * s, "forwards_ms": 1e3 * f, "ratio": s / f}


def against_backprop(method: str, q: int, repeats: int) -> dict[str, float | int | str]:
    """One training step of ``method`` (q passes, Adam, the decorrelation update) over one of backprop + Adam,
    on the Fashion-MNIST MLP 3×500 (LeakyReLU), same batch, interleaved."""

    def setup(name: str, **options: int | float) -> Callable[[], None]:
        est = unigrad.make_estimator(name, seed=0, **options)
        model = mlp(SIZES, activation="leaky_relu", seed=0)
        if hasattr(est, "prepare"):
            model = est.prepare(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(BATCH, 784, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
        objective = unigrad.supervised(F.cross_entropy, x, y)

        def step() -> None:
            opt.zero_grad()
            est.estimate(model, objective)
            opt.step()
            if hasattr(est, "update"):
                est.update(model)

        return step

    s, b = interleaved(setup(method, probes=q, sigma=1e-3), setup("backprop"), repeats)
    return {"method": method, "q": q, "step_ms": 1e3 * s, "backprop_step_ms": 1e3 * b, "ratio": s / b}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--q", type=int, nargs="+", default=[16])
    ap.add_argument("--methods", nargs="+", default=["np", "anp", "dnp", "danp"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'method':6} {'q':>3} {'path':10} {'step ms':>9} {'q+1 fwd ms':>11} {'ratio':>6}")
    for method in args.methods:
        for q in args.q:
            for stacked in (False, True):
                r = measure(method, q, stacked, args.repeats)
                rows.append(r)
                print(
                    f"{method:6} {q:>3} {r['path']:10} {r['step_ms']:9.2f} {r['forwards_ms']:11.2f} {r['ratio']:6.2f}",
                    flush=True,
                )
    versus = against_backprop("danp", 16, args.repeats)
    print(
        f"training step, danp q=16 + Adam: {versus['step_ms']:.1f} ms; backprop + Adam: "
        f"{versus['backprop_step_ms']:.1f} ms; ratio {versus['ratio']:.2f}"
    )
    payload = {
        "goal": "danp step (q = 16, decorrelation included) / its q + 1 plain forwards <= 1.2",
        "setup": {"model": "MLP 784-500-500-500-10", "batch": BATCH, "dtype": "float32", "device": "cpu"},
        "against_backprop": versus,
        "rows": rows,
    }
    write_results(args.out, "np_step", payload)


if __name__ == "__main__":
    main()
