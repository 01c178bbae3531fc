"""Run the suite: every (task, method, seed) at the task's budget, then the report and plots.

``bench(tasks=None, methods=None, seeds=3, budget_scale=1.0, budget=None, jobs=1, out=None)``
writes ``runs/bench-<YYYYmmdd-HHMMSS>/`` (or ``out``) and returns the folder:

* ``results.json``: the configuration, the environment, and per task and method the runs (history
  of evaluation points, final metric, FE spent, wall seconds, status and message) and the notes on
  methods that were skipped;
* ``report.md``, ``metric_vs_fe_<task>.png``, ``metric_vs_seconds_<task>.png`` and ``win_matrix.png``
  (:mod:`unigrad.suite.report`).

The classification tasks run through :func:`unigrad.train.train` (budget ``forwards=N``). The
others run :func:`run_loop` (a :class:`~unigrad.train.loop.TrainingLoop`): ``estimator.estimate`` then
``optimizer.step`` until the FE
of the estimates (``Estimate.cost.forward_equivalents``) reach the budget; wall seconds are timed
with ``perf_counter`` around the steps only (evaluation excluded); the metric is measured at the
start and every ``1/eval_points`` of the budget, and at the end. A NaN or infinite loss or metric
stops the run with status ``"diverged"``; its history ends at the last good point.
Every history point has ``step``, ``forward_equivalents``, ``seconds`` and ``metric`` (the test
accuracy on classification tasks, whose points also carry the trainer's own fields).

Runs are independent and keyed by their seed (initial weights or start point, data order or
episodes, the estimator's noise), so ``jobs > 1`` (that many processes, one torch thread each, via
:func:`unigrad.train.parallel.run_calls`) gives the same metrics; only wall times change. A run that
fails (a method that cannot handle a task) is recorded with status ``"failed"`` and its message, and
the others go on.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from unigrad.core.errors import UnigradError
from unigrad.core.io import write_json as write_json_file
from unigrad.core.options import check_number, check_optional, check_positive
from unigrad.suite.tasks import GROUPS, PEERS, BenchTask, get_bench_task, parse_tasks, resolve_methods
from unigrad.train.loop import Batch, Fractions, Hook, StepRecord, TrainingLoop
from unigrad.train.methods import MethodSpec, parse_seeds
from unigrad.train.parallel import run_calls
from unigrad.train.rundir import environment, run_dir


def run_loop(problem: Any, spec: MethodSpec, seed: int, budget: float, eval_points: int) -> dict[str, Any]:
    """Train ``problem``'s model with ``spec`` until ``budget`` FE are spent (module docs)."""
    from unigrad.registry import make_estimator
    from unigrad.train.trainer import make_optimizer

    model = problem.build_model(seed)
    if spec.parameters is not None:
        spec.parameters.apply(model, seed)
    estimator = make_estimator(spec.name, **{"seed": seed, **spec.options})
    optimizer = make_optimizer(spec.optimizer, [p for p in model.parameters() if p.requires_grad], spec.lr)

    def point(loop: TrainingLoop) -> dict[str, Any] | None:
        value = problem.metric(model, seed)
        if not math.isfinite(value):
            return None
        return {
            "step": loop.step,
            "forward_equivalents": loop.forward_equivalents,
            "seconds": loop.seconds,
            "loss": loop.train_loss(),
            "metric": value,
        }

    loop = TrainingLoop(
        model,
        estimator,
        optimizer,
        lambda loop: Batch(problem.objective(seed, loop.step)),
        spent=lambda loop: loop.forward_equivalents / budget,
        evaluate=point,
        schedule=Fractions(eval_points),
        hooks=[_CostCheck(spec.label)],
        start_error=f"the initial model of {spec.label} (seed {seed}) gives a non-finite metric",
        score_error="the metric became non-finite",
        describe=lambda e: str(e).split(";")[0],
    ).run()
    return {
        "status": loop.status,
        "message": f"diverged at step {loop.failed_step}: {loop.message}" if loop.status == "diverged" else "",
        "history": loop.history,
        "steps": loop.step,
        "forward_equivalents": loop.forward_equivalents,
        "seconds": loop.seconds,
    }


class _CostCheck(Hook):
    """Refuse a step that reports no cost: the FE budget would never be spent."""

    def __init__(self, label: str) -> None:
        self.label = label

    def after_step(self, loop: TrainingLoop, record: StepRecord) -> None:
        if not record.forward_equivalents > 0:
            raise UnigradError(f"{self.label} reported no cost for a step; its budget would never be spent")


