"""The fine-tuning experiment: every order on a pretrained transformer, at equal forward-pass equivalents.

The task is the VADER sentiment words under the pretrained all-MiniLM-L6-v2 with a head started from the
zero-shot prototypes (:mod:`unigrad.nn.text`, :mod:`unigrad.data.lexicon`): ``minilm-sentiment-k16``
(16 words per class), ``minilm-sentiment-k512`` (512 per class) and ``minilm-sentiment`` (the whole training
split, 4,462 words). Every method trains from the same start for the same budget of forward-pass equivalents
(FE, in samples: a backward pass counts as two forwards, a JVP as one, as :class:`~unigrad.core.cost.Cost`
counts them) and is evaluated on the VADER test split (1,116 words) and on the AFINN transfer set (684 words
that are not in VADER, rated by other people).

Methods (:data:`METHODS`; the spec strings are those of ``unigrad train --method``):

- zero-shot: no training, the step-0 point of every run;
- order 1: a linear probe (``backprop:train=head``), full fine-tuning with backprop + Adam,
  ``forward-gradient`` + Adam;
- order 2: ``kfac`` on the Linear layers;
- order 0: ``mezo`` (the fast configuration: ``perturb="forward"``, a 2²⁰-entry noise table read in row
  windows for the word embedding) with SGD as in MeZO and with Adam, ``mezo`` without the embeddings and on
  LoRA adapters (rank 8 on query and value, ``train=lora``), ``spsa``, ``rge`` and ``es``; ``np``, ``anp``
  and ``danp`` with their nodes at the Linear layers' outputs (embeddings and LayerNorms frozen: node
  perturbation reaches only what a Linear layer computes); ``danp`` also with each decorrelation update
  compensated in the weights it feeds (``W ← W·A⁻¹``, so that the update leaves the network's function as it
  was: :mod:`unigrad.nn.decorrelation`).

The control (``scratch``): backprop and MeZO on the same architecture initialised at random
(``minilm-random-k512``), with the same budget: what the pretrained weights buy.

Learning rates are fixed per method (:data:`METHODS`). MeZO's were picked from a short pilot (150 steps, k512,
seed 0, judged on the test split: SGD 1e-5 / 1e-4 / 3e-4 / 1e-3 gave 0.854 / 0.874 / 0.886 / collapse, Adam
1e-5 / 1e-4 gave 0.848 / 0.854), and the other order-0 methods share them (same estimator scale); backprop
uses BERT's usual 2e-5, the probe's head 3e-3, K-FAC 1e-3. There is no validation split, so the pilot's choice
saw the test split: a small optimistic bias for MeZO. MeZO on LoRA adapters: SGD 1e-3 (1e-2 gave 0.755 in the
same pilot, 1e-3 0.854). ES steps with Adam at MeZO's Adam rate: its centred-rank shaping makes each of its
coefficients ±0.5 whatever the loss difference, so with SGD every step moves each weight by about lr·0.5/σ
(0.15 at lr 3e-4), which wrecked the model at once (0.838 → 0.564 on k16 in a first run). σ = 1e-3 for every
order-0 method.

MeZO + SGD writes a dense ``.grad`` here; its memory-lean form (``mezo:write_grad=false`` with the optimizer
``replay-sgd``) takes bitwise the same steps (``tests/train/test_trainer.py``), so its accuracies are these, at
the memory ``benchmarks/finetune_memory.py`` measures.

Each run is written to ``out/runs/`` as soon as it ends, and a rerun into the same folder reads the runs it
finds there instead of training them again, so an interrupted experiment resumes. Outputs: ``finetune.png``
(test accuracy against FE and against seconds, mean over seeds), ``results.json`` (every run with its
evaluation points, the peak memory of each method) and ``report.md`` (the tables and the goals).

    unigrad experiment finetune --jobs 2            # the issue's table (hours on 2 cores)
    unigrad experiment finetune --quick             # a smoke test on the tiny random BERT
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from unigrad.core.errors import UnigradError, check_positive
from unigrad.experiments import _common
from unigrad.experiments._common import Progress, Settings, finish, output_dir, runner
from unigrad.experiments.finetune_report import plot, report
from unigrad.train.parallel import run_calls

ZO = "probes=1:sigma=1e-3"
"""Every order-0 method: one probe (or antithetic pair) per step, as MeZO, and σ = 1e-3."""
FAST = "noise_source=table:table_size=1048576:perturb=forward"
"""MeZO's fast step: parameters perturbed where the forward reads them, noise from a 4 MiB table."""

SETTINGS: dict[str, str] = {
    "k16": "minilm-sentiment-k16",
    "k512": "minilm-sentiment-k512",
    "full": "minilm-sentiment",
}
"""The settings and their tasks."""

SCRATCH_TASK = "minilm-random-k512"
BUDGET: dict[str, float] = {"k16": 12_800, "k512": 25_600, "full": 25_600}
"""FE budget of each setting (in samples): 200 MeZO steps of q = 1 at the task's batch (32 for k16, else 64)."""
SEED_CAPS: dict[str, int] = {"k16": 1, "full": 1}
"""At most this many seeds for these settings (``k512``, the goal's setting, runs every seed): CPU time."""
QUICK_TASK = "tiny-sentiment"


