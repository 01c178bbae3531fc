"""The estimator-variance experiment: alignment and relative error of random-direction estimates
against the dimension ``d`` and the number of probes ``q``, measured against exact formulas.

For an estimate ``ĝ`` of the true (backprop) gradient ``g`` at fixed parameters and batch, it
records the alignment ``cos = ⟨ĝ, g⟩/(‖ĝ‖‖g‖)`` and the relative error ``‖ĝ − g‖²/‖g‖²`` over many
independent estimates, and fits power laws in log-log by least squares.

Theory (σ → 0, where finite differences are directional derivatives)
=====================================================================

Gaussian directions (``rge`` central, ``forward-gradient``): ``ĝ = (1/q) Σ_i (g·u_i) u_i`` with
``u_i ~ N(0, I_d)``. Rotate so that ``g = ‖g‖e_1`` and write ``u_i = z_i e_1 + u_i^⊥``. Then
``ĝ ∝ (Σ z_i²) e_1 + Σ z_i u_i^⊥``, and given ``z`` the second term is ``N(0, ‖z‖² I_{d−1})``, so
exactly::

    cos² = χ²_q / (χ²_q + χ²_{d−1})  ~  Beta(q/2, (d−1)/2)
    E[cos²] = q / (d + q − 1)                                  (→ q/d for d ≫ q)
    E[cos]  = Γ((q+1)/2) Γ((d+q−1)/2) / (Γ(q/2) Γ((d+q)/2))     (→ c_q √(q/d))
    E‖ĝ − g‖²/‖g‖² = (d + 1)/q                                 (E[(g·u)²‖u‖²] = (d+2)‖g‖²)

with ``c_q = √2 Γ((q+1)/2)/(Γ(q/2)√q)`` (``c_1 = √(2/π) ≈ 0.80``, ``c_q → 1``). So the quantity
that scales exactly as ``q/d`` is ``E[cos²]``: ``E[cos]`` is ``√(q/d)`` only up to ``c_q``, which
makes its exponent in ``q`` slightly larger than 1/2 at small ``q``. The exponents are fitted on
``E[cos²]`` (theory −1 in ``d``, +1 in ``q``), on ``E[cos]`` (−1/2, +1/2 asymptotically) and on
the relative error (+1, −1); each is compared with the slope of the exact formula fitted on the
same grid (the "theory" column) and with the asymptotic exponent.

SPSA (Rademacher ``Δ_i``, ``‖Δ_i‖² = d``): ``E‖ĝ − g‖²/‖g‖² = (d − 1)/q`` exactly and
``E[cos²] = 1/d`` exactly at ``q = 1``; for ``q > 1``, and for ``E[cos]``, the Gaussian formulas
hold to leading order in ``1/d`` when ``g`` is spread over many coordinates (as it is here).

ES with centered ranks (``es``, Salimans et al. 2017): for small σ the 2q losses are
``f ± σ s_i`` with ``s_i = g·ε_i``, so their centered ranks give pair weights
``c_i = sign(s_i)(2k_i − 1)`` (``k_i`` the rank of ``|s_i|``) and ``ĝ ∝ Σ c_i ε_i``; the same
decomposition gives, exactly, ``cos² = T/(T + χ²_{d−1})`` with ``T = (c·z)²/‖c‖²``. Its moments are
evaluated by Monte Carlo on these scalars (``E[T] = q`` at ``q = 1``; ``E[T]/q → 3/π ≈ 0.955`` for
large ``q``: ranks cost about 5% of ``E[cos²]``). The shaped estimate's norm does not follow the
gradient's (it is of order ``√d/σ``), so its relative error is not reported.

Node perturbation (``np``) and weight perturbation (``wp``) on small networks, one sample (B = 1),
one probe:

* WP is forward-difference Gaussian search over all ``d`` weights and biases:
  ``E[cos²] = 1/d``, relative error ``d + 1``.
* NP adds ``σe_l`` (``e_l ~ N(0, I_{N_l})``) to the pre-activations of every layer ``l`` and
  writes ``ĝ_l = (δ·e) e_l x̃_lᵀ``, with ``δ_l = ∂L/∂h_l`` (backprop's error at layer ``l``),
  ``δ = (δ_l)_l`` over all ``M = Σ N_l`` nodes and ``x̃_l = (x_{l−1}, 1)`` the layer input with the
  bias entry. The true gradient is ``g_l = δ_l x̃_lᵀ``. With ``a_l = ‖x̃_l‖²``::

      cos = Σ_l a_l e_l·δ_l / (√(Σ_l a_l ‖e_l‖²) √(Σ_l a_l ‖δ_l‖²))
      E‖ĝ − g‖²/‖g‖² = Σ_l a_l (N_l ‖δ‖² + ‖δ_l‖²) / Σ_l a_l ‖δ_l‖²          (exact)
      E[cos²] ≈ Σ_l a_l² ‖δ_l‖² / (Σ_l a_l N_l · Σ_l a_l ‖δ_l‖²) =: 1/M_eff      (large M)

  For one layer these are exact: ``E[cos²] = 1/N`` (the number of perturbed output nodes,
  whatever the number of inputs) and relative error ``N + 1``: NP searches the node space, not
  the weight space. With several layers the nodes count with weights ``a_l`` (the squared norms of
  the layers' inputs) and the errors' sizes, so ``M_eff`` is not ``M``: in a wide tanh network the
  output layer, whose inputs grow with the width, dominates the gradient and ``M_eff`` saturates.
  The per-instance formulas above are evaluated from autograd's ``δ_l`` and ``x_l``.

Problems: for the ``d``/``q`` sweeps, softmax regression ``nn.Linear(d/4, 4, bias=False)`` (float64)
on a batch of 32 Gaussian inputs with random labels; for NP/WP, MLPs with tanh and a squared error
on one Gaussian input and target. Every grid point draws its own problem and noise streams; σ =
1e-6 in float64, so finite-difference bias and rounding are far below the statistical error.

Standard errors: each point's mean has standard error ``sd/√n``; the fitted slope's standard
error propagates them (``Var(log ȳ) ≈ (se/ȳ)²``) through the least-squares weights.

Options (``run``): ``dims``, ``probes``, ``q_dim`` (the ``d`` of the ``q`` sweep), ``estimates``
(per seed and grid point; the ``q`` sweep uses ``max(estimates/q, 40)`` (at most ``estimates``) since the spread of
``cos²`` falls like ``1/√q``), ``seeds``, ``sigma``, ``mc_samples`` (of the rank formula), and the
NP/WP grids ``nodes``, ``inputs``, ``widths``.

Outputs (in ``out``): ``estimator-variance.png``, ``results.json`` and ``report.md``.

This file is longer than most: the exact formulas, the problems they are measured on, the three sweeps and
their fits against theory belong together; the figure and the report live in
:mod:`unigrad.experiments.estimator_variance_report`.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.objective import Objective, reduce, supervised
from unigrad.core.options import is_int
from unigrad.core.params import trainable
from unigrad.core.rng import generator, key_hash
from unigrad.experiments import _common
from unigrad.experiments._common import Progress, Settings, check_positive_all, finish, fit_power, output_dir, runner
from unigrad.experiments.estimator_variance_report import QUANTITIES, plot, report
from unigrad.registry import make_estimator

CLASSES = 4
"""Outputs of the softmax-regression problem of the ``d``/``q`` sweeps (``d = 4·inputs``)."""
BATCH = 32
TOLERANCE = 0.25
"""A measured exponent is "within theory" when its relative deviation is at most this."""


# -- exact formulas ----------------------------------------------------------------------------


def gaussian_cos2(d: int, q: int) -> float:
    """``E[cos²] = q/(d + q − 1)`` for ``(1/q) Σ (g·u_i) u_i`` with Gaussian ``u_i`` (exact)."""
    return q / (d + q - 1)


def gaussian_cos(d: int, q: int) -> float:
    """``E[cos] = E√Beta(q/2, (d−1)/2) = Γ((q+1)/2) Γ((d+q−1)/2) / (Γ(q/2) Γ((d+q)/2))`` (exact)."""
    log = math.lgamma((q + 1) / 2) + math.lgamma((d + q - 1) / 2) - math.lgamma(q / 2) - math.lgamma((d + q) / 2)
    return math.exp(log)


def relative_error(name: str, d: int, q: int) -> float | None:
    """Exact ``E‖ĝ − g‖²/‖g‖²`` as σ → 0: ``(d+1)/q`` (Gaussian), ``(d−1)/q`` (Rademacher); None for ES."""
    if name in ("rge", "forward-gradient", "wp"):
        return (d + 1) / q
    if name == "spsa":
        return (d - 1) / q
    return None


def rank_statistics(q: int, samples: int, seed: int = 0) -> np.ndarray:
    """Samples of ``T = (c·z)²/‖c‖²`` for ES's centered ranks: ``z ~ N(0, I_q)``,
    ``c_i = sign(z_i)(2k_i − 1)`` with ``k_i`` the rank (1 = smallest) of ``|z_i|``."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((samples, q))
    a = np.abs(z)
    ranks = a.argsort(axis=1).argsort(axis=1) + 1
    w = 2.0 * ranks - 1.0
    return (w * a).sum(1) ** 2 / (w**2).sum(1)


