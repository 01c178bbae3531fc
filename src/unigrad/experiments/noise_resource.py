"""The ``noise-resource`` experiment: final score of NP and ANP in time against the noise level.

Final score of NP and ANP in time against the noise level σ (log grid) on ``perceptual-decision`` and
``mackey-glass``, and NRL's CartPole return against its node noise σ: too little noise and the loss change
drowns in rounding (float32), too much and the estimate's bias spoils precision. Runs are trained and scored
as in :mod:`unigrad.experiments.bio_table`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from unigrad.bio.tasks import get_bio_task
from unigrad.core.errors import check_positive
from unigrad.experiments import _common
from unigrad.experiments._common import (
    Progress,
    Settings,
    finish,
    output_dir,
    pyplot,
    runner,
    save_figure,
    table,
    write_results,
)
from unigrad.experiments.bio_table import (
    CONTROL_CHANCE,
    CONTROL_RULES,
    EPISODES,
    ControlSpec,
    RuleSpec,
    _cell,
    _control_run,
    _summary,
    _train,
)

SIGMAS = (1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 0.3, 1.0, 3.0)
"""The noise levels of NP and ANP in time (a quick run takes every fifth)."""
CONTROL_SIGMAS = (1e-9, 1e-7, 1e-5, 1e-3, 1e-1, 1.0, 10.0)
"""NRL's node-noise levels on CartPole (a quick run takes every third)."""


def run(
    out: str | Path,
    *,
    seeds: int = 3,
    progress: Progress = None,
    tasks: tuple[str, ...] = ("perceptual-decision", "mackey-glass"),
    sigmas: tuple[float, ...] = SIGMAS,
    control_sigmas: tuple[float, ...] = CONTROL_SIGMAS,
    trials: int = 4000,
    episodes: int = EPISODES,
) -> str:
    """Final score of NP and ANP in time against the injected noise level σ, per task, and NRL's CartPole
    return against its node noise σ (module docs); ``trials`` per temporal run, ``episodes`` per CartPole run."""
    check_positive("seeds", seeds, integer=True)
    out = output_dir(out)
    results: dict[str, Any] = {
        "tasks": list(tasks),
        "trials": trials,
        "episodes": episodes,
        "sigmas": list(sigmas),
        "control_sigmas": list(control_sigmas),
        "rows": {},
        "bptt": {},
    }
    bptt = RuleSpec("BPTT", "backprop", {}, "adam", 3e-3, 16)
    for task in tasks:
        results["rows"][task] = {}
        for variant in ("np", "anp"):
            row = []
            for sigma in sigmas:
                if progress:
                    progress(f"{task}: {variant} sigma={sigma:g}")
                spec = RuleSpec(variant, "np-time", {"variant": variant, "sigma": sigma}, "adam", 1e-3, 16)
                row.append(_summary([_train(spec, task, seed, trials, 2) for seed in range(seeds)]))
            results["rows"][task][variant] = row
        if progress:
            progress(f"{task}: BPTT reference")
        results["bptt"][task] = _summary([_train(bptt, task, seed, trials, 2) for seed in range(seeds)])
        write_results(out, results)
    nrl = next(c for c in CONTROL_RULES if c.label == "NRL")
    results["nrl"] = []
    for sigma in control_sigmas:
        if progress:
            progress(f"cartpole: NRL sigma={sigma:g}")
        spec = ControlSpec("NRL", "nrl", {**nrl.options, "sigma": sigma}, nrl.optimizer, nrl.lr)
        finals = [_control_run(spec, "cartpole", seed, episodes, 2)["history"][-1]["score"] for seed in range(seeds)]
        results["nrl"].append(
            {"mean": statistics.fmean(finals), "sd": statistics.stdev(finals) if seeds > 1 else 0.0, "finals": finals}
        )
        write_results(out, results)
    return finish(out, results, lambda r: _report(r, seeds), _plot_noise_resource, "noise-resource.png")


def _report(results: dict[str, Any], seeds: int) -> str:
    """Per task, NP and ANP against σ next to BPTT; NRL's CartPole return against σ."""
    lines = [f"# Noise as a resource: score against the injected noise σ ({seeds} seeds)", ""]
    for task in results["tasks"]:
        better = "accuracy, higher is better" if get_bio_task(task).chance == 0.5 else "NRMSE, lower is better"
        rows = ([f"{variant} in time", *(_cell(s) for s in row)] for variant, row in results["rows"][task].items())
        lines += [
            f"## {task}: NP / ANP in time after {results['trials']:,} trials ({better})",
            "",
            *table(["rule", *(f"σ = {s:g}" for s in results["sigmas"])], rows),
            "",
            f"BPTT on the same trials: {_cell(results['bptt'][task])}; chance {get_bio_task(task).chance:.3f}.",
            "",
        ]
    lines += [
        f"## cartpole: NRL greedy return (20 evaluation episodes) after {results['episodes']:,} episodes",
        "",
        *table(
            ["σ", *(f"{s:g}" for s in results["control_sigmas"])],
            [["NRL", *(f"{r['mean']:.1f} ± {r['sd']:.1f}" for r in results["nrl"])]],
        ),
        "",
        f"Random policy ≈ {CONTROL_CHANCE['cartpole']:.0f}; the maximum is 500.",
    ]
    return "\n".join(lines) + "\n"


def _plot_noise_resource(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    tasks = results["tasks"]
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(5.0 * (len(tasks) + 1), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=False):
        for variant, row in results["rows"][task].items():
            ax.errorbar(
                results["sigmas"],
                [s["mean"] for s in row],
                yerr=[s["sd"] for s in row],
                label=f"{variant} in time",
                capsize=3,
            )
        ax.axhline(get_bio_task(task).chance, color="black", linestyle=":", linewidth=1, label="chance")
        ax.axhline(results["bptt"][task]["mean"], color="tab:green", linestyle="--", linewidth=1, label="BPTT")
        if get_bio_task(task).chance != 0.5:
            ax.set_yscale("log")
        ax.set_title(task)
        ax.set_ylabel("final score")
    ax = axes[0][-1]
    ax.errorbar(
        results["control_sigmas"],
        [r["mean"] for r in results["nrl"]],
        yerr=[r["sd"] for r in results["nrl"]],
        label="NRL",
        capsize=3,
        color="tab:red",
    )
    ax.axhline(CONTROL_CHANCE["cartpole"], color="black", linestyle=":", linewidth=1, label="random policy")
    ax.set_title("cartpole")
    ax.set_ylabel("greedy return")
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xlabel("noise σ")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    save_figure(fig, path, dpi=100)


@dataclass(frozen=True)
class Config(_common.Config):
    """Options of ``unigrad experiment noise-resource``: the ``tasks``, the noise levels ``sigmas``
    (:data:`SIGMAS`; quick every fifth) and ``control_sigmas`` (:data:`CONTROL_SIGMAS`; quick every third).
    Temporal runs see 4,000 trials (quick 64), CartPole runs the table's episodes (quick 8)."""

    tasks: tuple[str, ...] = ("perceptual-decision", "mackey-glass")
    sigmas: tuple[float, ...] | None = None
    control_sigmas: tuple[float, ...] | None = None

    NAME = "noise-resource"
    FULL: ClassVar[Settings] = {
        "trials": 4000,
        "episodes": EPISODES,
        "sigmas": SIGMAS,
        "control_sigmas": CONTROL_SIGMAS,
    }
    QUICK: ClassVar[Settings] = {
        "trials": 64,
        "episodes": 8,
        "sigmas": SIGMAS[::5],
        "control_sigmas": CONTROL_SIGMAS[::3],
    }


noise_resource = runner(Config, run)
