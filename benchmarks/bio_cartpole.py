"""CartPole-v1 learned from a reward signal: NRL (noise-based, no backprop) against REINFORCE (backprop).

Each method trains a fresh policy network on CartPole-v1 (:mod:`unigrad.bio.control`), one update per
``--episodes-per-update`` training episodes, for ``--episodes`` training episodes or ``--max-minutes`` of wall
time. Every ``--eval-every`` training episodes the clean network (no learning-rule noise) plays the same 100
evaluation episodes (environment seeds from the evaluation stream, never trained on) twice: with greedy
(arg-max) actions and with actions sampled from its softmax policy. We record the first training episode count at
which the mean evaluation return reaches ``--target`` (475, the CartPole-v1 "solved" threshold) and the mean of
the last 100 training returns (what the NRL paper plots: its training episodes sample from the clean policy).

Defaults follow the NRL paper's CartPole setup (arXiv:2503.23972 and its public code): one hidden layer of 64
units, leaky-ReLU, no biases, Gaussian node noise σ = 1e-3, trace decay γ = 1, baseline rate γ_avg = 0.66,
per-layer normalisation N_l = layer width, plain SGD, one episode per update, 20,000 episodes. The paper's code
lists η ∈ {5e-3, 1e-2, 5e-2}; we use η = 1e-2 (``--nrl-lr``; with 5e-2 our seed-0 run collapsed to an
always-the-same-action policy between 750 and 1000 episodes).
REINFORCE uses the same network with Adam (lr 1e-2), discount 0.99, a running-mean baseline and normalised
advantages, 4 episodes per update, 2,000 episodes.

    .venv/bin/python benchmarks/bio_cartpole.py --methods nrl reinforce [--episodes 20000] [--eval-every 500]

Writes ``benchmarks/results/bio_cartpole/<tag>.json`` and ``<tag>.png`` (learning curves) and prints, per method,
the episodes needed to reach the target (or the best evaluation return reached) and the wall time.
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
from unigrad.bio.control import ControlTask, evaluate, policy_mlp
from unigrad.bio.rules.nrl import NRL
from unigrad.bio.rules.reinforce import Reinforce

RESULTS = Path(__file__).parent / "results" / "bio_cartpole"


def build(method: str, args: argparse.Namespace, task: ControlTask) -> tuple[torch.nn.Module, Any, Any, int]:
    """Model, estimator, optimizer and episodes per update of ``method``."""
    model = policy_mlp(
        task.obs_dim, task.n_actions, tuple(args.hidden), activation=args.activation, bias=args.bias, seed=args.seed
    )
    if method == "nrl":
        est = NRL(
            sigma=args.sigma,
            gamma=args.gamma,
            gamma_avg=args.gamma_avg,
            normalization=args.normalization,
            seed=args.seed,
        )
        lr, opt_name, per_update = args.nrl_lr, args.nrl_optimizer, args.nrl_episodes_per_update
    elif method == "reinforce":
        est = Reinforce(discount=0.99, baseline="running", normalize=True, seed=args.seed)
        lr, opt_name, per_update = args.reinforce_lr, "adam", args.reinforce_episodes_per_update
    else:
        raise SystemExit(f"unknown method {method!r}; choose nrl or reinforce")
    opt_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[opt_name]
    return model, est, opt_cls(model.parameters(), lr=lr), per_update


def run(method: str, args: argparse.Namespace) -> dict[str, Any]:
    task = ControlTask("cartpole")
    model, est, opt, per_update = build(method, args, task)
    curve: list[dict[str, Any]] = []
    train_returns: list[float] = []
    reached: dict[str, int | None] = {"greedy": None, "sampled": None, "train100": None}
    steps = forwards_equiv = 0
    start = time.perf_counter()
    eval_time = 0.0

    def do_eval(episodes: int) -> dict[str, Any]:
        nonlocal eval_time
        t0 = time.perf_counter()
        greedy = evaluate(model, task, args.eval_episodes, seed=args.seed, greedy=True)
        sampled = evaluate(model, task, args.eval_episodes, seed=args.seed, greedy=False)
        eval_time += time.perf_counter() - t0
        train100 = statistics.fmean(train_returns[-100:]) if train_returns else float("nan")
        point = {
            "episodes": episodes,
            "env_steps": steps,
            "forward_equivalents": forwards_equiv,
            "greedy": greedy,
            "sampled": sampled,
            "train_mean100": train100,
            "wall_s": time.perf_counter() - start - eval_time,
        }
        for key, value in (("greedy", greedy), ("sampled", sampled), ("train100", train100)):
            if reached[key] is None and value >= args.target:
                reached[key] = episodes
        print(
            f"[{method}] ep {episodes:6d}  greedy {greedy:6.1f}  sampled {sampled:6.1f}  train100 {train100:6.1f}  "
            f"steps {steps:9d}  {point['wall_s']:7.1f}s",
            flush=True,
        )
        return point

    curve.append(do_eval(0))
    update = 0
    episodes = 0
    stop_reason = "episodes"
    budget = args.episodes if method == "nrl" else args.reinforce_episodes
    while episodes < budget:
        obj = task.objective(seed=args.seed, episode=update, episodes=per_update)
        opt.zero_grad()
        est_out = est.estimate(model, obj)
        opt.step()
        update += 1
        episodes += per_update
        steps += est_out.info["steps"]
        forwards_equiv += est_out.cost.forward_equivalents
        train_returns.extend(est_out.info["returns"])
        if episodes % args.eval_every < per_update:
            curve.append(do_eval(episodes))
            if args.stop_when_solved and reached["greedy"] is not None and reached["sampled"] is not None:
                stop_reason = "solved"
                break
        if time.perf_counter() - start > 60 * args.max_minutes:
            stop_reason = "time"
            curve.append(do_eval(episodes))
            break
    best = max(curve, key=lambda p: p["greedy"])
    return {
        "method": method,
        "estimator": repr(est),
        "optimizer": type(opt).__name__,
        "lr": opt.param_groups[0]["lr"],
        "episodes_per_update": per_update,
        "episodes_trained": episodes,
        "env_steps": steps,
        "stop_reason": stop_reason,
        "episodes_to_target": reached,
        "best_greedy": best["greedy"],
        "best_greedy_at": best["episodes"],
        "best_sampled": max(p["sampled"] for p in curve),
        "train_wall_s": time.perf_counter() - start - eval_time,
        "eval_wall_s": eval_time,
        "curve": curve,
    }


def plot(results: list[dict[str, Any]], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {"nrl": "tab:red", "reinforce": "tab:blue"}
    for r in results:
        xs = [p["episodes"] for p in r["curve"]]
        c = colors.get(r["method"], None)
        ax.plot(xs, [p["greedy"] for p in r["curve"]], "-", color=c, label=f"{r['method']} (greedy eval)")
        ax.plot(xs, [p["sampled"] for p in r["curve"]], "--", color=c, alpha=0.7, label=f"{r['method']} (sampled eval)")
    ax.axhline(target, color="k", lw=0.8, ls=":", label=f"target {target:g}")
    ax.axhline(22.0, color="grey", lw=0.8, ls="-.", label="random policy ≈ 22")
    ax.set_xlabel("training episodes")
    ax.set_ylabel("mean return, 100 evaluation episodes")
    ax.set_title("CartPole-v1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=["nrl", "reinforce"])
    ap.add_argument("--episodes", type=int, default=20000, help="NRL training episodes")
    ap.add_argument("--reinforce-episodes", type=int, default=2000, help="REINFORCE training episodes")
    ap.add_argument("--eval-every", type=int, default=500, help="training episodes between evaluations")
    ap.add_argument("--eval-episodes", type=int, default=100)
    ap.add_argument("--target", type=float, default=475.0)
    ap.add_argument("--max-minutes", type=float, default=30.0, help="wall-time cap per method")
    ap.add_argument("--stop-when-solved", action="store_true", help="stop once both evaluations reach the target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, nargs="+", default=[64])
    ap.add_argument("--activation", default="leaky_relu")
    ap.add_argument("--bias", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--sigma", type=float, default=1e-3)
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--gamma-avg", type=float, default=0.66)
    ap.add_argument("--normalization", default="layer")
    ap.add_argument("--nrl-lr", type=float, default=1e-2)
    ap.add_argument("--nrl-optimizer", choices=("sgd", "adam"), default="sgd")
    ap.add_argument("--nrl-episodes-per-update", type=int, default=1)
    ap.add_argument("--reinforce-lr", type=float, default=1e-2)
    ap.add_argument("--reinforce-episodes-per-update", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="default")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = [run(m, args) for m in args.methods]
    out = {
        "benchmark": "bio_cartpole",
        "command": "python benchmarks/bio_cartpole.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "settings": vars(args),
        "results": results,
    }
    json_path = RESULTS / f"{args.tag}.json"
    json_path.write_text(json.dumps(out, indent=1))
    plot(results, args.target, RESULTS / f"{args.tag}.png")
    print(f"\nwrote {json_path} and {json_path.with_suffix('.png')}")
    for r in results:
        reach = r["episodes_to_target"]
        print(
            f"{r['method']:10s} episodes to mean return >= {args.target:g}: greedy {reach['greedy']}, "
            f"sampled {reach['sampled']}, train100 {reach['train100']}; best greedy {r['best_greedy']:.1f} "
            f"at {r['best_greedy_at']} episodes; trained {r['episodes_trained']} episodes, "
            f"{r['env_steps']} env steps in {r['train_wall_s']:.0f} s (+{r['eval_wall_s']:.0f} s evaluation)"
        )


if __name__ == "__main__":
    main()
