"""Training a device four ways, on the same device, with the energy each way costs.

``deployed-backprop`` (a)
    backprop (Adam) on the device's idealized digital twin (:meth:`CrossbarMLP.digital_twin`), then the weights
    are programmed into the device once. The twin knows nothing of mismatch, noise, drift or converters.
``hardware-aware`` (b)
    backprop on the twin with the device's non-idealities injected as noise in every training forward: each
    weight is used as ``W ⊙ (1 + σ_m·z) + (σ_p + σ_r)·w_max·z'`` (fresh ``z, z'`` per step: the learner knows the
    *statistics* of mismatch and programming/read noise, not the device's values) and each layer's output gets
    the node noise's σ; then deployed. Converters are not modelled in training.
``in-situ-anp`` / ``in-situ-danp`` (c)
    activity-based node perturbation on the device itself, ``ANP(noise="external", passes="two-noisy")``: the
    learner injects nothing; two passes of a batch differ only through the device's own noise, and the rule
    reads the layers' activities and the losses. ``in-situ-danp`` adds input decorrelation (``R·x`` in digital
    logic before each array, :func:`unigrad.decorrelate`, updated after every step). Every optimizer step is
    applied to the device as imperfect, counted writes.
``mgd`` (d)
    multiplexed gradient descent (:class:`unigrad.zeroth.mgd.MGD`) on the device: every parameter carries a
    dither, the broadcast cost change is correlated with it. By default the dithers go through the device's
    dither port (:meth:`CrossbarMLP.dither_port`: exact transient offsets, no writes); with the option
    ``dither_port=False`` every dither is written into the cells and back (writes, update noise and asymmetry).

Cost accounting (training only; evaluations are not charged): the device's own counts (analog MACs, reads,
writes, converter conversions) plus the learner's digital work — backprop on the twin is ``3×`` the forward MACs
per sample (a forward and a backward of about twice its cost), the ANP update ``Σ_l in_l·out_l`` MACs per
sample, decorrelation ``Σ_l in_l²`` per sample and pass (``1 + q`` passes with ``q`` probes) plus its update
(:func:`decorrelation_update_macs`); random bits the learner draws (32 per Gaussian, 1 per
sign). :class:`~unigrad.hardware.energy.EnergyModel` turns the counts into joules and
:class:`~unigrad.hardware.energy.LatencyModel` into seconds of device time; every evaluation point records the
accuracy *on the device* and the energy and latency spent so far, so the energy to reach a target accuracy is read off
the history.

A run is a :class:`~unigrad.train.loop.TrainingLoop`: the backprop modes train the twin with the ``backprop``
estimator, the in-situ modes the device with ANP or MGD (through the dither port, :class:`_ThroughDitherPort`);
the rate schedule, the learner's work per step, the aware twin's fresh draws and the decorrelation update are its
hooks.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import unigrad
from unigrad.core.errors import NonFiniteLossError, UnigradError, check_choice, check_positive
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective
from unigrad.core.rng import generator
from unigrad.first.backprop import Backprop
from unigrad.hardware.crossbar import CrossbarMLP
from unigrad.hardware.energy import EnergyModel, LatencyModel, OpCounts
from unigrad.train.hooks import DecorrelationUpdates, Report
from unigrad.train.loop import Batch, Estimates, Every, Hook, RunRecord, StepRecord, TrainingLoop
from unigrad.zeroth.anp import ANP
from unigrad.zeroth.mgd import MGD

MODES = ("deployed-backprop", "hardware-aware", "in-situ-anp", "in-situ-danp", "mgd")
SCHEDULES = ("constant", "cosine")
_BATCH, _AWARE = 0x4B0, 0x4B1


@dataclass
class DeviceRun(RunRecord):
    """One training run on a device: evaluation history, training operation counts, energy."""

    mode: str
    seed: int
    history: list[dict[str, Any]] = field(default_factory=list)
    counts: OpCounts = field(default_factory=OpCounts)
    seconds: float = 0.0

    def energy_to(self, accuracy: float) -> float | None:
        """Training energy (J) at the first evaluation reaching ``accuracy`` on the device (None: never)."""
        for point in self.history:
            if point["accuracy"] >= accuracy:
                return point["energy"]
        return None


def _batch(n: int, size: int, seed: int, step: int) -> Tensor:
    return torch.randint(0, n, (size,), generator=generator(_BATCH, seed, step))


def _macs(sizes: list[int]) -> int:
    return sum(a * b for a, b in itertools.pairwise(sizes))


@torch.no_grad()
def device_accuracy(device: nn.Module, x: Tensor, y: Tensor, chunk: int = 2048) -> float:
    """Accuracy of the device's arg-max outputs on ``(x, y)``."""
    right = 0
    for i in range(0, len(x), chunk):
        right += int((device(x[i : i + chunk]).argmax(1) == y[i : i + chunk]).sum())
    return right / len(x)


