"""Werfel, Xie & Seung (2005): the learning time of GD, NP and WP on a linear student–teacher network.

Setup. A linear student ``y = W x`` (``M`` outputs, ``N`` inputs, no bias) learns a teacher ``y* = W* x``
online: one fresh sample ``x ~ N(0, I_N)`` per step, loss ``L = ½‖W x − W* x‖²``. The teacher's entries
are ``N(0, 1/N)`` and the student starts at ``W = 0``. Writing ``D = W − W*``, the generalization error
(the expected loss) is ``E = ½‖D‖_F²``, computed exactly. Three rules, each followed by ``W ← W − η g``:

=======  ====================  ===============================================================
method   library estimator     direction ``g`` for one sample (``e = D x``)
=======  ====================  ===============================================================
GD       ``backprop``          ``e xᵀ``
NP       ``np`` (q = 1)        ``(δL/σ²) ξ xᵀ``, ``ξ ~ N(0, σ² I_M)`` added to the output,
                               ``δL = e·ξ + ½‖ξ‖²``
WP       ``wp`` (q = 1)        ``(δL/σ²) Ξ``, ``Ξ ~ N(0, σ² I_{M×N})`` added to ``W``,
                               ``δL = e·Ξx + ½‖Ξx‖²``
=======  ====================  ===============================================================

Theory (derived here for this setup, Gaussian inputs and Gaussian perturbations; [1] states the
leading order). Each rule is unbiased (``E[g] = e xᵀ``, exactly here since the loss is quadratic) and
``E‖g‖² = K‖D‖²`` with ``K_GD = N + 2``, ``K_NP = (M + 2)(N + 2)`` and ``K_WP = (MN + 2)(N + 2)`` in the
limit σ → 0 (``E[(a·u)² ‖u‖²] = (d + 2)‖a‖²`` for ``u ~ N(0, I_d)``; the σ-terms only add a floor of
order σ²). By isotropy the mean error then obeys exactly ``E[E_{t+1}] = (1 − 2η + Kη²) E[E_t]``: the
learning curve is exponential, the optimal rate is ``η* = 1/K`` and the learning time to reduce the
mean error by a factor ``F`` is ``T(η) = ln F / (−ln(1 − 2η + Kη²))``, about ``K ln F`` at ``η*``.
At each method's optimum

    T_NP / T_GD ≈ K_NP / K_GD = M + 2,        T_WP / T_GD ≈ K_WP / K_GD = MN + 2,

which is the statement of [1]'s abstract ("NP is slower than direct gradient descent by a factor equal
to the number of output units; WP is slower still by an additional factor equal to the number of input
units") for large ``M`` and ``N``; the ``+ 2`` comes from the fourth moment of Gaussian noise.

Measurement. For every configuration and method, a sweep over ``η = η*·2^{k/4}`` (``k = −2 … 2``)
runs ``seeds × students`` independent students (each with its own teacher, data and noise; the same
streams are shared across the η values of a sweep). For each seed the learning time is the first step
at which its students' mean error ``⟨E_t⟩`` falls below ``⟨E_0⟩ / F`` (the learning curve of [1] is
that of the mean error); the figure reported is the median over seeds at the η with the smallest
median. Sweeps over ``M`` at fixed ``N`` and over ``N`` at fixed ``M`` give the ratios against ``M`` and
``M·N``.

The sweep runs a batched, exact form of the three updates (the per-step cost of a library estimator is
about a millisecond, and a sweep needs ~10⁷ student-steps). The same updates are then run through the
library's estimators themselves (``backprop``, ``np``, ``wp`` with ``torch.optim.SGD`` on an
``nn.Linear``) at the measured optimal η for the ``M`` sweep, and reported next to the batched figures.

Options of :func:`run_experiment` (``unigrad experiment werfel``): ``seeds`` (3), ``students`` per seed
(16), ``factor`` F (100), ``library`` (run the library's estimators too, default on); :func:`run` also
takes the swept values ``m_values`` (1, 2, 4, 8, 16) at ``n_fixed`` (10) and ``n_values`` (5, 10, 20, 40)
at ``m_fixed`` (4), and σ (10⁻³). ``quick`` shrinks everything to a smoke test (M ∈ {1, 3}, N ∈ {3, 6},
F = 10, few students: its numbers are not results).

Outputs (in ``out``): ``werfel.png``, ``results.json`` and ``report.md``.

References:
    [1] J. Werfel, X. Xie, H. S. Seung, "Learning Curves for Stochastic Gradient Descent in Linear
        Feedforward Networks", Neural Computation 17(12):2699–2718, 2005 (NIPS 2003 version: "the
        maximum learning rate for the stochastic methods scales inversely with the first power of the
        dimensionality of the noise injected").
"""