def ranks_moments(d: int, t: np.ndarray, seed: int = 1) -> tuple[float, float]:
    """``(E[cos²], E[cos])`` of ES with centered ranks: ``cos² = T/(T + χ²_{d−1})`` (Monte Carlo)."""
    rng = np.random.default_rng(seed)
    chi = rng.chisquare(d - 1, size=t.shape[0]) if d > 1 else np.zeros_like(t)
    c2 = t / (t + chi)
    return float(c2.mean()), float(np.sqrt(c2).mean())


def theory_moments(name: str, d: int, q: int, ranks: dict[int, np.ndarray]) -> tuple[float, float]:
    """``(E[cos²], E[cos])`` predicted for estimator ``name`` (Gaussian formula for rge/fg/spsa/wp)."""
    if name == "es":
        return ranks_moments(d, ranks[q])
    return gaussian_cos2(d, q), gaussian_cos(d, q)


# -- problems ----------------------------------------------------------------------------------


def softmax_problem(d: int, seed: int) -> tuple[nn.Module, Objective]:
    """Softmax regression with ``d`` weights (``d/4`` inputs × 4 classes, no bias), float64."""
    n_in = max(1, d // CLASSES)
    g = generator(seed, 0x5EF7, d)
    model = nn.Linear(n_in, CLASSES, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(CLASSES, n_in, generator=g, dtype=torch.float64) / math.sqrt(n_in))
    x = torch.randn(BATCH, n_in, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    return model, supervised(F.cross_entropy, x, y)


def mlp_problem(widths: Sequence[int], seed: int) -> tuple[nn.Sequential, Objective]:
    """``Linear → tanh → … → Linear`` with the given layer widths (float64), weights
    ``N(0, 1/fan_in)`` and biases ``N(0, 0.01)``, on one Gaussian input with a Gaussian target
    under the squared error (per sample, the mean over outputs)."""
    g = generator(seed, 0x3E7, *widths)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        lin = nn.Linear(a, b, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g, dtype=torch.float64) / math.sqrt(a))
            lin.bias.copy_(0.1 * torch.randn(b, generator=g, dtype=torch.float64))
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    x = torch.randn(1, widths[0], generator=g, dtype=torch.float64)
    y = torch.randn(1, widths[-1], generator=g, dtype=torch.float64)
    return nn.Sequential(*layers), supervised(F.mse_loss, x, y)


def true_gradient(model: nn.Module, objective: Objective) -> Tensor:
    """The exact gradient of the mean loss (autograd), flattened in ``trainable`` order."""
    params = [p for _, p in trainable(model)]
    with torch.enable_grad():
        grads = torch.autograd.grad(reduce(objective(model)), params)
    return torch.cat([g.reshape(-1) for g in grads]).detach()


@dataclass(frozen=True)
class NodeTheory:
    """NP's predictions on one MLP and one sample (see the module docstring)."""

    nodes: int  # M = Σ N_l
    m_eff: float  # 1 / (large-M E[cos²])
    cos2: float  # large-M E[cos²]
    rel_error: float  # exact E‖ĝ − g‖²/‖g‖²
    grad_sq: float  # Σ a_l ‖δ_l‖² = ‖g‖² (a check against autograd)


def node_theory(model: nn.Sequential, objective: Any) -> NodeTheory:
    """Evaluate NP's formulas from backprop's errors ``δ_l`` and the layer inputs (one sample)."""
    x = objective.inputs
    if x.shape[0] != 1:
        raise UnigradError(f"node_theory needs a single sample, got a batch of {x.shape[0]}")
    a, n, hs = [], [], []
    with torch.enable_grad():
        h = x
        for layer in model:
            if isinstance(layer, nn.Linear):
                a.append(float(h.detach().square().sum()) + 1.0)
                n.append(layer.out_features)
                h = layer(h)
                h.retain_grad()
                hs.append(h)
            else:
                h = layer(h)
        reduce(objective.score(h)).backward()
    model.zero_grad(set_to_none=True)
    dsq = [float(t.grad.square().sum()) for t in hs]
    a_, n_, d_ = np.array(a), np.array(n, float), np.array(dsq)
    total = float(d_.sum())
    grad_sq = float((a_ * d_).sum())
    cos2 = float((a_**2 * d_).sum() / ((a_ * n_).sum() * grad_sq))
    rel = float((a_ * (n_ * total + d_)).sum() / grad_sq)
    return NodeTheory(int(n_.sum()), 1.0 / cos2, cos2, rel, grad_sq)


# -- measurement -------------------------------------------------------------------------------


def sample(
    name: str, options: dict[str, Any], model: nn.Module, objective: Objective, seed: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` estimates from a fresh ``name`` estimator: their cosines with, and relative squared
    errors to, the autograd gradient (the parameters do not move between estimates)."""
    g = true_gradient(model, objective)
    g_sq = float(g @ g)
    params = [p for _, p in trainable(model)]
    est = make_estimator(name, seed=seed, **options)
    cos, rel = np.empty(n), np.empty(n)
    for i in range(n):
        for p in params:
            p.grad = None
        est.estimate(model, objective)
        gh = torch.cat([p.grad.reshape(-1) for p in params])
        cos[i] = float(gh @ g) / math.sqrt(float(gh @ gh) * g_sq)
        rel[i] = float((gh - g).square().sum()) / g_sq
    return cos, rel


def summarize(cos: np.ndarray, rel: np.ndarray) -> dict[str, float]:
    n = cos.size
    c2 = cos**2
    return {
        "n": n,
        "cos": float(cos.mean()),
        "cos_se": float(cos.std(ddof=1) / math.sqrt(n)),
        "cos2": float(c2.mean()),
        "cos2_se": float(c2.std(ddof=1) / math.sqrt(n)),
        "rel": float(rel.mean()),
        "rel_se": float(rel.std(ddof=1) / math.sqrt(n)),
    }


ESTIMATORS: tuple[tuple[str, str], ...] = (
    ("rge", "rge (Gaussian, central)"),
    ("spsa", "spsa (Rademacher, central)"),
    ("es", "es (centered ranks)"),
    ("forward-gradient", "forward-gradient (JVP)"),
)


def _options(name: str, q: int, sigma: float) -> dict[str, Any]:
    opts: dict[str, Any] = {"probes": q, "noise_source": "generator"}
    if name in ("rge", "spsa", "es", "wp", "np"):
        opts["sigma"] = sigma
    if name == "es":
        opts["fitness_shaping"] = "centered_ranks"
    return opts


def _stream(seed: int, *key: Any) -> int:
    """A distinct estimator seed per (seed, grid point, estimator): no common noise across points."""
    parts = [seed] + [int(k) if isinstance(k, int) else key_hash(*map(ord, str(k))) for k in key]
    return key_hash(*parts) % (1 << 31)


# -- the experiment ----------------------------------------------------------------------------


def run(
    out: str | Path,
    *,
    dims: Sequence[int] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
    probes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    q_dim: int = 1024,
    estimates: int = 300,
    seeds: int = 3,
    sigma: float = 1e-6,
    mc_samples: int = 200_000,
    nodes: Sequence[int] = (4, 8, 16, 32, 64, 128, 256),
    inputs: Sequence[int] = (4, 8, 16, 32, 64, 128, 256),
    widths: Sequence[int] = (8, 16, 32, 64, 128, 256, 512),
    progress: Progress = None,
) -> dict[str, Any]:
    """Run the sweeps, write ``estimator-variance.png``, ``results.json`` and ``report.md`` to ``out``."""
    check_positive_all(integer=True, estimates=estimates, seeds=seeds)
    check_positive("sigma", sigma)
    check_positive("mc_samples", mc_samples, integer=True)
    for label, grid in (("dims", dims), ("probes", probes), ("nodes", nodes), ("inputs", inputs), ("widths", widths)):
        if len(grid) < 2 or any(not is_int(v) or v < 1 for v in grid):
            raise UnigradError(f"option {label} must list at least two integers >= 1, got {grid!r}")
    if estimates < 2:
        raise UnigradError(f"option estimates must be >= 2 (for standard errors), got {estimates}")
    out = output_dir(out)
    start, cpu = time.perf_counter(), time.process_time()
    ranks = {q: rank_statistics(q, mc_samples, seed=q) for q in sorted({1, *probes})}
    point = functools.partial(_point, seeds=seeds, sigma=sigma)
    results: dict[str, Any] = {"sigma": sigma, "seeds": seeds, "estimates": estimates, "tolerance": TOLERANCE}
    results["d_sweep"] = d_sweep(dims, estimates, ranks, point, progress)
    results["q_sweep"] = q_sweep(probes, q_dim, estimates, ranks, point, progress)
    node_sweeps = {
        "nodes": ("one layer 16 → N", nodes, lambda v: (16, v)),
        "inputs": ("one layer n_in → 8", inputs, lambda v: (v, 8)),
        "width": ("two layers 16 → h → 4 (tanh)", widths, lambda v: (16, v, 4)),
    }
    results["node_sweeps"] = {
        key: {"title": title, "rows": node_sweep(key, grid, shape, seeds, estimates, point, progress)}
        for key, (title, grid, shape) in node_sweeps.items()
    }
    results["fits"] = fits(results)
    results["seconds"] = time.perf_counter() - start
    results["cpu_seconds"] = time.process_time() - cpu
    finish(out, results, report, plot, "estimator-variance.png")
    return results


Point = Callable[[str, Callable[[int], tuple[nn.Module, Objective]], int, int, tuple], dict[str, Any]]
"""``point(name, build, q, n, key)``: the summary of ``n`` estimates per seed of ``name`` with ``q`` probes on
``build(seed)`` (:func:`_point` with the run's seeds and σ)."""


def _point(
    name: str,
    build: Callable[[int], tuple[nn.Module, Objective]],
    q: int,
    n: int,
    key: tuple,
    *,
    seeds: int,
    sigma: float,
) -> dict[str, Any]:
    """One grid point: ``n`` estimates on each seed's problem, pooled and summarized."""
    cos, rel = [], []
    for s in range(seeds):
        model, obj = build(s)
        c, r = sample(name, _options(name, q, sigma), model, obj, _stream(s, name, *key), n)
        cos.append(c)
        rel.append(r)
    return summarize(np.concatenate(cos), np.concatenate(rel))


def d_sweep(
    dims: Sequence[int], estimates: int, ranks: dict[int, np.ndarray], point: Point, progress: Progress
) -> list[dict[str, Any]]:
    """Sweep 1: every estimator against the dimension of softmax regression, one probe."""
    rows = []
    for d in dims:
        for name, _ in ESTIMATORS:
            if progress:
                progress(f"d-sweep: {name}, d = {d}")
            m = point(name, lambda s, d=d: softmax_problem(d, s), 1, estimates, ("d", d))
            t2, t1 = theory_moments(name, d, 1, ranks)
            rows.append({"estimator": name, "d": d, "q": 1, **m, "cos2_theory": t2, "cos_theory": t1,
                         "rel_theory": relative_error(name, d, 1)})  # fmt: skip
    return rows


def q_sweep(
    probes: Sequence[int], q_dim: int, estimates: int, ranks: dict[int, np.ndarray], point: Point, progress: Progress
) -> list[dict[str, Any]]:
    """Sweep 2: every estimator against the number of probes at ``d = q_dim`` (fewer estimates for many probes)."""
    rows = []
    for q in probes:
        n = max(estimates // q, min(40, estimates))
        for name, _ in ESTIMATORS:
            if progress:
                progress(f"q-sweep: {name}, q = {q}")
            m = point(name, lambda s: softmax_problem(q_dim, s), q, n, ("q", q))
            t2, t1 = theory_moments(name, q_dim, q, ranks)
            rows.append({"estimator": name, "d": q_dim, "q": q, **m, "cos2_theory": t2, "cos_theory": t1,
                         "rel_theory": relative_error(name, q_dim, q)})  # fmt: skip
    return rows


def node_sweep(
    key: str,
    grid: Sequence[int],
    shape: Callable[[int], tuple[int, ...]],
    seeds: int,
    estimates: int,
    point: Point,
    progress: Progress,
) -> list[dict[str, Any]]:
    """Sweeps 3-5: node against weight perturbation on the MLP of widths ``shape(v)`` for every ``v``."""
    rows = []
    for v in grid:
        w = shape(v)
        d = sum((a + 1) * b for a, b in itertools.pairwise(w))
        theories = [node_theory(*mlp_problem(w, s)) for s in range(seeds)]
        for name in ("np", "wp"):
            if progress:
                progress(f"{key} sweep: {name}, {w}")
            m = point(name, lambda s, w=w: mlp_problem(w, s), 1, estimates, (key, v))
            if name == "wp":
                th = {"cos2_theory": gaussian_cos2(d, 1), "cos_theory": gaussian_cos(d, 1),
                      "rel_theory": relative_error("wp", d, 1)}  # fmt: skip
            else:
                th = {
                    "cos2_theory": float(np.mean([t.cos2 for t in theories])),
                    "cos_theory": gaussian_cos(w[-1], 1) if len(w) == 2 else None,
                    "rel_theory": float(np.mean([t.rel_error for t in theories])),
                    "m_eff": float(np.mean([t.m_eff for t in theories])),
                }
            rows.append({"estimator": name, "value": v, "widths": list(w), "d": d,
                         "nodes": sum(w[1:]), **m, **th})  # fmt: skip
    return rows


# -- fits and the report -----------------------------------------------------------------------


ASYMPTOTIC = {("d", "cos2"): -1.0, ("d", "cos"): -0.5, ("d", "rel"): 1.0,
              ("q", "cos2"): 1.0, ("q", "cos"): 0.5, ("q", "rel"): -1.0}  # fmt: skip


def _fit_rows(rows: list[dict], xkey: str, qty: str) -> dict[str, Any] | None:
    if any(r.get(f"{qty}_theory") is None for r in rows):
        return None
    x = [r[xkey] for r in rows]
    slope, se = fit_power(x, [r[qty] for r in rows], [r[f"{qty}_se"] for r in rows])
    theory, _ = fit_power(x, [r[f"{qty}_theory"] for r in rows])
    return {"measured": slope, "se": se, "theory": theory}


def _judge(fit: dict[str, Any], asymptotic: float | None) -> dict[str, Any]:
    dev = abs(fit["measured"] - fit["theory"]) / abs(fit["theory"]) if abs(fit["theory"]) > 0.05 else None
    fit["asymptotic"] = asymptotic
    fit["deviation"] = dev
    # an exponent of (about) zero has no relative deviation: judged against 25% of a unit exponent
    fit["within"] = dev <= TOLERANCE if dev is not None else abs(fit["measured"] - fit["theory"]) <= TOLERANCE
    fit["deviation_asymptotic"] = (
        abs(fit["measured"] - asymptotic) / abs(asymptotic) if asymptotic not in (None, 0.0) else None
    )
    return fit


def fits(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every fitted exponent with its theory: the exact formula's slope on the same grid, and the
    asymptotic exponent."""
    out = []
    for sweep, key, xkey in (("d", "d_sweep", "d"), ("q", "q_sweep", "q")):
        for name, _ in ESTIMATORS:
            rows = [r for r in results[key] if r["estimator"] == name]
            for qty, _ in QUANTITIES:
                f = _fit_rows(rows, xkey, qty)
                if f is not None:
                    out.append({"estimator": name, "sweep": f"{sweep} (q = 1)" if sweep == "d" else
                                f"q (d = {rows[0]['d']})", "x": xkey, "quantity": qty,
                                **_judge(f, ASYMPTOTIC[(sweep, qty)])})  # fmt: skip
    node = results["node_sweeps"]
    specs = (
        ("nodes", "np", "nodes", -1.0),
        ("nodes", "wp", "d", -1.0),
        ("inputs", "np", "d", 0.0),
        ("inputs", "wp", "d", -1.0),
        ("width", "np", "nodes", -1.0),
        ("width", "wp", "d", -1.0),
    )
    for sweep, name, xkey, naive in specs:
        rows = [r for r in node[sweep]["rows"] if r["estimator"] == name]
        for qty in ("cos2", "rel"):
            f = _fit_rows(rows, xkey, qty)
            if f is None:
                continue
            asym = naive if qty == "cos2" else -naive
            out.append({"estimator": name, "sweep": f"{sweep}: {node[sweep]['title']}", "x": xkey,
                        "quantity": qty, **_judge(f, asym)})  # fmt: skip
    return out


@dataclass(frozen=True)
class Config(_common.Config):
    """Options of ``unigrad experiment estimator-variance``: ``estimates`` (estimates per point: 300; quick 10).
    A quick run (one seed, two points per sweep, 2,000 Monte Carlo samples) is a smoke test, its numbers are not
    results."""

    estimates: int | None = None

    NAME = "estimator-variance"
    FULL: ClassVar[Settings] = {"estimates": 300}
    QUICK: ClassVar[Settings] = {
        "dims": (16, 64),
        "probes": (1, 4),
        "q_dim": 64,
        "mc_samples": 2000,
        "nodes": (4, 16),
        "inputs": (4, 16),
        "widths": (8, 32),
        "estimates": 10,
    }
    QUICK_SEEDS = 1


run_experiment = runner(Config, run)
