"""Command line: ``unigrad list | train | compare | experiment | bench | runs`` (also ``python -m unigrad``).

``train`` and ``compare`` record every run in the experiment store (``--store``, default
``runs/unigrad.sqlite``): a run already finished there is not trained again (``--rerun`` forces
it), and an unfinished one (a killed command) resumes from its checkpoint. ``--config FILE`` reads
options from a TOML file (:mod:`unigrad.config`); options typed on the command line override it.
``--diagnostics NAMES`` (with ``--diagnostics-every K``) records training diagnostics
(:mod:`unigrad.dynamics.diagnostics`: alignment with the backprop gradient, variance, norms,
sharpness, Hessian trace, drift, step size) and plots them in the report; their cost is kept out
of the run's own. ``runs list|show|compare|export|groups`` reads the store. ``experiment NAME``
runs one of the experiments (:mod:`unigrad.experiments`: scaling laws, biology, hardware) and
writes its figures and report. ``bench`` runs the benchmark suite (:mod:`unigrad.bench`: tasks ×
methods × seeds at equal budgets, against third-party black-box optimizers; ``--list`` shows the
tasks with their budgets and methods).

Exit status: 0 on success, 1 if a run diverged (its results up to the last good state are still
written), 2 for a user error (unknown task, method or optimizer, a bad option value or budget, a
malformed method spec, a missing dataset), printed as one ``error: ...`` line without a traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from unigrad.core.errors import UnigradError
from unigrad.core.options import one_line

ORDER_NAMES = {
    0: "order 0: function values only (zeroth order)",
    1: "order 1: gradients, JVPs (first order)",
    2: "order 2: curvature (second order)",
    3: "order 3: third-order models",
}


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Errors as one line; every option spelled out in full (no prefix matching, which would read
    ``--seed 5`` as ``--seeds 5``). Sub-command parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see: {self.prog} --help)")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


THREADS_PER_CPU = 4
"""``--threads`` is refused above this many threads per logical CPU (see ``_apply_threads``)."""
_THREADS_LIMIT = f"at most {THREADS_PER_CPU} per logical CPU, a warning above the CPUs this process may use"


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=_positive_int, default=64, help="samples per step (default 64)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--dtype",
        default="float32",
        help="float32, float64, bfloat16 or float16 (default float32); half precision steps float32 master weights",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch intra-op threads (default 1: the small default models gain nothing from more, "
        f"and lose a lot when other processes share the cores; {_THREADS_LIMIT})",
    )
    p.add_argument(
        "--eval-points",
        type=_positive_int,
        default=None,
        help="evaluation points per run (default 20, or every step of a shorter run); at most one a step: more "
        "than an epochs or steps budget has steps is refused",
    )
    p.add_argument("--out", default=None, help="run folder (default runs/<command>-<task>-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument(
        "--config", metavar="FILE", default=None, help="TOML file of these options; options typed here override it"
    )
    p.add_argument(
        "--store",
        metavar="PATH",
        default=None,
        help="experiment store (default runs/unigrad.sqlite, or $UNIGRAD_STORE): runs finished there are not "
        "trained again, unfinished ones resume from their checkpoints",
    )
    p.add_argument("--no-store", action="store_true", help="do not use the experiment store (no skip, no resume)")
    p.add_argument("--rerun", action="store_true", help="train again runs already finished in the store")
    p.add_argument(
        "--diagnostics",
        metavar="NAMES",
        default=None,
        help="comma-separated training diagnostics to record and plot: alignment, variance, norms, sharpness, "
        "trace, drift, step (not counted in wall time or forward-pass equivalents)",
    )
    p.add_argument(
        "--diagnostics-every",
        metavar="K",
        type=_positive_int,
        default=None,
        help="measure the diagnostics every K steps (default: at the evaluation points)",
    )


def build_parser() -> argparse.ArgumentParser:
    from unigrad.train.compare import DEFAULT_BUDGET, DEFAULT_METHODS, DEFAULT_SEEDS, DEFAULT_TASK
    from unigrad.train.runs_cli import add_runs_parser

    parser = _Parser(prog="unigrad", description="Every way of training a network on one footing.")
    sub = parser.add_subparsers(dest="command", metavar="{list,train,compare,experiment,bench,runs}")

    sub.add_parser("list", help="estimators by derivative order, and tasks")

    t = sub.add_parser("train", help="train one task with one method")
    t.add_argument("--task", default=DEFAULT_TASK, help=f"task name (default {DEFAULT_TASK}); see unigrad list")
    t.add_argument("--method", default="backprop", help="method spec, e.g. spsa:probes=16:sigma=1e-3")
    t.add_argument("--optimizer", default=None, help="sgd, adam, adamw or rmsprop (default: the method's)")
    t.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default: the method's)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=_positive_float, default=None, help="epoch budget (same as --budget epochs=N)")
    budget.add_argument("--budget", default=None, help=f"epochs=N, steps=N, forwards=N or seconds=N ({DEFAULT_BUDGET})")
    t.add_argument("--seed", type=_nonneg_int, default=0, help="seed of data order, init and noise (default 0)")
    _run_options(t)
    d = t.add_argument_group("distributed (launch with torchrun; docs/distributed.md)")
    d.add_argument(
        "--distributed",
        action="store_true",
        help="spread the probes of rge, spsa, es, mezo or np over the processes torchrun started, exchanging only "
        "the scalar losses; needs --out (the folder every process shares) and resumes from its checkpoint",
    )
    d.add_argument(
        "--timeout", type=_positive_float, default=None, help="seconds a process waits for the others (default 300)"
    )
    d.add_argument("--backend", default="auto", help="auto (gloo on CPU, nccl on CUDA), gloo or nccl")
    d.add_argument("--data-parallel", action="store_true", help="shard each batch over the processes, not the probes")
    d.add_argument(
        "--check-every", type=_positive_int, default=None, help="check every K steps that all processes agree bitwise"
    )

    c = sub.add_parser("compare", help="compare methods on one task at equal budget")
    c.add_argument("--task", default=DEFAULT_TASK, help=f"task name (default {DEFAULT_TASK})")
    c.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated method specs (default {','.join(DEFAULT_METHODS)}); "
        "options after colons: spsa:probes=16:sigma=1e-3,mezo:lr=1e-4",
    )
    c.add_argument(
        "--budget", default=DEFAULT_BUDGET, help=f"epochs=N, steps=N, forwards=N or seconds=N ({DEFAULT_BUDGET})"
    )
    c.add_argument(
        "--seeds",
        default=str(DEFAULT_SEEDS),
        help=f"number of seeds (3 → 0,1,2) or a list (0,5,7); default {DEFAULT_SEEDS}",
    )
    _run_options(c)

    from unigrad.experiments import EXPERIMENTS

    e = sub.add_parser("experiment", help="run an experiment and draw its figures (" + ", ".join(EXPERIMENTS) + ")")
    e.add_argument("name", help="; ".join(f"{k}: {v[1]}" for k, v in EXPERIMENTS.items()), metavar="NAME")
    e.add_argument("--out", default=None, help="output folder (default runs/experiment-<name>-<YYYYmmdd-HHMMSS>)")
    e.add_argument("--seeds", type=_positive_int, default=3, help="seeds per configuration (default 3)")
    e.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of the pipeline, not results")
    e.add_argument(
        "--threads", type=_positive_int, default=1, help=f"torch intra-op threads (default 1; {_THREADS_LIMIT})"
    )
    e.add_argument("--no-progress", action="store_true", help="do not print what is running")
    e.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        help="bio-table and hardware-*: run this many runs at once, one process and one thread each (default 1)",
    )
    conv = e.add_argument_group("convergence-orders only")
    conv.add_argument(
        "--iterations", type=_positive_int, default=None, help="budget of the order-0 and order-1 methods (20000)"
    )
    conv.add_argument(
        "--second-order-iterations",
        type=_positive_int,
        default=None,
        help="budget of the order-2 and order-3 methods (200)",
    )
    conv.add_argument("--n", type=_positive_int, default=None, help="dimension of the quadratic (20)")
    conv.add_argument("--kappa", type=_positive_float, default=None, help="its condition number (1000)")
    b = sub.add_parser("bench", help="benchmark suite: tasks x methods x seeds at equal budgets, with peers")
    b.add_argument("--tasks", default=None, help="comma-separated task names (default: all; see --list)")
    b.add_argument(
        "--methods", default=None, help="comma-separated method specs replacing every task's defaults (see --list)"
    )
    b.add_argument("--seeds", default="3", help="number of seeds (3 → 0,1,2) or a list (0,5,7); default 3")
    b.add_argument(
        "--budget-scale", type=_positive_float, default=1.0, help="multiply every task's default budget (default 1)"
    )
    b.add_argument(
        "--budget", type=_positive_float, default=None, help="budget in FE for every task (replaces the defaults)"
    )
    b.add_argument("--jobs", type=_positive_int, default=1, help="runs at once, one process and one thread each")
    b.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help=f"torch intra-op threads with --jobs 1 (default 1; {_THREADS_LIMIT})",
    )
    b.add_argument("--out", default=None, help="output folder (default runs/bench-<YYYYmmdd-HHMMSS>)")
    b.add_argument("--no-progress", action="store_true", help="do not print a line per finished run")
    b.add_argument("--list", action="store_true", help="list the tasks with their default budgets and methods")
    add_runs_parser(sub)
    return parser


def _store(args: argparse.Namespace) -> Any:
    """The experiment store path of a train/compare command (``None`` with ``--no-store``).

    A ``--store`` path must be in an existing folder: a typo must not create folders (``/nonexistent/...``).
    The default location (``$UNIGRAD_STORE``, else ``runs/unigrad.sqlite``) gets its folder created.
    """
    from unigrad.train.store import check_file_path, default_store_path

    if args.no_store:
        if args.store is not None or args.rerun:
            raise UnigradError("--no-store cannot be combined with --store or --rerun")
        return None
    if args.store is None:
        return default_store_path()
    check_file_path(args.store, "--store")
    return args.store


def cmd_list(args: argparse.Namespace) -> int:
    from unigrad.data.tasks import available_tasks
    from unigrad.registry import available, available_variants

    entries, variants = available(), available_variants()
    width = max(len(e.name) for e in [*entries, *variants]) + 2
    print("Estimators, by derivative order:")
    for order in sorted({e.order for e in entries if e.order is not None}):
        print(f"\n  {ORDER_NAMES.get(order, f'order {order}')}")
        for e in (e for e in entries if e.order == order):
            print(f"    {e.name:<{width}}{e.description}")
    missing = [e for e in entries if e.order is None]
    if missing:  # an estimator whose module fails to import (an optional package missing) is listed with why
        print("\n  unavailable here")
        for e in missing:
            print(f"    {e.name:<{width}}[unavailable: {e.error}]")
    print("\nDecorrelated variants (an estimator on a model with decorrelation layers):")
    for e in variants:
        print(f"    {e.name:<{width}}{e.description}" if e.order is not None else f"    {e.name:<{width}}[unavailable]")
    tasks = available_tasks()
    width = max(len(t.name) for t in tasks) + 2
    print("\nTasks:")
    for task in tasks:
        print(f"    {task.name:<{width}}{task.description}")
    return 0


def _cpus() -> tuple[int, int]:
    """The machine's logical CPUs and those this process may run on (its affinity mask, where the OS has one)."""
    total = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = total
    return total, max(1, min(usable, total))


