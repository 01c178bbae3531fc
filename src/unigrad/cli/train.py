"""``unigrad train`` and ``unigrad compare``: one method, or several at equal budget, on one task
(:func:`unigrad.train.compare.compare`); ``train --distributed`` over the processes torchrun started
(:mod:`unigrad.distributed`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unigrad.cli._parser import (
    THREADS_LIMIT,
    apply_threads,
    command_line,
    nonneg_int,
    positive_float,
    positive_int,
)
from unigrad.core.errors import UnigradError
from unigrad.core.options import one_line


def _run_options(p: argparse.ArgumentParser) -> None:
    """The options ``train`` and ``compare`` share: batch, device, precision, threads, output and store."""
    p.add_argument(
        "--batch-size", type=positive_int, default=None, help="samples per step (default the task's: 64, 32 for k16)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--dtype",
        default="float32",
        help="float32, float64, bfloat16 or float16 (default float32); half precision steps float32 master weights",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch intra-op threads (default 1: the small default models gain nothing from more, "
        f"and lose a lot when other processes share the cores; {THREADS_LIMIT})",
    )
    p.add_argument(
        "--eval-points",
        type=positive_int,
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
        type=positive_int,
        default=None,
        help="measure the diagnostics every K steps (default: at the evaluation points)",
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        default=None,
        help="also log every run's evaluation points and configuration to TensorBoard event files in "
        "DIR/<method>/seed-<N> (needs pip install 'unigrad[tensorboard]'; view with tensorboard --logdir DIR)",
    )
    p.add_argument(
        "--mlflow",
        metavar="URI",
        default=None,
        help="also log every run as an MLflow run (per method and seed, in an experiment named after the run "
        "folder) to a local store: a folder, or sqlite:///FILE.db (needs pip install 'unigrad[mlflow]')",
    )


def add_train_parsers(sub: Any) -> None:
    """Add ``train`` and ``compare`` to the ``sub`` parsers of the main parser."""
    from unigrad.train.compare import DEFAULT_BUDGET, DEFAULT_METHODS, DEFAULT_SEEDS, DEFAULT_TASK, FALLBACK_TASK

    task_help = (
        f"a task name (see unigrad list) or module.path:function, a function of yours that returns a "
        f"unigrad.data.tasks.Task (docs/cli.md); default {DEFAULT_TASK}, {FALLBACK_TASK} without Fashion-MNIST"
    )

    t = sub.add_parser("train", help="train one task with one method")
    t.add_argument("--task", default=None, help=task_help)
    t.add_argument(
        "--method",
        default="backprop",
        help="method spec, e.g. spsa:probes=16:sigma=1e-3; train=GLOB|GLOB and freeze=GLOB choose the parameters "
        "that train (backprop:train=head is a linear probe)",
    )
    t.add_argument(
        "--optimizer",
        default=None,
        help="sgd, sgd-momentum, adam, adamw, rmsprop, sign-sgd, conserve-sgd (ZO-Bench's momentum, sign and "
        "conservative rules) or "
        "replay-sgd (memory-lean MeZO-SGD with mezo:write_grad=false; default: the method's)",
    )
    t.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: the method's)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=positive_float, default=None, help="epoch budget (same as --budget epochs=N)")
    budget.add_argument("--budget", default=None, help=f"epochs=N, steps=N, forwards=N or seconds=N ({DEFAULT_BUDGET})")
    t.add_argument("--seed", type=nonneg_int, default=0, help="seed of data order, init and noise (default 0)")
    _run_options(t)
    d = t.add_argument_group("distributed (launch with torchrun; docs/distributed.md)")
    d.add_argument(
        "--distributed",
        action="store_true",
        help="spread the probes of rge, spsa, es, mezo or np over the processes torchrun started, exchanging only "
        "the scalar losses; needs --out (the folder every process shares) and resumes from its checkpoint",
    )
    d.add_argument(
        "--timeout", type=positive_float, default=None, help="seconds a process waits for the others (default 300)"
    )
    d.add_argument("--backend", default="auto", help="auto (gloo on CPU, nccl on CUDA), gloo or nccl")
    d.add_argument("--data-parallel", action="store_true", help="shard each batch over the processes, not the probes")
    d.add_argument(
        "--check-every", type=positive_int, default=None, help="check every K steps that all processes agree bitwise"
    )

    c = sub.add_parser("compare", help="compare methods on one task at equal budget")
    c.add_argument("--task", default=None, help=task_help)
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


def _finish(folder: Any, results: dict[str, Any]) -> int:
    """Print the report's table and what was written; 1 if a run diverged, else 0."""
    from unigrad.train.compare import any_diverged
    from unigrad.train.plots import AXES, diagnostic_groups
    from unigrad.train.report import summary, table

    print()
    print(table(results))
    plots = len(AXES) + len(diagnostic_groups(results))
    print(f"\nwrote {folder}/results.json, report.md and {plots} plot{'s' * (plots != 1)}")
    lines = summary(results)
    if lines:
        print("\n" + "\n".join(lines))
    diverged = any_diverged(results)
    for msg in diverged:
        print(f"diverged: {msg}", file=sys.stderr)
    return 1 if diverged else 0


def cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``unigrad train``: one method, one seed (a comparison of one); the exit status."""
    from unigrad.train.compare import DEFAULT_BUDGET, compare
    from unigrad.train.methods import parse_method

    apply_threads(args.threads)
    _resolve_task(args)
    spec = parse_method(args.method, optimizer=args.optimizer, lr=args.lr)
    budget = f"epochs={args.epochs:g}" if args.epochs is not None else (args.budget or DEFAULT_BUDGET)
    if args.distributed:
        return _train_distributed(args, argv, spec, budget)
    if args.data_parallel or args.check_every is not None or args.timeout is not None or args.backend != "auto":
        raise UnigradError("--timeout, --backend, --data-parallel and --check-every need --distributed")
    folder, results = compare(
        args.task, [spec], budget, [args.seed], args.out, prefix="train", **_compare_options(args, argv)
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
    from unigrad.train.rundir import environment

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
            batch_size=_batch_size(args),
            seed=args.seed,
            device=args.device,
            dtype=args.dtype,
            eval_points=args.eval_points,
            progress=not args.no_progress,
            checkpoint=folder / "checkpoint.pt",
            resume=True,
            tensorboard=args.tensorboard,
            label=spec.label,
            mlflow=args.mlflow,
            mlflow_experiment=folder.name,
            on_resume=_say_resume_distributed(folder / "checkpoint.pt"),
            threads=None,  # --threads, applied to the whole process above
            **spec.train_options(),
        )
    except UnigradError as e:
        if failed():  # a collective failed: the process group cannot be torn down cleanly
            print(f"error: {one_line(str(e))}", file=sys.stderr)
            exit_process(2)
        raise
    if is_lead():
        world = world_size()
        data = {
            "command": command_line(argv),
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


def _say_resume_distributed(path: Path) -> Any:
    """One line on stderr (from the lead process) when a distributed run continues from its checkpoint."""
    from unigrad.distributed import is_lead

    def say(step: int, finished: bool) -> None:
        if is_lead():
            what = "finished already; its result is taken as it is" if finished else f"resuming at step {step}"
            print(f"checkpoint {path} found, {what}", file=sys.stderr)

    return say


def cmd_compare(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``unigrad compare``: every method with every seed at equal budget; the exit status."""
    from unigrad.train.compare import DEFAULT_METHODS, compare
    from unigrad.train.methods import parse_method, parse_methods

    apply_threads(args.threads)
    _resolve_task(args)
    if args.methods is None:  # the default set: a method this installation cannot build is skipped
        methods = []
        for name in DEFAULT_METHODS:
            try:
                methods.append(parse_method(name))
            except UnigradError as e:
                print(f"note: skipping {name}: {e}", file=sys.stderr)
    else:
        methods = parse_methods(args.methods)
    folder, results = compare(args.task, methods, args.budget, args.seeds, args.out, **_compare_options(args, argv))
    return _finish(folder, results)


def _compare_options(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """The options ``train`` and ``compare`` pass alike to :func:`unigrad.train.compare.compare`."""
    return {
        "batch_size": _batch_size(args),
        "device": args.device,
        "dtype": args.dtype,
        "eval_points": args.eval_points,
        "memory": not args.no_memory,
        "progress": not args.no_progress,
        "command": command_line(argv),
        "store": _store(args),
        "rerun": args.rerun,
        "tensorboard": args.tensorboard,
        "mlflow": args.mlflow,
        **_diagnostics(args),
    }


def _resolve_task(args: argparse.Namespace) -> None:
    """``args.task``: the task typed (or set by a config file), else :func:`~unigrad.train.compare.default_task`,
    which says on stderr when it falls back because Fashion-MNIST is not installed."""
    if args.task is None:
        from unigrad.train.compare import default_task

        args.task = default_task(lambda line: print(line, file=sys.stderr))


def _batch_size(args: argparse.Namespace) -> int:
    """``--batch-size``, or the task's default batch size."""
    from unigrad.data.tasks import get_task

    return args.batch_size if args.batch_size is not None else get_task(args.task).batch_size


def _diagnostics(args: argparse.Namespace) -> dict[str, Any]:
    """``--diagnostics`` and ``--diagnostics-every`` as options of :func:`unigrad.train.compare.compare`."""
    from unigrad.dynamics.diagnostics import check_diagnostics

    names = check_diagnostics(getattr(args, "diagnostics", None))
    every = getattr(args, "diagnostics_every", None)
    if every is not None and not names:
        raise UnigradError("--diagnostics-every needs --diagnostics NAMES (e.g. --diagnostics alignment,norms)")
    return {"diagnostics": names, "diagnostics_every": every}


__all__ = ["add_train_parsers", "cmd_compare", "cmd_train"]
