"""The grokking experiment: modular addition learned late, after the training set is memorised.

Data (Power et al. 2022): every pair ``(a, b)`` of ``{0, …, p−1}²`` with label ``(a + b) mod p``;
a keyed random ``train_fraction`` of the ``p²`` pairs is the training set, the rest the test set
(unseen pairs, not unseen numbers). Inputs are the concatenated one-hot codes of ``a`` and ``b``
(``2p`` inputs), so the first layer is a learned embedding of each number, summed; the model is an
MLP ``2p → hidden → p`` with ReLU (Gromov 2023 studies this two-layer family; Liu et al. 2023,
"Omnigrok", tie the delay to the weight norm, which weight decay controls). Training is full
batch, AdamW with betas (0.9, 0.98) and a large decoupled weight decay (1.0, as in Power et al.'s
best setting and Nanda et al. 2023), cross-entropy loss. The report gives the final weight norm
``‖θ‖`` of every run: from this (PyTorch-default, small) initialisation it grows in every
backprop run, and weight decay is what caps it.

Methods (:data:`METHODS`):

=====================  =============================  =========================================
label                  estimator, optimizer           why
=====================  =============================  =========================================
``backprop``           backprop; AdamW lr 1e-2,       the grokking run: train accuracy reaches
                       wd 1                           ~100 % early, test accuracy much later
``backprop, wd 0``     backprop; AdamW lr 1e-2,       control: without weight decay the
                       wd 0                           memorising solution is never left
``anp``                anp (q = 2); AdamW lr 1e-2,    a zeroth-order method on the same setup
                       wd 1                           and optimizer
``anp, wd 0.1``        anp (q = 2); AdamW lr 3e-3,    the zeroth-order method's best shot: the
                       wd 0.1                         settings under which it fits the training set
``spsa``               spsa (q = 1); AdamW lr 1e-3,   parameter-space perturbation, the generic
                       wd 0.1                         zeroth-order baseline
=====================  =============================  =========================================

Fair accounting: every method gets the same budget in forward-pass equivalents (FE, samples:
``forwards + 2·backwards``, :class:`unigrad.core.cost.Cost`), ``steps × 3 × n_train``, the cost of
``steps`` backprop steps. ANP with ``q = 2`` costs exactly that per step (one clean and two noisy
forward passes), so it takes the same number of steps; SPSA with one central-difference probe
costs ``2 × n_train`` per step and takes 1.5× as many. The budget is in steps of the *estimate*;
the optimizer's work and the evaluations are not counted.

Train and test accuracy (on all ``p²`` pairs) are recorded at about ``points`` log-spaced steps.
The report gives, per method and mean ± sd over seeds, the first recorded step at which train
accuracy is ≥ ``FIT`` (0.99) and test accuracy ≥ ``GENERALISE`` (0.95), their ratio (the delay)
and the final accuracies. Seeds key both the split and the initial weights (seed ``s`` of every
method sees the same split and starts from the same weights).

Options of :func:`run` (and of :func:`run_experiment`'s ``options``): ``p`` (47), ``train_fraction``
(0.4), ``hidden`` (256 units), ``steps`` (3,000: the budget, in backprop steps) and ``points`` (60
evaluation points). Cost: about 110 s of one CPU thread per seed for the five methods at the
defaults (ANP's steps are the slowest: three passes through the layer taps).

References:
    A. Power, Y. Burda, H. Edwards, I. Babuschkin, V. Misra, "Grokking: Generalization Beyond
    Overfitting on Small Algorithmic Datasets", arXiv:2201.02177 (2022).
    A. Gromov, "Grokking modular arithmetic", arXiv:2301.02679 (2023).
    Z. Liu, E. J. Michaud, M. Tegmark, "Omnigrok: Grokking Beyond Algorithmic Data", ICLR 2023,
    arXiv:2210.01633.
    N. Nanda, L. Chan, T. Lieberum, J. Smith, J. Steinhardt, "Progress measures for grokking via
    mechanistic interpretability", ICLR 2023, arXiv:2301.05217.
    N. Dalm, M. van Gerven, N. Ahmad, "Effective Learning with Node Perturbation in Deep Neural
    Networks", arXiv:2310.00965 (ANP).

Outputs (in ``out``): ``grokking.png`` (accuracy against step, log axis, one panel per method),
``results.json`` (every curve) and ``report.md``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.estimator import Estimate
from unigrad.core.objective import supervised
from unigrad.core.options import check_fraction, check_int
from unigrad.core.rng import generator
from unigrad.experiments import _common
from unigrad.experiments._common import (
    Progress,
    Settings,
    finish,
    grid,
    mean_sd,
    output_dir,
    pyplot,
    runner,
    save_figure,
)
from unigrad.nn.models import mlp
from unigrad.registry import make_estimator
from unigrad.train.loop import Batch, Hook, TrainingLoop

FIT = 0.99
"""Train accuracy at which the training set counts as fitted."""

GENERALISE = 0.95
"""Test accuracy at which the model counts as having generalised."""

_SPLIT_TAG = 0x6A0C


@dataclass(frozen=True)
class ModularAddition:
    """All ``p²`` pairs, one-hot encoded, and a train/test split of their indices.

    Pair ``(a, b)`` has index ``a·p + b``; ``inputs[i]`` is ``[onehot(a), onehot(b)]`` (``2p``),
    ``targets[i] = (a + b) mod p``.
    """

    p: int
    inputs: Tensor
    targets: Tensor
    train: Tensor
    test: Tensor


def modular_addition(p: int, train_fraction: float, seed: int = 0) -> ModularAddition:
    """The modular-addition data set with a random split keyed by ``seed`` (global RNG untouched).

    The training set holds ``round(train_fraction · p²)`` pairs (at least one, at most ``p² − 1``).
    """
    check_int("p", p, low=2)
    check_fraction("train_fraction", train_fraction, low_inclusive=False, what="in (0, 1)")
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    inputs = torch.cat([F.one_hot(a, p), F.one_hot(b, p)], dim=1).to(torch.float32)
    targets = (a + b) % p
    n = p * p
    n_train = min(max(round(train_fraction * n), 1), n - 1)
    perm = torch.randperm(n, generator=generator(seed, _SPLIT_TAG))
    return ModularAddition(p, inputs, targets, perm[:n_train].sort().values, perm[n_train:].sort().values)


def build_model(p: int, hidden: int, seed: int = 0) -> nn.Module:
    """The MLP ``2p → hidden → p`` (ReLU), initialised from ``seed``."""
    return mlp([2 * p, hidden, p], seed=seed)


@dataclass(frozen=True)
class Method:
    """One training configuration: estimator, its options and AdamW's rate and weight decay."""

    label: str
    estimator: str
    options: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-2
    weight_decay: float = 1.0
    order: int = 1