def _apply_threads(n: int) -> None:
    """Set torch's intra-op threads to ``n`` (``--threads``).

    More threads than CPUs never run at once: they only take turns on the cores, which slows the many small
    operations of these models down, and far too many cannot even be created (the BLAS or OpenMP runtime
    crashes). So ``n`` above :data:`THREADS_PER_CPU` per logical CPU is refused, and ``n`` above the CPUs
    this process may use gets a one-line warning on stderr.
    """
    import torch

    total, usable = _cpus()
    cap = THREADS_PER_CPU * total
    if n > cap:
        raise UnigradError(
            f"--threads {n} is more threads than this machine can use: at most {cap} ({THREADS_PER_CPU} per logical "
            f"CPU, it has {total}); extra threads only take turns on the cores, so give at most {usable}"
        )
    if n > usable:
        print(
            f"warning: --threads {n} is more than the {usable} CPU{'s' * (usable != 1)} this process can use; "
            "the extra threads take turns on the cores and usually slow training down",
            file=sys.stderr,
        )
    torch.set_num_threads(n)


def _finish(folder: Any, results: dict[str, Any]) -> int:
    from unigrad.train.compare import any_diverged
    from unigrad.train.report import table

    print()
    print(table(results))
    from unigrad.train.plots import AXES, diagnostic_groups

    plots = len(AXES) + len(diagnostic_groups(results))
    print(f"\nwrote {folder}/results.json, report.md and {plots} plot{'s' * (plots != 1)}")
    diverged = any_diverged(results)
    for msg in diverged:
        print(f"diverged: {msg}", file=sys.stderr)
    return 1 if diverged else 0


def cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from unigrad.train.compare import DEFAULT_BUDGET, compare
    from unigrad.train.methods import parse_method

    _apply_threads(args.threads)
    spec = parse_method(args.method, optimizer=args.optimizer, lr=args.lr)
    budget = f"epochs={args.epochs:g}" if args.epochs is not None else (args.budget or DEFAULT_BUDGET)
    if args.distributed:
        return _train_distributed(args, argv, spec, budget)
    if args.data_parallel or args.check_every is not None or args.timeout is not None or args.backend != "auto":
        raise UnigradError("--timeout, --backend, --data-parallel and --check-every need --distributed")
    folder, results = compare(
        args.task,
        [spec],
        budget,
        [args.seed],
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        eval_points=args.eval_points,
        memory=not args.no_memory,
        progress=not args.no_progress,
        command=_command(argv),
        prefix="train",
        store=_store(args),
        rerun=args.rerun,
        **_diagnostics(args),
    )
    return _finish(folder, results)


def _train_distributed(args: argparse.Namespace, argv: Sequence[str], spec: Any, budget: str) -> int:
    """``train --distributed``: every process trains; rank 0 writes ``results.json`` and the checkpoint."""
    from unigrad.core.io import write_json
    from unigrad.distributed import (
        DEFAULT_TIMEOUT,
        METHODS,
        distributed_train,
        exit_process,
        failed,
        is_lead,
        world_size,
    )
    from unigrad.train.compare import environment

    if args.out is None:
        raise UnigradError("--distributed needs --out DIR: the folder every process shares (checkpoint, results)")
    if spec.name not in METHODS:
        raise UnigradError(f"--distributed trains {', '.join(METHODS)}; got {spec.name}")
    if getattr(args, "diagnostics", None):
        raise UnigradError("--diagnostics is not available with --distributed")
    if args.store is not None or args.rerun:  # not silently ignored: no run would be recorded or skipped
        raise UnigradError("--store and --rerun do not apply to --distributed, which does not use the experiment store")
    folder = Path(args.out)
    try:
        run = distributed_train(
            args.task,
            spec.name,
            backend=args.backend,
            timeout=args.timeout if args.timeout is not None else DEFAULT_TIMEOUT,
            data_parallel=args.data_parallel,
            check_every=args.check_every,
            optimizer=spec.optimizer,
            lr=spec.lr,
            estimator_options=spec.options,
            budget=budget,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            dtype=args.dtype,
            eval_points=args.eval_points,
            progress=not args.no_progress,
            checkpoint=folder / "checkpoint.pt",
            resume=True,
            threads=None,  # --threads, applied to the whole process above
        )
    except UnigradError as e:
        if failed():  # a collective failed: the process group cannot be torn down cleanly
            print(f"error: {one_line(str(e))}", file=sys.stderr)
            exit_process(2)
        raise
    if is_lead():
        world = world_size()
        data = {
            "command": _command(argv),
            "world_size": world,
            "data_parallel": args.data_parallel,
            "environment": environment(next(run.model.parameters()).device),
            "method": spec.to_dict(),
            "run": run.to_dict(),
        }
        write_json(folder / "results.json", data, fsync=False, unique=False)
        final = run.final
        print(
            f"{spec.name} on {world} process{'es' * (world != 1)}: test accuracy {final['test_accuracy']:.4f}, "
            f"{run.forward_equivalents:.3g} forward-pass equivalents, {run.train_seconds:.1f} s; "
            f"wrote {folder}/results.json"
        )
    if run.status != "ok":
        print(f"diverged: {run.message}", file=sys.stderr)
        return 1
    return 0


