"""Delayed non-match-to-sample learned from one reward per trial: Miconi's rule against exploratory Hebb.

A chaotic rate network (:class:`unigrad.bio.RateRNN`, gain 1.5) is trained on ``dnms`` (:mod:`unigrad.bio.tasks`)
with a reward-modulated rule, one trial per update by default (as Miconi 2017). Every ``--every`` training trials
the network answers ``--eval-trials`` fresh trials (a held-out seed) twice: with its exploration noise switched off
(``clean``) and with it on (``noisy``: fresh kicks, as during learning, the condition under which Miconi reports
his error). We record the first trial count at which each accuracy reaches ``--target`` (0.9), and the first from
which every later evaluation stays at or above it.

Defaults follow Miconi's published setting (eLife 6:e20899, 2017, and the code of
github.com/ThomasMiconi/BiologicallyPlausibleLearningRNN, ``dnms/net.cpp``): 200 units, ``τ = 30`` ms,
``dt = 1`` ms, a 1,000 ms trial (stimulus 200, delay 200, stimulus 200, gap 200, response 200 ms), the output is
the rate of unit 0 (a frozen one-hot readout), input weights fixed, the error ``mean |y − y*|`` over the response
window (``reward="abs"``), kicks with probability 0.003 per ms uniform in ``±0.5`` on ``x``
(:class:`unigrad.noise.SparseKicks`, not accessible to the rule), ``β = 0.05``, cubed fluctuations, per-condition
reward average with rate 0.25, ``η = 0.1`` (``SGD(lr=0.1)``), the change multiplied by ``|R̄_c|`` and clipped to
``±3·10⁻⁴`` (``clip = 3e-4/η``). Differences from the paper: the initial state is ``x = 0`` (Miconi: uniform in
``±0.1``), there are no clamped bias units, trials are drawn at random rather than cycled, and learning starts at
the first trial (Miconi waits 100 trials; here a condition's first trial only sets its reward average).

Rules (``--rules``):

* ``miconi`` — :class:`unigrad.bio.rules.miconi.Miconi` as above.
* ``eh-activity`` — :class:`unigrad.bio.rules.exploratory_hebb.ExploratoryHebb` with ``signal="activity"``, the same
  kicks and reward average: Miconi's rule without the supralinearity (``S(z) = z``), decay ``γ = --gamma``.
* ``eh-noise`` — exploratory Hebb with ``signal="noise"``: the kicks made readable (``accessible=True``) and
  correlated directly with the presynaptic rates (node perturbation through time).

The exploratory-Hebb rules use ``--eh-lr`` and ``--eh-clip`` (no baseline scaling).

    python benchmarks/bio_dnms.py --rules miconi --seeds 0 1 2 [--trials 2000] [--every 100]

Writes ``benchmarks/results/bio_dnms/<tag>.json`` (every evaluation of every run, rewritten after each run) and
``<tag>.png`` (learning curves), and prints the trials to the target per run.
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

from _common import cpu_name
from unigrad.bio import RateRNN
from unigrad.bio.rules.exploratory_hebb import ExploratoryHebb
from unigrad.bio.rules.miconi import KICK_RATE, KICK_SIZE, Miconi
from unigrad.bio.tasks import get_bio_task
from unigrad.core.errors import NonFiniteLossError
from unigrad.core.estimator import Estimator
from unigrad.noise import SparseKicks

RESULTS = Path(__file__).parent / "results" / "bio_dnms"
RULES = ("miconi", "eh-activity", "eh-noise")
EVAL_SEED = 1_000_003  # trials for evaluation come from this seed, never trained on


def build(rule: str, args: argparse.Namespace, seed: int) -> tuple[RateRNN, Estimator, torch.optim.Optimizer, Any]:
    """The task, the network with its frozen one-hot readout, the rule and its optimizer."""
    task = get_bio_task("dnms", dt=args.dt, reward="abs")
    net = RateRNN(task.n_in, args.n_rec, 1, tau=args.tau, dt=args.dt, gain=args.gain, seed=seed)
    with torch.no_grad():  # the response is the rate of unit 0 (Miconi's output neuron)
        net.out.weight.zero_()
        net.out.weight[0, 0] = 1.0
        net.out.bias.zero_()
    net.out.requires_grad_(False)
    net.inp.requires_grad_(False)
    p = min(1.0, args.kick_rate * args.dt)
    if rule == "miconi":
        est: Estimator = Miconi(
            SparseKicks(p, args.kick_size, accessible=False),
            scale_by_baseline=not args.no_scale,
            clip=args.clip,
            baseline_rate=args.baseline_rate,
            seed=seed,
        )
        lr = args.lr
    else:
        signal = rule.removeprefix("eh-")
        est = ExploratoryHebb(
            signal,
            SparseKicks(p, args.kick_size, accessible=signal == "noise"),
            gamma=args.gamma,
            baseline_rate=args.baseline_rate,
            condition="inputs",
            clip=args.eh_clip,
            seed=seed,
        )
        lr = args.eh_lr
    opt = torch.optim.SGD([q for q in net.parameters() if q.requires_grad], lr=lr)
    return net, est, opt, task


@torch.no_grad()
def evaluate(net: RateRNN, task: Any, args: argparse.Namespace, seed: int, at: int) -> dict[str, float]:
    """Accuracy and mean |error| on fresh trials, clean and with fresh kicks."""
    batch = task.sample(args.eval_trials, seed=EVAL_SEED + seed, step=at)
    clean = net(batch.inputs)
    kicks = SparseKicks(min(1.0, args.kick_rate * args.dt), args.kick_size)
    xi = kicks.sequence(batch.steps, (batch.size, net.n_rec), seed=EVAL_SEED + seed, trial=at, dt=net.dt)
    noisy = net(batch.inputs, xi)
    return {
        "trials": at,
        "clean": task.score(clean, batch),
        "noisy": task.score(noisy, batch),
        "clean_error": float(-task.reward(clean, batch).mean()),
        "noisy_error": float(-task.reward(noisy, batch).mean()),
    }


def stable_from(curve: list[dict[str, float]], key: str, target: float) -> int | None:
    """The first evaluated trial count from which every later evaluation of ``key`` reaches ``target``."""
    first = None
    for point in curve:
        if point[key] < target:
            first = None
        elif first is None:
            first = int(point["trials"])
    return first


def run(rule: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    net, est, opt, task = build(rule, args, seed)
    curve = [evaluate(net, task, args, seed, 0)]
    start, eval_time = time.perf_counter(), 0.0
    reached: dict[str, int | None] = {"clean": None, "noisy": None}
    diverged = False
    for k in range(args.trials):
        batch = task.sample(args.batch, seed=seed, step=k)
        try:
            est.estimate(net, task.objective(batch))
        except NonFiniteLossError:
            diverged = True
            print(f"{rule} seed {seed}: diverged at update {k}", flush=True)
            break
        opt.step()
        if (k + 1) % args.every == 0:
            t0 = time.perf_counter()
            point = evaluate(net, task, args, seed, (k + 1) * args.batch)
            eval_time += time.perf_counter() - t0
            curve.append(point)
            for key in reached:
                if reached[key] is None and point[key] >= args.target:
                    reached[key] = point["trials"]
            print(
                f"{rule} seed {seed} trials {point['trials']}: clean {point['clean']:.3f} noisy {point['noisy']:.3f} "
                f"|err| {point['noisy_error']:.3f}",
                flush=True,
            )
            if args.stop_at_target and reached["clean"] is not None and reached["noisy"] is not None:
                break
        if time.perf_counter() - start > args.max_minutes * 60:
            break
    stable = {key: stable_from(curve, key, args.target) for key in reached}
    return {
        "rule": rule,
        "seed": seed,
        "estimator": repr(est),
        "lr": opt.param_groups[0]["lr"],
        "trials_trained": k * args.batch if diverged else (k + 1) * args.batch,
        "diverged": diverged,
        "trials_to_target_clean": reached["clean"],
        "trials_to_target_noisy": reached["noisy"],
        "stable_from_clean": stable["clean"],
        "stable_from_noisy": stable["noisy"],
        "best_clean": max(p["clean"] for p in curve),
        "best_noisy": max(p["noisy"] for p in curve),
        "final": curve[-1],
        "train_wall_s": time.perf_counter() - start - eval_time,
        "curve": curve,
    }


def plot(results: list[dict[str, Any]], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = {"miconi": "tab:red", "eh-activity": "tab:blue", "eh-noise": "tab:green"}
    for ax, key in zip(axes, ("clean", "noisy")):
        for r in results:
            xs = [p["trials"] for p in r["curve"]]
            label = f"{r['rule']} seed {r['seed']}"
            style = ("-", "--", ":", "-.")[r["seed"] % 4]
            ax.plot(xs, [p[key] for p in r["curve"]], style, color=colors.get(r["rule"]), alpha=0.8, label=label)
        ax.axhline(target, color="k", lw=0.8, ls=":")
        ax.axhline(0.5, color="grey", lw=0.8, ls="-.")
        ax.set_xlabel("training trials")
        ax.set_title(f"DNMS accuracy, {key} ({'noise off' if key == 'clean' else 'kicks on'})")
    axes[0].set_ylabel("accuracy on fresh trials")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", nargs="+", choices=RULES, default=["miconi"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--trials", type=int, default=2000, help="training updates per run (trials = updates · batch)")
    ap.add_argument("--batch", type=int, default=1, help="trials per update")
    ap.add_argument("--every", type=int, default=100, help="updates between evaluations")
    ap.add_argument("--eval-trials", type=int, default=200)
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--stop-at-target", action="store_true", help="stop once both accuracies reach the target")
    ap.add_argument("--max-minutes", type=float, default=20.0, help="wall-time cap per run")
    ap.add_argument("--n-rec", type=int, default=200)
    ap.add_argument("--dt", type=float, default=1.0)
    ap.add_argument("--tau", type=float, default=30.0)
    ap.add_argument("--gain", type=float, default=1.5)
    ap.add_argument("--kick-rate", type=float, default=KICK_RATE, help="kicks per unit per ms")
    ap.add_argument("--kick-size", type=float, default=KICK_SIZE)
    ap.add_argument("--baseline-rate", type=float, default=0.25)
    ap.add_argument("--lr", type=float, default=0.1, help="Miconi's η")
    ap.add_argument("--clip", type=float, default=3e-3, help="Miconi: clip on the direction (3e-4/η)")
    ap.add_argument("--no-scale", action="store_true", help="Miconi: do not scale the change by |R̄_c|")
    ap.add_argument("--eh-lr", type=float, default=0.003)
    ap.add_argument("--eh-clip", type=float, default=None)
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="default")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    out: dict[str, Any] = {
        "benchmark": "bio_dnms",
        "command": "python benchmarks/bio_dnms.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": vars(args),
        "machine": {"cpu": cpu_name(), "python": platform.python_version(), "torch": torch.__version__},
        "results": results,
    }
    for rule in args.rules:
        for seed in args.seeds:
            results.append(run(rule, seed, args))
            r = results[-1]
            print(
                f"== {rule} seed {seed}: trials to {args.target:g} clean {r['trials_to_target_clean']} noisy "
                f"{r['trials_to_target_noisy']} (stable from {r['stable_from_clean']}, {r['stable_from_noisy']}); "
                f"best clean {r['best_clean']:.3f} noisy {r['best_noisy']:.3f}; train {r['train_wall_s']:.0f}s",
                flush=True,
            )
            (RESULTS / f"{args.tag}.json").write_text(json.dumps(out, indent=1))
    summary = {}
    for rule in args.rules:
        mine = [r for r in results if r["rule"] == rule]
        for key in ("clean", "noisy"):
            hits = [r[f"trials_to_target_{key}"] for r in mine]
            stable = [r[f"stable_from_{key}"] for r in mine]
            summary[f"{rule}/{key}"] = {
                "reached": f"{sum(h is not None for h in hits)}/{len(hits)}",
                "median_trials": statistics.median(hits) if all(h is not None for h in hits) else None,
                "trials": hits,
                "stable_from": stable,
                "best": [r[f"best_{key}"] for r in mine],
            }
    out["summary"] = summary
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(out, indent=1))
    plot(results, args.target, RESULTS / f"{args.tag}.png")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