METHODS: tuple[Method, ...] = (
    Method("backprop", "backprop", {}, 1e-2, 1.0, 1),
    Method("backprop, wd 0", "backprop", {}, 1e-2, 0.0, 1),
    Method("anp", "anp", {"probes": 2, "sigma": 1e-3}, 1e-2, 1.0, 0),
    Method("anp, wd 0.1", "anp", {"probes": 2, "sigma": 1e-3}, 3e-3, 0.1, 0),
    Method("spsa", "spsa", {"probes": 1, "sigma": 1e-3}, 1e-3, 0.1, 0),
)

BACKPROP_FE_PER_SAMPLE = 3.0
"""FE of one backprop step per training sample (one forward, one backward = two forwards)."""


def eval_steps(steps: int, points: int) -> list[int]:
    """About ``points`` log-spaced steps in ``[1, steps]``, ``steps`` included (step 0 is the start)."""
    out = {0, steps}
    for i in range(points):
        out.add(round(math.exp(math.log(steps) * i / max(points - 1, 1))))
    return sorted(s for s in out if 0 <= s <= steps)


@torch.no_grad()
def _accuracies(model: nn.Module, data: ModularAddition) -> tuple[float, float, float]:
    logits = model(data.inputs)
    correct = (logits.argmax(dim=-1) == data.targets).to(torch.float64)
    loss = F.cross_entropy(logits[data.train], data.targets[data.train])
    return float(correct[data.train].mean()), float(correct[data.test].mean()), float(loss)


