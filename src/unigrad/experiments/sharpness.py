"""The sharpness experiment: how sharp are the minima that different training methods find?

Sharpness is ``λ_max(∇²f)``, the largest eigenvalue of the Hessian of the training loss ``f``
(:func:`unigrad.dynamics.diagnostics.top_hessian_eigenvalue`, Lanczos), with the Hessian trace
(:func:`~unigrad.dynamics.diagnostics.hessian_trace`, Hutchinson) as a second, whole-spectrum
measure. Keskar et al. (2017) found that large-batch training converges to sharper minima than
small-batch training with the same optimizer, and generalises worse; the theory behind it is
qualitative (the gradient noise of small batches keeps SGD out of narrow basins), so the test
here is the sign of the effect: ``λ_max(large batch) / λ_max(small batch) > 1``.

Setup (a scaled-down ``fashion-mlp`` task, to keep CPU time low): a keyed random subset of
``n_train`` Fashion-MNIST training images (the same for every seed), an MLP
``784 → hidden → 10`` (ReLU) and cross-entropy; test accuracy on all 10,000 test images. ``f``
for the curvature is the mean loss on a fixed *sharpness set*, the first ``n_sharpness`` images of
the training subset, through :func:`unigrad.supervised`. Seeds key the initial weights and the
data order; every method of seed ``s`` starts from the same weights.

Methods (:data:`METHODS`), each trained until the loss on the sharpness set is ≤ ``target``
(checked after every epoch) or its epoch cap:

==================  ==========================================  ==========================
label               estimator and optimizer                     batch
==================  ==========================================  ==========================
``bp, batch 32``    backprop, Adam lr 1e-3 (as Keskar et al.)   32
``bp, batch 1024``  backprop, Adam lr 1e-3                      1,024
``anp``             anp (q = 4, σ = 1e-3), Adam lr 1e-3         64 (15 epochs: far from
                                                                ``target``, see below)
``kfac``            kfac (damping 1e-2, inverse every 2         128
                    steps), SGD lr 0.05
``lbfgs``           lbfgs (strong-Wolfe line search), SGD lr 1  full batch (1 step/epoch)
==================  ==========================================  ==========================

Comparing sharpness at equal training loss matters: the curvature of the cross-entropy changes as
the loss falls, so a method stopped early is not comparable with one trained to ``target``. Every
run therefore also records ``λ_max`` the first time its loss falls below each level of
:data:`LEVELS` (checked after every epoch: the loss is then at most the level, and its value is
kept), so the zeroth-order method, which does not reach ``target`` in any affordable budget, is
compared with the others at the losses it does reach.

The zeroth-order method's budget (15 epochs, ``15 × 5 × n_train`` forward passes: about the FE the
small-batch run spends to reach ``target``) takes it only to a loss near 0.5; reaching 0.05 would take
hundreds of epochs. Its row is therefore the sharpness of where it is after that budget, and the
matched-loss table is the fair comparison. The weight norm ``‖θ‖`` at the end is reported too:
``λ_max`` is not invariant to rescaling a ReLU network's layers (Dinh et al. 2017), so a sharpness
difference should be read next to the scale of the weights it was measured at.

Options of :func:`run` (and of :func:`run_experiment`'s ``options``): ``n_train`` (8,192 training
images), ``n_sharpness`` (2,048), ``hidden`` (128 units), ``target`` (0.05), ``lanczos_iters``
(20 Hessian–vector products at most per ``λ_max``), ``trace_probes`` (32) and ``max_epochs`` (a cap
on every method's epochs, unset by default). Cost: about 50 s of one CPU thread per seed for the five
methods, curvature included (each ``λ_max`` costs up to 20 HVPs on the sharpness set, the trace 32).

Outputs (in ``out``): ``sharpness.png`` (``λ_max`` against the training loss; test accuracy against
the final ``λ_max``), ``results.json`` and ``report.md`` (the table of test accuracy, ``λ_max``,
trace and ``‖θ‖``, mean ± sd over seeds, the table at matched loss and the large/small-batch verdict).

References:
    N. S. Keskar, D. Mudigere, J. Nocedal, M. Smelyanskiy, P. T. P. Tang, "On Large-Batch Training
    for Deep Learning: Generalization Gap and Sharp Minima", ICLR 2017, arXiv:1609.04836.
    S. Jastrzębski et al., "Three Factors Influencing Minima in SGD", arXiv:1711.04623 (2017).
    L. Dinh, R. Pascanu, S. Bengio, Y. Bengio, "Sharp Minima Can Generalize For Deep Nets", ICML 2017,
    arXiv:1703.04933.
    B. Ghorbani, S. Krishnan, Y. Xiao, "An Investigation into Neural Net Optimization via Hessian
    Eigenvalue Density", ICML 2019, arXiv:1901.10159.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.objective import Objective, supervised
from unigrad.core.rng import generator
from unigrad.dynamics.diagnostics import hessian_trace, top_hessian_eigenvalue
from unigrad.experiments import _common
from unigrad.experiments._common import (
    Progress,
    Settings,
    check_positive_all,
    finish,
    output_dir,
    runner,
)
from unigrad.experiments.sharpness_report import LARGE, SMALL, level_value, plot, report
from unigrad.nn.models import mlp
from unigrad.registry import make_estimator
from unigrad.train.loop import Batch, TrainingLoop

LEVELS: tuple[float, ...] = (1.0, 0.5, 0.3, 0.1, 0.05)
"""Training-loss levels at which every run records ``λ_max`` (matched-loss comparison)."""

_SUBSET_TAG = 0x5A4B
_ORDER_TAG = 0x0DE5


@dataclass(frozen=True)
class Method:
    """One way to train: estimator and options, optimizer and rate, batch size (``None``: full batch)."""

    label: str
    estimator: str
    options: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adam"
    lr: float = 1e-3
    batch: int | None = 32
    max_epochs: int = 60
    order: int = 1


METHODS: tuple[Method, ...] = (
    Method("bp, batch 32", "backprop", {}, "adam", 1e-3, 32, 60, 1),
    Method("bp, batch 1024", "backprop", {}, "adam", 1e-3, 1024, 250, 1),
    Method("anp", "anp", {"probes": 4, "sigma": 1e-3}, "adam", 1e-3, 64, 15, 0),
    Method("kfac", "kfac", {"damping": 1e-2, "inverse_interval": 2}, "sgd", 0.05, 128, 60, 2),
    Method("lbfgs", "lbfgs", {}, "sgd", 1.0, None, 400, 2),
)


@dataclass(frozen=True)
class Data:
    """The training subset, the sharpness set (its first rows) and the test set."""

    x_train: Tensor
    y_train: Tensor
    x_sharp: Tensor
    y_sharp: Tensor
    x_test: Tensor
    y_test: Tensor


def load_data(n_train: int, n_sharpness: int) -> Data:
    """A keyed random subset of ``n_train`` Fashion-MNIST training images (seed-independent)."""
    from unigrad.data.tasks import get_task

    check_positive("n_train", n_train, integer=True)
    check_positive("n_sharpness", n_sharpness, integer=True)
    if n_sharpness > n_train:
        raise UnigradError(f"option n_sharpness ({n_sharpness}) must be at most n_train ({n_train})")
    d = get_task("fashion-mlp").data()
    if n_train > d.x_train.shape[0]:
        raise UnigradError(f"option n_train must be at most {d.x_train.shape[0]}, got {n_train}")
    idx = torch.randperm(d.x_train.shape[0], generator=generator(0, _SUBSET_TAG))[:n_train]
    x, y = d.x_train[idx], d.y_train[idx]
    return Data(x, y, x[:n_sharpness], y[:n_sharpness], d.x_test, d.y_test)


def _optimizer(method: Method, model: nn.Module) -> torch.optim.Optimizer:
    check_choice("optimizer", method.optimizer, ("adam", "sgd"))
    if method.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=method.lr)
    return torch.optim.SGD(model.parameters(), lr=method.lr)


@torch.no_grad()
def _loss(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float(F.cross_entropy(model(x), y))


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((model(x).argmax(dim=-1) == y).to(torch.float64).mean())


def _epoch(
    model: nn.Module,
    est: Any,
    opt: torch.optim.Optimizer,
    data: Data,
    full: Objective,
    batch: int,
    seed: int,
    epoch: int,
) -> tuple[float, int, bool]:
    """One epoch on the :class:`~unigrad.train.loop.TrainingLoop`: ``⌊n/batch⌋`` steps of ``batch`` samples in a
    keyed random order (``full`` when the batch is the whole set); returns the forward equivalents spent, the
    steps taken and whether the loss stopped being finite."""
    n = int(data.x_train.shape[0])
    order = torch.randperm(n, generator=generator(seed, _ORDER_TAG, epoch))
    per_epoch = n // batch

    def batches(loop: TrainingLoop) -> Batch:
        if batch == n:
            return Batch(full)
        b = order[loop.step * batch : (loop.step + 1) * batch]
        return Batch(supervised(F.cross_entropy, data.x_train[b], data.y_train[b]))

    loop = TrainingLoop(model, est, opt, batches, spent=lambda loop: loop.step / per_epoch).run()
    return loop.forward_equivalents, loop.step, loop.status == "diverged"


def train_one(
    method: Method,
    data: Data,
    *,
    build: Callable[[int], nn.Module],
    seed: int,
    target: float,
    lanczos_iters: int = 20,
    trace_probes: int = 32,
    levels: Sequence[float] = LEVELS,
) -> dict[str, Any]:
    """Train ``method`` from seed ``seed`` until the sharpness-set loss is ≤ ``target`` (or its epoch
    cap), recording ``λ_max`` at each loss level crossed; then measure test accuracy, ``λ_max`` and
    the Hessian trace."""
    model = build(seed)
    est = make_estimator(method.estimator, seed=seed, **method.options)
    opt = _optimizer(method, model)
    sharp = supervised(F.cross_entropy, data.x_sharp, data.y_sharp)
    n = int(data.x_train.shape[0])
    batch = n if method.batch is None else method.batch
    if batch > n:
        raise UnigradError(f"{method.label}: batch {batch} is larger than the training set ({n})")
    full = supervised(F.cross_entropy, data.x_train, data.y_train)  # one object: L-BFGS reuses its evaluations
    pending = sorted((lv for lv in levels if lv >= target), reverse=True)
    at_levels: list[dict[str, float]] = []
    losses = [_loss(model, data.x_sharp, data.y_sharp)]
    fe, steps, epoch, diverged = 0.0, 0, 0, False
    start, cpu = time.perf_counter(), time.process_time()
    train_seconds = 0.0
    while epoch < method.max_epochs and losses[-1] > target and not diverged:
        t0 = time.perf_counter()
        epoch_fe, epoch_steps, diverged = _epoch(model, est, opt, data, full, batch, seed, epoch)
        fe += epoch_fe
        steps += epoch_steps
        train_seconds += time.perf_counter() - t0
        epoch += 1
        losses.append(_loss(model, data.x_sharp, data.y_sharp))
        if not math.isfinite(losses[-1]):
            diverged = True
            break
        while pending and losses[-1] <= pending[0]:
            level = pending.pop(0)
            lam = top_hessian_eigenvalue(model, sharp, iters=lanczos_iters, seed=seed)
            at_levels.append({"level": level, "loss": losses[-1], "epoch": epoch, "lambda_max": lam})
    final_loss = losses[-1]
    if at_levels and at_levels[-1]["epoch"] == epoch:
        lam = at_levels[-1]["lambda_max"]  # the same parameters: no second Lanczos run
    else:
        lam = top_hessian_eigenvalue(model, sharp, iters=lanczos_iters, seed=seed)
    trace, trace_se = hessian_trace(model, sharp, probes=trace_probes, seed=seed)
    return {
        "seed": seed,
        "epochs": epoch,
        "steps": steps,
        "batch": batch,
        "fe": fe,
        "diverged": diverged,
        "reached_target": final_loss <= target,
        "train_loss": final_loss,
        "train_acc": _accuracy(model, data.x_train, data.y_train),
        "test_acc": _accuracy(model, data.x_test, data.y_test),
        "weight_norm": float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in model.parameters()))),
        "lambda_max": lam,
        "trace": trace,
        "trace_se": trace_se,
        "losses": losses,
        "at_levels": at_levels,
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
    }


def run(
    out: str | Path,
    *,
    seeds: int = 3,
    n_train: int = 8192,
    n_sharpness: int = 2048,
    hidden: int = 128,
    target: float = 0.05,
    lanczos_iters: int = 20,
    trace_probes: int = 32,
    methods: Sequence[Method] = METHODS,
    max_epochs: int | None = None,
    data: Data | None = None,
    progress: Progress = None,
) -> dict[str, Any]:
    """Train every method with every seed; write ``sharpness.png``, ``results.json`` and ``report.md``.

    ``max_epochs`` (when given) caps every method's epochs (a smoke test). ``data`` replaces the
    Fashion-MNIST subset (then ``n_train`` and ``n_sharpness`` are read from it).
    """
    check_positive_all(integer=True, seeds=seeds, hidden=hidden)
    check_positive("target", target)
    check_positive_all(integer=True, lanczos_iters=lanczos_iters, trace_probes=trace_probes)
    if max_epochs is not None:
        check_positive("max_epochs", max_epochs, integer=True)
    if not methods:
        raise UnigradError("option methods must name at least one method")
    out = output_dir(out)
    dataset = "Fashion-MNIST" if data is None else "given data"
    if data is None:
        data = load_data(n_train, n_sharpness)
    else:
        n_train, n_sharpness = int(data.x_train.shape[0]), int(data.x_sharp.shape[0])
    features = int(data.x_train[0].numel())

    def build(seed: int) -> nn.Module:
        return mlp([features, hidden, 10], seed=seed)

    total, cpu = time.perf_counter(), time.process_time()
    curvature = {"lanczos_iters": lanczos_iters, "trace_probes": trace_probes}
    results: dict[str, Any] = {
        "dataset": dataset,
        "n_train": n_train,
        "n_sharpness": n_sharpness,
        "n_test": int(data.x_test.shape[0]),
        "features": features,
        "hidden": hidden,
        "parameters": sum(p.numel() for p in build(0).parameters()),
        "target": target,
        "levels": list(LEVELS),
        "lanczos_iters": lanczos_iters,
        "trace_probes": trace_probes,
        "seeds": seeds,
        "methods": [],
    }
    for m in methods:
        if max_epochs is not None:
            m = dataclasses.replace(m, max_epochs=min(m.max_epochs, max_epochs))
        runs = []
        for seed in range(seeds):
            if progress:
                progress(f"sharpness: {m.label}, seed {seed}")
            runs.append(train_one(m, data, build=build, seed=seed, target=target, **curvature))
        results["methods"].append({**_describe(m), "runs": runs})
    results["verdict"] = verdict(results)
    results["seconds"] = time.perf_counter() - total
    results["cpu_seconds"] = time.process_time() - cpu
    finish(out, results, report, plot, "sharpness.png")
    return results


def _describe(m: Method) -> dict[str, Any]:
    """``m``'s settings as they stand in ``results.json``."""
    return {
        "label": m.label,
        "estimator": m.estimator,
        "order": m.order,
        "options": m.options,
        "optimizer": m.optimizer,
        "lr": m.lr,
        "batch": m.batch,
        "max_epochs": m.max_epochs,
    }