from __future__ import annotations

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
    output_dir,
    runner,
)
from unigrad.experiments.werfel_report import plot, report
from unigrad.experiments.werfel_theory import METHODS, TOLERANCE, optimal_eta, theory_time, within
from unigrad.registry import make_estimator

LIBRARY = {"gd": ("backprop", {}), "np": ("np", {"probes": 1}), "wp": ("wp", {"probes": 1})}
GRID = tuple(2.0 ** (k / 4) for k in range(-2, 3))
"""Learning rates of a sweep, in units of the theoretical optimum η* = 1/K."""


# -- batched simulation -------------------------------------------------------------------------
def direction(method: str, d: Tensor, x: Tensor, g: torch.Generator, sigma: float) -> Tensor:
    """The update direction of every student for one sample each.

    ``d = W − W*`` has shape ``(..., R, M, N)`` (leading axes: learning rates sharing the runs' data and
    noise), ``x`` has shape ``(R, N)``; the perturbations (one per run) are drawn from ``g``. GD:
    ``e xᵀ``; NP: ``(δL/σ²) ξ xᵀ``; WP: ``(δL/σ²) Ξ``, with the exact ``δL`` of the quadratic loss.
    """
    runs, m, n = d.shape[-3:]
    e = (d @ x[:, :, None]).squeeze(-1)  # (..., R, M)
    if method == "gd":
        return e[..., :, None] * x[:, None, :]
    if method == "np":
        xi = sigma * torch.randn(runs, m, generator=g, dtype=d.dtype)
        dl = (e * xi).sum(-1) + 0.5 * (xi * xi).sum(-1)
        return (dl / sigma**2)[..., None, None] * (xi[:, :, None] * x[:, None, :])
    if method == "wp":
        xi = sigma * torch.randn(runs, m, n, generator=g, dtype=d.dtype)
        ex = (xi @ x[:, :, None]).squeeze(-1)
        dl = (e * ex).sum(-1) + 0.5 * (ex * ex).sum(-1)
        return (dl / sigma**2)[..., None, None] * xi
    raise UnigradError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def learning_times(
    method: str,
    m: int,
    n: int,
    etas: Sequence[float],
    *,
    seeds: int,
    students: int,
    factor: float,
    sigma: float = 1e-3,
    seed: int = 0,
    max_steps: int | None = None,
    slack: float = 2.0,
    record: bool = False,
) -> dict[str, Any]:
    """Run ``seeds × students`` students at every η of ``etas`` at once; the learning time per (η, seed).

    Each seed's learning time is the first step at which its students' mean error falls below
    ``1/factor`` of its start. The run stops when every (η, seed) has reached it, when it has run
    ``slack`` times the best η's median time (the slower ones are then recorded as not reached,
    ``None``), or after ``max_steps`` (default: 6× the theoretical optimum's time).
    Returns ``{"times": [[t or None per seed] per η], "steps": steps run, "curves": mean error per η
    (relative to its start, only with ``record``)}``.
    """
    check_positive("seeds", seeds, integer=True)
    check_positive("students", students, integer=True)
    dtype = torch.float64
    runs = seeds * students
    lanes = len(etas)
    g = generator(seed, m, n, METHODS.index(method), 0x3E4F)
    teacher = torch.randn(runs, m, n, generator=g, dtype=dtype) / math.sqrt(n)
    d = (-teacher).expand(lanes, runs, m, n).clone()  # the student starts at W = 0
    eta = torch.tensor(etas, dtype=dtype)[:, None].expand(lanes, runs).clone()
    start = 0.5 * (d * d).sum((-2, -1))
    e0 = start.view(lanes, seeds, students).mean(2)
    hit = torch.full((lanes, seeds), -1, dtype=torch.long)
    limit = max_steps or math.ceil(6 * theory_time(method, m, n, optimal_eta(method, m, n), factor))
    curves: list[Tensor] = [torch.ones(lanes, dtype=dtype)]
    step = 0
    while step < limit:
        x = torch.randn(runs, n, generator=g, dtype=dtype)
        d.sub_(eta[..., None, None] * direction(method, d, x, g, sigma))
        step += 1
        per_student = 0.5 * (d * d).sum((-2, -1))
        bad = ~(per_student < 1e8 * start)  # diverged (or NaN): frozen far from the target, out of the race
        if bool(bad.any()):
            eta[bad] = 0.0
            d[bad] = 1e4
            per_student = 0.5 * (d * d).sum((-2, -1))
        err = per_student.view(lanes, seeds, students).mean(2) / e0
        if record:
            curves.append(err.mean(1))
        if race_over(hit, err, step, factor=factor, slack=slack):
            break
    out: dict[str, Any] = {"times": race_times(hit), "steps": step}
    if record:
        out["curves"] = torch.stack(curves, 1).tolist()
    return out