def _first(steps: Sequence[int], values: Sequence[float], level: float) -> int | None:
    return next((s for s, v in zip(steps, values, strict=True) if v >= level), None)


class _Sizing(Hook):
    """The budget of a run in steps, and when it is evaluated: the FE of one step is fixed for these estimators,
    so it is measured on the first step and sizes the budget (``budget_fe // per_step`` steps, at least one);
    a later step that costs otherwise is refused. Evaluations fall at :func:`eval_steps`."""

    def __init__(self, label: str, budget_fe: float, points: int) -> None:
        self.label, self.budget_fe, self.points = label, budget_fe, points
        self.per_step, self.steps, self.marks = 0.0, 0, set[int]()

    def after_estimate(self, loop: TrainingLoop, batch: Batch, estimate: Estimate) -> None:
        cost = estimate.cost.forward_equivalents
        if loop.step == 0:
            self.per_step, self.steps = cost, max(1, int(self.budget_fe // cost))
            self.marks = set(eval_steps(self.steps, self.points))
        elif cost != self.per_step:
            raise UnigradError(f"{self.label}: the cost per step changed ({self.per_step} → {cost})")

    def spent(self, loop: TrainingLoop) -> float:
        return loop.step / self.steps if self.steps else 0.0

    def due(self, loop: TrainingLoop) -> bool:
        return loop.step in self.marks

    def advance(self, loop: TrainingLoop) -> None:
        pass


def train_one(method: Method, data: ModularAddition, *, hidden: int, budget_fe: float, seed: int, points: int) -> dict:
    """Train ``method`` from the seed's initial weights until it has spent ``budget_fe`` FE."""
    model = build_model(data.p, hidden, seed)
    est = make_estimator(method.estimator, seed=seed, **method.options)
    opt = torch.optim.AdamW(model.parameters(), lr=method.lr, weight_decay=method.weight_decay, betas=(0.9, 0.98))
    objective = supervised(F.cross_entropy, data.inputs[data.train], data.targets[data.train])
    n_train = int(data.train.numel())
    record: dict[str, list[float]] = {"step": [], "fe": [], "train_acc": [], "test_acc": [], "train_loss": []}
    record["weight_norm"] = []

    def log(step: int, fe: float) -> dict[str, Any]:
        tr, te, loss = _accuracies(model, data)
        record["step"].append(step)
        record["fe"].append(fe)
        record["train_acc"].append(tr)
        record["test_acc"].append(te)
        record["train_loss"].append(loss)
        record["weight_norm"].append(float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters()))))
        return {"step": step}

    sizing = _Sizing(method.label, budget_fe, points)
    loop = TrainingLoop(
        model,
        est,
        opt,
        lambda loop: Batch(objective),
        spent=sizing.spent,
        evaluate=lambda loop: log(loop.step, loop.forward_equivalents),
        schedule=sizing,
        hooks=[sizing],
    )
    start, cpu = time.perf_counter(), time.process_time()
    loop.run()
    steps, per_step, diverged = sizing.steps, sizing.per_step, loop.status == "diverged"
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    fit = _first(record["step"], record["train_acc"], FIT)
    gen = _first(record["step"], record["test_acc"], GENERALISE)
    return {
        "seed": seed,
        "steps": steps,
        "fe_per_step_per_sample": per_step / n_train,
        "diverged": diverged,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "step_fit": fit,
        "step_generalise": gen,
        "delay": None if fit is None or gen is None else gen / max(fit, 1),
        "final_train_acc": record["train_acc"][-1],
        "final_test_acc": record["test_acc"][-1],
        "best_test_acc": max(record["test_acc"]),
        **record,
    }


