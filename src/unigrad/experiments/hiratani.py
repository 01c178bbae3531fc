"""Hiratani, Mehta, Lillicrap & Latham (2022): node perturbation's scalability in width, and its instability.

Setup (as in [1], smaller). A deep linear student ``y = W₂W₁x`` (``Lx`` inputs, ``Lh`` hidden units,
``Ly`` outputs, no biases) learns a linear teacher ``y* = A x + ζ`` online: one sample
``x ~ N(0, I)`` per step, loss ``L = ½‖y − y*‖²``. Initialization is Xavier–Glorot as in [1]:
``A_ij ~ N(0, 2/(Lx+Ly))``, ``W₁ ~ N(0, 2/(Lx+Lh))``, ``W₂ ~ N(0, 2/(Lh+Ly))``. The error is
[1]'s ``ε = ‖W₂W₁ − A‖_F²/(Lx·Ly)`` (the excess of the expected loss over the noise floor, scaled),
computed exactly from the weights. Every rule is followed by ``W ← W − η g`` (SGD):

==========  =========================================================================================
GD          ``backprop``: ``g₂ = e hᵀ``, ``g₁ = W₂ᵀe xᵀ`` (``h = W₁x``, ``e = y − y*``)
NP          ``np`` (one probe): ``ξ_h ~ N(0, σ²I)`` added to ``h`` and ``ξ_y ~ N(0, σ²I)`` to ``y``,
            ``g₁ = (δL/σ²) ξ_h xᵀ``, ``g₂ = (δL/σ²) ξ_y hᵀ`` (the rule of [1]'s code, σ → 0)
WP          ``wp`` (one probe): ``Ξ ~ N(0, σ²I)`` on all weights, ``g = (δL/σ²) Ξ``
NP + WN     NP, then every row of ``W₁`` and ``W₂`` is rescaled to its initial root-mean-square
            (the weight normalization of [1])
==========  =========================================================================================

(a) Width. [1] shows analytically that, at its best learning rate, NP's learning time in this
network depends only weakly on ``Lh``: its critical rate scales as ``η* ∝ 1/(Lx·Ly·(1+β)·Lh^{1/3})``
and, in the rescaled variables ``a = α/Lh^{1/3}`` (``α = ‖W₁‖²/Lx``, ``β = ‖W₂‖²/Ly``), the mean-field
dynamics does not involve ``Lh`` except through the initial ``α``, ``β``, which saturate for
``Lh ≫ Lx, Ly``. GD's optimal rate ``1/(Lx(α+β))`` is width-independent as well. WP perturbs all
``P = Lh(Lx+Ly)`` weights, and the weight-count law of [2] (WP slower than GD by the number of weights)
would make its time grow linearly in ``Lh``. That law assumes a fixed curvature per weight. Under
Xavier–Glorot scaling the curvature per weight falls as ``1/Lh``: for ``g = (u·∇ℓ)u`` the second-order
term of the expected loss change is ``½η²(‖∇ℓ‖² tr H + 2∇ℓᵀH∇ℓ)``, and the per-sample Hessian trace
``tr H = Ly‖W₁x‖² + ‖W₂‖²‖x‖² ≈ Lx·Ly·(α + β)`` does not grow with ``Lh``; nor does ``‖∇ℓ‖²``. WP's
best rate and time are then width-independent too, like NP's (the same argument in node space gives
``tr(W₂ᵀW₂) + Ly = Ly(1 + β)``). Theory in this parametrization: exponent of the learning time in
``Lh`` ≈ 0 for all three; the report also lists the weight-count expectation (1) for WP.

Measurement: for each method and width, a two-stage sweep of η (octaves around a centre taken from
the formulas above, then quarter octaves around the best) on ``seeds × students`` students run at
once in batched form; the learning time is the first step at which the students' mean ``ε`` (per
seed) falls below ``1/F`` of its start, the median over seeds at the best η. The exponent is the
least-squares slope of log time against log ``Lh``. The library's ``backprop`` and ``np`` (and ``wp``
at the smallest width) are then run at the best η of each width as a cross-check.

(b) Mismatch. With label noise ``ζ ~ N(0, σ_t²I)`` the student cannot fit the data. [1]'s mean-field
analysis gives NP's weight diffusion

    dα/dt = 2η(gradient term) + η²·Lh·Ly·(1+β)·(Lx·ε + σ_t²),

whose second term is positive and does not vanish when ε reaches its floor: ``α`` grows without
bound, which raises the effective learning rate until the error grows and the run diverges. GD has
no such term; NP with weight normalization cannot drift (its norms are fixed), but its update is no
longer the gradient, and [1] reports that it stays stable at the cost of a bias. The experiment runs
the library's ``backprop`` and ``np``, each also followed by row normalization after every SGD step
(and NP + normalization at half the rate, which tells a bias, independent of η, from estimation noise,
proportional to η), on the same teachers and data; it records ``ε``, ``α`` and ``β`` and compares NP's
measured growth of ``α`` with the diffusion term integrated along the run (from its measured ``ε`` and
``β``).

Differences from [1]: ``Lx = 8``, ``Ly = 2``, ``Lh = 16 … 256`` instead of ``Lx = 100``, ``Ly = 10``,
``Lh = 10⁴``; 10⁴–10⁵ steps instead of 10⁵–10⁶; σ = 10⁻³ instead of 10⁻⁶ (the loss differences of
the library's NP are measured in float64); the learning rates are found by a sweep rather than
the mean-field critical rate.

Options of :func:`run_experiment` (``unigrad experiment hiratani``): ``seeds`` (3), ``students`` per
seed in part (a) (16), ``library`` (the library cross-check of part (a), default on). :func:`run` also
takes ``lx`` (8), ``ly`` (2), ``widths`` and ``wp_widths`` (16 … 256), ``factor`` (100), σ (10⁻³) and
part (b)'s ``mismatch_width`` (64), ``label_noise`` σ_t (0.5), ``mismatch_eta`` (0.002; NP + weight
norm also runs at half of it) and ``mismatch_steps`` (12,000). ``quick`` shrinks everything to a smoke
test (its numbers are not results).

Outputs (in ``out``): ``hiratani.png``, ``results.json`` and ``report.md``.

This file is longer than most: its two parts share the student, the error and the library runs, and its
docstring carries the derivations; the figure and the report live in :mod:`unigrad.experiments.hiratani_report`.

References:
    [1] N. Hiratani, Y. Mehta, T. P. Lillicrap, P. E. Latham, "On the Stability and Scalability of
        Node Perturbation Learning", NeurIPS 2022.
    [2] J. Werfel, X. Xie, H. S. Seung, "Learning Curves for Stochastic Gradient Descent in Linear
        Feedforward Networks", Neural Computation 17(12), 2005.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.objective import supervised
from unigrad.core.rng import generator
from unigrad.experiments import _common
from unigrad.experiments._common import (
    Progress,
    Settings,
    check_factor,
    check_positive_all,
    check_positive_each,
    finish,
    fit_line,
    median_curve,
    output_dir,
    rounded,
    runner,
    smooth,
)
from unigrad.experiments.hiratani_report import plot, report
from unigrad.experiments.werfel import TOLERANCE, half_squared_error, median_time, race_over, race_times
from unigrad.registry import make_estimator

METHODS = ("gd", "np", "wp")
LIBRARY = {"gd": "backprop", "np": "np", "wp": "wp"}
THEORY_EXPONENT = {"gd": 0.0, "np": 0.0, "wp": 0.0}
"""Exponent of the best learning time in Lh under Xavier–Glorot scaling (see the module docstring)."""


# -- initial conditions and learning-rate centres -----------------------------------------------
def initial_norms(lx: int, lh: int, ly: int) -> tuple[float, float]:
    """Expected ``α = ‖W₁‖²/Lx`` and ``β = ‖W₂‖²/Ly`` at Xavier–Glorot initialization."""
    return 2.0 * lh / (lx + lh), 2.0 * lh / (lh + ly)


def eta_centre(method: str, lx: int, lh: int, ly: int) -> float:
    """Where the η sweep starts: GD's optimum ``1/(Lx(α+β))`` [1], NP's critical-rate scaling [1], and for WP
    GD's rate over half the Hessian trace ``Lx·Ly·(α+β)`` (see the module docstring)."""
    alpha, beta = initial_norms(lx, lh, ly)
    gd = 1.0 / (lx * (alpha + beta))
    if method == "gd":
        return gd
    if method == "np":
        return 1.0 / (lx * ly * (1.0 + beta) * lh ** (1.0 / 3.0))
    if method == "wp":
        return 2.0 * gd / (lx * ly * (alpha + beta))
    raise UnigradError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def _xavier(g: torch.Generator, batch: int, lx: int, lh: int, ly: int) -> tuple[Tensor, Tensor, Tensor]:
    dt = torch.float64
    a = torch.randn(batch, ly, lx, generator=g, dtype=dt) * math.sqrt(2.0 / (lx + ly))
    w1 = torch.randn(batch, lh, lx, generator=g, dtype=dt) * math.sqrt(2.0 / (lx + lh))
    w2 = torch.randn(batch, ly, lh, generator=g, dtype=dt) * math.sqrt(2.0 / (lh + ly))
    return a, w1, w2


