"""``unigrad experiment NAME``: run one of the experiments (:mod:`unigrad.experiments`) and write its figures
and report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from unigrad.cli._parser import THREADS_LIMIT, apply_threads, positive_float, positive_int
from unigrad.core.errors import UnigradError


def add_experiment_parser(sub: Any) -> None:
    """Add ``experiment`` to the ``sub`` parsers of the main parser."""
    from unigrad.experiments import EXPERIMENTS

    width = max(len(k) for k in EXPERIMENTS)
    listing = "\n".join(f"  {k:<{width}}  {v[1]}" for k, v in EXPERIMENTS.items())
    e = sub.add_parser(
        "experiment",
        help="run an experiment and draw its figures (" + ", ".join(EXPERIMENTS) + ")",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"experiments (NAME), one per line:\n{listing}",
    )
    e.add_argument("name", help="the experiment to run: one of those listed below", metavar="NAME")
    e.add_argument("--out", default=None, help="output folder (default runs/experiment-<name>-<YYYYmmdd-HHMMSS>)")
    e.add_argument("--seeds", type=positive_int, default=3, help="seeds per configuration (default 3)")
    e.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of the pipeline, not results")
    e.add_argument(
        "--threads", type=positive_int, default=1, help=f"torch intra-op threads (default 1; {THREADS_LIMIT})"
    )
    e.add_argument("--no-progress", action="store_true", help="do not print what is running")
    e.add_argument(
        "--jobs",
        type=positive_int,
        default=None,
        help="bio-table, finetune and hardware-*: run this many runs at once, one process and one thread each "
        "(default 1)",
    )
    e.add_argument(
        "--report-only",
        action="store_true",
        help="finetune: report the runs already in --out (written there as each run ends), train none",
    )
    conv = e.add_argument_group("convergence-orders only")
    conv.add_argument(
        "--iterations", type=positive_int, default=None, help="budget of the order-0 and order-1 methods (20000)"
    )
    conv.add_argument(
        "--second-order-iterations",
        type=positive_int,
        default=None,
        help="budget of the order-2 and order-3 methods (200)",
    )
    conv.add_argument("--n", type=positive_int, default=None, help="dimension of the quadratic (20)")
    conv.add_argument("--kappa", type=positive_float, default=None, help="its condition number (1000)")


CONVERGENCE_ONLY = ("iterations", "second_order_iterations", "n", "kappa")


def cmd_experiment(args: argparse.Namespace) -> int:
    """``unigrad experiment NAME``: run it, print its report and what was written; 0."""
    from datetime import datetime

    from unigrad.experiments import runner

    run = runner(args.name)
    options = {k: getattr(args, k) for k in CONVERGENCE_ONLY if getattr(args, k) is not None}
    if options and args.name != "convergence-orders":
        flags = ", ".join("--" + k.replace("_", "-") for k in options)
        raise UnigradError(f"{flags} apply only to the convergence-orders experiment")
    if options.get("kappa") is not None and options["kappa"] < 1:
        raise UnigradError(f"--kappa must be >= 1 (a condition number), got {options['kappa']:g}")
    if args.jobs is not None:
        if args.name not in ("bio-table", "finetune") and not args.name.startswith("hardware-"):
            raise UnigradError("--jobs applies only to the bio-table, finetune and hardware-* experiments")
        options["jobs"] = args.jobs
    if args.report_only:
        if args.name != "finetune":
            raise UnigradError("--report-only applies only to the finetune experiment")
        if not args.out:
            raise UnigradError("--report-only needs --out, the folder of the runs to report")
        options["report_only"] = True
    apply_threads(args.threads)
    out = Path(args.out) if args.out else Path("runs") / f"experiment-{args.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and not out.is_dir():
        raise UnigradError(f"--out {out} exists and is not a folder")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        report = run(out, seeds=args.seeds, quick=args.quick, progress=None if args.no_progress else say, **options)
    except OSError as e:
        raise UnigradError(f"cannot write to {out}: {e.strerror or e}") from None
    print(report)
    written = sorted(p.name for p in out.iterdir() if p.is_file())
    print(f"wrote {out}/: {', '.join(written)}")
    return 0


__all__ = ["CONVERGENCE_ONLY", "add_experiment_parser", "cmd_experiment"]