class HardwareAwareTwin(nn.Module):
    """The twin, with the device's non-idealities drawn afresh in every forward (mode ``hardware-aware``)."""

    def __init__(self, twin: nn.Sequential, device: CrossbarMLP, node_sigma: float, seed: int) -> None:
        super().__init__()
        self.twin, self.config, self.node_sigma, self.seed = twin, device.config, float(node_sigma), int(seed)
        self.step = 0

    def forward(self, x: Tensor) -> Tensor:
        cfg, k = self.config, 0
        for m in self.twin:
            if isinstance(m, nn.Linear):
                g = generator(_AWARE, self.seed, self.step, k)
                w = m.weight
                z1 = torch.randn(w.shape, generator=g, dtype=torch.float64).to(w.dtype)
                z2 = torch.randn(w.shape, generator=g, dtype=torch.float64).to(w.dtype)
                w = w * (1 + cfg.mismatch * z1) + (cfg.program_noise + cfg.read_noise) * cfg.w_max * z2
                x = F.linear(x, w, m.bias)
                if self.node_sigma > 0:
                    x = x + self.node_sigma * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype)
                k += 1
            else:
                x = m(x)
        return x


class _RateSchedule(Hook):
    """Adam's rate held constant or annealed along a half cosine (:func:`_scheduler`), stepped after every update."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: str, steps: int) -> None:
        self.scheduler = _scheduler(optimizer, schedule, steps)

    def after_update(self, loop: TrainingLoop, batch: Batch) -> None:
        self.scheduler.step()


class _LearnerWork(Hook):
    """The learner's own digital work and random bits: ``per_step`` (the same every step) charged per step."""

    def __init__(self, per_step: OpCounts) -> None:
        self.per_step, self.counts = per_step, OpCounts()

    def on_step_end(self, loop: TrainingLoop, record: StepRecord) -> None:
        self.counts += self.per_step


class _FreshDraws(Hook):
    """The hardware-aware twin draws its non-idealities afresh for every step."""

    def __init__(self, twin: HardwareAwareTwin) -> None:
        self.twin = twin

    def after_update(self, loop: TrainingLoop, batch: Batch) -> None:
        self.twin.step += 1


class _ThroughDitherPort:
    """An estimator whose every estimate runs with the device's dither port open (MGD's dithers are then exact
    transient offsets, never written: :meth:`CrossbarMLP.dither_port`)."""

    def __init__(self, estimator: Estimator, device: CrossbarMLP) -> None:
        self.estimator, self.device = estimator, device

    def estimate(self, model: nn.Module, objective: Objective) -> Estimate:
        with self.device.dither_port():
            return self.estimator.estimate(model, objective)


