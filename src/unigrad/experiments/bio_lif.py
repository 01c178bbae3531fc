"""The ``bio-lif`` experiment: BPTT with a surrogate derivative against NP/ANP in time and WP on a spiking network.

BPTT through a surrogate derivative against NP and ANP in time and WP on a 64-unit LIF network
(:data:`LIF_SETUPS`) for ``perceptual-decision`` and ``mackey-glass``, trained and scored as in
:mod:`unigrad.experiments.bio_table`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from unigrad.bio.tasks import get_bio_task
from unigrad.bio.train import BioRun
from unigrad.core.errors import check_positive
from unigrad.experiments import _common
from unigrad.experiments._common import Progress, Settings, output_dir, runner, write_report, write_results
from unigrad.experiments.bio_table import (
    HIDDEN,
    TRIALS,
    RuleSpec,
    _describe,
    _fit,
    _plot_curves,
    score_table,
    store_cell,
)

LIF_SETUPS: dict[str, dict[str, float]] = {
    "perceptual-decision": {"tau_mem": 100.0, "tau_out": 100.0, "threshold": 0.5, "dt": 20.0},
    "mackey-glass": {"tau_mem": 2.0, "tau_out": 2.0, "threshold": 0.2, "dt": 1.0},
}
"""The spiking network of ``bio-lif`` per task (64 units; the step ``dt`` is the task's)."""

LIF_RULES: tuple[RuleSpec, ...] = (
    RuleSpec("BPTT (surrogate)", "backprop", {}, "adam", 3e-3, 16),
    RuleSpec("NP in time", "np-time", {"sigma": 0.1}, "adam", 3e-3, 16, task_options={"mackey-glass": {"sigma": 1e-2}}),
    RuleSpec(
        "ANP in time",
        "np-time",
        {"variant": "anp", "sigma": 0.1},
        "adam",
        3e-3,
        16,
        task_options={"mackey-glass": {"sigma": 1e-2}},
    ),
    RuleSpec("WP", "wp", {"sigma": 0.03}, "adam", 3e-3, 16),
)


def _train_lif(spec: RuleSpec, task_name: str, seed: int, trials: int, evals: int) -> BioRun:
    from unigrad.bio.lif import LIFNetwork

    cfg = dict(LIF_SETUPS[task_name])
    dt = cfg.pop("dt")
    task = get_bio_task(task_name) if task_name == "mackey-glass" else get_bio_task(task_name, dt=dt)
    net = LIFNetwork(task.n_in, HIDDEN, task.n_out, dt=dt, seed=seed, **cfg)
    return _fit(spec, task_name, task, net, seed, trials, evals)


def run(
    out: str | Path,
    *,
    seeds: int = 3,
    progress: Progress = None,
    trials: int = TRIALS,
    tasks: tuple[str, ...] = tuple(LIF_SETUPS),
    rules: tuple[RuleSpec, ...] = LIF_RULES,
    evals: int = 20,
) -> str:
    """The same rules on a leaky integrate-and-fire network: BPTT through a surrogate derivative against NP and
    ANP in time (potentials perturbed, no derivative of a spike needed) and weight perturbation."""
    check_positive("seeds", seeds, integer=True)
    out = output_dir(out)
    results: dict[str, Any] = {
        "trials": trials,
        "hidden": HIDDEN,
        "seeds": seeds,
        "network": LIF_SETUPS,
        "rules": {spec.label: _describe(spec) for spec in rules},
        "cells": {},
        "curves": {},
    }
    for task_name in tasks:
        for spec in rules:
            if progress:
                progress(f"{task_name}: {spec.label}")
            store_cell(
                results, task_name, spec.label, [_train_lif(spec, task_name, s, trials, evals) for s in range(seeds)]
            )
            write_results(out, results)
    text = write_report(out, _report(results, tasks, rules))
    _plot_curves(results, tasks, rules, (), (), out / "learning-curves.png")
    return text


def _report(results: dict[str, Any], tasks: tuple[str, ...], rules: tuple[RuleSpec, ...]) -> str:
    """The rule × task table, the networks and the settings of the rules."""
    lines = [
        f"# Rules on a spiking (LIF) network: held-out score after {results['trials']:,} trials ({HIDDEN} units, "
        f"{results['seeds']} seeds)",
        "",
        "perceptual-decision: accuracy (higher is better); mackey-glass: NRMSE (lower is better).",
        "",
        *score_table(results, tasks, rules),
        "",
        "Networks:",
        "",
        *(f"* {t}: LIFNetwork({HIDDEN} units, {LIF_SETUPS[t]})" for t in tasks),
        "",
        "Settings:",
        "",
        *(f"* {spec.label}: {_describe(spec)}" for spec in rules),
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Config(_common.Config):
    """Options of ``unigrad experiment bio-lif``: ``trials`` (per run: :data:`~unigrad.experiments.bio_table.TRIALS`;
    quick 64), the ``tasks`` and the ``rules``. A quick run scores twice per run, a full one 20 times."""

    trials: int | None = None
    tasks: tuple[str, ...] = tuple(LIF_SETUPS)
    rules: tuple[RuleSpec, ...] = LIF_RULES

    NAME = "bio-lif"
    FULL: ClassVar[Settings] = {"trials": TRIALS, "evals": 20}
    QUICK: ClassVar[Settings] = {"trials": 64, "evals": 2}


bio_lif = runner(Config, run)
