"""Tasks neuroscientists train networks on, generated offline: trials are pure functions of ``(seed, step)``.

===================  =========================================================  ===================  ======
name                 what the network must do                                   score                chance
===================  =========================================================  ===================  ======
dms                  answer +1 if two stimuli, separated by a delay, match      accuracy             0.5
dnms                 answer +1 if they differ (Miconi 2017)                     accuracy             0.5
perceptual-decision  integrate noisy evidence, report its sign                  accuracy             0.5
reaching             move a point to a cued target; judged at the end only      |error| / range      0.25
copy                 reproduce K values after a delay                           NRMSE                1.0
mackey-glass         predict the chaotic Mackey–Glass series                    NRMSE                1.0
===================  =========================================================  ===================  ======

Every task samples a time-major :class:`TrialBatch` (``inputs (T, B, n_in)``, ``targets (T, B, n_out)``,
``mask (T, B)``, ``labels (B,)`` for choice tasks), and gives per-trial ``loss`` and ``reward``, a batch ``score`` and
an estimator objective (``task.objective(batch)``) for any model mapping ``(T, B, n_in) → (T, B, n_out)``.
``get_bio_task(name, **options)`` builds one by name; each module documents its timeline and options.
"""

from __future__ import annotations

import inspect
from typing import Any

from unigrad.bio.tasks.base import ChoiceTask, TaskObjective, TemporalTask, TrialBatch
from unigrad.bio.tasks.copy import Copy
from unigrad.bio.tasks.delayed_match import DelayedMatchToSample, DelayedNonMatchToSample
from unigrad.bio.tasks.mackey_glass import MackeyGlass
from unigrad.bio.tasks.perceptual_decision import PerceptualDecision
from unigrad.bio.tasks.reaching import Reaching
from unigrad.core.errors import UnigradError, unknown_name

BIO_TASKS: dict[str, type[TemporalTask]] = {
    cls.name: cls
    for cls in (
        DelayedMatchToSample,
        DelayedNonMatchToSample,
        PerceptualDecision,
        Reaching,
        Copy,
        MackeyGlass,
    )
}


def get_bio_task(name: str, **options: Any) -> TemporalTask:
    """The task called ``name`` built with ``options`` (unknown names or options raise :class:`UnigradError`)."""
    if name not in BIO_TASKS:
        raise unknown_name("bio task", name, BIO_TASKS)
    cls = BIO_TASKS[name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UnigradError(f"unknown option(s) {', '.join(unknown)} for bio task {name!r}; valid: {', '.join(valid)}")
    return cls(**options)


__all__ = [
    "BIO_TASKS",
    "ChoiceTask",
    "Copy",
    "DelayedMatchToSample",
    "DelayedNonMatchToSample",
    "MackeyGlass",
    "PerceptualDecision",
    "Reaching",
    "TaskObjective",
    "TemporalTask",
    "TrialBatch",
    "get_bio_task",
]
