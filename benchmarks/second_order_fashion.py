"""Steps and wall time to a target test accuracy: K-FAC, natural gradient, Hessian-free vs Adam/SGD backprop.

Every method trains the ``fashion-mlp`` task (784-256-256-10 MLP on Fashion-MNIST) with the library's
trainer at the same batch size, seeds 0..S−1, evaluating the 10,000 test images every ``--every``
steps. For each run the script records the first evaluated step whose test accuracy reaches
``--target``, the training wall time to that step (the trainer's clock: evaluation excluded) and the
forward-pass equivalents spent, then prints medians and ratios to Adam measured in this run::

    python benchmarks/second_order_fashion.py --seeds 3 --target 0.85 \\
        --out benchmarks/results/second-order-fashion

``--methods`` picks among :data:`CONFIGS` (labels); ``--set LABEL.KEY=VALUE`` overrides one setting
(``lr``, ``momentum``, ``steps``, ``batch`` (this method's batch size), or an estimator option),
e.g. ``--set kfac.lr=0.05 --set kfac.damping=0.01``.
Results go to ``OUT/results.json`` (every evaluation of every run, written after each run) and
``OUT/report.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from unigrad.train.trainer import train

# label: estimator, estimator options, optimizer, lr, optimizer options, step budget
CONFIGS: dict[str, dict[str, Any]] = {
    "adam": {"method": "backprop", "options": {}, "optimizer": "adam", "lr": 1e-3, "momentum": None, "steps": 600},
    "adam-3e-3": {"method": "backprop", "options": {}, "optimizer": "adam", "lr": 3e-3, "momentum": None, "steps": 600},
    "sgd": {"method": "backprop", "options": {}, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "steps": 600},
    "kfac": {
        "method": "kfac",
        "options": {"damping": 1e-2, "inverse_interval": 2},
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": None,
        "steps": 300,
    },
    "kfac-defaults": {"method": "kfac", "options": {}, "optimizer": "sgd", "lr": 0.05, "momentum": None, "steps": 300},
    "natural-gradient": {
        "method": "natural-gradient",
        "options": {"max_cg": 10, "damping": 0.1},
        "optimizer": "sgd",
        "lr": 0.2,
        "momentum": None,
        "steps": 600,
    },
    # the CG-based methods fit their curvature to one batch: on batches of 128 they are no faster than Adam,
    # so they are also run on batches of 1,024 (Martens 2010 used large batches), next to Adam on the same
    "natural-gradient-b1024": {
        "method": "natural-gradient",
        "options": {"max_cg": 10, "damping": 0.3},
        "optimizer": "sgd",
        "lr": 0.3,
        "momentum": None,
        "steps": 150,
        "batch": 1024,
    },
    "hessian-free-b1024": {
        "method": "hessian-free",
        "options": {"max_cg": 20, "damping": 1.0, "min_damping": 0.3},
        "optimizer": "sgd",
        "lr": 1.0,
        "momentum": None,
        "steps": 150,
        "batch": 1024,
    },
    "adam-b1024": {
        "method": "backprop",
        "options": {},
        "optimizer": "adam",
        "lr": 3e-3,
        "momentum": None,
        "steps": 300,
        "batch": 1024,
    },
}


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def configs(methods: list[str], overrides: list[str]) -> dict[str, dict[str, Any]]:
    unknown = [m for m in methods if m not in CONFIGS]
    if unknown:
        sys.exit(f"error: unknown method {unknown[0]!r}; valid: {', '.join(CONFIGS)}")
    chosen = {m: {**CONFIGS[m], "options": dict(CONFIGS[m]["options"])} for m in methods}
    for item in overrides:
        key, sep, value = item.partition("=")
        label, dot, name = key.partition(".")
        if not sep or not dot or label not in chosen:
            sys.exit(f"error: --set wants LABEL.KEY=VALUE with LABEL among {', '.join(chosen)}, got {item!r}")
        if name in ("lr", "momentum", "steps", "optimizer", "batch"):
            chosen[label][name] = _value(value)
        else:
            chosen[label]["options"][name] = _value(value)
    return chosen


def run_one(label: str, cfg: dict[str, Any], seed: int, batch: int, every: int, target: float) -> dict[str, Any]:
    opt_options = {} if cfg["momentum"] is None else {"momentum": cfg["momentum"]}
    batch = cfg.get("batch") or batch
    start = time.perf_counter()
    result = train(
        "fashion-mlp",
        cfg["method"],
        optimizer=cfg["optimizer"],
        lr=cfg["lr"],
        estimator_options=cfg["options"],
        optimizer_options=opt_options,
        budget=f"steps={cfg['steps']}",
        batch_size=batch,
        seed=seed,
        eval_points=max(1, cfg["steps"] // every),
    )
    hit = next((h for h in result.history if (h["test_accuracy"] or 0.0) >= target), None)
    return {
        "label": label,
        "seed": seed,
        "status": result.status,
        "message": result.message,
        "history": result.history,
        "batch_size": batch,
        "steps_to_target": None if hit is None else hit["step"],
        "seconds_to_target": None if hit is None else hit["seconds"],
        "fe_to_target": None if hit is None else hit["forward_equivalents"],
        "best_accuracy": max((h["test_accuracy"] or 0.0) for h in result.history),
        "final_accuracy": result.final["test_accuracy"],
        "train_seconds": result.train_seconds,
        "seconds_per_step": result.train_seconds / max(result.steps, 1),
        "wall_seconds": time.perf_counter() - start,
    }


def _median(values: list[float | None]) -> float | None:
    """Median over runs; a run that never reached the target counts as infinitely slow."""
    if not values:
        return None
    finite = [float("inf") if v is None else v for v in values]
    m = statistics.median(finite)
    return None if m == float("inf") else m


def report(results: dict[str, Any]) -> str:
    target = results["target"]
    runs = results["runs"]
    labels = list(dict.fromkeys(r["label"] for r in runs))
    med = {
        label: {
            k: _median([r[k] for r in runs if r["label"] == label])
            for k in ("steps_to_target", "seconds_to_target", "fe_to_target", "seconds_per_step")
        }
        for label in labels
    }
    # the reference is the faster of the two Adam rates on the default batch
    adams = [a for a in ("adam", "adam-3e-3") if a in med and med[a]["steps_to_target"] is not None]
    best = min(adams, key=lambda a: med[a]["steps_to_target"]) if adams else "adam"
    ref = med.get(best, {})
    lines = [
        f"# Steps to {target:.2f} test accuracy on fashion-mlp (batch {results['batch_size']}, "
        f"{len(results['seeds'])} seeds, evaluated every {results['every']} steps)",
        "",
        f"Ratios are to `{best}` (the Adam rate that reached the target in fewer steps).",
        "",
        "| method | settings | steps to target (per seed) | median steps | × Adam | median s to target | × Adam | "
        "samples to target | FE to target | s/step | best acc (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(a: float | None, b: float | None) -> str:
        return "–" if a is None or not b else f"{a / b:.2f}"

    for label in labels:
        rs = [r for r in runs if r["label"] == label]
        cfg = results["configs"][label]
        settings = f"{cfg['optimizer']} lr {cfg['lr']:g}" + (f" mom {cfg['momentum']:g}" if cfg.get("momentum") else "")
        if cfg["options"]:
            settings += ", " + ", ".join(f"{k}={v}" for k, v in cfg["options"].items())
        if cfg.get("batch"):
            settings += f", batch {cfg['batch']}"
        m = med[label]
        per_seed = ", ".join("–" if r["steps_to_target"] is None else str(r["steps_to_target"]) for r in rs)
        best = statistics.mean(r["best_accuracy"] for r in rs)
        secs = "–" if m["seconds_to_target"] is None else f"{m['seconds_to_target']:.1f}"
        fe = "–" if m["fe_to_target"] is None else f"{m['fe_to_target']:,.0f}"
        batch = cfg.get("batch") or results["batch_size"]
        samples = "–" if m["steps_to_target"] is None else f"{m['steps_to_target'] * batch:,.0f}"
        lines.append(
            f"| {label} | {settings} | {per_seed} | {m['steps_to_target'] or 'not reached'} | "
            f"{ratio(m['steps_to_target'], ref.get('steps_to_target'))} | "
            f"{secs} | "
            f"{ratio(m['seconds_to_target'], ref.get('seconds_to_target'))} | "
            f"{samples} | {fe} | "
            f"{m['seconds_per_step']:.4f} | {best:.3f} |"
        )
    lines += ["", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default=",".join(CONFIGS))
    ap.add_argument("--set", action="append", default=[], metavar="LABEL.KEY=VALUE")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--every", type=int, default=20, help="evaluate every this many steps")
    ap.add_argument("--target", type=float, default=0.85)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/second-order-fashion")
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="RESULTS",
        help="write OUT/results.json and report.md from these results.json files (runs done in parallel)",
    )
    args = ap.parse_args()
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        merged = {**parts[0], "configs": {}, "runs": [], "command": " ; ".join(p["command"] for p in parts)}
        for p in parts:
            merged["configs"].update(p["configs"])
            merged["runs"] += p["runs"]
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(merged, indent=1) + "\n")
        (out / "report.md").write_text(report(merged))
        print(report(merged))
        return
    torch.set_num_threads(args.threads)
    chosen = configs([m.strip() for m in args.methods.split(",") if m.strip()], args.set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "target": args.target,
        "batch_size": args.batch_size,
        "every": args.every,
        "seeds": list(range(args.seeds)),
        "configs": chosen,
        "command": "python " + " ".join(sys.argv),
        "runs": [],
    }
    for label, cfg in chosen.items():
        for seed in results["seeds"]:
            r = run_one(label, cfg, seed, args.batch_size, args.every, args.target)
            results["runs"].append(r)
            print(
                f"{label:<18} seed {seed}: steps to {args.target} = {r['steps_to_target']}, "
                f"s = {r['seconds_to_target']}, best {r['best_accuracy']:.4f}, {r['seconds_per_step']:.4f} s/step",
                flush=True,
            )
            (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