def error(w1: Tensor, w2: Tensor, a: Tensor) -> Tensor:
    """``ε = ‖W₂W₁ − A‖²/(Lx·Ly)`` (batched over the leading axis)."""
    return ((w2 @ w1 - a) ** 2).sum((-2, -1)) / (a.shape[-1] * a.shape[-2])


# -- batched simulation (part a) ----------------------------------------------------------------
def directions(
    method: str, w1: Tensor, w2: Tensor, a: Tensor, x: Tensor, g: torch.Generator, sigma: float
) -> tuple[Tensor, Tensor]:
    """The update directions ``(g₁, g₂)`` of every student for one sample each (no label noise).

    ``w1``: ``(..., R, Lh, Lx)``, ``w2``: ``(..., R, Ly, Lh)``, ``a``: ``(R, Ly, Lx)``, ``x``: ``(R, Lx, 1)``;
    the leading axes are learning rates sharing the runs' data and perturbations (drawn from ``g``).
    """
    runs, lh, lx = w1.shape[-3:]
    ly = w2.shape[-2]
    dt = w1.dtype
    h = w1 @ x
    e = w2 @ h - a @ x
    if method == "gd":
        return (w2.transpose(-1, -2) @ e) @ x.transpose(-1, -2), e @ h.transpose(-1, -2)
    if method == "np":
        xh = sigma * torch.randn(runs, lh, 1, generator=g, dtype=dt)
        xy = sigma * torch.randn(runs, ly, 1, generator=g, dtype=dt)
        delta = w2 @ xh + xy
        c = (((e * delta).sum((-2, -1)) + 0.5 * (delta * delta).sum((-2, -1))) / sigma**2)[..., None, None]
        return c * (xh @ x.transpose(-1, -2)), c * (xy @ h.transpose(-1, -2))
    if method == "wp":
        x1 = sigma * torch.randn(runs, lh, lx, generator=g, dtype=dt)
        x2 = sigma * torch.randn(runs, ly, lh, generator=g, dtype=dt)
        delta = x2 @ h + (w2 + x2) @ (x1 @ x)
        c = (((e * delta).sum((-2, -1)) + 0.5 * (delta * delta).sum((-2, -1))) / sigma**2)[..., None, None]
        return c * x1, c * x2
    raise UnigradError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def learning_times(
    method: str,
    lx: int,
    lh: int,
    ly: int,
    etas: Sequence[float],
    *,
    seeds: int,
    students: int,
    factor: float,
    sigma: float = 1e-3,
    seed: int = 0,
    max_steps: int = 10**6,
    slack: float = 2.0,
) -> dict[str, Any]:
    """Run ``seeds × students`` students at every η at once; the learning time per (η, seed).

    A seed's learning time is the first step at which its students' mean ε falls below ``1/factor`` of
    its start. Teachers, initial weights, data and perturbations are shared across the η values. The
    run stops when every (η, seed) has reached the target, when it has run ``slack`` times the best
    η's median time so far (slower ones are recorded as ``None``), or after ``max_steps``.
    """
    check_positive("seeds", seeds, integer=True)
    check_positive("students", students, integer=True)
    dt = torch.float64
    runs, lanes = seeds * students, len(etas)
    g = generator(seed, lx, lh, ly, METHODS.index(method), 0x41A7)
    a, w1, w2 = _xavier(g, runs, lx, lh, ly)
    w1, w2 = w1.expand(lanes, *w1.shape).clone(), w2.expand(lanes, *w2.shape).clone()
    eta = torch.tensor(etas, dtype=dt)[:, None].expand(lanes, runs).clone()
    start = error(w1, w2, a)
    e0 = start.view(lanes, seeds, students).mean(2)
    hit = torch.full((lanes, seeds), -1, dtype=torch.long)
    step = 0
    while step < max_steps:
        x = torch.randn(runs, lx, 1, generator=g, dtype=dt)
        g1, g2 = directions(method, w1, w2, a, x, g, sigma)
        w1.sub_(eta[..., None, None] * g1)
        w2.sub_(eta[..., None, None] * g2)
        step += 1
        per_student = error(w1, w2, a)
        bad = ~(per_student < 1e8 * start)  # diverged (or NaN): frozen far from the target
        if bool(bad.any()):
            eta[bad] = 0.0
            w1[bad], w2[bad] = 1e2, 1e2
            per_student = error(w1, w2, a)
        err = per_student.view(lanes, seeds, students).mean(2) / e0
        if race_over(hit, err, step, factor=factor, slack=slack):
            break
    return {"times": race_times(hit), "steps": step}


