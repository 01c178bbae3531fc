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
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import unigrad
from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.rng import generator
from unigrad.hardware.crossbar import CrossbarMLP
from unigrad.hardware.energy import EnergyModel, LatencyModel, OpCounts

MODES = ("deployed-backprop", "hardware-aware", "in-situ-anp", "in-situ-danp", "mgd")
SCHEDULES = ("constant", "cosine")
_BATCH, _AWARE = 0x4B0, 0x4B1


@dataclass
class DeviceRun:
    """One training run on a device: evaluation history, training operation counts, energy."""

    mode: str
    seed: int
    history: list[dict[str, Any]] = field(default_factory=list)
    counts: OpCounts = field(default_factory=OpCounts)
    seconds: float = 0.0

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1]

    def energy_to(self, accuracy: float) -> float | None:
        """Training energy (J) at the first evaluation reaching ``accuracy`` on the device (None: never)."""
        for point in self.history:
            if point["accuracy"] >= accuracy:
                return point["energy"]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "seed": self.seed,
            "history": self.history,
            "counts": self.counts.to_dict(),
            "seconds": self.seconds,
        }


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
    :func:`unigrad.decorrelate`."""
    check_choice("mode", mode, MODES)
    for name, value in (("steps", steps), ("batch", batch), ("eval_every", eval_every)):
        check_positive(name, value, integer=True)
    check_positive("lr", lr)
    check_choice("schedule", schedule, SCHEDULES)
    options = dict(options or {})
    energy = energy or EnergyModel()
    latency = latency or LatencyModel()
    xtr, ytr, xte, yte = data
    if eval_samples is not None:
        xte, yte = xte[:eval_samples], yte[:eval_samples]
    device = make_device()
    if not isinstance(device, CrossbarMLP):
        raise UnigradError(f"make_device must return a CrossbarMLP, got {type(device).__name__}")
    sizes = device.sizes
    run = DeviceRun(mode, seed)
    learner = OpCounts()  # the learner's own digital work and random bits
    start = time.perf_counter()

    def record(step: int, model_for_eval: nn.Module | None) -> None:
        nonlocal start
        run.seconds += time.perf_counter() - start
        state = device.device_state()
        if model_for_eval is not None:  # backprop modes: deploy the twin as it is now, then put things back
            device.deploy(model_for_eval)
        acc = device_accuracy(device, xte, yte)
        device.load_device_state(state)
        counts = device.counts + learner
        if model_for_eval is not None:
            counts += OpCounts(writes=sum(m.weight.numel() for m in device.analog_layers()))
        point = {
            "step": step,
            "accuracy": acc,
            "energy": energy.energy(counts),
            "latency": latency.latency(counts),
            "counts": counts.to_dict(),
            "seconds": run.seconds,
        }
        run.history.append(point)
        if on_eval is not None:
            on_eval(point)
        start = time.perf_counter()

    if mode in ("deployed-backprop", "hardware-aware"):
        twin = device.digital_twin(seed=seed, dtype=device.analog_layers()[0].weight.dtype)
        model = HardwareAwareTwin(twin, device, node_sigma, seed) if mode == "hardware-aware" else twin
        opt = torch.optim.Adam(twin.parameters(), lr=lr)
        sched = _scheduler(opt, schedule, steps)
        record(0, twin)
        per_step = 3 * batch * _macs(sizes)
        for step in range(1, steps + 1):
            i = _batch(len(xtr), batch, seed, step)
            opt.zero_grad()
            F.cross_entropy(model(xtr[i]), ytr[i]).backward()
            opt.step()
            sched.step()
            learner.digital_macs += per_step
            if mode == "hardware-aware":
                model.step += 1
                learner.random_bits += 32 * 2 * sum(m.weight.numel() for m in twin if isinstance(m, nn.Linear))
                learner.random_bits += 32 * batch * sum(sizes[1:]) * (node_sigma > 0)
            if step % eval_every == 0 or step == steps:
                record(step, twin)
        device.deploy(twin)
        run.counts = device.counts + learner
        return run

    port = bool(options.pop("dither_port", True))
    if mode == "mgd":
        from unigrad.zeroth.mgd import MGD

        est = MGD(seed=seed, **options)
    else:
        from unigrad.zeroth.anp import ANP

        decor = options.pop("decorrelation", {"lr": 1e-3, "sample": 1024})
        est = ANP(noise="external", passes="two-noisy", seed=seed, **options)
        if mode == "in-situ-danp":
            unigrad.decorrelate(device, seed=seed, **decor)
    opt = torch.optim.Adam(device.parameters(), lr=lr)
    sched = _scheduler(opt, schedule, steps)
    record(0, None)
    for step in range(1, steps + 1):
        i = _batch(len(xtr), batch, seed, step)
        opt.zero_grad()
        objective = unigrad.supervised(F.cross_entropy, xtr[i], ytr[i])
        if mode == "mgd" and port:
            with device.dither_port():
                e = est.estimate(device, objective)
        else:
            e = est.estimate(device, objective)
        opt.step()
        sched.step()
        if mode == "mgd":
            window = getattr(est, "window", 1)
            learner.digital_macs += window * device_parameters(device)
            if getattr(est, "dither", "") == "random-sign":
                learner.random_bits += window * device_parameters(device)
        else:
            learner.digital_macs += batch * _macs(sizes)
            if mode == "in-situ-danp":
                passes = 1 + est.probes
                learner.digital_macs += passes * batch * sum(n * n for n in sizes[:-1])
                learner.digital_macs += decorrelation_update_macs(sizes, batch, decor.get("sample"))
                from unigrad.nn.decorrelation import update_decorrelation

                update_decorrelation(device)
        if not math.isfinite(e.loss):
            raise UnigradError(f"{mode}: the loss became {e.loss} at step {step}; lower the learning rate")
        if step % eval_every == 0 or step == steps:
            record(step, None)
    run.counts = device.counts + learner
    return run


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
