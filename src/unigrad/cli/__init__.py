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
writes its figures and report. ``bench`` runs the benchmark suite (:mod:`unigrad.suite`: tasks ×
methods × seeds at equal budgets, against third-party black-box optimizers; ``--list`` shows the
tasks with their budgets and methods).

Exit status: 0 on success, 1 if a run diverged (its results up to the last good state are still
written), 2 for a user error (unknown task, method or optimizer, a bad option value or budget, a
malformed method spec, a missing dataset), printed as one ``error: ...`` line without a traceback.

One module per command group: :mod:`unigrad.cli.listing` (``list``), :mod:`unigrad.cli.train` (``train``,
``compare``), :mod:`unigrad.cli.experiment`, :mod:`unigrad.cli.bench`, :mod:`unigrad.cli.runs`; what they share
(the parser class, one-line errors and warnings, ``--threads``) is in :mod:`unigrad.cli._parser`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import unigrad
from unigrad.cli._parser import Parser, UsageError, show_warning
from unigrad.cli.bench import add_bench_parser, cmd_bench
from unigrad.cli.experiment import add_experiment_parser, cmd_experiment
from unigrad.cli.listing import add_list_parser, cmd_list
from unigrad.cli.train import add_train_parsers, cmd_compare, cmd_train
from unigrad.core.errors import UnigradError
from unigrad.core.options import one_line


def build_parser() -> argparse.ArgumentParser:
    """The ``unigrad`` parser with every command."""
    from unigrad.cli.runs import add_runs_parser

    parser = Parser(prog="unigrad", description="Every way of training a network on one footing.")
    parser.add_argument("--version", action="version", version=f"unigrad {unigrad.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{list,train,compare,experiment,bench,runs}")
    add_list_parser(sub)
    add_train_parsers(sub)
    add_experiment_parser(sub)
    add_bench_parser(sub)
    add_runs_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unigrad`` script; returns the exit status."""
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
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
            from unigrad.cli.runs import cmd_runs

            return cmd_runs(args)
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
    except (UnigradError, UsageError) as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = [
    "Parser",
    "UsageError",
    "build_parser",
    "cmd_bench",
    "cmd_compare",
    "cmd_experiment",
    "cmd_list",
    "cmd_train",
    "main",
]