def sweep(
    method: str,
    lx: int,
    lh: int,
    ly: int,
    *,
    seeds: int,
    students: int,
    factor: float,
    sigma: float,
    seed: int,
    max_steps: int = 300_000,
) -> dict[str, Any]:
    """Octaves around :func:`eta_centre` (half the students), then quarter octaves around the best (all students).

    The second stage spans 0.6–1.7× the first stage's best η (three more quarter octaves beyond an edge
    that holds the best) and runs at most 3× the first stage's best time."""
    centre = eta_centre(method, lx, lh, ly)
    at = functools.partial(learning_times, method, lx, lh, ly, seeds=seeds, factor=factor, sigma=sigma)
    coarse = [centre * 2.0**k for k in range(-4, 5)]
    res = at(coarse, students=max(1, students // 2), seed=seed + 1, slack=1.25, max_steps=max_steps)
    medians = [median_time(t) for t in res["times"]]
    if all(math.isinf(v) for v in medians):
        raise UnigradError(f"hiratani: no learning rate of {method} at Lh = {lh} reached the target")
    k = min(range(len(coarse)), key=lambda i: medians[i])
    fine = [coarse[k] * 2.0 ** (j / 4) for j in range(-3, 4)]
    at = functools.partial(at, students=students, seed=seed, slack=2.0, max_steps=math.ceil(3 * medians[k]) + 100)
    res2 = at(fine)
    times = res2["times"]
    steps = res["steps"] + res2["steps"]
    medians2 = [median_time(t) for t in times]
    i = min(range(len(fine)), key=lambda j: medians2[j])
    if i in (0, len(fine) - 1):  # the best is at an edge: three more quarter octaves beyond it
        sign = 1 if i else -1
        more = [fine[i] * 2.0 ** (sign * j / 4) for j in (1, 2, 3)]
        res3 = at(more)
        steps += res3["steps"]
        order = sorted(range(len(fine) + 3), key=lambda j: ([*fine, *more])[j])
        fine = [[*fine, *more][j] for j in order]
        times = [[*times, *res3["times"]][j] for j in order]
        medians2 = [median_time(t) for t in times]
        i = min(range(len(fine)), key=lambda j: medians2[j])
    return {
        "method": method,
        "lh": lh,
        "centre": centre,
        "coarse_etas": coarse,
        "coarse_times": [None if math.isinf(v) else v for v in medians],
        "etas": fine,
        "times": times,
        "median_times": [None if math.isinf(v) else v for v in medians2],
        "best_eta": fine[i],
        "time": None if math.isinf(medians2[i]) else medians2[i],
        "steps": steps,
    }


# -- the library's estimators -------------------------------------------------------------------
def student(g: torch.Generator, lx: int, lh: int, ly: int) -> tuple[nn.Sequential, Tensor]:
    """A deep linear student (float64, Xavier–Glorot) and its teacher ``A``, drawn from ``g``."""
    a, w1, w2 = (t[0] for t in _xavier(g, 1, lx, lh, ly))
    model = nn.Sequential(
        nn.utils.skip_init(nn.Linear, lx, lh, bias=False, dtype=torch.float64),
        nn.utils.skip_init(nn.Linear, lh, ly, bias=False, dtype=torch.float64),
    )
    with torch.no_grad():
        model[0].weight.copy_(w1)
        model[1].weight.copy_(w2)
    return model, a


def row_rms(w: Tensor) -> Tensor:
    """Root-mean-square of every row of ``w`` (shape ``(rows, 1)``)."""
    return w.pow(2).mean(dim=1, keepdim=True).sqrt()


@torch.no_grad()
def normalize_rows_(model: nn.Module, targets: Sequence[Tensor]) -> None:
    """Rescale every row of every Linear layer's weight to the row RMS in ``targets`` (in place)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer, target in zip(layers, targets, strict=True):
        layer.weight.mul_(target / row_rms(layer.weight))


def library_runs(
    rules: Sequence[str],
    lx: int,
    lh: int,
    ly: int,
    etas: dict[str, float],
    *,
    runs: int,
    steps: int,
    label_noise: float = 0.0,
    sigma: float = 1e-3,
    seed: int = 0,
    every: int = 1,
    factor: float | None = None,
) -> dict[str, Any]:
    """Train ``runs`` students per rule with the library's estimators and SGD, in lockstep.

    ``rules`` are ``"gd"``, ``"np"``, ``"wp"``, ``"npwn"`` or ``"gdwn"`` (NP or GD, then
    :func:`normalize_rows_` after each step), optionally with a ``"_tag"`` suffix to run a rule twice
    (at different rates in ``etas``, which is keyed by the full name). Run ``r`` of every rule shares
    one teacher, initial weights and data stream. Records, per run, ``ε``, ``α = ‖W₁‖²/Lx`` and
    ``β = ‖W₂‖²/Ly`` every ``every`` steps. A run whose ε exceeds 10⁶ (or is not finite) has diverged:
    it stops and records ``inf`` from then on. With ``factor``, a rule stops once the mean ε of its runs
    has fallen below ``1/factor`` of its start, and that step is reported as the rule's learning time.
    """
    state = [_library_student(rule, r, lx, lh, ly, etas[rule], sigma, seed) for rule in rules for r in range(runs)]
    curves = {
        rule: {"steps": [], **{key: [[] for _ in range(runs)] for key in ("error", "alpha", "beta")}} for rule in rules
    }

    def record(step: int, rule: str) -> float:
        curves[rule]["steps"].append(step)
        for s in state:
            if s["rule"] == rule:
                for key, v in zip(("error", "alpha", "beta"), _measure(s, lx, ly)):
                    curves[rule][key][s["run"]].append(v)
        return statistics.fmean(curves[rule]["error"][r][-1] for r in range(runs))

    starts = {rule: record(0, rule) for rule in rules}
    done: dict[str, int | None] = dict.fromkeys(rules)
    began = time.perf_counter()
    for step in range(1, steps + 1):
        for s in state:
            if s["diverged"] is None and done[s["rule"]] is None:
                _library_step(s, lx, ly, label_noise, step)
        if step % every == 0 or step == steps:
            for rule in rules:
                if done[rule] is None:
                    mean = record(step, rule)
                    if factor is not None and mean <= starts[rule] / factor:
                        done[rule] = step
        if factor is not None and all(v is not None for v in done.values()):
            break
    diverged = {rule: [s["diverged"] for s in state if s["rule"] == rule] for rule in rules}
    return {"curves": curves, "times": done, "diverged": diverged, "seconds": time.perf_counter() - began}


def _library_student(
    rule: str, r: int, lx: int, lh: int, ly: int, eta: float, sigma: float, seed: int
) -> dict[str, Any]:
    """Run ``r`` of ``rule`` in :func:`library_runs`: its data stream, student, teacher, estimator and SGD."""
    g = generator(seed, r, lx, lh, ly, 0x5EED)
    model, a = student(g, lx, lh, ly)
    base = rule.split("_")[0]
    name = LIBRARY[base.removesuffix("wn")]
    options = {} if name == "backprop" else {"sigma": sigma, "probes": 1}
    est = make_estimator(name, seed=seed * 1000 + r, **options)
    rms = [row_rms(m.weight.detach()).clone() for m in model if isinstance(m, nn.Linear)]
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    return {
        "rule": rule,
        "normalize": base.endswith("wn"),
        "run": r,
        "g": g,
        "model": model,
        "a": a,
        "est": est,
        "opt": opt,
        "rms": rms,
        "diverged": None,
    }


def _measure(s: dict[str, Any], lx: int, ly: int) -> tuple[float, float, float]:
    """``(ε, α, β)`` of one run of :func:`library_runs` (all ``inf`` once it has diverged)."""
    if s["diverged"] is not None:
        return math.inf, math.inf, math.inf
    w1, w2 = s["model"][0].weight.detach(), s["model"][1].weight.detach()
    return float(error(w1, w2, s["a"])), float(w1.pow(2).sum()) / lx, float(w2.pow(2).sum()) / ly


def _library_step(s: dict[str, Any], lx: int, ly: int, label_noise: float, step: int) -> None:
    """One online SGD step of one run (then row normalization for the ``wn`` rules); marks divergence."""
    dt = torch.float64
    x = torch.randn(1, lx, generator=s["g"], dtype=dt)
    y = x @ s["a"].T
    if label_noise:
        y = y + label_noise * torch.randn(1, ly, generator=s["g"], dtype=dt)
    s["opt"].zero_grad()
    s["est"].estimate(s["model"], supervised(half_squared_error, x, y))
    s["opt"].step()
    if s["normalize"]:
        normalize_rows_(s["model"], s["rms"])
    if not _measure(s, lx, ly)[0] < 1e6:
        s["diverged"] = step


# -- part (b): analysis of the mismatch runs ----------------------------------------------------
def stationary_end(err: Sequence[float], start: int, width: int) -> int:
    """The last record before the smoothed error first exceeds 3× its lowest value since ``start``."""
    sm = smooth(err, width)
    low = math.inf
    for i in range(start, len(sm)):
        if not math.isfinite(sm[i]) or sm[i] > 3.0 * low:
            return max(start, i - width)
        low = min(low, sm[i])
    return len(sm) - 1


def diffusion_check(
    curve: dict[str, Any], *, eta: float, lx: int, lh: int, ly: int, noise: float, start: int
) -> dict[str, Any]:
    """NP's measured growth of ``α`` against the diffusion term ``η²LhLy(1+β)(Lxε + σ_t²)`` integrated along the run.

    Per run, the window runs from step ``start`` to the last record before its (smoothed) error first
    exceeds 3× its lowest value: the stationary phase, before the instability. Returns the growth of
    ``α`` summed over runs, measured and predicted (from each run's recorded ``ε`` and ``β``).
    """
    steps = curve["steps"]
    i0 = next((i for i, s in enumerate(steps) if s >= start), len(steps) - 1)
    width = max(1, len(steps) // 40)
    measured = predicted = 0.0
    windows = []
    for err, alpha, beta in zip(curve["error"], curve["alpha"], curve["beta"]):
        i1 = stationary_end(err, i0, width)
        windows.append([steps[i0], steps[i1]])
        measured += alpha[i1] - alpha[i0]
        for i in range(i0, i1):
            rate = eta * eta * lh * ly * (1.0 + beta[i]) * (lx * err[i] + noise * noise)
            predicted += rate * (steps[i + 1] - steps[i])
    ok = predicted > 0 and abs(measured - predicted) <= TOLERANCE * predicted
    return {"windows": windows, "measured": measured, "predicted": predicted, "ok": ok}


def stability(curve: dict[str, Any], diverged: Sequence[int | None]) -> dict[str, Any]:
    """Lowest and final median error (moving averages over a tenth of the run), weight-norm growth, instability.

    A rule is unstable when a run diverged or its final median error exceeds twice its lowest.
    """
    err = median_curve(curve["error"])
    w = max(1, len(err) // 10)
    sm = smooth(err, w)[w - 1 :]
    finite = [e for e in sm if math.isfinite(e)]
    final = sm[-1]
    low = min(finite) if finite else math.inf
    alpha = [statistics.fmean(v) for v in zip(*curve["alpha"])]
    alive = [v for v in alpha if math.isfinite(v)]
    return {
        "min_error": low,
        "final_error": final,
        "final_over_min": final / low if 0 < low < math.inf else math.inf,
        "alpha_start": alpha[0],
        "alpha_end": alive[-1] if alive else math.inf,
        "alpha_growth": alive[-1] / alpha[0] if alive else math.inf,
        "diverged_runs": sum(d is not None for d in diverged),
        "first_divergence": min((d for d in diverged if d is not None), default=None),
        "unstable": any(d is not None for d in diverged) or final > 2.0 * low,
    }


# -- the experiment -----------------------------------------------------------------------------
def run(
    out: str | Path,
    *,
    lx: int = 8,
    ly: int = 2,
    widths: Sequence[int] = (16, 32, 64, 128, 256),
    wp_widths: Sequence[int] = (16, 32, 64, 128, 256),
    seeds: int = 3,
    students: int = 16,
    factor: float = 100.0,
    sigma: float = 1e-3,
    mismatch_width: int = 64,
    label_noise: float = 0.5,
    mismatch_eta: float = 0.002,
    mismatch_steps: int = 12000,
    library: bool = True,
    progress: Progress = None,
) -> dict[str, Any]:
    """Part (a), the width sweep, and part (b), the mismatch runs; writes the figure, JSON and report."""
    for name, values in (("widths", widths), ("wp_widths", wp_widths)):
        check_positive_each(name, values, integer=True)
    if len(widths) < 2:
        raise UnigradError("option widths needs at least two widths to fit an exponent")
    check_positive_all(integer=True, lx=lx, ly=ly, seeds=seeds, students=students, mismatch_width=mismatch_width,
                       mismatch_steps=mismatch_steps)  # fmt: skip
    check_positive_all(sigma=sigma, label_noise=label_noise, mismatch_eta=mismatch_eta)
    check_factor(factor)
    out = output_dir(out)
    began = time.perf_counter()
    shape = {"lx": lx, "ly": ly, "factor": factor, "sigma": sigma}
    sweeps = {
        method: widths_sweep(method, wp_widths if method == "wp" else widths, seeds, students, progress, **shape)
        for method in METHODS
    }
    checks = library_checks(sweeps, seeds, progress, **shape) if library else []
    if progress:
        progress(f"hiratani (b): GD, NP, NP + weight norm, Lh={mismatch_width}, σ_t={label_noise:g}")
    mm = mismatch(lx, ly, mismatch_width, label_noise, mismatch_eta, mismatch_steps, seeds=seeds, sigma=sigma)
    results = {
        "lx": lx,
        "ly": ly,
        "factor": factor,
        "widths": {"a": {m: [r["lh"] for r in rows] for m, rows in sweeps.items()}},
        "sweeps": sweeps,
        "fits": width_fits(sweeps),
        "library": checks,
        "mismatch": mm,
        "settings": {"seeds": seeds, "students": students, "sigma": sigma, "seconds": time.perf_counter() - began},
    }
    finish(out, rounded(results), report, plot, "hiratani.png")
    return results


def widths_sweep(
    method: str,
    widths: Sequence[int],
    seeds: int,
    students: int,
    progress: Progress,
    *,
    lx: int,
    ly: int,
    factor: float,
    sigma: float,
) -> list[dict[str, Any]]:
    """Part (a) for one method: :func:`sweep` at every width."""
    rows = []
    for lh in widths:
        if progress:
            progress(f"hiratani (a): {method} Lh={lh}")
        rows.append(sweep(method, lx, lh, ly, seeds=seeds, students=students, factor=factor, sigma=sigma, seed=3))
    return rows


def width_fits(sweeps: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The exponent of each method's learning time in ``Lh`` (least squares on log–log) against theory."""
    fits = {}
    for method, rows in sweeps.items():
        pts = [(r["lh"], r["time"]) for r in rows if r["time"] is not None]
        if len(pts) >= 2:
            slope, _ = fit_line([math.log(p[0]) for p in pts], [math.log(p[1]) for p in pts])
            theory = THEORY_EXPONENT[method]
            ok = abs(slope - theory) <= TOLERANCE * max(1.0, abs(theory))
            fits[method] = {"exponent": slope, "theory": theory, "ok": ok, "widths": [p[0] for p in pts]}
    return fits


def library_checks(
    sweeps: dict[str, list[dict[str, Any]]],
    seeds: int,
    progress: Progress,
    *,
    lx: int,
    ly: int,
    factor: float,
    sigma: float,
) -> list[dict[str, Any]]:
    """The library's estimators at each width's best η (WP at the smallest width only): their learning times."""
    checks = []
    for method in METHODS:
        for r in sweeps[method][: 1 if method == "wp" else None]:
            if r["time"] is None:
                continue
            if progress:
                progress(f"hiratani (a): library {LIBRARY[method]} Lh={r['lh']}")
            res = library_runs(
                [method],
                lx,
                r["lh"],
                ly,
                {method: r["best_eta"]},
                runs=seeds,
                steps=math.ceil(4 * r["time"]),
                sigma=sigma,
                seed=5,
                every=1,
                factor=factor,
            )
            checks.append(
                {
                    "method": method,
                    "estimator": LIBRARY[method],
                    "lh": r["lh"],
                    "eta": r["best_eta"],
                    "time": res["times"][method],
                    "batched_time": r["time"],
                    "seconds": res["seconds"],
                }
            )
    return checks


def mismatch(
    lx: int, ly: int, lh: int, label_noise: float, eta: float, steps: int, *, seeds: int, sigma: float
) -> dict[str, Any]:
    """Part (b): GD, NP and their weight-normalized forms (NP + WN also at η/2) under label noise; stability,
    NP's diffusion check and the claims of [1]."""
    etas = {"gd": eta, "np": eta, "npwn": eta, "gdwn": eta}
    etas["npwn_half"] = eta / 2
    rules = tuple(etas)
    every = max(1, steps // 400)
    mm = library_runs(
        rules, lx, lh, ly, etas, runs=seeds, steps=steps, label_noise=label_noise, sigma=sigma, seed=9, every=every
    )
    stab = {rule: stability(mm["curves"][rule], mm["diverged"][rule]) for rule in rules}
    diffusion = diffusion_check(mm["curves"]["np"], eta=eta, lx=lx, lh=lh, ly=ly, noise=label_noise, start=steps // 20)
    claims = {
        "np_norm_grows": stab["np"]["alpha_growth"] > 1.5,
        "np_unstable": stab["np"]["unstable"],
        "npwn_stable": not stab["npwn"]["unstable"],
        "gd_stable": not stab["gd"]["unstable"],
        "npwn_above_gd": stab["npwn"]["final_error"] > 1.25 * stab["gd"]["final_error"],
        "npwn_excess_is_bias": stab["npwn_half"]["final_error"] > 0.75 * stab["npwn"]["final_error"],
        "gdwn_stable": not stab["gdwn"]["unstable"],
    }
    return {
        "lh": lh,
        "label_noise": label_noise,
        "eta": eta,
        "steps": steps,
        "curves": mm["curves"],
        "diverged": mm["diverged"],
        "stability": stab,
        "diffusion": diffusion,
        "claims": claims,
        "seconds": mm["seconds"],
    }


@dataclass(frozen=True)
class Config(_common.Config):
    """Options of ``unigrad experiment hiratani``: ``students`` (teachers per seed: 16; quick 4) and ``library``
    (also check the library estimators: yes). A quick run (at most 2 seeds, widths 8 and 16, F = 10, a short
    mismatch run) is a smoke test, its numbers are not results."""

    students: int | None = None
    library: bool = True

    NAME = "hiratani"
    FULL: ClassVar[Settings] = {"students": 16}
    QUICK: ClassVar[Settings] = {
        "lx": 4,
        "widths": (8, 16),
        "wp_widths": (8, 16),
        "factor": 10.0,
        "mismatch_width": 16,
        "mismatch_steps": 200,
        "mismatch_eta": 0.01,
        "students": 4,
    }
    QUICK_SEEDS = 2


run_experiment = runner(Config, run)
