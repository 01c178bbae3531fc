"""``unigrad runs``: look into the experiment store (:mod:`unigrad.train.store`).

* ``runs list [--task T] [--method M] [--status S]``: one line per run (id, task, method, seed,
  status, steps, final test accuracy, last update).
* ``runs show RUN``: a run's configuration, environment, result and evaluation points (``RUN`` is
  an id, a key or a unique key prefix).
* ``runs compare RUN... | GROUP``: the Markdown table of ``report.md`` (method, order, optimizer,
  test accuracy mean ± sd over seeds, ...) for the given runs or for the runs of a group (one
  ``unigrad compare`` invocation); runs still running count with their latest point.
* ``runs export --csv PATH [--force] [RUN... | GROUP]``: one CSV row per evaluation point (``-`` for
  stdout). ``PATH``'s folder must exist; an existing file is refused unless ``--force``; the file is
  written whole or not at all.
* ``runs groups``: the groups (named comparisons).

Every sub-command takes ``--store PATH`` (default ``$UNIGRAD_STORE`` or ``runs/unigrad.sqlite``)
and only reads: a missing store is an error, not created; a corrupt one is refused unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unigrad.core.errors import UnigradError
from unigrad.train.store import (
    ENV_VAR,
    POINT_COLUMNS,
    STATUSES,
    GroupRecord,
    RunRecord,
    Store,
    check_file_path,
    default_store_path,
    groups_hint,
)

SUBCOMMANDS = ("list", "show", "compare", "export", "groups")


def add_runs_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``runs`` and its sub-commands to the ``subparsers`` of the main parser; return the ``runs`` parser."""
    r = subparsers.add_parser("runs", help="list, show, compare and export the runs in the experiment store")
    sub = r.add_subparsers(dest="runs_command", metavar="{" + ",".join(SUBCOMMANDS) + "}")

    def store_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--store",
            default=None,
            help=f"experiment store file (default ${ENV_VAR} if set, else runs/unigrad.sqlite)",
        )

    ls = sub.add_parser("list", help="one line per run")
    ls.add_argument("--task", default=None, help="only runs of this task")
    ls.add_argument("--method", default=None, help="only runs of this method label")
    ls.add_argument("--status", default=None, choices=STATUSES, help="only runs with this status")
    store_option(ls)

    show = sub.add_parser("show", help="a run's configuration, environment, result and points")
    show.add_argument("run", help="run id, key or unique key prefix")
    store_option(show)

    cmp = sub.add_parser("compare", help="the comparison table of some runs or of a group")
    cmp.add_argument("refs", nargs="*", metavar="RUN|GROUP", help="run ids or keys, or a group name")
    cmp.add_argument("--group", default=None, help="the runs of this group (see unigrad runs groups)")
    store_option(cmp)

    ex = sub.add_parser("export", help="evaluation points as CSV, one row per point")
    ex.add_argument(
        "--csv",
        required=True,
        metavar="PATH",
        help="output file (- for stdout); its folder must exist, and an existing file is kept unless --force",
    )
    ex.add_argument("--force", action="store_true", help="replace PATH if it exists (it is written whole, atomically)")
    ex.add_argument("refs", nargs="*", metavar="RUN|GROUP", help="run ids or keys, or a group name (default all)")
    ex.add_argument("--group", default=None, help="the runs of this group")
    store_option(ex)

    groups = sub.add_parser("groups", help="the groups (named comparisons) and their runs")
    store_option(groups)
    return r


def run_runs(args: argparse.Namespace) -> int:
    """Run a ``runs`` sub-command; return the exit status (errors raise :class:`UnigradError`)."""
    command = getattr(args, "runs_command", None)
    if command is None:
        raise UnigradError(f"runs needs a sub-command: {', '.join(SUBCOMMANDS)} (see: unigrad runs --help)")
    if command == "export" and args.csv != "-":  # before the store is opened: a bad target costs nothing
        check_file_path(args.csv, "--csv", overwrite=args.force)
    with Store(args.store or default_store_path(), create=False) as store:
        if command == "list":
            return _list(store, args)
        if command == "show":
            return _show(store, args)
        if command == "compare":
            return _compare(store, args)
        if command == "export":
            return _export(store, args)
        if command == "groups":
            return _groups(store)
    raise UnigradError(f"unknown runs sub-command {command!r}; valid: {', '.join(SUBCOMMANDS)}")


# ------------------------------------------------------------------------------------------------ helpers


