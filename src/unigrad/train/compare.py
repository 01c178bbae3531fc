"""Compare estimators on one task at equal budget.

``compare(task, ["backprop", "spsa:probes=16"], budget="epochs=10", seeds=3)`` trains every method
with every seed on the same data order (keyed by the seed) and the same initial weights, then
writes a run folder (``runs/compare-<task>-<YYYYmmdd-HHMMSS>/`` by default) holding

* ``results.json``: the configuration, the environment (Python, PyTorch, NumPy versions, platform,
  threads), and per method and seed the history of evaluation points and the final numbers;
* ``report.md``: a table (method, order, optimizer, test accuracy mean ± sd over seeds, final train
  loss, forward-pass equivalents, wall time, peak memory) and the command line;
* ``accuracy_vs_epochs.png``, ``accuracy_vs_forwards.png``, ``accuracy_vs_seconds.png``: test
  accuracy against each budget axis, mean over seeds, one line per method;
* with ``diagnostics=["alignment", ...]`` (:mod:`unigrad.dynamics.diagnostics`; measured every
  ``diagnostics_every`` steps, by default on the step after each evaluation point), the values in
  every run's ``diagnostics`` list and ``diagnostics_<name>.png``: each diagnostic against the step,
  one line per method (mean over seeds). Their cost is timed apart (``diagnostics_seconds``), not
  in the wall time or the forward-pass equivalents, and they do not change the runs. In the
  experiment store the names and ``k`` are part of a run's configuration (a run without
  diagnostics keeps its key).
* with ``tensorboard=DIR``, every run's evaluation points and configuration also as TensorBoard event
  files in ``DIR/<method label>/seed-<N>`` (:mod:`unigrad.train.tensorboard`), runs found finished in the
  store included (their stored points are written).
* with ``mlflow=URI`` (a folder or ``sqlite:///PATH.db``), the same as MLflow runs, one per method label and
  seed, in an experiment named after the run folder (:mod:`unigrad.train.mlflow`), stored runs included.

Method specs read ``name[:key=value]...`` (:mod:`unigrad.train.methods`: the per-method defaults, the
sweep behind them, and the decorrelated variants); seeds are a count or a list
(:func:`~unigrad.train.methods.parse_seeds`). The command line's default comparison (:data:`DEFAULT_METHODS` on
:func:`default_task`, :data:`DEFAULT_BUDGET`) sets one method of each derivative order against each other; the
report and the command line end with their :func:`~unigrad.train.report.summary` against backprop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unigrad.core.errors import UnigradError
from unigrad.core.io import finite_json, jsonable, write_json  # finite_json, jsonable: re-exported
from unigrad.data.tasks import Task, get_task
from unigrad.dynamics.diagnostics import check_diagnostics
from unigrad.train.methods import MethodSpec, check_parameter_choices, parse_methods, parse_seeds
from unigrad.train.mlflow import check_tracking_uri
from unigrad.train.mlflow import write_run as mlflow_write_run
from unigrad.train.rundir import environment, run_dir
from unigrad.train.store import Store, run_config
from unigrad.train.tensorboard import check_logdir, run_folder, write_run
from unigrad.train.trainer import (
    DEFAULT_EVAL_POINTS,
    HALF_DTYPES,
    Budget,
    RunResult,
    check_plan,
    measure_peak_memory,
    resolve_device,
    resolve_dtype,
    run_configuration,
    train,
)

DEFAULT_TASK = "fashion-mlp"
FALLBACK_TASK = "mnist1d-mlp"
"""The command line's task when none is given: :data:`DEFAULT_TASK`, or this one when Fashion-MNIST is not
installed (:func:`default_task`)."""
# One method of each derivative order, the best backward-free one (danp) among them, and an unstructured
# zeroth-order one (spsa, 4 probes) to set it against: about a minute on a 2-core CPU (docs/cli.md).
DEFAULT_METHODS = ("backprop", "danp", "kfac:damping=3e-2", "spsa:probes=4")
DEFAULT_BUDGET = "steps=500"
DEFAULT_SEEDS = 3
DEFAULT_BATCH_SIZE = 64


def default_task(say: Callable[[str], None] | None = print) -> str:
    """The task a command runs when none is named: :data:`DEFAULT_TASK` when Fashion-MNIST's files are there
    (:func:`~unigrad.data.fashion_mnist.available`), else :data:`FALLBACK_TASK`, after ``say`` tells what it fell
    back to and how to install the data."""
    from unigrad.data.fashion_mnist import DEBIAN_PACKAGE, ENV, available, data_dir

    if available():
        return DEFAULT_TASK
    if say is not None:
        say(
            f"note: Fashion-MNIST is not installed (no IDX files in {data_dir()}), so this runs {FALLBACK_TASK} "
            f"instead of {DEFAULT_TASK}; install it with `sudo apt-get install {DEBIAN_PACKAGE}` (or `make data`), "
            f"or point ${ENV} at a folder holding its four IDX files"
        )
    return FALLBACK_TASK


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean (and sd over seeds) of the final numbers of one method's runs."""

    def stats(key: str, src: str = "final") -> tuple[float | None, float | None]:
        vals = [r[src][key] if src else r[key] for r in runs]
        vals = [v for v in vals if v is not None]
        if not vals:
            return None, None
        sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        return float(np.mean(vals)), sd

    acc, acc_sd = stats("test_accuracy")
    loss, loss_sd = stats("train_loss")
    fe, _ = stats("forward_equivalents", "")
    secs, _ = stats("train_seconds", "")
    out = {
        "test_accuracy_mean": acc,
        "test_accuracy_sd": acc_sd,
        "train_loss_mean": loss,
        "train_loss_sd": loss_sd,
        "forward_equivalents_mean": fe,
        "train_seconds_mean": secs,
        "diverged": sum(r["status"] == "diverged" for r in runs),
        "seeds": len(runs),
    }
    # the accuracy on a task's extra evaluation sets (the text tasks' transfer set); other tasks have none
    for key in extra_metrics(runs):
        out[f"{key}_mean"], out[f"{key}_sd"] = stats(key)
    return out