def run_one(task_name: str, spec: MethodSpec, seed: int, budget: float) -> dict[str, Any]:
    """One run of ``spec`` on the suite's task ``task_name`` with ``seed`` and ``budget`` FE.

    Returns a dict with ``seed``, ``status`` (``ok``, ``diverged`` or ``failed``), ``message``,
    ``history``, ``steps``, ``forward_equivalents``, ``seconds`` and ``final_metric``.
    """
    task = get_bench_task(task_name)
    t0 = time.perf_counter()
    try:
        if task.kind == "classification":
            from unigrad.train import train
            from unigrad.train.trainer import PlanWarning

            assert task.batch_size is not None
            with warnings.catch_warnings():  # the suite sets the points; a scaled-down budget may have fewer steps
                warnings.simplefilter("ignore", PlanWarning)
                r = train(
                    task.problem(),  # type: ignore[arg-type]
                    spec.name,
                    budget=f"forwards={budget!r}",
                    batch_size=task.batch_size,
                    seed=seed,
                    eval_points=task.eval_points,
                    threads=None,  # set by `unigrad bench --threads` / one per job
                    **spec.run_options(),
                )
            history = [{**p, "metric": p["test_accuracy"]} for p in r.history]
            out = {
                "status": r.status,
                "message": r.message,
                "history": history,
                "steps": r.steps,
                "forward_equivalents": r.forward_equivalents,
                "seconds": r.train_seconds,
            }
        else:
            out = run_loop(task.problem(), spec, seed, budget, task.eval_points)
    except (UnigradError, RuntimeError) as e:  # a method that cannot handle this task: recorded, the others go on
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        out = {"status": "failed", "message": f"{type(e).__name__}: {text}", "history": [], "steps": 0}
        out.update(forward_equivalents=0.0, seconds=0.0)
    final = out["history"][-1]["metric"] if out["history"] else None
    return {"seed": seed, **out, "final_metric": final, "total_seconds": time.perf_counter() - t0}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as strict JSON (non-finite floats become ``null``), written atomically."""
    write_json_file(path, data, fsync=False, unique=False)


def command_line(config: dict[str, Any]) -> str:
    """The ``unigrad bench`` command that reproduces a configuration of ``results.json``."""
    parts = ["unigrad bench", "--tasks " + ",".join(config["tasks"])]
    if config.get("methods") is not None:
        parts.append("--methods " + ",".join(config["methods"]))
    seeds = list(config["seeds"])
    if seeds == list(range(len(seeds))):
        parts.append(f"--seeds {len(seeds)}")
    else:  # a list; one seed keeps a trailing comma so it is not read as a count
        parts.append("--seeds " + ",".join(map(str, seeds)) + ("," if len(seeds) == 1 else ""))
    if config.get("budget") is not None:
        parts.append(f"--budget {config['budget']:g}")
    elif config.get("budget_scale", 1.0) != 1.0:
        parts.append(f"--budget-scale {config['budget_scale']:g}")
    return " ".join(parts)


def task_budget(task: BenchTask, budget_scale: float = 1.0, budget: float | None = None) -> float:
    """The FE budget of ``task``: ``budget`` if given, else its default times ``budget_scale``."""
    return float(budget) if budget is not None else task.budget * budget_scale


def bench(
    tasks: str | Sequence[str] | None = None,
    methods: str | Sequence[str] | None = None,
    seeds: int | str | Sequence[int] = 3,
    budget_scale: float = 1.0,
    budget: float | None = None,
    jobs: int = 1,
    out: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run the suite and write its folder (module docs); returns the folder.

    ``methods`` (names or specs, comma-separated or a sequence) replaces every task's default list (a name of
    :data:`~unigrad.suite.tasks.GROUPS`, such as ``zo-family``, stands for its methods);
    ``budget`` (FE) replaces every task's default budget, else the defaults are scaled by
    ``budget_scale``. ``progress`` prints a line per finished run (through ``log``, default stderr).
    """
    from unigrad.suite.report import write_plots, write_report

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    task_list, method_list, seed_list = _check(tasks, methods, seeds, budget_scale, budget, jobs)
    plan = _plan(task_list, method_list, say)
    folder = run_dir(None, out, prefix="bench")
    config = {
        "tasks": [t.name for t in task_list],
        "methods": method_list,
        "seeds": seed_list,
        "budget_scale": float(budget_scale),
        "budget": None if budget is None else float(budget),
        "jobs": jobs,
        "peers": list(PEERS),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    config["command"] = command_line(config)
    results: dict[str, Any] = {"config": config, "environment": environment(torch.device("cpu")), "tasks": {}}
    calls = []
    for task, specs, notes in plan:
        fe = task_budget(task, budget_scale, budget)
        results["tasks"][task.name] = _task_entry(task, specs, notes, fe)
        calls += [(run_one, (task.name, spec, seed, fe)) for spec in specs for seed in seed_list]
    if progress:
        say(f"bench: {len(calls)} runs ({len(task_list)} tasks, seeds {seed_list}, {jobs} job(s)) -> {folder}")
    t_start = time.perf_counter()
    for (_, (task_name, spec, _seed, _)), run in zip(calls, run_calls(calls, jobs)):
        results["tasks"][task_name]["methods"][spec.label]["runs"].append(run)
        if progress:
            say(_run_line(task_name, spec, run))
        write_json(folder / "results.json", results)
    config["total_seconds"] = time.perf_counter() - t_start
    write_json(folder / "results.json", results)
    write_report(folder, results)
    write_plots(folder, results)
    return folder


def _check(
    tasks: str | Sequence[str] | None,
    methods: str | Sequence[str] | None,
    seeds: int | str | Sequence[int],
    budget_scale: float,
    budget: float | None,
    jobs: int,
) -> tuple[list[BenchTask], list[str] | None, list[int]]:
    """The tasks, the method list (``None``: each task's defaults) and the seeds, every option checked."""
    task_list = parse_tasks(tasks)
    method_list: list[str] | None = None
    if methods is not None:
        method_list = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
        method_list = [m for name in method_list for m in GROUPS.get(name, (name,))]
        if not method_list:
            raise UnigradError("no methods given; e.g. --methods spsa,backprop")
    seed_list = parse_seeds(seeds)
    check_optional(check_number, "budget_scale", budget_scale, low=0, low_inclusive=False)
    check_optional(check_number, "budget", budget, low=0, low_inclusive=False)
    if budget is not None and budget_scale != 1.0:
        raise UnigradError("give either a budget (FE for every task) or a budget scale, not both")
    check_positive("jobs", jobs, integer=True)
    return task_list, method_list, seed_list


def _plan(
    task_list: list[BenchTask], method_list: list[str] | None, say: Callable[[str], None]
) -> list[tuple[BenchTask, list[MethodSpec], list[str]]]:
    """Each task with the method specs it runs and the notes on those it skips; loads every dataset, so a missing
    one fails before a folder is made."""
    plan: list[tuple[BenchTask, list[MethodSpec], list[str]]] = []
    for task in task_list:
        specs, notes = resolve_methods(task, method_list)
        for note in notes:
            say(f"note: skipping {note}")
        plan.append((task, specs, notes))
    for task, _, _ in plan:
        problem = task.problem()
        if task.kind == "classification":
            problem.data()  # type: ignore[attr-defined]
    return plan


def _task_entry(task: BenchTask, specs: list[MethodSpec], notes: list[str], fe: float) -> dict[str, Any]:
    """A task's entry of ``results.json`` before its runs are added."""
    return {
        "description": task.description,
        "kind": task.kind,
        "unit": task.unit,
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "dim": task.dim,
        "budget": fe,
        "batch_size": task.batch_size,
        "eval_points": task.eval_points,
        "skipped": notes,
        "methods": {m.label: {**m.to_dict(), "peer": m.name in PEERS, "runs": []} for m in specs},
    }


def _run_line(task_name: str, spec: MethodSpec, run: dict[str, Any]) -> str:
    """The progress line of a finished run."""
    value = "–" if run["final_metric"] is None else f"{run['final_metric']:.4g}"
    extra = "" if run["status"] == "ok" else f"  {run['status'].upper()}: {run['message']}"
    return (
        f"  {task_name:<16} {spec.label:<14} seed {run['seed']}: {value}  "
        f"{run['forward_equivalents']:.3g} FE  {run['seconds']:.1f} s{extra}"
    )


__all__ = ["bench", "command_line", "run_loop", "run_one", "task_budget", "write_json"]