@dataclass(frozen=True)
class Method:
    """One row of the table: a method spec, its optimizer and learning rate, and its derivative order."""

    label: str
    spec: str
    optimizer: str
    lr: float
    order: int


METHODS: tuple[Method, ...] = (
    Method("linear probe (backprop, head)", "backprop:train=head", "adam", 3e-3, 1),
    Method("backprop + Adam", "backprop", "adam", 2e-5, 1),
    Method("forward-gradient + Adam", "forward-gradient:probes=1", "adam", 2e-5, 1),
    Method("kfac (Linear layers)", "kfac:train=linear", "sgd", 1e-3, 2),
    Method("mezo + SGD", f"mezo:{ZO}:{FAST}", "sgd", 3e-4, 0),
    Method("mezo + SGD, lr 1e-4", f"mezo:{ZO}:{FAST}", "sgd", 1e-4, 0),
    Method("mezo + Adam", f"mezo:{ZO}:{FAST}", "adam", 1e-4, 0),
    Method("mezo, no embeddings + SGD", f"mezo:{ZO}:{FAST}:train=no-embeddings", "sgd", 3e-4, 0),
    Method("spsa + SGD", f"spsa:{ZO}", "sgd", 3e-4, 0),
    Method("rge + SGD", f"rge:{ZO}", "sgd", 3e-4, 0),
    Method("es + Adam", f"es:{ZO}", "adam", 1e-4, 0),
    Method("mezo, LoRA r=8 + SGD", f"mezo:{ZO}:{FAST}:train=lora", "sgd", 1e-3, 0),
    Method("np (Linear) + Adam", f"np:{ZO}:train=linear", "adam", 5e-5, 0),
    Method("anp (Linear) + Adam", f"anp:{ZO}:train=linear", "adam", 5e-5, 0),
    Method("danp (Linear) + Adam", f"danp:{ZO}:train=linear", "adam", 5e-5, 0),
    Method("danp (Linear, compensated) + Adam", f"danp:{ZO}:train=linear:decor_compensate=true", "adam", 5e-5, 0),
)
"""Every method of the table, in its order."""

SCRATCH_METHODS = ("backprop + Adam", "mezo + SGD")
"""The methods run from random initialisation as the control."""


def _by_label(labels: Sequence[str] | None) -> tuple[Method, ...]:
    if labels is None:
        return METHODS
    known = {m.label: m for m in METHODS}
    unknown = [x for x in labels if x not in known]
    if unknown:
        raise UnigradError(f"unknown finetune methods: {', '.join(unknown)}; valid: {'; '.join(known)}")
    return tuple(known[x] for x in labels)


def _slug(*parts: Any) -> str:
    text = "-".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def train_one(setting: str, task: str, method: Method, seed: int, budget_fe: float, points: int) -> dict:
    """Train ``method`` on ``task`` for ``budget_fe`` forward-pass equivalents; the run as a dict."""
    from unigrad.data.tasks import get_task
    from unigrad.train import train
    from unigrad.train.methods import parse_method

    t, spec = get_task(task), parse_method(method.spec, optimizer=method.optimizer, lr=method.lr)
    result = train(
        t,
        spec.name,
        budget=f"forwards={budget_fe:g}",
        batch_size=t.batch_size,
        seed=seed,
        eval_points=points,
        threads=None,
        **spec.run_options(),
    )
    return {
        "setting": setting,
        "task": task,
        "label": method.label,
        "seed": seed,
        "status": result.status,
        "message": result.message,
        "steps": result.steps,
        "forward_equivalents": result.forward_equivalents,
        "train_seconds": result.train_seconds,
        "history": result.history,
    }


def peak_one(task: str, method: Method) -> dict:
    """Peak bytes of two training steps of ``method`` on a fresh model of ``task`` (the model included)."""
    from unigrad.data.tasks import get_task
    from unigrad.train import measure_peak_memory
    from unigrad.train.methods import parse_method

    t, spec = get_task(task), parse_method(method.spec, optimizer=method.optimizer, lr=method.lr)
    peak = measure_peak_memory(t, spec.name, batch_size=t.batch_size, **spec.run_options())
    return {"task": task, "label": method.label, "batch_size": t.batch_size, "peak_bytes": peak}


def _resumable(calls: list[tuple[Path, Any, tuple]], jobs: int, progress: Progress) -> list[Any]:
    todo = [(path, fn, args) for path, fn, args in calls if not path.exists()]
    results = run_calls([(fn, args) for _, fn, args in todo], jobs)
    for k, ((path, _, _), value) in enumerate(zip(todo, results, strict=True)):
        path.write_text(json.dumps(value, indent=1) + "\n")
        if progress:
            progress(f"finetune: {k + 1}/{len(todo)} done ({path.stem})")
    return [json.loads(path.read_text()) for path, _, _ in calls]