def _when(t: float | None) -> str:
    return "—" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _aligned(rows: list[list[str]]) -> str:
    """Rows of cells as a plain-text table, columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _final(run: RunRecord, latest: dict[str, Any] | None) -> tuple[int | None, dict[str, Any] | None]:
    """Steps and final point of a run: from its result when finished, else its latest point."""
    result = run.result or {}
    final = result.get("final") if isinstance(result.get("final"), dict) else None
    final = final or latest
    steps = result.get("steps")
    if steps is None and latest is not None:
        steps = latest["step"]
    if final is not None:
        final = {"step": None, **{k: None for k in POINT_COLUMNS}, **final}
    return steps, final


def _resolve(store: Store, refs: Sequence[str], group: str | None) -> tuple[list[RunRecord], GroupRecord | None]:
    """Runs named by ids/keys, or by a group (``--group NAME``, or a single ref that names a group)."""
    if group is not None:
        if refs:
            raise UnigradError("give either run ids or --group, not both")
        g = store.group(group)
        return [store.get(i) for i in g.run_ids], g
    if len(refs) == 1 and not refs[0].isdigit():
        groups = store.groups()
        if refs[0] in {g.name for g in groups}:
            g = store.group(refs[0])
            return [store.get(i) for i in g.run_ids], g
        text = refs[0].strip().lower()
        key_like = len(text) >= 4 and all(ch in "0123456789abcdef" for ch in text)  # a run key (prefix)?
        if text.isdigit() or key_like:
            try:
                return [store.get(refs[0])], None
            except UnigradError as e:
                if text.isdigit() or "no run with key" not in str(e):  # no such id; a prefix of several keys
                    raise
        raise UnigradError(
            f"no group {refs[0]!r} in the experiment store {store.path}, nor a run with that id or key; "
            f"{groups_hint([g.name for g in groups])}"
        )
    runs = [store.get(ref) for ref in refs]
    seen: set[int] = set()
    out = []
    for r in runs:
        if r.id not in seen:
            seen.add(r.id)
            out.append(r)
    return out, None


# ------------------------------------------------------------------------------------------------ list / show


def _list(store: Store, args: argparse.Namespace) -> int:
    runs = store.runs(task=args.task, method=args.method, status=args.status)
    if not runs:
        filtered = any(v is not None for v in (args.task, args.method, args.status))
        print(f"no runs{' match' if filtered else ''} in {store.path}")
        return 0
    latest = store.latest_points(r.id for r in runs)
    rows = [["id", "task", "method", "seed", "status", "steps", "test acc", "updated"]]
    for r in runs:
        steps, final = _final(r, latest.get(r.id))
        rows.append(
            [
                str(r.id),
                r.task or "—",
                r.method or "—",
                _fmt(r.seed, "d"),
                r.status,
                _fmt(steps, "d"),
                _fmt((final or {}).get("test_accuracy"), ".4f"),
                _when(r.updated),
            ]
        )
    print(_aligned(rows))
    return 0


def points_table(points: list[dict[str, Any]]) -> str:
    """The evaluation points of a run as a Markdown table."""
    from unigrad.train.report import human

    head = "| step | epoch | forward-pass equivalents | seconds | train loss | test loss | test accuracy |"
    rows = [head, "|" + "---|" * 7]
    for p in points:
        rows.append(
            f"| {p['step']} | {_fmt(p['epoch'], '.3f')} | {human(p['forward_equivalents'])} "
            f"| {_fmt(p['seconds'], '.2f')} | {_fmt(p['train_loss'], '.4f')} | {_fmt(p['test_loss'], '.4f')} "
            f"| {_fmt(p['test_accuracy'], '.4f')} |"
        )
    return "\n".join(rows)


def _show(store: Store, args: argparse.Namespace) -> int:
    r = store.get(args.run)
    points = store.points(r.id)
    lines = [
        f"run {r.id} ({r.kind}): {r.task} {r.method} seed {r.seed}, {r.status}",
        f"key {r.key}",
        f"created {_when(r.created)}, updated {_when(r.updated)}",
    ]
    if r.message:
        lines.append(f"message: {r.message}")
    lines += ["", "config:", json.dumps(r.config, indent=1, sort_keys=True)]
    lines += ["", "environment:", json.dumps(r.environment, indent=1)]
    lines += ["", "result:", json.dumps(r.result, indent=1) if r.result is not None else "(none: the run is running)"]
    lines += ["", f"points ({len(points)}):", ""]
    lines += [points_table(points) if points else "(none)"]
    print("\n".join(lines))
    return 0


def _groups(store: Store) -> int:
    groups = store.groups()
    if not groups:
        print(f"no groups in {store.path}")
        return 0
    rows = [["id", "name", "kind", "runs", "created"]]
    for g in groups:
        ids = ",".join(map(str, g.run_ids)) or "—"
        rows.append([str(g.id), g.name, g.kind, ids, _when(g.created)])
    print(_aligned(rows))
    return 0


# ------------------------------------------------------------------------------------------------ compare


def _spread(runs: list[RunRecord], key: str) -> str:
    """A config field shared by the runs, or each value with the runs that have it."""
    values: dict[str, list[int]] = {}
    for r in runs:
        values.setdefault(str(r.config.get(key, "—")), []).append(r.id)
    if len(values) == 1:
        return next(iter(values))
    return "; ".join(f"{v} (run{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))})" for v, ids in values.items())


def comparison(store: Store, runs: list[RunRecord]) -> tuple[dict[str, Any], list[str]]:
    """A ``results.json``-like dict (``methods`` with per-run results and summaries) for the report table,
    and notes on the runs left out (no evaluation point yet).

    Runs are grouped by method label and by their configuration apart from the seed; a label that
    stands for several configurations gets its run ids appended.
    """
    from unigrad.train.compare import summarize
    from unigrad.train.store import canonical_json

    latest = store.latest_points(r.id for r in runs)
    buckets: dict[tuple[str, str], list[RunRecord]] = {}
    notes: list[str] = []
    for r in runs:
        steps, final = _final(r, latest.get(r.id))
        if final is None:
            notes.append(f"run {r.id} ({r.method} seed {r.seed}, {r.status}) has no evaluation point yet")
            continue
        rest = canonical_json({k: v for k, v in r.config.items() if k != "seed"})
        buckets.setdefault((r.method or "—", rest), []).append(r)
    labels = [label for label, _ in buckets]
    methods: dict[str, Any] = {}
    for (label, _), members in buckets.items():
        shown = label if labels.count(label) == 1 else f"{label} (runs {', '.join(str(r.id) for r in members)})"
        c = members[0].config
        entries = []
        for r in members:
            steps, final = _final(r, latest.get(r.id))
            result = r.result or {}
            point = latest.get(r.id) or final or {}
            seconds = result.get("train_seconds")
            entries.append(
                {
                    "method": label,
                    "seed": r.seed,
                    "status": r.status,
                    "message": r.message,
                    "steps": steps,
                    "forward_equivalents": result.get("forward_equivalents", point.get("forward_equivalents")),
                    "train_seconds": seconds if seconds is not None else point.get("seconds"),
                    "final": final,
                }
            )
        memory = [(r.result or {}).get("peak_memory_bytes") for r in members]
        methods[shown] = {
            "label": shown,
            "name": c.get("name", label),
            "order": c.get("order", "—"),
            "optimizer": c.get("optimizer", "—"),
            "lr": c.get("lr") if isinstance(c.get("lr"), int | float) else float("nan"),
            "options": c.get("options") or {},
            "runs": entries,
            "peak_memory_bytes": next((m for m in memory if m is not None), None),
            "summary": summarize(entries),
        }
        if methods[shown]["summary"]["train_seconds_mean"] is None:
            methods[shown]["summary"]["train_seconds_mean"] = float("nan")
    return {"methods": methods}, notes


def compare_markdown(store: Store, runs: list[RunRecord], title: str) -> str:
    """The comparison of ``runs`` as Markdown: heading, shared settings, the report table, the runs."""
    from unigrad.train.report import table

    if not runs:
        raise UnigradError("no runs to compare; give run ids (see unigrad runs list) or a group")
    results, notes = comparison(store, runs)
    lines = [
        f"# {title}",
        "",
        f"Task: {_spread(runs, 'task')}. Budget: {_spread(runs, 'budget')} per run, batch size "
        f"{_spread(runs, 'batch_size')}, {_spread(runs, 'device')} {_spread(runs, 'dtype')}.",
        "",
    ]
    if results["methods"]:
        lines += [table(results), ""]
    latest = store.latest_points(r.id for r in runs)
    running = [r for r in runs if r.status == "running" and _final(r, latest.get(r.id))[1] is not None]
    if running:
        ids = ", ".join(str(r.id) for r in running)
        lines += [f"Still running (counted at their latest evaluation point): runs {ids}.", ""]
    lines += ["Runs:", ""]
    for r in runs:
        steps, final = _final(r, latest.get(r.id))
        acc = _fmt((final or {}).get("test_accuracy"), ".4f")
        line = f"- {r.id}: {r.method} seed {r.seed}, {r.status}, {_fmt(steps, 'd')} steps, test accuracy {acc}"
        lines.append(line + (f" ({r.message})" if r.status in ("diverged", "failed") and r.message else ""))
    if notes:
        lines += ["", *[f"Note: {n}." for n in notes]]
    return "\n".join(lines) + "\n"


def _compare(store: Store, args: argparse.Namespace) -> int:
    runs, group = _resolve(store, args.refs, args.group)
    if group is None and not args.refs:
        raise UnigradError("give run ids or a group to compare (see unigrad runs list / unigrad runs groups)")
    title = f"group {group.name}" if group is not None else f"runs {', '.join(str(r.id) for r in runs)}"
    print(compare_markdown(store, runs, title), end="")
    return 0


# ------------------------------------------------------------------------------------------------ export


def _export(store: Store, args: argparse.Namespace) -> int:
    if args.refs or args.group is not None:
        runs, _ = _resolve(store, args.refs, args.group)
        ids: list[int] | None = [r.id for r in runs]
    else:
        ids = None
    if args.csv == "-":
        store.export_csv(sys.stdout, ids)
        return 0
    n = store.export_csv(args.csv, ids, overwrite=args.force)
    print(f"wrote {n} rows to {args.csv}")
    return 0


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


def cmd_runs(args: argparse.Namespace) -> int:
    """``unigrad runs ...`` from the command line: :func:`run_runs`, with run references and ``--csv`` checked first
    and a file that cannot be written reported in one line."""
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


__all__ = ["add_runs_parser", "cmd_runs", "compare_markdown", "comparison", "points_table", "run_runs"]
