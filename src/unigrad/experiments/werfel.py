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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.objective import supervised
from unigrad.core.rng import generator
from unigrad.experiments._common import fit_line, pyplot, save_figure, write_report, write_results
from unigrad.registry import make_estimator

METHODS = ("gd", "np", "wp")
LIBRARY = {"gd": ("backprop", {}), "np": ("np", {"probes": 1}), "wp": ("wp", {"probes": 1})}
LABELS = {"gd": "GD (backprop)", "np": "NP", "wp": "WP"}
COLORS = {"gd": "tab:blue", "np": "tab:orange", "wp": "tab:green"}
GRID = tuple(2.0 ** (k / 4) for k in range(-2, 3))
"""Learning rates of a sweep, in units of the theoretical optimum η* = 1/K."""
TOLERANCE = 0.25
"""A measured figure agrees with theory when it is within this relative distance of it."""


# -- theory ---------------------------------------------------------------------------------------
def theory_k(method: str, m: int, n: int) -> float:
    """``K`` in ``E‖g‖² = K‖D‖²``: N + 2 (GD), (M + 2)(N + 2) (NP), (MN + 2)(N + 2) (WP)."""
    if method == "gd":
        return float(n + 2)
    if method == "np":
        return float((m + 2) * (n + 2))
    if method == "wp":
        return float((m * n + 2) * (n + 2))
    raise UnigradError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def theory_rate(method: str, m: int, n: int, eta: float) -> float:
    """The mean error's contraction per step, ``1 − 2η + Kη²``."""
    return 1.0 - 2.0 * eta + theory_k(method, m, n) * eta * eta


def theory_time(method: str, m: int, n: int, eta: float, factor: float) -> float:
    """Steps for the mean error to fall by ``factor``: ``ln F / (−ln(1 − 2η + Kη²))`` (inf if it does not)."""
    r = theory_rate(method, m, n, eta)
    return math.log(factor) / -math.log(r) if 0.0 < r < 1.0 else math.inf


def optimal_eta(method: str, m: int, n: int) -> float:
    """The learning rate that maximises the mean error's decay, ``1/K``."""
    return 1.0 / theory_k(method, m, n)


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
        hit[(hit < 0) & (err <= 1.0 / factor)] = step
        if bool((hit >= 0).all()):
            break
        if step % 8 == 0:
            medians = [median_time([int(v) if v >= 0 else None for v in row]) for row in hit]
            if min(medians) < math.inf and step >= slack * min(medians):
                break
    times = [[int(v) if v >= 0 else None for v in row] for row in hit]
    out: dict[str, Any] = {"times": times, "steps": step}
    if record:
        out["curves"] = torch.stack(curves, 1).tolist()
    return out