def median_time(values: Sequence[int | None]) -> float:
    """Median, counting a run that did not reach the target as infinitely long."""
    return statistics.median(math.inf if v is None else float(v) for v in values)


def race_times(hit: Tensor) -> list[list[int | None]]:
    """The learning times of a race, per η and seed, from ``hit`` (the step it was reached, ``-1``: not)."""
    return [[int(v) if v >= 0 else None for v in row] for row in hit]


def race_over(hit: Tensor, err: Tensor, step: int, *, factor: float, slack: float) -> bool:
    """Record in ``hit`` the (η, seed) lanes whose mean error ``err`` (relative to its start) is at most
    ``1/factor`` after ``step``; whether the race is over: every lane has reached it, or (checked every 8 steps)
    ``step`` is ``slack`` times the best η's median time (the slower lanes then count as not reached)."""
    hit[(hit < 0) & (err <= 1.0 / factor)] = step
    if bool((hit >= 0).all()):
        return True
    if step % 8 == 0:
        best = min(median_time(row) for row in race_times(hit))
        return best < math.inf and step >= slack * best
    return False


def sweep(
    method: str, m: int, n: int, *, seeds: int, students: int, factor: float, sigma: float, seed: int, grid=GRID
) -> dict[str, Any]:
    """Learning time against η around the theoretical optimum; the best η and its time (median of seeds)."""
    eta_star = optimal_eta(method, m, n)
    etas = [c * eta_star for c in grid]
    res = learning_times(
        method, m, n, etas, seeds=seeds, students=students, factor=factor, sigma=sigma, seed=seed, record=True
    )
    medians = [median_time(t) for t in res["times"]]
    best = min(range(len(etas)), key=lambda i: medians[i])
    curve = res["curves"][best]
    marks = torch.logspace(0, math.log10(len(curve)), 160).tolist()
    keep = sorted({0} | {min(len(curve) - 1, round(v)) for v in marks})
    reached = [t for t in res["times"][best] if t is not None]
    return {
        "method": method,
        "m": m,
        "n": n,
        "etas": etas,
        "eta_theory": eta_star,
        "times": res["times"],
        "median_times": [None if math.isinf(v) else v for v in medians],
        "best_eta": etas[best],
        "time": None if math.isinf(medians[best]) else medians[best],
        "time_range": [min(reached), max(reached)] if reached else None,
        "theory_time": theory_time(method, m, n, eta_star, factor),
        "theory_times": [theory_time(method, m, n, eta, factor) for eta in etas],
        "curve_steps": keep,
        "curve": [curve[k] for k in keep],
        "steps": res["steps"],
    }