def run(
    out: str | Path,
    *,
    seeds: int = 3,
    p: int = 47,
    train_fraction: float = 0.4,
    hidden: int = 256,
    steps: int = 3000,
    points: int = 60,
    methods: Sequence[Method] = METHODS,
    progress: Progress = None,
) -> dict[str, Any]:
    """Run every method with every seed; write ``grokking.png``, ``results.json`` and ``report.md``."""
    check_positive("seeds", seeds, integer=True)
    check_positive("hidden", hidden, integer=True)
    check_positive("steps", steps, integer=True)
    check_positive("points", points, integer=True)
    if not methods:
        raise UnigradError("option methods must name at least one method")
    out = output_dir(out)
    datasets = [modular_addition(p, train_fraction, seed) for seed in range(seeds)]
    n_train = int(datasets[0].train.numel())
    budget_fe = steps * BACKPROP_FE_PER_SAMPLE * n_train
    total, cpu = time.perf_counter(), time.process_time()
    results: dict[str, Any] = {
        "p": p,
        "train_fraction": train_fraction,
        "n_train": n_train,
        "n_test": p * p - n_train,
        "hidden": hidden,
        "parameters": sum(t.numel() for t in build_model(p, hidden).parameters()),
        "backprop_steps": steps,
        "points": points,
        "budget_fe": budget_fe,
        "fit_level": FIT,
        "generalise_level": GENERALISE,
        "methods": [],
    }
    for m in methods:
        runs = []
        for seed in range(seeds):
            if progress:
                progress(f"grokking: {m.label}, seed {seed}")
            runs.append(train_one(m, datasets[seed], hidden=hidden, budget_fe=budget_fe, seed=seed, points=points))
        results["methods"].append(
            {
                "label": m.label,
                "estimator": m.estimator,
                "order": m.order,
                "options": m.options,
                "lr": m.lr,
                "weight_decay": m.weight_decay,
                "runs": runs,
            }
        )
    results["seconds"] = time.perf_counter() - total
    results["cpu_seconds"] = time.process_time() - cpu
    finish(out, results, report, plot, "grokking.png")
    return results


def plot(results: dict[str, Any], path: Path) -> None:
    """Train (solid) and test (dashed) accuracy against step, log axis, one panel per method."""
    plt = pyplot()

    methods = results["methods"]
    cols = min(3, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.6 * rows), squeeze=False)
    for ax, m in zip(axes.flat, methods, strict=False):
        for i, r in enumerate(m["runs"]):
            x = [max(s, 1) for s in r["step"]]
            ax.plot(x, r["train_acc"], color="tab:blue", alpha=0.8, label="train" if i == 0 else None)
            ax.plot(x, r["test_acc"], color="tab:red", linestyle="--", alpha=0.8, label="test" if i == 0 else None)
        fe = m["runs"][0]["fe_per_step_per_sample"]
        ax.set_title(f"{m['label']} (lr {m['lr']:g}, wd {m['weight_decay']:g}, {fe:g} FE/sample/step)", fontsize=9)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.axhline(1.0 / results["p"], color="gray", linewidth=0.8, linestyle=":")
        grid([ax])
        ax.legend(fontsize=8, loc="center left")
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    fig.suptitle(
        f"modular addition mod {results['p']}, {results['n_train']} train / {results['n_test']} test pairs, "
        f"MLP {2 * results['p']}-{results['hidden']}-{results['p']}, equal FE budget",
        fontsize=10,
    )
    save_figure(fig, path)


def _stat(values: Sequence[float | None], fmt: str = "{:,.0f}") -> str:
    """``mean ± sd`` of the values that exist, with the count of missing ones."""
    return mean_sd(values, fmt, none="never", missing=lambda have, n: f" ({n - have} of {n} never)")


