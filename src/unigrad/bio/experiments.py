"""Biology experiments: the rule × task table, noise as a resource, accessible against inaccessible noise.

Every run trains a :class:`~unigrad.bio.RateRNN` on a temporal task of :mod:`unigrad.bio.tasks` with
:func:`~unigrad.bio.train.train_temporal` and reports the held-out score (accuracy for choice tasks, normalised
error otherwise) against the number of trials seen. All runs of a table see the same number of trials.

``bio-table``
    rows: BPTT (``backprop``), NP and ANP in time (``np-time``), weight perturbation (``wp``), Miconi's rule,
    exploratory Hebb, OUA and feedback alignment; columns: ``perceptual-decision``, ``dnms``, ``reaching``,
    ``copy``, ``mackey-glass``; mean ± sd of the final score over the seeds, with chance and the BPTT reference,
    and the learning curves (``learning-curves.png``).
``noise-resource``
    final score of NP and ANP in time against the noise level σ (log grid) on ``perceptual-decision``: too little
    noise and the loss change drowns in rounding (float32), too much and the estimate's bias spoils precision.
``noise-access``
    the same task learned from noise the rule can read (NP, exploratory Hebb with ``signal="noise"``) and from
    noise it cannot (the network's own intrinsic noise, ``accessible=False``: ANP, Miconi, exploratory Hebb with
    ``signal="activity"``).

The settings of each rule are in :data:`RULES` (chosen in short tuning runs; ``docs/biology.md`` lists them).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unigrad.bio.rate_rnn import RateRNN
from unigrad.bio.tasks import get_bio_task
from unigrad.bio.train import BioRun, train_temporal
from unigrad.core.errors import check_positive

TASKS = ("perceptual-decision", "dnms", "reaching", "copy", "mackey-glass")


@dataclass(frozen=True)
class RuleSpec:
    """One row of the table: an estimator with its options, optimizer, rate and batch of trials per update."""

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adam"
    lr: float = 1e-3
    batch: int = 16


RULES: tuple[RuleSpec, ...] = (
    RuleSpec("BPTT", "backprop", {}, "adam", 3e-3, 16),
    RuleSpec("NP in time", "np-time", {"sigma": 1e-2}, "adam", 1e-3, 16),
    RuleSpec("ANP in time", "np-time", {"variant": "anp", "sigma": 1e-2}, "adam", 1e-3, 16),
    RuleSpec("WP", "wp", {"sigma": 1e-3}, "adam", 1e-3, 16),
    RuleSpec("Miconi", "miconi", {"condition": "global", "clip": 3e-3}, "sgd", 0.1, 1),
    RuleSpec("exploratory Hebb", "exploratory-hebb", {"signal": "activity"}, "sgd", 3e-3, 1),
    RuleSpec("OUA", "oua", {"sigma": 0.03}, "adam", 3e-3, 16),
    RuleSpec("feedback alignment", "feedback-alignment", {}, "adam", 3e-3, 16),
)

HIDDEN = 64
"""Units of the rate network in the table (the literature uses 200–500; 64 keeps the table to minutes on a CPU)."""


def _model(task: Any, seed: int, intrinsic: Any = None) -> RateRNN:
    return RateRNN(task.n_in, HIDDEN, task.n_out, seed=seed, intrinsic=intrinsic)


def _train(spec: RuleSpec, task_name: str, seed: int, trials: int, evals: int, intrinsic: Any = None) -> BioRun:
    task = get_bio_task(task_name)
    updates = max(1, trials // spec.batch)
    return train_temporal(
        task,
        _model(task, seed, intrinsic),
        spec.method,
        optimizer=spec.optimizer,
        lr=spec.lr,
        options=dict(spec.options),
        updates=updates,
        batch=spec.batch,
        seed=seed,
        eval_every=max(1, updates // evals),
        eval_batch=256,
    )


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


def _cell(s: dict[str, Any]) -> str:
    text = f"{s['mean']:.3f} ± {s['sd']:.3f}"
    return text + (f" ({s['diverged']} diverged)" if s["diverged"] else "")


def bio_table(
    out: str | Path,
    *,
    seeds: int = 3,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
    trials: int | None = None,
    tasks: tuple[str, ...] = TASKS,
    rules: tuple[RuleSpec, ...] = RULES,
) -> str:
    """Every rule on every task, ``seeds`` seeds, the same number of trials each (module docs)."""
    check_positive("seeds", seeds, integer=True)
    trials = trials or (64 if quick else 8000)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"trials": trials, "hidden": HIDDEN, "seeds": seeds, "cells": {}, "curves": {}}
    for task_name in tasks:
        for spec in rules:
            if progress:
                progress(f"{task_name}: {spec.label}")
            runs = [_train(spec, task_name, seed, trials, 2 if quick else 20) for seed in range(seeds)]
            key = f"{task_name}|{spec.label}"
            results["cells"][key] = _summary(runs)
            results["curves"][key] = [r.history for r in runs]
            (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    text = _table_report(results, tasks, rules)
    (out / "report.md").write_text(text)
    _plot_curves(results, tasks, rules, out / "learning-curves.png")
    return text


def _table_report(results: dict[str, Any], tasks: tuple[str, ...], rules: tuple[RuleSpec, ...]) -> str:
    chance = {t: get_bio_task(t).chance for t in tasks}
    lines = [
        f"# Rules × tasks: held-out score after {results['trials']:,} trials "
        f"(RateRNN {results['hidden']} units, {results['seeds']} seeds)",
        "",
        "Choice tasks: accuracy (higher is better); reaching, copy, mackey-glass: normalised error (lower is better).",
        "",
        "| rule | settings | " + " | ".join(tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
        "| chance | | " + " | ".join(f"{chance[t]:.3f}" for t in tasks) + " |",
    ]
    for spec in rules:
        settings = f"{spec.optimizer} {spec.lr:g}, batch {spec.batch}" + "".join(
            f", {k}={v}" for k, v in spec.options.items()
        )
        cells = [_cell(results["cells"][f"{t}|{spec.label}"]) for t in tasks]
        lines.append(f"| {spec.label} | {settings} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot_curves(results: dict[str, Any], tasks: tuple[str, ...], rules: tuple[RuleSpec, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task_name in zip(axes[0], tasks, strict=True):
        for spec in rules:
            curves = results["curves"][f"{task_name}|{spec.label}"]
            xs = [h["trials"] for h in curves[0]]
            ys = [statistics.fmean(c[i]["score"] for c in curves if i < len(c)) for i in range(len(xs))]
            ax.plot(xs, ys, label=spec.label)
        ax.axhline(get_bio_task(task_name).chance, color="black", linestyle=":", linewidth=1)
        ax.set_title(task_name)
        ax.set_xlabel("trials")
        ax.set_ylabel("score")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def noise_resource(
    out: str | Path,
    *,
    seeds: int = 3,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
    task: str = "perceptual-decision",
    sigmas: tuple[float, ...] = (1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 0.3, 1.0, 3.0),
) -> str:
    """Final score of NP and ANP in time against the injected noise level σ (module docs)."""
    check_positive("seeds", seeds, integer=True)
    trials = 64 if quick else 4000
    if quick:
        sigmas = sigmas[::5]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"task": task, "trials": trials, "sigmas": list(sigmas), "rows": {}}
    for variant in ("np", "anp"):
        row = []
        for sigma in sigmas:
            if progress:
                progress(f"{variant} sigma={sigma:g}")
            spec = RuleSpec(variant, "np-time", {"variant": variant, "sigma": sigma}, "adam", 1e-3, 16)
            row.append(_summary([_train(spec, task, seed, trials, 2) for seed in range(seeds)]))
        results["rows"][variant] = row
    if progress:
        progress("BPTT reference")
    bptt = RuleSpec("BPTT", "backprop", {}, "adam", 3e-3, 16)
    results["bptt"] = _summary([_train(bptt, task, seed, trials, 2) for seed in range(seeds)])
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        f"# Noise as a resource: {task}, score after {trials:,} trials against σ ({seeds} seeds)",
        "",
        "| rule | " + " | ".join(f"σ = {s:g}" for s in sigmas) + " |",
        "|---|" + "---|" * len(sigmas),
    ]
    for variant, row in results["rows"].items():
        lines.append(f"| {variant} in time | " + " | ".join(_cell(s) for s in row) + " |")
    lines += ["", f"BPTT on the same trials: {_cell(results['bptt'])}; chance {get_bio_task(task).chance:.3f}."]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for variant, row in results["rows"].items():
        ax.errorbar(
            sigmas, [s["mean"] for s in row], yerr=[s["sd"] for s in row], label=f"{variant} in time", capsize=3
        )
    ax.axhline(get_bio_task(task).chance, color="black", linestyle=":", linewidth=1, label="chance")
    ax.axhline(results["bptt"]["mean"], color="tab:green", linestyle="--", linewidth=1, label="BPTT")
    ax.set_xscale("log")
    ax.set_xlabel("noise σ")
    ax.set_ylabel("final score")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "noise-resource.png", dpi=100)
    plt.close(fig)
    return text


def noise_access(
    out: str | Path,
    *,
    seeds: int = 3,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
    task: str = "perceptual-decision",
) -> str:
    """The same task learned from noise the rule reads and from the network's own, unreadable noise."""
    from unigrad.noise import WhiteGaussian

    check_positive("seeds", seeds, integer=True)
    trials = 64 if quick else 4000
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sigma = 1e-2
    configs: list[tuple[str, RuleSpec, Any]] = [
        ("NP, injected noise (read)", RuleSpec("np", "np-time", {"sigma": sigma}, "adam", 1e-3, 16), None),
        (
            "NP, injected + intrinsic noise (read)",
            RuleSpec("np", "np-time", {"sigma": sigma, "passes": "two-noisy"}, "adam", 1e-3, 16),
            WhiteGaussian(sigma, accessible=True),
        ),
        (
            "ANP, intrinsic noise only (not readable)",
            RuleSpec(
                "anp",
                "np-time",
                {"variant": "anp", "sigma": sigma, "passes": "two-noisy", "noise": "external"},
                "adam",
                1e-3,
                16,
            ),
            WhiteGaussian(sigma, accessible=False),
        ),
        (
            "exploratory Hebb, kicks read",
            RuleSpec(
                "eh", "exploratory-hebb", {"signal": "noise", "noise": "sparse-kicks:p=0.06:sigma=0.5"}, "sgd", 3e-3, 1
            ),
            None,
        ),
        (
            "exploratory Hebb, activity only",
            RuleSpec("eh", "exploratory-hebb", {"signal": "activity"}, "sgd", 3e-3, 1),
            None,
        ),
    ]
    results: dict[str, Any] = {"task": task, "trials": trials, "rows": {}}
    for label, spec, intrinsic in configs:
        if progress:
            progress(label)
        results["rows"][label] = _summary([_train(spec, task, s, trials, 2, intrinsic) for s in range(seeds)])
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    chance = get_bio_task(task).chance
    lines = [
        f"# Accessible against inaccessible noise: {task}, score after {trials:,} trials ({seeds} seeds; "
        f"chance {chance:.3f})",
        "",
        "| rule and noise | score |",
        "|---|---|",
    ]
    lines += [f"| {label} | {_cell(s)} |" for label, s in results["rows"].items()]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text