# -- the library's estimators -------------------------------------------------------------------
def half_squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample ``½‖y − y*‖²`` (summed over outputs, as in the theory)."""
    return 0.5 * ((outputs - targets) ** 2).sum(dim=1)


half_squared_error.rowwise = True  # type: ignore[attr-defined]  # each sample's loss is its own


def library_time(
    method: str, m: int, n: int, eta: float, *, runs: int, factor: float, sigma: float, seed: int, max_steps: int
) -> dict[str, Any]:
    """The learning time of the library estimator ``LIBRARY[method]`` with SGD at ``eta`` on ``runs`` students.

    The students run in lockstep; the learning time is the first step at which their mean error falls
    below ``1/factor`` of its start (``None`` within ``max_steps`` if it does not).
    """
    name, options = LIBRARY[method]
    if method != "gd":
        options = {**options, "sigma": sigma}
    dtype = torch.float64
    students = []
    for r in range(runs):
        g = generator(seed, r, m, n, 0x11B)
        teacher = torch.randn(m, n, generator=g, dtype=dtype) / math.sqrt(n)
        model = nn.utils.skip_init(nn.Linear, n, m, bias=False, dtype=dtype)
        with torch.no_grad():
            model.weight.zero_()
        est = make_estimator(name, seed=seed * 1000 + r, **options)
        students.append((g, teacher, model, est, torch.optim.SGD(model.parameters(), lr=eta)))

    def error() -> float:
        return sum(0.5 * float(((s[2].weight.detach() - s[1]) ** 2).sum()) for s in students) / runs

    e0 = error()
    start = time.perf_counter()
    reached = None
    for step in range(1, max_steps + 1):
        for g, teacher, model, est, opt in students:
            x = torch.randn(1, n, generator=g, dtype=dtype)
            opt.zero_grad()
            est.estimate(model, supervised(half_squared_error, x, x @ teacher.T))
            opt.step()
        if error() <= e0 / factor:
            reached = step
            break
    return {
        "method": method,
        "estimator": name,
        "m": m,
        "n": n,
        "eta": eta,
        "runs": runs,
        "time": reached,
        "seconds": time.perf_counter() - start,
    }


# -- the experiment -----------------------------------------------------------------------------
def run(
    out: str | Path,
    *,
    m_values: Sequence[int] = (1, 2, 4, 8, 16),
    n_fixed: int = 10,
    n_values: Sequence[int] = (5, 10, 20, 40),
    m_fixed: int = 4,
    seeds: int = 3,
    students: int = 16,
    factor: float = 100.0,
    sigma: float = 1e-3,
    library_runs: int | None = None,
    library: bool = True,
    progress: Progress = None,
) -> dict[str, Any]:
    """Sweep M at fixed N and N at fixed M; write ``werfel.png``, ``results.json`` and ``report.md``."""
    for name, values in (("m_values", m_values), ("n_values", n_values)):
        if not values:
            raise UnigradError(f"option {name} needs at least one value")
        check_positive_each(name, values, integer=True)
    check_positive_all(integer=True, n_fixed=n_fixed, m_fixed=m_fixed, seeds=seeds, students=students)
    check_positive("sigma", sigma)
    check_factor(factor)
    out = output_dir(out)
    start = time.perf_counter()
    configs = sorted({(m, n_fixed) for m in m_values} | {(m_fixed, n) for n in n_values})
    sweeps: dict[str, dict[str, Any]] = {}
    for m, n in configs:
        for method in METHODS:
            if progress:
                progress(f"werfel: {method} M={m} N={n}")
            sweeps[f"{method}:{m}:{n}"] = sweep(
                method, m, n, seeds=seeds, students=students, factor=factor, sigma=sigma, seed=7
            )
    lib: list[dict[str, Any]] = []
    runs, budget = library_runs or seeds, {"factor": factor, "sigma": sigma, "seed": 11}
    if library:
        for m in m_values:
            for method in METHODS:
                s = sweeps[f"{method}:{m}:{n_fixed}"]
                if progress:
                    progress(f"werfel: library {LIBRARY[method][0]} M={m} N={n_fixed}")
                steps = math.ceil(4 * s["theory_time"])
                lib.append(library_time(method, m, n_fixed, s["best_eta"], runs=runs, **budget, max_steps=steps))
    results = summarize(
        sweeps, lib, m_values=m_values, n_fixed=n_fixed, n_values=n_values, m_fixed=m_fixed, factor=factor
    )
    results["settings"] = {
        "seeds": seeds,
        "students": students,
        "factor": factor,
        "sigma": sigma,
        "grid": list(GRID),
        "library_runs": library_runs or seeds,
        "seconds": time.perf_counter() - start,
    }
    finish(out, results, report, plot, "werfel.png")
    return results


def summarize(
    sweeps: dict[str, dict[str, Any]],
    lib: list[dict[str, Any]],
    *,
    m_values: Sequence[int],
    n_fixed: int,
    n_values: Sequence[int],
    m_fixed: int,
    factor: float,
) -> dict[str, Any]:
    """Ratios and fits of the measured optimal learning times against theory."""
    rows = [_ratios(sweeps, m, n) for m, n in sorted({(s["m"], s["n"]) for s in sweeps.values()})]
    m_rows = [r for r in rows if r["n"] == n_fixed and r["m"] in m_values]
    n_rows = [r for r in rows if r["m"] == m_fixed and r["n"] in n_values]
    candidates = (
        ("np_gd_vs_m", m_rows, "np", f"d(T_NP/T_GD)/dM at N = {n_fixed}", "m", False, 1.0),
        ("np_gd_vs_n", n_rows, "np", f"exponent of T_NP/T_GD in N at M = {m_fixed}", "n", True, 0.0),
        ("wp_gd_vs_mn", rows, "wp", "d(T_WP/T_GD)/d(MN), all configurations", "mn", False, 1.0),
        ("wp_gd_vs_n", n_rows, "wp", f"exponent of T_WP/T_GD in N at M = {m_fixed}", "n", True, 1.0),
        ("wp_gd_vs_m", m_rows, "wp", f"exponent of T_WP/T_GD in M at N = {n_fixed}", "m", True, 1.0),
    )
    fits = {}
    for key, some, method, what, axis, log, leading in candidates:
        if len(some) >= 2 and all(r[f"{method}_gd"] is not None for r in some):
            fits[key] = _ratio_fit(some, method, what, axis, log, leading)
    lib_rows = []
    for entry in lib:
        s = sweeps[f"{entry['method']}:{entry['m']}:{entry['n']}"]
        th = theory_time(entry["method"], entry["m"], entry["n"], entry["eta"], factor)
        lib_rows.append({**entry, "batched_time": s["time"], "theory_time": th, "ok": within(entry["time"], th)})
    return {
        "factor": factor,
        "m_values": list(m_values),
        "n_fixed": n_fixed,
        "n_values": list(n_values),
        "m_fixed": m_fixed,
        "rows": rows,
        "fits": fits,
        "library": lib_rows,
        "sweeps": sweeps,
    }


def _ratios(sweeps: dict[str, dict[str, Any]], m: int, n: int) -> dict[str, Any]:
    """One configuration's row: measured and theoretical times, NP/GD and WP/GD against theory, η ratios."""
    best = {k: sweeps[f"{k}:{m}:{n}"] for k in METHODS}
    t = {k: best[k]["time"] for k in METHODS}
    th = {k: best[k]["theory_time"] for k in METHODS}
    row: dict[str, Any] = {"m": m, "n": n, "times": t, "theory_times": th}
    for k in ("np", "wp"):
        ratio = None if t[k] is None or t["gd"] is None else t[k] / t["gd"]
        row[f"{k}_gd"] = ratio
        row[f"{k}_gd_theory"] = th[k] / th["gd"]
        row[f"{k}_gd_leading"] = m if k == "np" else m * n
        row[f"{k}_gd_ok"] = within(ratio, th[k] / th["gd"])
    row["time_ok"] = {k: within(t[k], th[k]) for k in METHODS}
    row["eta_ratio"] = {k: best[k]["best_eta"] / best[k]["eta_theory"] for k in METHODS}
    return row


