"""In-situ DANP against deployed backprop on the experiments' crossbar, over seeds: the hardware goal.

The goal: in-situ DANP, learning from the device's own noise, beats backprop trained on the digital twin and
deployed (mode (a)) under realistic mismatch, and ends within 3 points of backprop on an ideal device. Every run
is the device of :mod:`unigrad.experiments.crossbar_sweep` (784-128-10 on Fashion-MNIST, 8-bit converters and
activations, 10% update noise and asymmetry, node noise 0.05, read noise 0.01) at mismatch ``m`` (``σ_m = m``,
``σ_p = m/2``), trained for ``--steps`` Adam steps at ``--lr`` with the learning rate annealed along a half cosine
(``schedule="cosine"``, every mode alike). Each mode has its own batch size (``--bp-batch``, ``--danp-batch``):
backprop's reference gets both, so the report shows whether a larger batch would help it too. DANP's options are
:data:`unigrad.experiments.crossbar_sweep.MODE_OPTIONS` (decorrelation rate 1e-4) plus ``--probes``.

    python benchmarks/hardware_goal.py --seeds 3 --jobs 2 [--levels 0.1 0.2] [--danp-batch 256] [--probes 4]

Writes ``benchmarks/results/hardware-goal/results.json`` and ``report.md`` (accuracy on the device over the
10,000 test images, mean ± sd over seeds; training energy with the default :class:`EnergyModel`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from unigrad.experiments.crossbar_sweep import MODE_OPTIONS, STEPS, _data, _Maker, config
from unigrad.hardware.crossbar import CrossbarConfig
from unigrad.hardware.train import train_device
from unigrad.noise import WhiteGaussian
from unigrad.train.parallel import run_calls

NODE_NOISE = 0.05


def one(mode: str, level: float | None, batch: int, seed: int, steps: int, lr: float, probes: int) -> dict[str, Any]:
    """One run; ``level=None`` is backprop on an ideal device."""
    if level is None:
        maker = _Maker(CrossbarConfig(), None, seed, ideal=True)
    else:
        maker = _Maker(config(mismatch=level, noise=NODE_NOISE), WhiteGaussian(NODE_NOISE, accessible=False), seed)
    options = dict(MODE_OPTIONS.get(mode, {}))
    if mode.startswith("in-situ"):
        options["probes"] = probes
    t0 = time.perf_counter()
    run = train_device(
        maker,
        mode,
        _data(False),
        steps=steps,
        batch=batch,
        lr=lr,
        seed=seed,
        eval_every=max(1, steps // 6),
        node_sigma=NODE_NOISE,
        options=options,
        schedule="cosine",
    )
    final = run.history[-1]
    return {
        "mode": mode,
        "level": level,
        "batch": batch,
        "seed": seed,
        "accuracy": final["accuracy"],
        "curve": [(p["step"], p["accuracy"]) for p in run.history],
        "energy": final["energy"],
        "latency": final["latency"],
        "counts": final["counts"],
        "seconds": time.perf_counter() - t0,
    }


def report(
    runs: list[dict[str, Any]],
    bp_batch: int,
    danp_batch: int,
    levels: list[float],
    steps: int,
    lr: float,
    seeds: int,
    probes: int,
) -> str:
    """The markdown table of ``runs`` (mean ± sd over seeds per cell)."""
    cells = _cells(bp_batch, danp_batch, levels)

    def acc(mode: str, level: float | None, batch: int, key: str = "accuracy") -> list[float]:
        return [r[key] for r in runs if (r["mode"], r["level"], r["batch"]) == (mode, level, batch)]

    def ms(v: list[float]) -> str:
        return f"{statistics.fmean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}"

    ideal = acc("deployed-backprop", None, bp_batch)
    lines = [
        f"# hardware goal: {steps:,} steps, Adam {lr:g} with cosine annealing, {seeds} seed(s), DANP probes {probes}",
        "",
        f"| run | batch | accuracy on the device | gap to ideal backprop at batch {bp_batch} (points) "
        "| gap to ideal backprop at the same batch | training energy (J) |",
        "|---|---|---|---|---|---|",
    ]
    for mode, level, batch in cells:
        a = acc(mode, level, batch)
        gap = 100 * (statistics.fmean(ideal) - statistics.fmean(a))
        same = acc("deployed-backprop", None, batch)
        gap_same = 100 * (statistics.fmean(same) - statistics.fmean(a)) if same else float("nan")
        where = "ideal device" if level is None else f"m = {level:g}"
        energy = statistics.fmean(acc(mode, level, batch, "energy"))
        lines.append(f"| {mode}, {where} | {batch} | {ms(a)} | {gap:.1f} | {gap_same:.1f} | {energy:.3g} |")
    return "\n".join(lines) + "\n"


def _cells(bp_batch: int, danp_batch: int, levels: list[float]) -> list[tuple[str, float | None, int]]:
    cells: list[tuple[str, float | None, int]] = [
        ("deployed-backprop", None, bp_batch),
        ("deployed-backprop", None, danp_batch),
    ]
    for level in levels:
        cells += [("deployed-backprop", level, bp_batch), ("in-situ-danp", level, danp_batch)]
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--levels", type=float, nargs="+", default=[0.1, 0.2])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bp-batch", type=int, default=64)
    ap.add_argument("--danp-batch", type=int, default=256)
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/hardware-goal")
    args = ap.parse_args()
    cells = _cells(args.bp_batch, args.danp_batch, args.levels)
    calls = [
        (one, (mode, level, batch, seed, args.steps, args.lr, args.probes))
        for seed in range(args.seeds)
        for mode, level, batch in cells
    ]
    runs = []
    for r in run_calls(calls, args.jobs):
        runs.append(r)
        print(f"{r['mode']} m={r['level']} batch {r['batch']} seed {r['seed']}: {r['accuracy']:.4f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1) + "\n")
    text = report(runs, args.bp_batch, args.danp_batch, args.levels, args.steps, args.lr, args.seeds, args.probes)
    (out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