def extra_metrics(runs: list[dict[str, Any]]) -> list[str]:
    """The ``<name>_accuracy`` keys of extra evaluation sets in the runs' final points, sorted."""
    return sorted({k for r in runs for k in r["final"] if k.endswith("_accuracy") and k != "test_accuracy"})


@dataclass
class _Comparison:
    """What every run of a comparison shares, checked and built once by :func:`_plan`."""

    task: Task
    specs: list[MethodSpec]
    budget: Budget
    seeds: list[int]
    batch_size: int
    device: torch.device
    dtype: torch.dtype
    asked_points: int | None  # as given (None: the default number, which a short run may not reach)
    eval_points: int
    diag_names: tuple[str, ...]
    diagnostics_every: int | None
    diag_config: dict[str, Any] | None
    progress: bool = True  # whether the runs show progress bars
    say: Callable[[str], None] = print  # where the lines about each run go
    tensorboard: Path | None = None  # the TensorBoard folder (unigrad.train.tensorboard), checked and made
    mlflow: str | None = None  # the MLflow tracking URI (unigrad.train.mlflow), checked
    experiment: str = ""  # the MLflow experiment: the run folder's name


def compare(
    task: Task | str = DEFAULT_TASK,
    methods: str | Sequence[str] | Sequence[MethodSpec] = DEFAULT_METHODS,
    budget: Budget | str = DEFAULT_BUDGET,
    seeds: int | str | Sequence[int] = 1,
    out: str | Path | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    dtype: str = "float32",
    eval_points: int | None = None,
    memory: bool = True,
    progress: bool = True,
    command: str | None = None,
    prefix: str = "compare",
    log: Callable[[str], None] | None = print,
    store: str | Path | None = None,
    rerun: bool = False,
    diagnostics: str | Sequence[str] = (),
    diagnostics_every: int | None = None,
    tensorboard: str | Path | None = None,
    mlflow: str | Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run every method with every seed at equal ``budget``; write the run folder (module docs).

    Returns the folder and the ``results.json`` content. Runs that diverge are kept up to their
    last good state and marked ``"diverged"``; the other runs go on.

    With ``store`` (a path to an experiment store, :mod:`unigrad.train.store`), every run is
    recorded there with its configuration, environment, evaluation points (as they are made) and
    result, and the comparison becomes a group named after the run folder. A run whose configuration
    already finished in the store (``ok`` or ``diverged``) is not trained again: its stored result is
    used, unless ``rerun``. An unfinished one (a killed comparison) resumes from its checkpoint in
    ``<store folder>/checkpoints/`` and ends bitwise as if never interrupted; checkpoints are deleted
    once their run is stored.

    With ``tensorboard`` (a folder), every run is also logged to TensorBoard (module docs); without the
    ``tensorboard`` package this is refused before anything is trained or a folder is made. With ``mlflow`` (a
    folder or ``sqlite:///PATH.db``) every run is also an MLflow run, likewise refused without ``mlflow-skinny``.
    """
    from unigrad.train.report import write_report

    say = log or (lambda _: None)
    plan = _plan(task, methods, budget, seeds, batch_size, device, dtype, eval_points, diagnostics, diagnostics_every)
    logdir = check_logdir(tensorboard) if tensorboard is not None else None
    tracking = check_tracking_uri(mlflow) if mlflow is not None else None
    plan = replace(plan, progress=progress, say=say, tensorboard=logdir, mlflow=tracking)
    db = Store(store) if store is not None else None  # a bad store fails here, before a folder is made
    folder = run_dir(plan.task.name, out, prefix)
    plan = replace(plan, experiment=folder.name)
    results = _header(plan, command)
    verb = "training" if prefix == "train" else "comparing"
    labels = ", ".join(m.label for m in plan.specs)
    plan.say(f"{verb} {labels} on {plan.task.name}, {plan.budget}, seeds {plan.seeds} -> {folder}")
    group = db.create_group(folder.name, results["config"], results["environment"]) if db is not None else None
    t_start = time.perf_counter()
    for spec in plan.specs:
        runs: list[dict[str, Any]] = []
        entry: dict[str, Any] = {**spec.to_dict(), "runs": runs}
        results["methods"][spec.label] = entry
        for seed in plan.seeds:
            stored = None
            if db is not None and group is not None:
                stored = _StoredRun(db, group.name, results["environment"], plan, spec, seed, rerun)
            runs.append(_run(plan, spec, seed, stored))
            _write_json(folder / "results.json", results)
        if memory:
            entry["peak_memory_bytes"] = _peak_memory(plan, spec)
        entry["summary"] = summarize(runs)
        _write_json(folder / "results.json", results)
    results["config"]["total_seconds"] = time.perf_counter() - t_start
    _write_json(folder / "results.json", results)
    write_report(folder, results)
    return folder, results


def _plan(
    task: Task | str,
    methods: str | Sequence[str] | Sequence[MethodSpec],
    budget: Budget | str,
    seeds: int | str | Sequence[int],
    batch_size: int,
    device: str,
    dtype: str,
    eval_points: int | None,
    diagnostics: str | Sequence[str],
    diagnostics_every: int | None,
) -> _Comparison:
    """The comparison :func:`compare` is asked for, checked before anything is trained or a folder is made: the
    methods, the seeds, the diagnostics, learning rates the optimizer's dtype can hold, the dataset, and a plan
    every run can carry out (:func:`~unigrad.train.plan.check_plan`)."""
    task = get_task(task) if isinstance(task, str) else task
    if isinstance(methods, str) or all(isinstance(m, str) for m in methods):
        specs = parse_methods(methods)  # type: ignore[arg-type]
    else:
        specs = list(methods)  # type: ignore[arg-type]
    budget = Budget.parse(budget)
    seed_list = parse_seeds(seeds)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    diag_names = check_diagnostics(diagnostics)
    if diagnostics_every is not None and (
        isinstance(diagnostics_every, bool) or not isinstance(diagnostics_every, int) or diagnostics_every < 1
    ):
        raise UnigradError(f"option diagnostics_every must be an integer >= 1, got {diagnostics_every!r}")
    diag_config = {"names": list(diag_names), "every": diagnostics_every} if diag_names else None
    _check_learning_rates(specs, dt)
    task.data()  # a missing dataset fails here, before a folder is made
    for spec in specs:  # so does a plan no run can carry out (a batch beyond the data, too many steps or points)
        check_plan(
            task,
            spec.name,
            budget=budget,
            batch_size=batch_size,
            eval_points=eval_points,
            estimator_options=spec.options,
        )
    check_parameter_choices(task, specs)  # a glob that matches no parameter fails before any method trains
    points = DEFAULT_EVAL_POINTS if eval_points is None else eval_points
    return _Comparison(
        task=task,
        specs=specs,
        budget=budget,
        seeds=seed_list,
        batch_size=batch_size,
        device=dev,
        dtype=dt,
        asked_points=eval_points,
        eval_points=points,
        diag_names=diag_names,
        diagnostics_every=diagnostics_every,
        diag_config=diag_config,
    )


def _check_learning_rates(specs: list[MethodSpec], dt: torch.dtype) -> None:
    """Refuse a learning rate the optimizer's parameters cannot hold (float32 masters for half models)."""
    step_dt = torch.float32 if dt in HALF_DTYPES else dt
    for spec in specs:
        if spec.lr > torch.finfo(step_dt).max:
            raise UnigradError(
                f"lr {spec.lr:g} of {spec.label} is larger than the largest {str(step_dt).removeprefix('torch.')} "
                f"({torch.finfo(step_dt).max:g}); lower it"
            )


def _header(plan: _Comparison, command: str | None) -> dict[str, Any]:
    """``results.json`` before any run: the configuration, the environment and no methods yet."""
    config = {
        "task": plan.task.name,
        "task_description": plan.task.description,
        **({"task_source": plan.task.source} if plan.task.source is not None else {}),
        "budget": str(plan.budget),
        "seeds": plan.seeds,
        "batch_size": plan.batch_size,
        "device": str(plan.device),
        "dtype": str(plan.dtype).removeprefix("torch."),
        "eval_points": plan.eval_points,
        "methods": [m.to_dict() for m in plan.specs],
        "command": command,
        "started": datetime.now().isoformat(timespec="seconds"),
        **({"diagnostics": plan.diag_config} if plan.diag_config is not None else {}),
    }
    return {"config": config, "environment": environment(plan.device), "methods": {}}


class _StoredRun:
    """A run's record in the experiment store (:func:`_stored_run`): its id, its checkpoint and, when it already
    finished, its stored result; :meth:`record` adds an evaluation point, :meth:`finish` stores the result."""

    def __init__(
        self, db: Store, group: str, env: dict[str, Any], plan: _Comparison, spec: MethodSpec, seed: int, rerun: bool
    ) -> None:
        config = run_config(
            task=plan.task.name,
            method=spec.to_dict(),
            budget=str(plan.budget),
            batch_size=plan.batch_size,
            seed=seed,
            device=str(plan.device),
            dtype=str(plan.dtype).removeprefix("torch."),
            eval_points=plan.eval_points,
        )
        if plan.task.source is not None:  # a task of yours: its import path is part of what the run is
            config["task_source"] = plan.task.source
        if plan.diag_config is not None:  # a run with diagnostics is another record than one without
            config["diagnostics"] = plan.diag_config
        if plan.dtype in HALF_DTYPES:  # half precision steps float32 masters: not the runs stored before it did
            config["master_weights"] = "float32"
        self.db = db
        self.id, self.checkpoint, self.result = _stored_run(db, group, config, env, rerun)
        self.environment = db.get(self.id).environment  # the environment the run was trained in

    def record(self, point: dict[str, Any]) -> None:
        self.db.add_points(self.id, [point])

    def finish(self, r: RunResult) -> None:
        self.db.finish_run(self.id, r.status, r.to_dict())
        self.checkpoint.unlink(missing_ok=True)


def _run(plan: _Comparison, spec: MethodSpec, seed: int, stored: _StoredRun | None) -> dict[str, Any]:
    """One method with one seed: its stored result when the store has it finished, else trained (resuming from
    the store's checkpoint, recording its points there); says how it went."""
    if stored is not None and stored.result is not None:
        f = stored.result["final"]
        plan.say(
            f"  {spec.label:<18} seed {seed}: test acc {f['test_accuracy']:.3f}  (stored run {stored.id}, "
            f"not retrained)"
        )
        if plan.tensorboard is not None or plan.mlflow is not None:
            _log_stored(plan, spec, seed, stored)
        return stored.result
    with _allocation_errors(f"{spec.label} seed {seed}"):
        r: RunResult = train(
            plan.task,
            spec.name,
            **_settings(plan, spec, seed),
            progress=plan.progress,
            desc=f"{spec.label} seed {seed}",
            checkpoint=None if stored is None else stored.checkpoint,
            resume=stored is not None,
            on_record=None if stored is None else stored.record,
            on_resume=_say_resume(plan, spec, seed, None if stored is None else stored.checkpoint),
            threads=None,  # the caller's (the command line's --threads), recorded in the environment
            tensorboard=plan.tensorboard,
            label=spec.label,
            mlflow=plan.mlflow,
            mlflow_experiment=plan.experiment,
        )
    result = r.to_dict()
    if stored is not None:
        stored.finish(r)
    f = r.final
    line = (
        f"  {spec.label:<18} seed {seed}: test acc {f['test_accuracy']:.3f}  "
        f"{r.steps} steps  {r.forward_equivalents:.3g} FE  {r.train_seconds:.1f} s"
        + (f" (+{r.diagnostics_seconds:.1f} s diagnostics)" if r.diagnostic_names else "")
    )
    plan.say(line + (f"  DIVERGED: {r.message}" if r.status == "diverged" else ""))
    return result


def _settings(plan: _Comparison, spec: MethodSpec, seed: int) -> dict[str, Any]:
    """The options of :func:`~unigrad.train.trainer.train` that define the run of ``spec`` with ``seed`` (what
    :func:`~unigrad.train.trainer.run_configuration` turns into the configuration of a stored run)."""
    return {
        "budget": plan.budget,
        "batch_size": plan.batch_size,
        "seed": seed,
        "device": plan.device,
        "dtype": plan.dtype,
        "eval_points": plan.asked_points,
        "diagnostics": plan.diag_names,
        "diagnostics_every": plan.diagnostics_every,
        **spec.run_options(),
    }


def _log_stored(plan: _Comparison, spec: MethodSpec, seed: int, stored: _StoredRun) -> None:
    """Write a run found finished in the store to its TensorBoard folder and MLflow experiment: the configuration
    the trained run logged (with the environment it was trained in) and its stored points."""
    assert stored.result is not None
    settings = run_configuration(plan.task, spec.name, **_settings(plan, spec, seed))
    config = {"method": spec.label, **settings, "environment": stored.environment}
    if plan.tensorboard is not None:
        write_run(run_folder(plan.tensorboard, spec.label, seed), config, stored.result["history"])
    if plan.mlflow is not None:
        history, status = stored.result["history"], stored.result.get("status", "ok")
        mlflow_write_run(plan.mlflow, plan.experiment, spec.label, seed, config, history, status)


def _say_resume(plan: _Comparison, spec: MethodSpec, seed: int, path: Path | None) -> Callable[[int, bool], None]:
    """What a run says when it continues from its checkpoint: one line, with the step it picks up from."""

    def say(step: int, finished: bool) -> None:
        what = "finished already; its result is taken as it is" if finished else f"resuming at step {step}"
        plan.say(f"  {spec.label:<18} seed {seed}: checkpoint {path} found, {what}")

    return say


def _peak_memory(plan: _Comparison, spec: MethodSpec) -> int:
    """Peak bytes of two training steps of ``spec`` (:func:`~unigrad.train.trainer.measure_peak_memory`)."""
    with _allocation_errors(f"{spec.label} (peak memory)"):
        return measure_peak_memory(
            plan.task,
            spec.name,
            batch_size=plan.batch_size,
            seed=plan.seeds[0],
            device=plan.device,
            dtype=plan.dtype,
            **spec.run_options(),
        )


def _stored_run(
    db: Store, group: str, config: dict[str, Any], env: dict[str, Any], rerun: bool
) -> tuple[int, Path, dict[str, Any] | None]:
    """The store's record of a run of ``config`` in ``group``: its id, its checkpoint path and, when it already
    finished (``ok`` or ``diverged``) and not ``rerun``, its stored result (else ``None``: train it, resuming an
    unfinished run from the checkpoint)."""
    rec = db.start_run(config, env)
    db.add_to_group(group, [rec.id])
    ckpt = db.path.parent / "checkpoints" / f"{rec.key[:32]}.pt"
    if rec.status in ("ok", "diverged") and not rerun:
        return rec.id, ckpt, {**(rec.result or {}), "history": db.points(rec.id)}
    if rec.status != "running" or rerun:
        rec = db.reset(rec.id, env)
        ckpt.unlink(missing_ok=True)
    return rec.id, ckpt, None


@contextmanager
def _allocation_errors(what: str) -> Iterator[None]:
    """A run that asks for more memory than there is (huge probes or batch) fails with one line, not a traceback."""
    try:
        yield
    except RuntimeError as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not (
            isinstance(e, torch.OutOfMemoryError)
            or "can't allocate memory" in text
            or "size calculation overflowed" in text
        ):
            raise
        raise UnigradError(f"{what}: out of memory ({text}); lower the probes or the batch size") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_json(path, data, fsync=False, unique=False)


def any_diverged(results: dict[str, Any]) -> list[str]:
    """Messages of the runs that diverged."""
    return [r["message"] for m in results["methods"].values() for r in m["runs"] if r["status"] == "diverged"]


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BUDGET",
    "DEFAULT_METHODS",
    "DEFAULT_SEEDS",
    "DEFAULT_TASK",
    "FALLBACK_TASK",
    "any_diverged",
    "compare",
    "default_task",
    "finite_json",
    "jsonable",
    "summarize",
]