def _ratio_fit(
    rows: list[dict[str, Any]], method: str, what: str, axis: str, log: bool, leading: float
) -> dict[str, Any]:
    """The least-squares slope of ``method``'s slowdown against ``axis`` (``m``, ``n`` or ``mn``; log–log with
    ``log``), measured and in theory. A zero leading exponent is judged within TOLERANCE in absolute terms."""

    def scale(v: float) -> float:
        return math.log(v) if log else float(v)

    xs = [scale(r["m"] * r["n"] if axis == "mn" else r[axis]) for r in rows]
    fit: dict[str, Any] = {
        "what": what,
        "measured": fit_line(xs, [scale(r[f"{method}_gd"]) for r in rows])[0],
        "theory": fit_line(xs, [scale(r[f"{method}_gd_theory"]) for r in rows])[0],
        "leading": leading,
    }
    if log and leading == 0.0:
        fit["absolute"] = True
        fit["ok"] = abs(fit["measured"] - fit["theory"]) <= TOLERANCE
    else:
        fit["ok"] = within(fit["measured"], fit["theory"])
    return fit


@dataclass(frozen=True)
class Config(_common.Config):
    """Options of ``unigrad experiment werfel``: ``students`` (teachers per seed: 16; quick 4), ``factor`` (the
    error reduction F: 100; quick 10) and ``library`` (also time the library estimators: yes). A quick run
    (at most 2 seeds, M = 1 and 3 at N = 4, N = 3 and 6 at M = 2, one library run) is a smoke test, its numbers
    are not results."""

    students: int | None = None
    factor: float | None = None
    library: bool = True

    NAME = "werfel"
    FULL: ClassVar[Settings] = {"students": 16, "factor": 100.0}
    QUICK: ClassVar[Settings] = {"m_values": (1, 3), "n_fixed": 4, "n_values": (3, 6), "m_fixed": 2, "library_runs": 1,
             "students": 4, "factor": 10.0}  # fmt: skip
    QUICK_SEEDS = 2


run_experiment = runner(Config, run)
