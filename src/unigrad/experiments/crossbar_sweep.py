"""The sweep behind the hardware experiments: training modes on a mismatched, noisy crossbar running a
Fashion-MNIST MLP.

Every run builds the same device — a 784-128-10 :class:`~unigrad.hardware.crossbar.CrossbarMLP` (8-bit DAC, ADC
and activations, 10% update noise and 10% potentiation/depression asymmetry, weights in ``[−1, 1]``) — and
trains it in each mode of :mod:`unigrad.hardware.train` for the same number of steps (batches of 64), then
reports the accuracy *on the device* on the 10,000 test images, the training energy and the energy to reach
:data:`TARGET` accuracy. Inputs are scaled into ``[−1, 1]`` (the DAC's range). The reference is backprop deployed
on an ideal device (no noise, no mismatch, exact converters).

The experiments (:mod:`~unigrad.experiments.hardware_mismatch`, :mod:`~unigrad.experiments.hardware_noise`,
:mod:`~unigrad.experiments.hardware_intrinsic`) each vary one property of this device.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from unigrad.core.errors import check_positive
from unigrad.experiments import _common
from unigrad.experiments._common import (
    Progress,
    Settings,
    output_dir,
    pyplot,
    save_figure,
    table,
    write_report,
    write_results,
)
from unigrad.hardware.crossbar import CrossbarConfig, CrossbarMLP
from unigrad.hardware.energy import EnergyModel
from unigrad.hardware.train import DeviceRun, train_device
from unigrad.train.parallel import run_calls

SIZES = [784, 128, 10]
STEPS = 3000
TARGET = 0.75
MODES = ("deployed-backprop", "hardware-aware", "in-situ-anp", "in-situ-danp", "mgd")
MODE_OPTIONS: dict[str, dict[str, Any]] = {
    "in-situ-danp": {"decorrelation": {"lr": 1e-4, "sample": 1024}},
    "mgd": {"window": 8, "sigma": 1e-2, "dither": "random-sign"},
}
"""Options of each mode (decorrelation rate 1e-4: at 1e-3 accuracy peaked early and declined in a seed-0 check)."""


def config(mismatch: float = 0.1, noise: float = 0.05) -> CrossbarConfig:
    """The experiments' crossbar at mismatch level ``m`` and read noise ``noise/5``."""
    return CrossbarConfig(
        program_noise=mismatch / 2,
        mismatch=mismatch,
        read_noise=noise / 5,
        adc_bits=8,
        dac_bits=8,
        output_range=8.0,
        update_noise=0.1,
        update_asymmetry=0.1,
    )


@functools.lru_cache(maxsize=2)
def _data(quick: bool) -> tuple[torch.Tensor, ...]:
    from unigrad.data.fashion_mnist import load_fashion_mnist

    xtr, ytr, xte, yte = load_fashion_mnist()
    scale = float(xtr.abs().max())
    xtr, xte = xtr.reshape(len(xtr), -1) / scale, xte.reshape(len(xte), -1) / scale
    if quick:
        return xtr[:2000], ytr[:2000], xte[:500], yte[:500]
    return xtr, ytr, xte, yte


class _Maker:
    """A picklable device factory (runs are made in worker processes)."""

    def __init__(self, cfg: CrossbarConfig, noise: Any, seed: int, ideal: bool = False) -> None:
        self.cfg, self.noise, self.seed, self.ideal = cfg, noise, seed, ideal

    def __call__(self) -> CrossbarMLP:
        if self.ideal:
            return CrossbarMLP(SIZES, CrossbarConfig(output_range=1e6), seed=self.seed)
        return CrossbarMLP(SIZES, self.cfg, node_noise=self.noise, activation_bits=8, seed=self.seed)


