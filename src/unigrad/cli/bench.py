"""``unigrad bench``: the benchmark suite (:mod:`unigrad.suite`), or ``--list`` its tasks."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from unigrad.cli._parser import THREADS_LIMIT, apply_threads, positive_float, positive_int


def add_bench_parser(sub: Any) -> None:
    """Add ``bench`` to the ``sub`` parsers of the main parser."""
    b = sub.add_parser("bench", help="benchmark suite: tasks x methods x seeds at equal budgets, with peers")
    b.add_argument("--tasks", default=None, help="comma-separated task names (default: all; see --list)")
    b.add_argument(
        "--methods",
        default=None,
        help="comma-separated method specs replacing every task's defaults (see --list); zo-family stands for mezo "
        "and the modern zeroth-order family",
    )
    b.add_argument("--seeds", default="3", help="number of seeds (3 → 0,1,2) or a list (0,5,7); default 3")
    b.add_argument(
        "--budget-scale", type=positive_float, default=1.0, help="multiply every task's default budget (default 1)"
    )
    b.add_argument(
        "--budget", type=positive_float, default=None, help="budget in FE for every task (replaces the defaults)"
    )
    b.add_argument("--jobs", type=positive_int, default=1, help="runs at once, one process and one thread each")
    b.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help=f"torch intra-op threads with --jobs 1 (default 1; {THREADS_LIMIT})",
    )
    b.add_argument("--out", default=None, help="output folder (default runs/bench-<YYYYmmdd-HHMMSS>)")
    b.add_argument("--no-progress", action="store_true", help="do not print a line per finished run")
    b.add_argument("--list", action="store_true", help="list the tasks with their default budgets and methods")


def cmd_bench(args: argparse.Namespace) -> int:
    """``unigrad bench``: run the suite (or ``--list`` it); 1 if a run failed or diverged, else 0."""
    from unigrad.suite.run import bench
    from unigrad.suite.tasks import TASKS, default_methods

    if args.list:
        w = max(16, max(len(n) for n in TASKS) + 1)
        for task in TASKS.values():
            print(f"{task.name:<{w}}{task.description}")
            print(
                f"{'':<{w}}budget {task.budget:.3g} FE (one unit = one {task.unit}), metric {task.metric} "
                f"({'higher' if task.higher_is_better else 'lower'} is better), {task.dim:,} parameters"
            )
            print(f"{'':<{w}}methods: {', '.join(m for m in default_methods(task) if m not in task.excluded)}")
            if not task.default:
                print(f"{'':<{w}}not in the default set: run it with --tasks {task.name}")
        print("\nA method whose estimator has a max_dim below a task's dimension, or a peer whose package is")
        print("missing, is skipped on that task with a note. Budgets: --budget-scale X or --budget FE.")
        return 0
    apply_threads(args.threads)
    folder = bench(
        tasks=args.tasks,
        methods=args.methods,
        seeds=args.seeds,
        budget_scale=args.budget_scale,
        budget=args.budget,
        jobs=args.jobs,
        out=args.out,
        progress=not args.no_progress,
    )
    print((folder / "report.md").read_text())
    print(f"wrote {folder}/results.json, report.md and the plots")
    import json

    results = json.loads((folder / "results.json").read_text())
    bad = [
        f"{name} {label} seed {r['seed']}: {r['status']}: {r['message']}"
        for name, task in results["tasks"].items()
        for label, m in task["methods"].items()
        for r in m["runs"]
        if r["status"] != "ok"
    ]
    for msg in bad:
        print(msg, file=sys.stderr)
    return 1 if bad else 0


__all__ = ["add_bench_parser", "cmd_bench"]