def _by_label(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["label"]: m for m in results["methods"]}


def verdict(results: dict[str, Any]) -> dict[str, Any] | None:
    """Large- against small-batch backprop, seed by seed: ``λ_max`` and trace ratios, test-accuracy gap,
    at the end of training and at every loss level both runs reached (``None`` without both methods)."""
    methods = _by_label(results)
    if SMALL not in methods or LARGE not in methods:
        return None
    small, large = methods[SMALL]["runs"], methods[LARGE]["runs"]
    pairs = list(zip(small, large, strict=True))
    ratios = [lg["lambda_max"] / sm["lambda_max"] for sm, lg in pairs]
    traces = [lg["trace"] / sm["trace"] for sm, lg in pairs]
    gaps = [lg["test_acc"] - sm["test_acc"] for sm, lg in pairs]
    at_levels = {}
    for level in results["levels"]:
        r = [
            level_value(lg, level) / level_value(sm, level)
            for sm, lg in pairs
            if level_value(sm, level) and level_value(lg, level)
        ]
        if r:
            at_levels[str(level)] = r
    return {
        "lambda_ratio": ratios,
        "trace_ratio": traces,
        "test_acc_gap": gaps,
        "holds": all(r > 1 for r in ratios),
        "both_reached_target": all(sm["reached_target"] and lg["reached_target"] for sm, lg in pairs),
        "lambda_ratio_at_levels": at_levels,
    }


@dataclass(frozen=True)
class Config(_common.Config):
    """Options of ``unigrad experiment sharpness`` (each overrides :func:`run`'s): ``n_train``, ``n_sharpness``,
    ``hidden``, ``target``, ``lanczos_iters``, ``trace_probes`` and ``max_epochs``. A quick run (1,024 training
    images, a 32-unit MLP, at most 2 epochs per method, 5 Lanczos steps and 4 trace probes, one seed) is a smoke
    test, its numbers are not results."""

    n_train: int | None = None
    n_sharpness: int | None = None
    hidden: int | None = None
    target: float | None = None
    lanczos_iters: int | None = None
    trace_probes: int | None = None
    max_epochs: int | None = None

    NAME = "sharpness"
    QUICK: ClassVar[Settings] = {
        "n_train": 1024,
        "n_sharpness": 256,
        "hidden": 32,
        "max_epochs": 2,
        "lanczos_iters": 5,
        "trace_probes": 4,
    }
    QUICK_SEEDS = 1


run_experiment = runner(Config, run)