def report(results: dict[str, Any]) -> str:
    """The markdown table and the verdicts."""
    seeds = len(results["methods"][0]["runs"])
    spacing = math.exp(math.log(max(results["backprop_steps"], 2)) / max(results["points"] - 1, 1)) - 1
    lines = [
        "# Grokking: modular addition",
        "",
        f"(a + b) mod {results['p']}: {results['n_train']} training pairs ({results['train_fraction']:.0%}), "
        f"{results['n_test']} test pairs; MLP {2 * results['p']}-{results['hidden']}-{results['p']} (ReLU, "
        f"{results['parameters']:,} parameters) on one-hot inputs; full batch, AdamW (betas 0.9, 0.98), "
        f"cross-entropy. Every method gets the same budget, {results['budget_fe']:,.0f} forward-pass equivalents "
        f"({results['backprop_steps']:,} backprop steps). {seeds} seed{'s' if seeds > 1 else ''} (each keys the "
        "split and the initial weights); mean ± sd over seeds.",
        "",
        f"Fit: first recorded step with train accuracy ≥ {results['fit_level']:g}; generalise: test accuracy ≥ "
        f"{results['generalise_level']:g}; delay: their ratio. Steps are recorded on a log grid (consecutive "
        f"points about {spacing:.0%} apart), so each is an upper bound within that resolution.",
        "",
        "| method | order | lr | wd | FE/sample/step | steps | step: fit | step: generalise | delay | "
        "final train acc | final test acc | best test acc | final ‖θ‖ | CPU s/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in results["methods"]:
        runs = m["runs"]
        lines.append(
            f"| {m['label']} | {m['order']} | {m['lr']:g} | {m['weight_decay']:g} | "
            f"{runs[0]['fe_per_step_per_sample']:g} | {runs[0]['steps']:,} | "
            f"{_stat([r['step_fit'] for r in runs])} | {_stat([r['step_generalise'] for r in runs])} | "
            f"{_stat([r['delay'] for r in runs], '{:.1f}')} | "
            f"{_stat([r['final_train_acc'] for r in runs], '{:.3f}')} | "
            f"{_stat([r['final_test_acc'] for r in runs], '{:.3f}')} | "
            f"{_stat([r['best_test_acc'] for r in runs], '{:.3f}')} | "
            f"{_stat([r['weight_norm'][-1] for r in runs], '{:.1f}')} | "
            f"{_stat([r['cpu_seconds'] for r in runs], '{:.1f}')} |"
        )
    lines += ["", "## Verdicts", ""]
    for m in results["methods"]:
        runs = m["runs"]
        fitted = sum(r["step_fit"] is not None for r in runs)
        general = sum(r["step_generalise"] is not None for r in runs)
        grokked = sum(r["delay"] is not None and r["delay"] >= 5 for r in runs)
        lines.append(
            f"- {m['label']}: fits the training set in {fitted} of {len(runs)} runs, generalises in {general} of "
            f"{len(runs)}; a delay of ≥ 5× between the two (grokking) in {grokked} of {len(runs)}."
        )
    lines += [
        "",
        f"Total time: {results['seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU (process time; "
        "the CPU s/run column is process time too: less sensitive than wall time to other load on the machine).",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Config(_common.Config):
    """Options of ``unigrad experiment grokking`` (each overrides :func:`run`'s): ``p``, ``train_fraction``,
    ``hidden``, ``steps`` and ``points``. A quick run (p = 11, a 32-unit MLP, 60 steps, 12 points, one seed) is a
    smoke test, its numbers are not results."""

    p: int | None = None
    train_fraction: float | None = None
    hidden: int | None = None
    steps: int | None = None
    points: int | None = None

    NAME = "grokking"
    QUICK: ClassVar[Settings] = {"p": 11, "hidden": 32, "steps": 60, "points": 12}
    QUICK_SEEDS = 1


run_experiment = runner(Config, run)
