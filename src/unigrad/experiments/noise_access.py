"""The ``noise-access`` experiment: one task learned from noise the rule can read and from noise it cannot.

The same task learned from noise the rule can read (NP, exploratory Hebb with ``signal="noise"``) and from
noise it cannot (the network's own intrinsic noise, ``accessible=False``: ANP, Miconi, exploratory Hebb with
``signal="activity"``). Runs are trained and scored as in :mod:`unigrad.experiments.bio_table`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from unigrad.bio.tasks import get_bio_task
from unigrad.core.errors import check_positive
from unigrad.experiments import _common
from unigrad.experiments._common import Progress, Settings, finish, output_dir, runner, table
from unigrad.experiments.bio_table import (
    RuleSpec,
    _cell,
    _summary,
    _train,
)


def run(
    out: str | Path, *, seeds: int = 3, progress: Progress = None, task: str = "perceptual-decision", trials: int = 4000
) -> str:
    """The same task learned from noise the rule reads and from the network's own, unreadable noise, ``trials``
    trials per run."""
    from unigrad.noise import WhiteGaussian

    check_positive("seeds", seeds, integer=True)
    out = output_dir(out)
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
    return finish(out, results, lambda r: _report(r, seeds))


def _report(results: dict[str, Any], seeds: int) -> str:
    """The final score of every rule and noise (mean ± sd over the seeds)."""
    lines = [
        f"# Accessible against inaccessible noise: {results['task']}, score after {results['trials']:,} trials "
        f"({seeds} seeds; chance {get_bio_task(results['task']).chance:.3f})",
        "",
        *table(["rule and noise", "score"], ([label, _cell(s)] for label, s in results["rows"].items())),
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Config(_common.Config):
    """Options of ``unigrad experiment noise-access``: the ``task``. Runs see 4,000 trials (quick 64)."""

    task: str = "perceptual-decision"

    NAME = "noise-access"
    FULL: ClassVar[Settings] = {"trials": 4000}
    QUICK: ClassVar[Settings] = {"trials": 64}


noise_access = runner(Config, run)
