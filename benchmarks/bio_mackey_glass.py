"""Mackey–Glass prediction with a rate RNN: BPTT vs node perturbation in time (NP, ANP, decorrelated ANP).

A :class:`~unigrad.bio.RateRNN` (tanh units) is trained to predict the Mackey–Glass series (τ = 17) one sample
ahead (``get_bio_task("mackey-glass")``: windows of ``--steps`` samples, the first ``--washout`` unscored) with
Adam for a fixed number of updates, by

* ``bptt`` — the ``backprop`` estimator on the unrolled network (backpropagation through time),
* ``np``   — :class:`~unigrad.bio.rules.np_time.NPTime` ``variant="np"`` (noise on every unit at every step),
* ``anp``  — ``variant="anp"`` (measured activity changes, c = √N),
* ``danp`` — ANP on a network whose ``inp``/``rec``/``out`` layers are decorrelated (:func:`unigrad.decorrelate`,
  rule ``cov-identity``, rate ``--decor-lr``, updated after every step, with the forward weights compensated,
  ``W ← W·A⁻¹``, unless ``--no-compensate``),

for seeds 0..S−1 (seed s: initial weights and training series of seed s). Every ``--every`` updates the
normalised error (NRMSE = RMSE / std(target)) is measured on ``--eval-batch`` fresh windows from the series of
another seed (``--eval-seed``), never trained on. The persistence baseline (predict ``x_{t+1} = x_t``) is
reported on the same windows and over the whole evaluation series.

García Fernández, Keemink & van Gerven (Front. Neurosci. 2024) used 500 tanh units, Adam 1e-3, σ = 1e-3 and a
decorrelation rate of 1e-4. The defaults scale the network down to 100 units for a single CPU thread (a
500-unit BPTT update takes about 0.44 s there, a 100-unit one 0.04 s) and are what
``benchmarks/results/bio-mackey-glass`` was run with::

    python benchmarks/bio_mackey_glass.py --seeds 3 --out benchmarks/results/bio-mackey-glass

Every method gets its own Adam learning rate, the best of a grid tried on seed 0 with these settings (final
held-out NRMSE after 2,000 cosine-annealed updates): BPTT 1e-3 / 3e-3 / 1e-2 → 0.029 / 0.018 / 0.017;
NP 3e-4 / 1e-3 / 3e-3 → 0.104 / 0.050 / 0.055; ANP 3e-4 / 1e-3 / 3e-3 → 0.094 / 0.051 / 0.060; decorrelated ANP
(compensated) 1e-3 / 3e-3 → 0.058 / 0.039. Without weight compensation (``--no-compensate``) the decorrelation
keeps changing the network's function while the annealed learning rate can no longer follow, and decorrelated
ANP ended at 0.24 (lr 1e-3). Neither 4 probes per update (NP 0.055, ANP 0.056 at lr 1e-3) nor the exact local
readout (``--readout local``: NP 0.056, ANP 0.049) changed much against one probe with the perturbed readout.

Results go to ``OUT/results.json`` (every evaluation of every run, rewritten after each run; runs already
there are skipped, so an interrupted benchmark resumes), ``OUT/report.md`` and ``OUT/nrmse.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import unigrad
from _common import cpu_name
from unigrad.bio import RateRNN
from unigrad.bio.rules.np_time import NPTime
from unigrad.bio.tasks import get_bio_task
from unigrad.core.estimator import Estimator

METHODS = ("bptt", "np", "anp", "danp")


def make_estimator(method: str, args: argparse.Namespace, seed: int) -> Estimator:
    if method == "bptt":
        return unigrad.make_estimator("backprop")
    variant = "np" if method == "np" else "anp"
    return NPTime(probes=args.probes, sigma=args.sigma, variant=variant, readout=args.readout, seed=seed)


def run(method: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    task = get_bio_task("mackey-glass", steps=args.steps, washout=args.washout)
    held_out = task.sample(args.eval_batch, seed=args.eval_seed, step=0)
    model = RateRNN(1, args.n_rec, 1, tau=args.tau, dt=args.dt, gain=args.gain, seed=seed)
    if method == "danp":
        unigrad.decorrelate(model, lr=args.decor_lr, compensate=args.compensate)
    lr = {"bptt": args.lr_bptt, "np": args.lr_np, "anp": args.lr_anp, "danp": args.lr_danp}[method]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = None
    if args.schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.updates)
    est = make_estimator(method, args, seed)

    def nrmse() -> float:
        model.eval()
        with torch.no_grad():
            value = task.score(model(held_out.inputs), held_out)
        model.train()
        return value

    curve: list[dict[str, float]] = [{"update": 0, "nrmse": nrmse(), "seconds": 0.0, "forward_equivalents": 0.0}]
    clock, fe, losses = 0.0, 0.0, []
    for k in range(1, args.updates + 1):
        batch = task.sample(args.batch, seed=seed, step=k)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        estimate = est.estimate(model, task.objective(batch))
        opt.step()
        if schedule is not None:
            schedule.step()
        if method == "danp":
            unigrad.update_decorrelation(model)
        clock += time.perf_counter() - start
        fe += estimate.cost.forward_equivalents
        losses.append(estimate.loss)
        if k % args.every == 0 or k == args.updates:
            point = {"update": k, "nrmse": nrmse(), "seconds": clock, "forward_equivalents": fe}
            point["train_loss"] = statistics.fmean(losses[-args.every :])
            curve.append(point)
            print(f"{method} seed {seed} update {k}: NRMSE {point['nrmse']:.4f} ({clock:.0f}s)", flush=True)
    return {"method": method, "seed": seed, "lr": lr, "curve": curve, "final_nrmse": curve[-1]["nrmse"]}


def summary(results: dict[str, Any]) -> dict[str, Any]:
    by: dict[str, list[float]] = {}
    for r in results["runs"]:
        by.setdefault(r["method"], []).append(r["final_nrmse"])
    out: dict[str, Any] = {m: {"median": statistics.median(v), "values": v} for m, v in by.items()}
    if "bptt" in by:
        for m in by:
            if m != "bptt":
                ratio = statistics.median(by[m]) / statistics.median(by["bptt"])
                out[m]["ratio_to_bptt"] = ratio
                out[m]["within_2x_of_bptt"] = ratio <= 2.0
    return out


def report(results: dict[str, Any], out: Path) -> None:
    s = results["summary"]
    cfg = results["config"]
    lines = [
        "# Mackey–Glass: BPTT vs node perturbation in time",
        "",
        f"RateRNN 1-{cfg['n_rec']}-1 (tanh, α = dt/τ = {cfg['dt'] / cfg['tau']:g}, gain {cfg['gain']}), "
        f"windows of {cfg['steps']} samples ({cfg['washout']} unscored), batch {cfg['batch']}, "
        f"{cfg['updates']} Adam updates ({cfg['schedule']} learning rate), σ = {cfg['sigma']}, {cfg['probes']} "
        f"probe(s), readout {cfg['readout']!r}; "
        f"seeds {cfg['seeds']}; CPU: {results['cpu']}, {cfg['threads']} thread(s).",
        "",
        f"Persistence baseline (x_{{t+1}} = x_t): NRMSE {results['persistence']['eval_windows']:.4f} on the "
        f"evaluation windows, {results['persistence']['series']:.4f} over the whole evaluation series; chance "
        "(predict the mean) 1.",
        "",
        "| method | lr | final NRMSE per seed | median | median / BPTT | train seconds (median) | FE per update |",
        "|---|---|---|---|---|---|---|",
    ]
    lrs = {r["method"]: r["lr"] for r in results["runs"]}
    for m in METHODS:
        if m not in s:
            continue
        runs = [r for r in results["runs"] if r["method"] == m]
        ratio = s[m].get("ratio_to_bptt")
        vals = ", ".join(f"{v:.4f}" for v in s[m]["values"])
        shown = "" if ratio is None else f"{ratio:.2f}"
        secs = statistics.median(r["curve"][-1]["seconds"] for r in runs)
        fe = statistics.median(r["curve"][-1]["forward_equivalents"] / r["curve"][-1]["update"] for r in runs)
        lines.append(f"| {m} | {lrs[m]:g} | {vals} | {s[m]['median']:.4f} | {shown} | {secs:.0f} | {fe:.0f} |")
    verdicts = [
        f"{m}: {'within' if s[m]['within_2x_of_bptt'] else 'not within'} 2x of BPTT ({s[m]['ratio_to_bptt']:.2f}x)"
        for m in METHODS
        if m in s and "within_2x_of_bptt" in s[m]
    ]
    lines += ["", "Median final NRMSE against BPTT's: " + "; ".join(verdicts) + "."]
    out.joinpath("report.md").write_text("\n".join(lines) + "\n")


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {"bptt": "k", "np": "tab:blue", "anp": "tab:orange", "danp": "tab:green"}
    for r in results["runs"]:
        xs = [p["update"] for p in r["curve"]]
        ys = [p["nrmse"] for p in r["curve"]]
        first = r["seed"] == min(q["seed"] for q in results["runs"] if q["method"] == r["method"])
        ax.plot(xs, ys, color=colors[r["method"]], alpha=0.7, label=r["method"] if first else None)
    ax.axhline(results["persistence"]["eval_windows"], color="gray", ls="--", label="persistence")
    ax.set_yscale("log")
    ax.set_xlabel("updates")
    ax.set_ylabel("NRMSE (held-out windows)")
    ax.set_title(f"Mackey–Glass, RateRNN {results['config']['n_rec']} units")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "nrmse.png", dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--n-rec", type=int, default=100)
    p.add_argument("--tau", type=float, default=1.0)
    p.add_argument("--dt", type=float, default=1.0)
    p.add_argument("--gain", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--washout", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--updates", type=int, default=2000)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--sigma", type=float, default=1e-3)
    p.add_argument("--probes", type=int, default=1)
    p.add_argument("--readout", choices=("perturb", "local"), default="perturb")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="cosine")
    p.add_argument("--lr-bptt", type=float, default=1e-2)
    p.add_argument("--lr-np", type=float, default=1e-3)
    p.add_argument("--lr-anp", type=float, default=1e-3)
    p.add_argument("--lr-danp", type=float, default=3e-3)
    p.add_argument("--decor-lr", type=float, default=1e-4)
    p.add_argument(
        "--compensate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="danp: W ← W·A⁻¹ after each decorrelation update, so the update keeps the network's function",
    )
    p.add_argument("--eval-batch", type=int, default=256)
    p.add_argument("--eval-seed", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/bio-mackey-glass"))
    args = p.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r}; valid: {', '.join(METHODS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results: dict[str, Any] = {"config": config, "runs": []}
    if path.exists():
        old = json.loads(path.read_text())
        same = {k: v for k, v in old["config"].items() if k not in ("methods", "seeds", "out", "threads")}
        if same == {k: v for k, v in config.items() if k not in ("methods", "seeds", "out", "threads")}:
            results["runs"] = old["runs"]
    task = get_bio_task("mackey-glass", steps=args.steps, washout=args.washout)
    held_out = task.sample(args.eval_batch, seed=args.eval_seed, step=0)
    results["persistence"] = {
        "eval_windows": task.score(held_out.inputs, held_out),
        "series": task.persistence_nrmse(args.eval_seed),
    }
    results["cpu"], results["torch"], results["python"] = cpu_name(), torch.__version__, platform.python_version()
    done = {(r["method"], r["seed"]) for r in results["runs"]}
    for seed in range(args.seeds):
        for m in methods:
            if (m, seed) in done:
                continue
            results["runs"].append(run(m, seed, args))
            results["summary"] = summary(results)
            path.write_text(json.dumps(results, indent=1))
    results["summary"] = summary(results)
    path.write_text(json.dumps(results, indent=1))
    report(results, args.out)
    plot(results, args.out)
    print(args.out.joinpath("report.md").read_text())


if __name__ == "__main__":
    main()