def cmd_compare(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from unigrad.train.compare import DEFAULT_METHODS, compare
    from unigrad.train.methods import parse_method, parse_methods

    _apply_threads(args.threads)
    if args.methods is None:  # the default set: a method this installation cannot build is skipped
        methods = []
        for name in DEFAULT_METHODS:
            try:
                methods.append(parse_method(name))
            except UnigradError as e:
                print(f"note: skipping {name}: {e}", file=sys.stderr)
    else:
        methods = parse_methods(args.methods)
    folder, results = compare(
        args.task,
        methods,
        args.budget,
        args.seeds,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        eval_points=args.eval_points,
        memory=not args.no_memory,
        progress=not args.no_progress,
        command=_command(argv),
        store=_store(args),
        rerun=args.rerun,
        **_diagnostics(args),
    )
    return _finish(folder, results)


def _diagnostics(args: argparse.Namespace) -> dict[str, Any]:
    """``--diagnostics`` and ``--diagnostics-every`` as options of :func:`unigrad.train.compare.compare`."""
    from unigrad.dynamics.diagnostics import check_diagnostics

    names = check_diagnostics(getattr(args, "diagnostics", None))
    every = getattr(args, "diagnostics_every", None)
    if every is not None and not names:
        raise UnigradError("--diagnostics-every needs --diagnostics NAMES (e.g. --diagnostics alignment,norms)")
    return {"diagnostics": names, "diagnostics_every": every}


CONVERGENCE_ONLY = ("iterations", "second_order_iterations", "n", "kappa")


def cmd_experiment(args: argparse.Namespace) -> int:
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
        if args.name != "bio-table" and not args.name.startswith("hardware-"):
            raise UnigradError("--jobs applies only to the bio-table and hardware-* experiments")
        options["jobs"] = args.jobs
    _apply_threads(args.threads)
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


def cmd_bench(args: argparse.Namespace) -> int:
    from unigrad.bench.run import bench
    from unigrad.bench.suite import TASKS, default_methods

    if args.list:
        for task in TASKS.values():
            print(f"{task.name:<16}{task.description}")
            print(
                f"{'':<16}budget {task.budget:.3g} FE (one unit = one {task.unit}), metric {task.metric} "
                f"({'higher' if task.higher_is_better else 'lower'} is better), {task.dim:,} parameters"
            )
            print(f"{'':<16}methods: {', '.join(default_methods(task))}")
        print("\nA method whose estimator has a max_dim below a task's dimension, or a peer whose package is")
        print("missing, is skipped on that task with a note. Budgets: --budget-scale X or --budget FE.")
        return 0
    _apply_threads(args.threads)
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


def _command(argv: Sequence[str]) -> str:
    return "unigrad " + shlex.join(argv)


_MAX_RUN_ID = 2**63 - 1  # SQLite's INTEGER


def _check_run_refs(args: argparse.Namespace) -> None:
    """Refuse run references the store would read as an id it cannot look up (too large, non-ASCII digits)."""
    refs = [getattr(args, "run", None), *(getattr(args, "refs", None) or [])]
    for ref in refs:
        text = str(ref or "").strip()
        if text.isdigit() and len(text) < 64 and (not text.isascii() or int(text) > _MAX_RUN_ID):
            raise UnigradError(
                f"{ref!r} is not a run id: ids are ASCII digits up to {_MAX_RUN_ID}; see unigrad runs list"
            )


def _run_runs(args: argparse.Namespace) -> int:
    from unigrad.train.runs_cli import run_runs

    _check_run_refs(args)
    csv = getattr(args, "csv", None)
    if csv is not None and csv != "-" and Path(csv).name in ("", ".", ".."):
        raise UnigradError(f"--csv needs a file path (or - for stdout), got {csv!r}")
    try:
        return run_runs(args)
    except OSError as e:  # runs export --csv into a folder that cannot hold the file
        if getattr(args, "runs_command", None) != "export":
            raise
        raise UnigradError(f"cannot write {args.csv}: {e.strerror or e}") from None


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Warnings as one line ``warning: ...`` on stderr (not Python's two lines with a file and a source line)."""
    print(f"warning: {one_line(str(message))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unigrad`` script; returns the exit status."""
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if any("\x00" in a for a in argv):  # no path can hold one; the OS never passes one in sys.argv
            raise UnigradError("arguments cannot contain NUL characters")
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help printed the help and asked to exit
            return e.code if isinstance(e.code, int) else 0
        if args.command is None:
            parser.print_help()
            return 0
        if args.command == "list":
            return cmd_list(args)
        if args.command == "runs":
            return _run_runs(args)
        if args.command == "experiment":
            return cmd_experiment(args)
        if args.command == "bench":
            return cmd_bench(args)
        if args.config is not None:
            from unigrad.config import given_options, load_config, merge

            args = merge(args, load_config(args.config, args.command), given_options(parser, argv))
        if args.command == "train":
            return cmd_train(args, argv)
        return cmd_compare(args, argv)
    except (UnigradError, _UsageError) as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
