"""The experiments ``unigrad experiment NAME`` runs: name → runner and one-line description.

A runner is ``run(out, *, seeds, quick, progress, **options) -> str``: it writes its figures,
``results.json`` and ``report.md`` into the folder ``out`` and returns the report's text. ``quick``
shrinks every budget to a smoke test of the pipeline (its numbers are not results). Each runner is
``_common.runner(Config, run)``: the experiment's :class:`~unigrad.experiments._common.Config` declares its
options and their full and quick defaults.
Runners are imported lazily, so ``unigrad experiment --help`` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from unigrad.core.errors import unknown_name

EXPERIMENTS: dict[str, tuple[str, str]] = {
    "convergence-orders": (
        "unigrad.experiments.convergence_orders:run_experiment",
        "error against iteration and work for orders 0-3 on Rosenbrock and an ill-conditioned quadratic",
    ),
    "estimator-variance": (
        "unigrad.experiments.estimator_variance:run_experiment",
        "alignment and relative error of rge, spsa, es, forward-gradient, np and wp against dimension and probes",
    ),
    "finetune": (
        "unigrad.experiments.finetune:run_experiment",
        "fine-tune pretrained all-MiniLM-L6-v2 with every order at equal FE: k16, k512, full; both test sets",
    ),
    "werfel": (
        "unigrad.experiments.werfel:run_experiment",
        "learning time of NP and WP against GD on a linear student-teacher (Werfel et al. 2005)",
    ),
    "smoothing-rates": (
        "unigrad.experiments.smoothing_rates:run_experiment",
        "iterations of Gaussian-smoothing random search against gradient descent on quadratics as d grows",
    ),
    "hiratani": (
        "unigrad.experiments.hiratani:run_experiment",
        "NP in a deep linear network: learning time against width; weight drift under mismatch, weight norm",
    ),
    "grokking": (
        "unigrad.experiments.grokking:run_experiment",
        "modular addition: backprop with weight decay memorises early and generalises much later; ZO at equal work",
    ),
    "sharpness": (
        "unigrad.experiments.sharpness:run_experiment",
        "top Hessian eigenvalue and trace of the minima of small/large-batch backprop, ANP, K-FAC, L-BFGS",
    ),
    "bio-table": (
        "unigrad.experiments.bio_table:bio_table",
        "biological rules × neuroscience tasks on a rate RNN, with BPTT as reference and learning curves",
    ),
    "bio-lif": (
        "unigrad.experiments.bio_lif:bio_lif",
        "BPTT with a surrogate derivative against NP/ANP in time and WP on a spiking (LIF) network",
    ),
    "hardware-mismatch": (
        "unigrad.experiments.hardware_mismatch:hardware_mismatch",
        "Fashion-MNIST MLP on a simulated crossbar: four training modes against the mismatch level",
    ),
    "hardware-noise": (
        "unigrad.experiments.hardware_noise:hardware_noise",
        "the same four training modes against the device's noise level",
    ),
    "hardware-intrinsic": (
        "unigrad.experiments.hardware_intrinsic:hardware_intrinsic",
        "in-situ ANP/DANP when the only perturbation is stochastic-MTJ telegraph noise",
    ),
    "noise-resource": (
        "unigrad.experiments.noise_resource:noise_resource",
        "final score of NP and ANP in time against the noise level",
    ),
    "noise-access": (
        "unigrad.experiments.noise_access:noise_access",
        "one task learned from noise the rule can read and from noise it cannot",
    ),
}


def runner(name: str) -> Callable[..., Any]:
    """The runner registered under ``name`` (unknown names list the valid ones)."""
    if name not in EXPERIMENTS:
        raise unknown_name("experiment", name, EXPERIMENTS)
    module, fn = EXPERIMENTS[name][0].split(":")
    return getattr(importlib.import_module(module), fn)