def _run(maker: _Maker, mode: str, seed: int, steps: int, node_sigma: float, quick: bool) -> dict[str, Any]:
    run: DeviceRun = train_device(
        maker,
        mode,
        _data(quick),
        steps=steps,
        batch=64,
        lr=1e-3,
        seed=seed,
        eval_every=max(1, steps // 5),
        node_sigma=node_sigma,
        energy=EnergyModel(),
        options=dict(MODE_OPTIONS.get(mode, {})),
    )
    out = run.to_dict()
    out["energy_to_target"] = run.energy_to(TARGET)
    return out


def _execute(jobs: list[tuple[str, tuple[Any, ...]]], n: int, progress: Callable[[str], None] | None) -> dict:
    results: dict[str, Any] = {}
    for (key, _), run in zip(jobs, run_calls([(_run, args) for _, args in jobs], n), strict=True):
        results[key] = run
        if progress:
            progress(f"{key} done")
    return results


def _sweep(
    out: str | Path,
    name: str,
    levels: tuple[float, ...],
    make: Callable[[float, int], tuple[_Maker, float]],
    *,
    label: str,
    modes: tuple[str, ...] = MODES,
    seeds: int = 1,
    quick: bool = False,
    progress: Progress = None,
    jobs: int = 1,
) -> str:
    """Train every mode at every level (``make(level, seed)`` gives the device maker and its node-noise σ) and
    the ideal-device reference, ``seeds`` seeds each, ``jobs`` at once; write the outputs and return the report.

    ``quick`` trains 20 steps on a 2,000-image subset (scored on 500 test images) instead of :data:`STEPS` on all;
    ``seeds``, ``quick``, ``progress`` and ``jobs`` come from :class:`SweepConfig`."""
    check_positive("seeds", seeds, integer=True)
    steps = 20 if quick else STEPS
    out = output_dir(out)
    work: list[tuple[str, tuple[Any, ...]]] = []
    for seed in range(seeds):
        work.append(
            (
                f"reference|0|{seed}",
                (_Maker(CrossbarConfig(), None, seed, ideal=True), "deployed-backprop", seed, steps, 0.0, quick),
            )
        )
        for level in levels:
            for mode in modes:
                maker, sigma = make(level, seed)
                work.append((f"{mode}|{level}|{seed}", (maker, mode, seed, steps, sigma, quick)))
    runs = _execute(work, jobs, progress)
    results = {
        "experiment": name,
        "levels": list(levels),
        "modes": list(modes),
        "steps": steps,
        "seeds": seeds,
        "target": TARGET,
        "label": label,
        "runs": runs,
    }
    write_results(out, results)
    text = _report(results)
    write_report(out, text)
    _plot(results, out / f"{name}.png")
    return text


@dataclass(frozen=True)
class SweepConfig(_common.Config):
    """The options every hardware experiment shares: ``jobs`` (runs at once, one process and one thread each),
    with the runner's ``seeds`` (one by default), ``quick`` and ``progress``; a subclass adds its own (its
    ``NAME``)."""

    seeds: int = 1
    jobs: int = 1

    FULL: ClassVar[Settings] = {"quick": False}
    QUICK: ClassVar[Settings] = {"quick": True}


def _final(results: dict[str, Any], mode: str, level: Any, key: str = "accuracy") -> list[float]:
    return [results["runs"][f"{mode}|{level}|{s}"]["history"][-1][key] for s in range(results["seeds"])]


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def _energies(results: dict[str, Any], mode: str, level: Any) -> str:
    """A cell of the energy table: mean training energy / mean energy to the target (runs that reached it)."""
    e = statistics.fmean(_final(results, mode, level, "energy"))
    to = [results["runs"][f"{mode}|{level}|{s}"]["energy_to_target"] for s in range(results["seeds"])]
    reached = [t for t in to if t is not None]
    return f"{e:.2e} / " + (f"{statistics.fmean(reached):.2e} ({len(reached)}/{len(to)})" if reached else "—")


def _report(results: dict[str, Any]) -> str:
    """Accuracy on the device and training energy, mode by level, with the ideal-device reference."""
    levels, modes = results["levels"], results["modes"]
    header = ["mode", *(f"{results['label']} = {lv:g}" for lv in levels)]
    lines = [
        f"# {results['experiment']}: test accuracy on the device after {results['steps']:,} steps of 64 "
        f"({results['seeds']} seed(s))",
        "",
        f"Backprop deployed on an ideal device: {_ms(_final(results, 'reference', 0))}.",
        "",
        *table(header, ([mode, *(_ms(_final(results, mode, lv)) for lv in levels)] for mode in modes)),
        "",
        f"Training energy (J, whole run) and energy to reach {results['target']:.2f} on the device (J; never: —):",
        "",
        *table(header, ([mode, *(_energies(results, mode, lv) for lv in levels)] for mode in modes)),
    ]
    return "\n".join(lines) + "\n"


def _plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    levels = results["levels"]
    for mode in results["modes"]:
        means = [statistics.fmean(_final(results, mode, lv)) for lv in levels]
        ax.plot(levels, means, marker="o", label=mode)
    ax.axhline(
        statistics.fmean(_final(results, "reference", 0)), color="black", ls="--", lw=1, label="backprop, ideal device"
    )
    ax.set_xlabel(results["label"])
    ax.set_ylabel("test accuracy on the device")
    if min(levels) > 0 and max(levels) / min(levels) > 20:
        ax.set_xscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