def run(
    out: str | Path,
    *,
    seeds: int = 3,
    splits: Sequence[str] = ("k16", "k512", "full"),
    methods: Sequence[str] | None = None,
    budget: dict[str, float] | None = None,
    full_seeds: dict[str, int] | None = None,
    points: int = 5,
    scratch: bool = True,
    jobs: int = 1,
    report_only: bool = False,
    quick: bool = False,
    progress: Progress = None,
) -> dict[str, Any]:
    """Run every method on every setting; write ``finetune.png``, ``results.json`` and ``report.md``.

    ``report_only``: train nothing, report the runs of the chosen splits, methods and seeds already in
    ``out/runs`` (an experiment stopped early, or grown by several invocations with different options).

    ``budget`` maps a setting to its FE budget (default :data:`BUDGET`); ``full_seeds`` caps the seeds of a
    setting (default: ``k16`` and ``full`` one seed each, ``k512`` all ``seeds``); ``quick`` runs the tiny
    random BERT (``tiny-sentiment``) in place of every task.
    """
    check_positive("seeds", seeds, integer=True)
    check_positive("points", points, integer=True)
    check_positive("jobs", jobs, integer=True)
    settings = tuple(splits)
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown or not settings:
        given = ", ".join(unknown) or "none given"
        raise UnigradError(f"unknown finetune splits: {given}; valid: {', '.join(SETTINGS)}")
    chosen = _by_label(methods)
    budget = {**BUDGET, **(budget or {})}
    caps = {**SEED_CAPS, **(full_seeds or {})}
    out = output_dir(out)
    (out / "runs").mkdir(exist_ok=True)
    start = time.perf_counter()

    def task_of(setting: str) -> str:
        return QUICK_TASK if quick else SETTINGS[setting]

    # seed-major order, peaks first: an experiment stopped early has every method at least once
    peak_setting = "k512" if "k512" in settings else settings[0]
    calls = [(out / "runs" / f"{_slug('peak', m.label)}.json", peak_one, (task_of(peak_setting), m)) for m in chosen]
    scratch_methods = [m for m in chosen if m.label in SCRATCH_METHODS] if scratch and "k512" in settings else []
    for seed in range(seeds):
        for setting in settings:
            if seed < caps.get(setting, seeds):
                for m in chosen:
                    path = out / "runs" / f"{_slug(setting, m.label, seed)}.json"
                    calls.append((path, train_one, (setting, task_of(setting), m, seed, budget[setting], points)))
        for m in scratch_methods:
            path = out / "runs" / f"{_slug('scratch', m.label, seed)}.json"
            task = QUICK_TASK if quick else SCRATCH_TASK
            calls.append((path, train_one, ("scratch", task, m, seed, budget["k512"], points)))
    if report_only:
        calls = [c for c in calls if c[0].exists()]
    if progress:
        progress(f"finetune: {len(calls)} runs, {sum(not p.exists() for p, _, _ in calls)} to do, {jobs} at once")
    done = _resumable(calls, jobs, progress)
    rank = {m.label: k for k, m in enumerate(chosen)}
    where = {s: k for k, s in enumerate((*settings, "scratch"))}
    runs = sorted((r for r in done if "setting" in r), key=lambda r: (where[r["setting"]], rank[r["label"]], r["seed"]))
    results: dict[str, Any] = {
        "quick": quick,
        "settings": {s: task_of(s) for s in settings},
        "budget_fe": {s: budget[s] for s in settings},
        "points": points,
        "methods": [asdict(m) for m in chosen],
        "scratch_task": QUICK_TASK if quick else SCRATCH_TASK,
        "runs": runs,
        "peaks": [r for r in done if "peak_bytes" in r],
        "seconds": time.perf_counter() - start,
    }
    finish(out, results, report, plot, "finetune.png")
    return results


@dataclass(frozen=True)
class Config(_common.Config):
    """Options of ``unigrad experiment finetune`` (each overrides :func:`run`'s): ``splits``, ``methods``
    (labels of :data:`METHODS`), ``budget`` (FE per setting), ``full_seeds`` (seed caps per setting), ``points``,
    ``scratch`` (the random-init control), ``jobs`` (runs at once, one process and one thread each) and
    ``report_only`` (report the runs already in the folder, train none). A quick run (the tiny random BERT, four
    methods, 640 FE, one seed) is a smoke test; its numbers are not results."""

    splits: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    budget: dict[str, float] | None = None
    full_seeds: dict[str, int] | None = None
    points: int | None = None
    scratch: bool | None = None
    jobs: int | None = None
    report_only: bool | None = None

    NAME = "finetune"
    QUICK: ClassVar[Settings] = {
        "splits": ("k16", "k512"),
        "methods": ("linear probe (backprop, head)", "backprop + Adam", "mezo + SGD", "np (Linear) + Adam"),
        "budget": {"k16": 640, "k512": 640},
        "points": 2,
        "quick": True,
    }
    QUICK_SEEDS = 1


run_experiment = runner(Config, run)
