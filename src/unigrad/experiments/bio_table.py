"""The ``bio-table`` experiment: biological rules × neuroscience tasks on a rate RNN, with BPTT as reference.

Every temporal run trains a :class:`~unigrad.bio.RateRNN` on a task of :mod:`unigrad.bio.tasks` with
:func:`~unigrad.bio.train.train_temporal` and reports the held-out score (accuracy for choice tasks, normalised
error otherwise) against the number of trials seen. All runs of a table see the same number of trials
(:data:`TRIALS`); control runs the same number of episodes (:data:`EPISODES`).

Rows: BPTT (``backprop``), NP and ANP in time (``np-time``), weight perturbation (``wp``), Miconi's rule,
exploratory Hebb, OUA and feedback alignment; columns: ``perceptual-decision``, ``dnms``, ``reaching``,
``copy``, ``mackey-glass``; mean ± sd of the final score over the seeds, with chance and the BPTT reference,
and the learning curves (``learning-curves.png``). The network of each task is in :data:`SETUPS`; a rule may
ask for a finer Euler step (Miconi's rule needs ``dt/τ ≪ 1``), in which case the task is resampled with the
same evidence per trial. A second table trains policies for CartPole-v1 and Acrobot-v1 with NRL and
REINFORCE (:data:`CONTROL_RULES`). ``jobs`` runs cells in parallel processes with identical results.

The settings of each rule are in :data:`RULES` (chosen in short seed-0 tuning runs; ``docs/biology.md`` lists
them); the other biology experiments (:mod:`~unigrad.experiments.bio_lif`,
:mod:`~unigrad.experiments.noise_resource`, :mod:`~unigrad.experiments.noise_access`) reuse them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from unigrad.bio.rate_rnn import RateRNN
from unigrad.bio.tasks import get_bio_task
from unigrad.bio.train import BioRun, train_temporal
from unigrad.core.errors import check_positive
from unigrad.experiments import _common
from unigrad.experiments._common import (
    Progress,
    Settings,
    output_dir,
    pyplot,
    runner,
    save_figure,
    table,
    write_report,
    write_results,
)
from unigrad.train.parallel import run_calls

TASKS = ("perceptual-decision", "dnms", "reaching", "copy", "mackey-glass")


@dataclass(frozen=True)
class RuleSpec:
    """One row of the table: an estimator with its options, optimizer, rate and batch of trials per update.

    ``alpha`` (optional) is the Euler step ``dt/τ`` the rule needs on tasks timed in milliseconds (the task is
    resampled at ``dt = α·τ``; Miconi's rule needs ``α ≪ 1``); ``readout="unit"`` replaces the trained linear
    readout by the rate of unit 0, frozen (Miconi's output neuron; rules that only train recurrent weights);
    ``task_options`` adds or overrides options for one task (``{"dnms": {"condition": "inputs"}}``).
    """

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adam"
    lr: float = 1e-3
    batch: int = 16
    alpha: float | None = None
    readout: str = "trained"
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def options_for(self, task: str) -> dict[str, Any]:
        """The estimator options on ``task``."""
        return {**self.options, **self.task_options.get(task, {})}


@dataclass(frozen=True)
class Setup:
    """How the table builds the network for a task: time constant, default Euler step and recurrent gain.

    ``timed``: the task's periods are in milliseconds, so a rule's ``alpha`` can resample it; otherwise the task
    is defined in steps and every rule runs at ``dt/τ = dt/tau`` here.
    """

    tau: float = 100.0
    dt: float = 20.0
    gain: float = 1.5
    timed: bool = True
    evidence_sigma: float | None = None
    """The task's per-step evidence noise at ``dt``; resampled at ``dt'`` it becomes ``σ·√(dt/dt')``, so a trial
    carries the same evidence at every step size (the ideal observer's accuracy is unchanged)."""


SETUPS: dict[str, Setup] = {
    "perceptual-decision": Setup(evidence_sigma=1.0),
    "dnms": Setup(),
    "reaching": Setup(),
    "copy": Setup(tau=1.0, dt=1.0, gain=1.0, timed=False),
    "mackey-glass": Setup(tau=1.0, dt=1.0, gain=1.0, timed=False),
}

RULES: tuple[RuleSpec, ...] = (
    RuleSpec("BPTT", "backprop", {}, "adam", 3e-3, 16),
    RuleSpec(
        "NP in time", "np-time", {"sigma": 1e-2}, "adam", 1e-3, 16, task_options={"mackey-glass": {"sigma": 1e-3}}
    ),
    RuleSpec(
        "ANP in time",
        "np-time",
        {"variant": "anp", "sigma": 1e-2},
        "adam",
        1e-3,
        16,
        task_options={"mackey-glass": {"sigma": 1e-3}},
    ),
    RuleSpec("WP", "wp", {"sigma": 1e-3}, "adam", 1e-3, 16),
    RuleSpec(
        "Miconi",
        "miconi",
        {"condition": "global", "clip": 3e-3, "scale_by_baseline": True},
        "sgd",
        0.1,
        1,
        alpha=0.04,
        readout="unit",
        task_options={"dnms": {"condition": "inputs"}, "perceptual-decision": {"condition": "labels"}},
    ),
    RuleSpec("exploratory Hebb", "exploratory-hebb", {"signal": "activity"}, "sgd", 1e-3, 1, readout="unit"),
    RuleSpec("OUA", "oua", {"sigma": 0.03}, "adam", 1e-3, 16),
    RuleSpec("feedback alignment", "feedback-alignment", {}, "adam", 3e-3, 16),
)

TRIALS = 4000
"""Trials per run in the table (every rule sees the same number)."""

HIDDEN = 64
"""Units of the rate network in the table (the literature uses 200–500; 64 keeps the table to minutes on a CPU)."""


@dataclass(frozen=True)
class ControlSpec:
    """One row of the control table: a reward rule, its optimizer and the episodes it plays per update."""

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "sgd"
    lr: float = 1e-2
    episodes_per_update: int = 1


CONTROL_RULES: tuple[ControlSpec, ...] = (
    ControlSpec("NRL", "nrl", {"sigma": 1e-3, "gamma": 1.0, "gamma_avg": 0.66, "normalization": "layer"}, "sgd", 1e-2),
    ControlSpec(
        "REINFORCE", "reinforce", {"discount": 0.99, "baseline": "running", "normalize": True}, "adam", 1e-2, 4
    ),
)
CONTROL_TASKS = ("cartpole", "acrobot")
EPISODES = 1000
"""Training episodes per run in the control table."""
CONTROL_CHANCE = {"cartpole": 22.0, "acrobot": -500.0}
"""Mean return of the uniformly random policy (CartPole-v1 ≈ 22; Acrobot-v1 rarely swings up within 500 steps)."""


def _control_run(spec: ControlSpec, task_name: str, seed: int, episodes: int, evals: int) -> dict[str, Any]:
    """Train a policy (64 leaky-ReLU units, no biases, as the NRL paper) and evaluate it greedily every few updates."""
    import time

    from unigrad.bio.control import ControlTask, evaluate, policy_mlp
    from unigrad.registry import make_estimator
    from unigrad.train.trainer import make_optimizer

    task = ControlTask(task_name)
    model = policy_mlp(task.obs_dim, task.n_actions, (64,), activation="leaky_relu", bias=False, seed=seed)
    est = make_estimator(spec.method, seed=seed, **spec.options)
    opt = make_optimizer(spec.optimizer, model.parameters(), spec.lr)
    updates = max(1, episodes // spec.episodes_per_update)
    every = max(1, updates // evals)
    history = [{"episodes": 0, "score": evaluate(model, task, 20, seed=seed), "forward_equivalents": 0.0}]
    fe, seconds = 0.0, 0.0
    for k in range(updates):
        start = time.perf_counter()
        opt.zero_grad()
        e = est.estimate(model, task.objective(seed=seed, episode=k, episodes=spec.episodes_per_update))
        opt.step()
        seconds += time.perf_counter() - start
        fe += e.cost.forward_equivalents
        if (k + 1) % every == 0 or k + 1 == updates:
            score = evaluate(model, task, 20, seed=seed)
            history.append({"episodes": (k + 1) * spec.episodes_per_update, "score": score, "forward_equivalents": fe})
    return {"history": history, "seconds": seconds, "forward_equivalents": fe}


def build(spec: RuleSpec, task_name: str, seed: int, intrinsic: Any = None) -> tuple[Any, RateRNN]:
    """The task and the network of one cell of the table (``SETUPS``, the rule's ``alpha`` and ``readout``)."""
    setup = SETUPS.get(task_name, Setup())
    dt = spec.alpha * setup.tau if spec.alpha is not None and setup.timed else setup.dt
    if not setup.timed:
        task = get_bio_task(task_name)
    elif setup.evidence_sigma is not None:
        task = get_bio_task(task_name, dt=dt, sigma=setup.evidence_sigma * math.sqrt(setup.dt / dt))
    else:
        task = get_bio_task(task_name, dt=dt)
    net = RateRNN(task.n_in, HIDDEN, task.n_out, tau=setup.tau, dt=dt, gain=setup.gain, seed=seed, intrinsic=intrinsic)
    if spec.readout == "unit":
        with torch.no_grad():
            net.out.weight.zero_()
            net.out.weight[:, : task.n_out].copy_(torch.eye(task.n_out))
            net.out.bias.zero_()
        net.out.requires_grad_(False)
    return task, net


def _fit(spec: RuleSpec, task_name: str, task: Any, net: torch.nn.Module, seed: int, trials: int, evals: int) -> BioRun:
    """``trials`` trials of ``task`` in batches of the rule's size, ``evals`` held-out evaluations."""
    updates = max(1, trials // spec.batch)
    return train_temporal(
        task,
        net,
        spec.method,
        optimizer=spec.optimizer,
        lr=spec.lr,
        options=spec.options_for(task_name),
        updates=updates,
        batch=spec.batch,
        seed=seed,
        eval_every=max(1, updates // evals),
        eval_batch=256,
    )


def _train(spec: RuleSpec, task_name: str, seed: int, trials: int, evals: int, intrinsic: Any = None) -> BioRun:
    task, net = build(spec, task_name, seed, intrinsic)
    return _fit(spec, task_name, task, net, seed, trials, evals)


def _summary(runs: list[BioRun]) -> dict[str, Any]:
    finals = [r.final["score"] for r in runs]
    return {
        "mean": statistics.fmean(finals),
        "sd": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "finals": finals,
        "diverged": sum(r.status != "ok" for r in runs),
        "seconds": statistics.fmean(r.seconds for r in runs),
        "forward_equivalents": statistics.fmean(r.cost.forward_equivalents for r in runs),
    }


def store_cell(results: dict[str, Any], task_name: str, label: str, runs: list[BioRun]) -> None:
    """Put the summary and the learning curves of the runs of rule ``label`` on ``task_name`` into ``results``."""
    key = f"{task_name}|{label}"
    results["cells"][key] = _summary(runs)
    results["curves"][key] = [r.history for r in runs]


def score_table(results: dict[str, Any], tasks: tuple[str, ...], rules: tuple[RuleSpec, ...]) -> list[str]:
    """The rule × task table: chance, then the final score of each rule (mean ± sd over the seeds)."""
    chance = {t: get_bio_task(t).chance for t in tasks}
    rows = [[spec.label, *(_cell(results["cells"][f"{t}|{spec.label}"]) for t in tasks)] for spec in rules]
    return table(["rule", *tasks], [["chance", *(f"{chance[t]:.3f}" for t in tasks)], *rows])


def _cell(s: dict[str, Any]) -> str:
    text = f"{s['mean']:.3f} ± {s['sd']:.3f}"
    return text + (f" ({s['diverged']} diverged)" if s["diverged"] else "")


def run(
    out: str | Path,
    *,
    seeds: int = 3,
    progress: Progress = None,
    trials: int = TRIALS,
    tasks: tuple[str, ...] = TASKS,
    rules: tuple[RuleSpec, ...] = RULES,
    episodes: int = EPISODES,
    control_tasks: tuple[str, ...] = CONTROL_TASKS,
    control_rules: tuple[ControlSpec, ...] = CONTROL_RULES,
    evals: int = 20,
    jobs: int = 1,
) -> str:
    """Every rule on every task, ``seeds`` seeds, the same number of trials (or episodes) each, scored at ``evals``
    points (module docs); write ``results.json``, ``report.md`` and the learning curves and return the report.

    ``jobs > 1`` runs that many runs at once in separate processes (one torch thread each); the runs are the
    same as with ``jobs=1`` (every run is keyed by its seed), only their wall times differ.
    """
    check_positive("seeds", seeds, integer=True)
    out = output_dir(out)
    results: dict[str, Any] = {
        "trials": trials,
        "episodes": episodes,
        "hidden": HIDDEN,
        "seeds": seeds,
        "rules": {spec.label: _describe(spec) for spec in rules},
        "control_rules": {spec.label: _describe_control(spec) for spec in control_rules},
        "cells": {},
        "curves": {},
        "control": {},
    }
    cells = [(spec, task_name) for task_name in tasks for spec in rules]
    control = [(spec, task_name) for task_name in control_tasks for spec in control_rules]

    def save() -> None:
        write_results(out, results)

    def store(spec: RuleSpec, task_name: str, runs: list[BioRun]) -> None:
        store_cell(results, task_name, spec.label, runs)
        save()

    def store_control(spec: ControlSpec, task_name: str, runs: list[dict[str, Any]]) -> None:
        results["control"][f"{task_name}|{spec.label}"] = _control_summary(runs)
        save()

    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
        (_train, (spec, task_name, seed, trials, evals)) for spec, task_name in cells for seed in range(seeds)
    ]
    calls += [
        (_control_run, (cspec, task_name, seed, episodes, evals))
        for cspec, task_name in control
        for seed in range(seeds)
    ]
    results_in_order = run_calls(calls, jobs)
    for spec, task_name in cells:
        store(spec, task_name, [next(results_in_order) for _ in range(seeds)])
        if progress:
            progress(f"{task_name}: {spec.label} done")
    for cspec, task_name in control:
        store_control(cspec, task_name, [next(results_in_order) for _ in range(seeds)])
        if progress:
            progress(f"{task_name}: {cspec.label} done")
    text = _table_report(results, tasks, rules, control_tasks, control_rules)
    write_report(out, text)
    _plot_curves(results, tasks, rules, control_tasks, control_rules, out / "learning-curves.png")
    return text


@dataclass(frozen=True)
class Config(_common.Config):
    """Options of ``unigrad experiment bio-table``: ``trials`` (per temporal run: :data:`TRIALS`; quick 64),
    ``episodes`` (per control run: :data:`EPISODES`; quick 8), the ``tasks``, ``rules``, ``control_tasks`` and
    ``control_rules`` of the tables, and ``jobs`` (runs at once). A quick run scores twice per run, a full one 20
    times."""

    trials: int | None = None
    tasks: tuple[str, ...] = TASKS
    rules: tuple[RuleSpec, ...] = RULES
    episodes: int | None = None
    control_tasks: tuple[str, ...] = CONTROL_TASKS
    control_rules: tuple[ControlSpec, ...] = CONTROL_RULES
    jobs: int = 1

    NAME = "bio-table"
    FULL: ClassVar[Settings] = {"trials": TRIALS, "episodes": EPISODES, "evals": 20}
    QUICK: ClassVar[Settings] = {"trials": 64, "episodes": 8, "evals": 2}


bio_table = runner(Config, run)


def _control_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Final score (mean, sd, per seed), mean seconds and forward equivalents, and the curves of one control cell."""
    finals = [r["history"][-1]["score"] for r in runs]
    return {
        "mean": statistics.fmean(finals),
        "sd": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "finals": finals,
        "diverged": 0,
        "seconds": statistics.fmean(r["seconds"] for r in runs),
        "forward_equivalents": statistics.fmean(r["forward_equivalents"] for r in runs),
        "curves": [r["history"] for r in runs],
    }


def _describe_control(spec: ControlSpec) -> str:
    return f"{spec.method}, {spec.optimizer} {spec.lr:g}, {spec.episodes_per_update} episode(s) per update" + "".join(
        f", {k}={v}" for k, v in spec.options.items()
    )


def _describe(spec: RuleSpec) -> str:
    text = f"{spec.method}, {spec.optimizer} {spec.lr:g}, batch {spec.batch}" + "".join(
        f", {k}={v}" for k, v in spec.options.items()
    )
    if spec.alpha is not None:
        text += f", dt/τ={spec.alpha:g} on timed tasks"
    if spec.readout != "trained":
        text += ", readout: unit 0 (frozen)"
    for task_name, extra in spec.task_options.items():
        text += f"; {task_name}: " + ", ".join(f"{k}={v}" for k, v in extra.items())
    return text


def _table_report(
    results: dict[str, Any],
    tasks: tuple[str, ...],
    rules: tuple[RuleSpec, ...],
    control_tasks: tuple[str, ...] = (),
    control_rules: tuple[ControlSpec, ...] = (),
) -> str:
    lines = [
        f"# Rules × tasks: held-out score after {results['trials']:,} trials "
        f"(RateRNN {results['hidden']} units, {results['seeds']} seeds)",
        "",
        "Choice tasks (perceptual-decision, dnms): accuracy, higher is better; reaching, copy, mackey-glass: "
        "normalised error, lower is better. Mean ± sd of the final score over the seeds.",
        "",
        *score_table(results, tasks, rules),
    ]
    lines += ["", "Settings:", ""] + [f"* {spec.label}: {_describe(spec)}" for spec in rules]
    if control_tasks and control_rules:
        lines += [
            "",
            f"## Control: greedy return over 20 evaluation episodes after {results['episodes']:,} training episodes "
            f"({results['seeds']} seeds)",
            "",
            "| rule | " + " | ".join(control_tasks) + " | forward passes per run (mean) |",
            "|---|" + "---|" * (len(control_tasks) + 1),
            "| random policy | "
            + " | ".join(f"{CONTROL_CHANCE.get(t, float('nan')):.0f}" for t in control_tasks)
            + " | |",
        ]
        for cspec in control_rules:
            cells = [results["control"][f"{t}|{cspec.label}"] for t in control_tasks]
            text = [f"{c['mean']:.1f} ± {c['sd']:.1f}" for c in cells]
            fe = statistics.fmean(c["forward_equivalents"] for c in cells)
            lines.append(f"| {cspec.label} | " + " | ".join(text) + f" | {fe:,.0f} |")
        lines += ["", "Settings:", ""] + [f"* {c.label}: {_describe_control(c)}" for c in control_rules]
    return "\n".join(lines) + "\n"


def _plot_curves(
    results: dict[str, Any],
    tasks: tuple[str, ...],
    rules: tuple[RuleSpec, ...],
    control_tasks: tuple[str, ...],
    control_rules: tuple[ControlSpec, ...],
    path: Path,
) -> None:
    plt = pyplot()

    panels = [(t, "trials") for t in tasks] + [(t, "episodes") for t in control_tasks if control_rules]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (task_name, unit) in zip(axes.flat, panels, strict=False):
        if unit == "trials":
            series = [(spec.label, results["curves"][f"{task_name}|{spec.label}"]) for spec in rules]
            chance = get_bio_task(task_name).chance
            if task_name not in ("perceptual-decision", "dnms"):
                ax.set_yscale("log")
        else:
            series = [(c.label, results["control"][f"{task_name}|{c.label}"]["curves"]) for c in control_rules]
            chance = CONTROL_CHANCE.get(task_name, float("nan"))
        for label, curves in series:
            xs = [h[unit] for h in curves[0]]
            ys = [statistics.fmean(c[i]["score"] for c in curves if i < len(c)) for i in range(len(xs))]
            ax.plot(xs, ys, label=label)
        ax.axhline(chance, color="black", linestyle=":", linewidth=1)
        ax.set_title(task_name)
        ax.set_xlabel(unit)
        ax.set_ylabel("score" if unit == "trials" else "greedy return")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    save_figure(fig, path, dpi=100)