def median_time(values: Sequence[int | None]) -> float:
    """Median, counting a run that did not reach the target as infinitely long."""
    return statistics.median(math.inf if v is None else float(v) for v in values)


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
def _within(measured: float | None, theory: float) -> bool:
    return measured is not None and abs(measured - theory) <= TOLERANCE * abs(theory)


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
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Sweep M at fixed N and N at fixed M; write ``werfel.png``, ``results.json`` and ``report.md``."""
    for name, values in (("m_values", m_values), ("n_values", n_values)):
        if not values:
            raise UnigradError(f"option {name} needs at least one value")
        for v in values:
            check_positive(name, v, integer=True)
    check_positive("n_fixed", n_fixed, integer=True)
    check_positive("m_fixed", m_fixed, integer=True)
    check_positive("seeds", seeds, integer=True)
    check_positive("students", students, integer=True)
    check_positive("sigma", sigma)
    if not factor > 1:
        raise UnigradError(f"option factor must be a number > 1 (the error reduction), got {factor!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
    if library:
        for m in m_values:
            for method in METHODS:
                s = sweeps[f"{method}:{m}:{n_fixed}"]
                if progress:
                    progress(f"werfel: library {LIBRARY[method][0]} M={m} N={n_fixed}")
                lib.append(
                    library_time(
                        method,
                        m,
                        n_fixed,
                        s["best_eta"],
                        runs=library_runs or seeds,
                        factor=factor,
                        sigma=sigma,
                        seed=11,
                        max_steps=math.ceil(4 * s["theory_time"]),
                    )
                )
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
    write_results(out, results)
    plot(results, out / "werfel.png")
    write_report(out, report(results))
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
    rows = []
    configs = sorted({(s["m"], s["n"]) for s in sweeps.values()})
    for m, n in configs:
        t = {k: sweeps[f"{k}:{m}:{n}"]["time"] for k in METHODS}
        th = {k: sweeps[f"{k}:{m}:{n}"]["theory_time"] for k in METHODS}
        row: dict[str, Any] = {"m": m, "n": n, "times": t, "theory_times": th}
        for k in ("np", "wp"):
            ratio = None if t[k] is None or t["gd"] is None else t[k] / t["gd"]
            row[f"{k}_gd"] = ratio
            row[f"{k}_gd_theory"] = th[k] / th["gd"]
            row[f"{k}_gd_leading"] = m if k == "np" else m * n
            row[f"{k}_gd_ok"] = _within(ratio, th[k] / th["gd"])
        row["time_ok"] = {k: _within(t[k], th[k]) for k in METHODS}
        best = {k: sweeps[f"{k}:{m}:{n}"] for k in METHODS}
        row["eta_ratio"] = {k: best[k]["best_eta"] / best[k]["eta_theory"] for k in METHODS}
        rows.append(row)
    fits = {}
    m_rows = [r for r in rows if r["n"] == n_fixed and r["m"] in m_values]
    n_rows = [r for r in rows if r["m"] == m_fixed and r["n"] in n_values]
    if len(m_rows) >= 2 and all(r["np_gd"] is not None for r in m_rows):
        xs = [float(r["m"]) for r in m_rows]
        fits["np_gd_vs_m"] = {
            "what": f"d(T_NP/T_GD)/dM at N = {n_fixed}",
            "measured": fit_line(xs, [r["np_gd"] for r in m_rows])[0],
            "theory": fit_line(xs, [r["np_gd_theory"] for r in m_rows])[0],
            "leading": 1.0,
        }
    if len(n_rows) >= 2 and all(r["np_gd"] is not None for r in n_rows):
        xs = [math.log(r["n"]) for r in n_rows]
        fits["np_gd_vs_n"] = {
            "what": f"exponent of T_NP/T_GD in N at M = {m_fixed}",
            "measured": fit_line(xs, [math.log(r["np_gd"]) for r in n_rows])[0],
            "theory": fit_line(xs, [math.log(r["np_gd_theory"]) for r in n_rows])[0],
            "leading": 0.0,
            "absolute": True,
        }
    if len(rows) >= 2 and all(r["wp_gd"] is not None for r in rows):
        xs = [float(r["m"] * r["n"]) for r in rows]
        fits["wp_gd_vs_mn"] = {
            "what": "d(T_WP/T_GD)/d(MN), all configurations",
            "measured": fit_line(xs, [r["wp_gd"] for r in rows])[0],
            "theory": fit_line(xs, [r["wp_gd_theory"] for r in rows])[0],
            "leading": 1.0,
        }
    if len(n_rows) >= 2 and all(r["wp_gd"] is not None for r in n_rows):
        xs = [math.log(r["n"]) for r in n_rows]
        fits["wp_gd_vs_n"] = {
            "what": f"exponent of T_WP/T_GD in N at M = {m_fixed}",
            "measured": fit_line(xs, [math.log(r["wp_gd"]) for r in n_rows])[0],
            "theory": fit_line(xs, [math.log(r["wp_gd_theory"]) for r in n_rows])[0],
            "leading": 1.0,
        }
    if len(m_rows) >= 2 and all(r["wp_gd"] is not None for r in m_rows):
        xs = [math.log(r["m"]) for r in m_rows]
        fits["wp_gd_vs_m"] = {
            "what": f"exponent of T_WP/T_GD in M at N = {n_fixed}",
            "measured": fit_line(xs, [math.log(r["wp_gd"]) for r in m_rows])[0],
            "theory": fit_line(xs, [math.log(r["wp_gd_theory"]) for r in m_rows])[0],
            "leading": 1.0,
        }
    for f in fits.values():
        if f.get("absolute"):  # a zero exponent: agreement within TOLERANCE in absolute terms
            f["ok"] = abs(f["measured"] - f["theory"]) <= TOLERANCE
        else:
            f["ok"] = _within(f["measured"], f["theory"])
    lib_rows = []
    for entry in lib:
        s = sweeps[f"{entry['method']}:{entry['m']}:{entry['n']}"]
        th = theory_time(entry["method"], entry["m"], entry["n"], entry["eta"], factor)
        lib_rows.append({**entry, "batched_time": s["time"], "theory_time": th, "ok": _within(entry["time"], th)})
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


def plot(results: dict[str, Any], path: Path) -> None:
    """Learning curves, learning time against η, and the two ratio sweeps against theory."""
    plt = pyplot()

    sweeps, factor = results["sweeps"], results["factor"]
    m0, n0 = results["m_fixed"], results["n_fixed"]
    key = (m0, n0) if f"gd:{m0}:{n0}" in sweeps else (results["rows"][0]["m"], results["rows"][0]["n"])
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    ax = axes[0][0]
    for method in METHODS:
        s = sweeps[f"{method}:{key[0]}:{key[1]}"]
        ax.plot(
            s["curve_steps"],
            [max(v, 1e-12) for v in s["curve"]],
            color=COLORS[method],
            label=f"{LABELS[method]}, η = {s['best_eta']:.3g}",
        )
        r = theory_rate(method, key[0], key[1], s["best_eta"])
        ax.plot(s["curve_steps"], [r**t for t in s["curve_steps"]], color=COLORS[method], linestyle=":")
    ax.axhline(1.0 / factor, color="gray", linewidth=0.8)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="step (samples)",
        ylabel="⟨E_t⟩ / ⟨E_0⟩",
        ylim=(0.3 / factor, 1.5),
        title=f"learning curves at the optimal η (M = {key[0]}, N = {key[1]}); dotted: (1−2η+Kη²)^t",
    )
    ax.legend(fontsize=8)
    ax = axes[0][1]
    for method in METHODS:
        s = sweeps[f"{method}:{key[0]}:{key[1]}"]
        x = [eta / s["eta_theory"] for eta in s["etas"]]
        ax.plot(
            x,
            [v if v is not None else float("nan") for v in s["median_times"]],
            "o",
            color=COLORS[method],
            label=f"{LABELS[method]} measured",
        )
        fine = [2 ** (k / 40) for k in range(-30, 31)]
        ax.plot(
            fine,
            [theory_time(method, key[0], key[1], c * s["eta_theory"], factor) for c in fine],
            color=COLORS[method],
            linewidth=0.8,
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="η / η*  (η* = 1/K)",
        ylabel=f"steps to reduce ⟨E⟩ {factor:g}×",
        title="learning time against η (lines: theory)",
    )
    ax.legend(fontsize=8)
    for ax, axis in ((axes[1][0], "m"), (axes[1][1], "n")):
        fixed = "n" if axis == "m" else "m"
        value = n0 if axis == "m" else m0
        rows = [r for r in results["rows"] if r[fixed] == value and r[axis] in results[f"{axis}_values"]]
        xs = [r[axis] for r in rows]
        for k, label in (("np", "NP/GD"), ("wp", "WP/GD")):
            color = COLORS[k]
            ax.plot(xs, [r[f"{k}_gd"] or float("nan") for r in rows], "o", color=color, label=f"{label} measured")
            ax.plot(xs, [r[f"{k}_gd_theory"] for r in rows], "-", color=color, label=f"{label} theory")
            ax.plot(
                xs,
                [r[f"{k}_gd_leading"] for r in rows],
                ":",
                color=color,
                label=f"{label} leading order ({'M' if k == 'np' else 'MN'})",
            )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel=axis.upper(),
            ylabel="T_method / T_GD at optimal η",
            title=f"slowdown against {axis.upper()} at {fixed.upper()} = {value}",
        )
        ax.legend(fontsize=7)
    for ax in axes.flat:
        ax.grid(True, which="major", alpha=0.3)
    save_figure(fig, path)


def _fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "not reached"
    return f"{v:,.{digits}f}"


def _ok(flag: bool) -> str:
    return "yes" if flag else "**no**"


def report(results: dict[str, Any]) -> str:
    """The markdown report: measured figures next to theory, within-25% flags, fits."""
    f = results["factor"]
    st = results.get("settings", {})
    lines = [
        "# Werfel, Xie & Seung (2005): learning time of GD, NP and WP",
        "",
        f"Linear student y = Wx learns a linear teacher online (one sample x ~ N(0, I) per step); learning time "
        f"= steps for the mean generalization error ⟨½‖W − W*‖²⟩ over the students to fall {f:g}×; each "
        f"method at its measured optimal η (sweep η*·2^(k/4), k = −2…2, η* = 1/K). "
        f"Median over {st.get('seeds', '?')} seeds of {st.get('students', '?')} students each. "
        f"Theory: T = ln F / −ln(1 − 2η + Kη²), K = N+2 (GD), (M+2)(N+2) (NP), (MN+2)(N+2) (WP), so "
        f"T_NP/T_GD ≈ M + 2 and T_WP/T_GD ≈ MN + 2 (→ M and MN, the paper's statement, for large M, N). "
        f"'ok' = within {TOLERANCE:.0%} of theory.",
        "",
        "## Optimal learning times",
        "",
        "| M | N | GD | theory | NP | theory | WP | theory | ok (GD/NP/WP) | η_best/η* (GD/NP/WP) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        t, th = r["times"], r["theory_times"]
        ok = "/".join("y" if r["time_ok"][k] else "**n**" for k in METHODS)
        eta = "/".join(f"{r['eta_ratio'][k]:.2f}" for k in METHODS)
        lines.append(
            f"| {r['m']} | {r['n']} | {_fmt(t['gd'])} | {th['gd']:,.0f} | {_fmt(t['np'])} | {th['np']:,.0f} | "
            f"{_fmt(t['wp'])} | {th['wp']:,.0f} | {ok} | {eta} |"
        )
    lines += [
        "",
        "## Slowdown against GD",
        "",
        "| M | N | NP/GD measured | theory | leading order M | ok | WP/GD measured | theory | leading order MN | ok |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['m']} | {r['n']} | {_fmt(r['np_gd'], 2)} | {r['np_gd_theory']:.2f} | {r['np_gd_leading']} | "
            f"{_ok(r['np_gd_ok'])} | {_fmt(r['wp_gd'], 1)} | {r['wp_gd_theory']:.1f} | {r['wp_gd_leading']} | "
            f"{_ok(r['wp_gd_ok'])} |"
        )
    lines += [
        "",
        "## Fits",
        "",
        "| quantity | measured | theory (same fit, exact finite-size times) | leading order | ok |",
        "|---|---|---|---|---|",
    ]
    for fit in results["fits"].values():
        tol = " (±0.25 absolute)" if fit.get("absolute") else ""
        lines.append(
            f"| {fit['what']} | {fit['measured']:.3f} | {fit['theory']:.3f}{tol} | {fit['leading']:g} | "
            f"{_ok(fit['ok'])} |"
        )
    if results["library"]:
        lines += [
            "",
            "## The library's estimators",
            "",
            f"`backprop` / `np` / `wp` (σ = {st.get('sigma', '?')}, one probe) with `torch.optim.SGD` on "
            f"`nn.Linear(N, M, bias=False)`, at the measured optimal η, mean error of "
            f"{st.get('library_runs', '?')} students (few students: expect ±15–25% scatter at small K).",
            "",
            "| estimator | M | N | η | learning time | batched sweep | theory at this η | ok | s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in results["library"]:
            lines.append(
                f"| {e['estimator']} | {e['m']} | {e['n']} | {e['eta']:.4g} | {_fmt(e['time'])} | "
                f"{_fmt(e['batched_time'])} | {e['theory_time']:,.0f} | {_ok(e['ok'])} | {e['seconds']:.1f} |"
            )
    n_ok = sum(r["np_gd_ok"] + r["wp_gd_ok"] for r in results["rows"])
    lines += [
        "",
        f"Ratios within {TOLERANCE:.0%} of theory: {n_ok} of {2 * len(results['rows'])}; "
        f"fits within tolerance: {sum(f['ok'] for f in results['fits'].values())} of {len(results['fits'])}.",
    ]
    if "seconds" in st:
        lines.append(f"Wall time: {st['seconds']:.0f} s.")
    lines.append("")
    return "\n".join(lines)


def run_experiment(
    out: str | Path,
    *,
    seeds: int = 3,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
    students: int | None = None,
    factor: float | None = None,
    library: bool = True,
) -> str:
    """The ``unigrad experiment werfel`` runner."""
    if quick:
        run(
            out,
            m_values=(1, 3),
            n_fixed=4,
            n_values=(3, 6),
            m_fixed=2,
            seeds=min(seeds, 2),
            students=students or 4,
            factor=factor or 10.0,
            library=library,
            library_runs=1,
            progress=progress,
        )
    else:
        run(out, seeds=seeds, students=students or 16, factor=factor or 100.0, library=library, progress=progress)
    return (Path(out) / "report.md").read_text()