def train_device(
    make_device: Callable[[], CrossbarMLP],
    mode: str,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    *,
    steps: int = 1000,
    batch: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    eval_every: int = 100,
    eval_samples: int | None = None,
    node_sigma: float = 0.0,
    energy: EnergyModel | None = None,
    latency: LatencyModel | None = None,
    options: dict[str, Any] | None = None,
    schedule: str = "constant",
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> DeviceRun:
    """Train a fresh device from ``make_device()`` in ``mode`` (module docs) on ``data = (x_train, y_train,
    x_test, y_test)`` with cross-entropy; Adam at ``lr`` in every mode, held constant (``schedule="constant"``) or
    annealed to zero over ``steps`` along a half cosine (``schedule="cosine"``, ``lr_t = lr·(1 + cos(πt/T))/2``).
    ``node_sigma`` is what the hardware-aware twin injects on layer outputs (the device's node noise level, if
    known). ``options`` go to the estimator (``ANP``, ``MGD``) or, under ``"decorrelation"``, to
    :func:`unigrad.decorrelate`. ``on_eval`` is called with a copy of every evaluation point. A non-finite loss
    raises :class:`~unigrad.core.errors.NonFiniteLossError`."""
    check_choice("mode", mode, MODES)
    for name, value in (("steps", steps), ("batch", batch), ("eval_every", eval_every)):
        check_positive(name, value, integer=True)
    check_positive("lr", lr)
    check_choice("schedule", schedule, SCHEDULES)
    xtr, ytr, xte, yte = data
    if eval_samples is not None:
        xte, yte = xte[:eval_samples], yte[:eval_samples]
    device = make_device()
    if not isinstance(device, CrossbarMLP):
        raise UnigradError(f"make_device must return a CrossbarMLP, got {type(device).__name__}")
    joules, seconds = energy or EnergyModel(), latency or LatencyModel()
    learner = _learner(device, mode, batch, seed, node_sigma, dict(options or {}))
    opt = torch.optim.Adam(learner.trains.parameters(), lr=lr)

    def batches(loop: TrainingLoop) -> Batch:
        i = _batch(len(xtr), batch, seed, loop.step + 1)
        return Batch(unigrad.supervised(F.cross_entropy, xtr[i], ytr[i]), xtr[i], batch)

    def point(loop: TrainingLoop) -> dict[str, Any]:
        acc = _accuracy_on_device(device, learner.twin, xte, yte)
        counts = device.counts + work.counts
        if learner.twin is not None:  # the deployment the evaluation stands for is charged, not done
            counts += OpCounts(writes=sum(m.weight.numel() for m in device.analog_layers()))
        return {
            "step": loop.step,
            "accuracy": acc,
            "energy": joules.energy(counts),
            "latency": seconds.latency(counts),
            "counts": counts.to_dict(),
            "seconds": loop.seconds,
        }

    work = _LearnerWork(learner.per_step)
    loop = TrainingLoop(
        learner.model,
        learner.estimator,
        opt,
        batches,
        spent=lambda loop: loop.step / steps,
        evaluate=point,
        schedule=Every(eval_every, steps),
        hooks=[_RateSchedule(opt, schedule, steps), work, *learner.hooks, *([Report(on_eval)] if on_eval else [])],
        describe=lambda e: str(e).split(";")[0],
    ).run()
    if loop.status == "diverged":
        raise NonFiniteLossError(f"{mode}: the {loop.message} at step {loop.failed_step}; lower the learning rate")
    if learner.twin is not None:
        device.deploy(learner.twin)
    return DeviceRun(mode, seed, loop.history, device.counts + work.counts, loop.seconds)


@dataclass
class _Learner:
    """How a mode learns: the ``model`` the estimator sees, the module whose parameters Adam ``trains``, the
    ``twin`` deployed at the end (backprop modes), the learner's digital work ``per_step`` and its hooks."""

    model: nn.Module
    trains: nn.Module
    estimator: Estimator | Estimates
    per_step: OpCounts
    twin: nn.Sequential | None = None
    hooks: list[Hook] = field(default_factory=list)


def _learner(
    device: CrossbarMLP, mode: str, batch: int, seed: int, node_sigma: float, options: dict[str, Any]
) -> _Learner:
    """The learner of ``mode`` on ``device`` (module docs), with what it costs per step."""
    sizes = device.sizes
    if mode in ("deployed-backprop", "hardware-aware"):
        twin = device.digital_twin(seed=seed, dtype=device.analog_layers()[0].weight.dtype)
        work = OpCounts(digital_macs=3 * batch * _macs(sizes))
        if mode == "deployed-backprop":
            return _Learner(twin, twin, Backprop(seed=seed), work, twin)
        aware = HardwareAwareTwin(twin, device, node_sigma, seed)
        work.random_bits += 32 * 2 * sum(m.weight.numel() for m in twin if isinstance(m, nn.Linear))
        work.random_bits += 32 * batch * sum(sizes[1:]) * (node_sigma > 0)
        return _Learner(aware, twin, Backprop(seed=seed), work, twin, [_FreshDraws(aware)])
    port = bool(options.pop("dither_port", True))
    if mode == "mgd":
        est = MGD(seed=seed, **options)
        window, cells = getattr(est, "window", 1), device_parameters(device)
        work = OpCounts(digital_macs=window * cells)
        if getattr(est, "dither", "") == "random-sign":
            work.random_bits += window * cells
        return _Learner(device, device, _ThroughDitherPort(est, device) if port else est, work)
    decor = options.pop("decorrelation", {"lr": 1e-3, "sample": 1024})
    anp = ANP(noise="external", passes="two-noisy", seed=seed, **options)
    work = OpCounts(digital_macs=batch * _macs(sizes))
    if mode == "in-situ-anp":
        return _Learner(device, device, anp, work)
    unigrad.decorrelate(device, seed=seed, **decor)
    work.digital_macs += (1 + anp.probes) * batch * sum(n * n for n in sizes[:-1])
    work.digital_macs += decorrelation_update_macs(sizes, batch, decor.get("sample"))
    return _Learner(device, device, anp, work, hooks=[DecorrelationUpdates()])


def _accuracy_on_device(device: CrossbarMLP, twin: nn.Module | None, x: Tensor, y: Tensor) -> float:
    """The device's accuracy on ``(x, y)`` — with ``twin`` deployed into it first (backprop modes) — leaving the
    device's physical state as it was."""
    state = device.device_state()
    if twin is not None:
        device.deploy(twin)
    acc = device_accuracy(device, x, y)
    device.load_device_state(state)
    return acc


def decorrelation_update_macs(sizes: list[int], batch: int, sample: int | None) -> int:
    """Multiply-adds of one decorrelation update per step (:meth:`unigrad.nn.Decorrelation.update`): with
    ``b = min(batch, sample)`` recorded rows and ``n`` inputs per layer, ``2·b·n²`` when ``2b < n`` (formed
    without the covariance) and otherwise ``b·n²`` for ``C`` plus ``n³`` for ``A·R``."""
    b = batch if sample is None else min(batch, sample)
    return sum(2 * b * n * n if 2 * b < n else b * n * n + n**3 for n in sizes[:-1])


def _scheduler(opt: torch.optim.Optimizer, schedule: str, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def device_parameters(device: nn.Module) -> int:
    """Number of trainable entries of a device (its cells and biases)."""
    return sum(p.numel() for p in device.parameters() if p.requires_grad)


def clone_device(device: CrossbarMLP) -> CrossbarMLP:
    """An independent copy (parameters and physical state)."""
    twin = copy.deepcopy(device)
    for a, b in zip(device.analog_layers(), twin.analog_layers(), strict=True):
        b.load_device_state(a.device_state())
    return twin
