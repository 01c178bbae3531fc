"""The report of ``unigrad bench``: tables, the peer comparison, the win matrix and the plots.

How the comparison is computed (all from ``results.json``):

* **Final metric**: the metric at the last evaluation point of a run (the last good one if the run
  diverged); mean ± sd over seeds. Failed runs are left out.
* **unigrad's best zeroth-order method** on a task (:func:`best_zeroth_order`): the order-0 method,
  not one of the peers (:data:`unigrad.suite.tasks.PEERS`), with the best mean final metric.
* **Best ZO vs a peer at equal FE**: both spent the task's budget; the one with the better mean
  final metric wins.
* **Time to reach**: ``target`` is the best value on the peer's mean curve against wall seconds
  (:func:`mean_curve`: every seed's curve interpolated onto a common grid from the earliest start to
  the latest end, a run holding its last value after it ended, then averaged; so a curve's last
  point is the mean final metric). :func:`time_to_reach` is the first time a mean curve gets at least as good
  as ``target``, interpolating linearly between evaluation points (``None``: never, "not reached").
  The speed-up is the peer's time over the best ZO method's time (> 1: unigrad's is faster).
* **Win matrix** (:func:`win_matrix`): over every task and every seed both methods ran, the fraction
  of pairs where the row method's final metric is better than the column method's (ties count one
  half). Methods are identified by their label across tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unigrad.core.io import atomic_write
from unigrad.suite.tasks import PEERS

CURVE_POINTS = 200


def better(a: float, b: float, higher_is_better: bool) -> bool:
    """Whether ``a`` is strictly better than ``b``."""
    return a > b if higher_is_better else a < b


def mean_curve(
    histories: Sequence[Sequence[Mapping[str, Any]]], x: str, y: str = "metric", points: int = CURVE_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """Mean over runs of ``y`` against ``x``: each run's points interpolated onto a grid from the smallest
    first ``x`` to the largest last ``x`` (a run holds its first value before it starts and its last
    value after it ended, as ``np.interp`` does), then averaged."""
    grid, mean, _, _ = curve_spread(histories, x, y, points)
    return grid, mean


def curve_spread(
    histories: Sequence[Sequence[Mapping[str, Any]]], x: str, y: str = "metric", points: int = CURVE_POINTS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`mean_curve` with the lowest and highest run at each grid point: ``(grid, mean, low, high)``."""
    curves = []
    for h in histories:
        pts = [(float(p[x]), float(p[y])) for p in h if p.get(x) is not None and p.get(y) is not None]
        if pts:
            xs, ys = np.array(pts).T
            curves.append((xs, ys))
    if not curves:
        return np.empty(0), np.empty(0), np.empty(0), np.empty(0)
    lo, hi = min(c[0][0] for c in curves), max(c[0][-1] for c in curves)
    if len(curves) == 1:
        return curves[0][0], curves[0][1], curves[0][1], curves[0][1]
    if not hi > lo:
        at = np.array([np.interp(lo, xs, ys) for xs, ys in curves])
        return np.array([lo]), np.array([at.mean()]), np.array([at.min()]), np.array([at.max()])
    grid = np.linspace(lo, hi, points)
    ys = np.array([np.interp(grid, xs, ys) for xs, ys in curves])
    return grid, ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def time_to_reach(xs: Sequence[float], ys: Sequence[float], target: float, higher_is_better: bool) -> float | None:
    """The first ``x`` at which the curve ``ys`` is at least as good as ``target`` (linear interpolation
    between points), or ``None`` if it never is."""
    xs, ys = list(map(float, xs)), list(map(float, ys))

    def reached(v: float) -> bool:
        return v >= target if higher_is_better else v <= target

    for i, (x, v) in enumerate(zip(xs, ys)):
        if reached(v):
            if i == 0 or ys[i] == ys[i - 1]:
                return x
            frac = (target - ys[i - 1]) / (ys[i] - ys[i - 1])
            return xs[i - 1] + frac * (x - xs[i - 1])
    return None


def best_zeroth_order(methods: Mapping[str, Mapping[str, Any]], higher_is_better: bool) -> str | None:
    """The label of the order-0, non-peer method with the best ``mean`` (``None`` if there is none); of
    methods with equal means (a task's ceiling), the one with the smaller ``seconds_median`` if given.

    ``methods`` maps labels to dicts with ``name``, ``order`` and ``mean`` (``None`` when no run finished).
    """
    best: str | None = None
    for label, m in methods.items():
        if m["order"] != 0 or m["name"] in PEERS or m.get("mean") is None:
            continue
        if best is None or better(m["mean"], methods[best]["mean"], higher_is_better):
            best = label
        elif m["mean"] == methods[best]["mean"]:
            mine, theirs = m.get("seconds_median"), methods[best].get("seconds_median")
            if mine is not None and theirs is not None and mine < theirs:
                best = label
    return best


def speedup(peer_seconds: float | None, zo_seconds: float | None) -> float | None:
    """The peer's time over the best ZO method's time to the same target (``None`` if either is missing)."""
    if peer_seconds is None or zo_seconds is None:
        return None
    if zo_seconds <= 0:
        return float("inf") if peer_seconds > 0 else 1.0
    return peer_seconds / zo_seconds


def win_matrix(
    tasks: Sequence[tuple[bool, Mapping[str, Mapping[int, float]]]],
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Labels, the fraction of wins of row over column, and the number of comparisons behind each entry.

    ``tasks`` holds, per task, ``(higher_is_better, {label: {seed: final metric}})``. Each task and seed
    that both methods ran is one comparison; a tie counts one half. Entries without comparisons are NaN.
    """
    labels: list[str] = []
    for _, finals in tasks:
        labels += [k for k in finals if k not in labels]
    n = len(labels)
    wins, counts = np.zeros((n, n)), np.zeros((n, n), dtype=int)
    for higher, finals in tasks:
        for i, a in enumerate(labels):
            for j, b in enumerate(labels):
                if i == j or a not in finals or b not in finals:
                    continue
                for seed in finals[a].keys() & finals[b].keys():
                    va, vb = finals[a][seed], finals[b][seed]
                    counts[i, j] += 1
                    wins[i, j] += 1.0 if better(va, vb, higher) else 0.5 if va == vb else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(counts > 0, wins / np.maximum(counts, 1), np.nan)
    return labels, frac, counts


# -- from results.json -----------------------------------------------------------------------------


def finished(runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Runs with a final metric (``ok`` or ``diverged``)."""
    return [r for r in runs if r["status"] != "failed" and r.get("final_metric") is not None]


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and sd (over seeds) of the final metric, mean FE, median wall seconds, status counts."""
    done = finished(runs)
    finals = [float(r["final_metric"]) for r in done]
    return {
        "mean": float(np.mean(finals)) if finals else None,
        "sd": float(np.std(finals, ddof=1)) if len(finals) > 1 else None,
        "fe": float(np.mean([r["forward_equivalents"] for r in done])) if done else None,
        "seconds_median": float(np.median([r["seconds"] for r in done])) if done else None,
        "runs": len(runs),
        "diverged": sum(r["status"] == "diverged" for r in runs),
        "failed": sum(r["status"] == "failed" for r in runs),
    }


def peer_comparison(task: Mapping[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """unigrad's best ZO method on one task of ``results.json`` and its comparison with every peer."""
    higher = bool(task["higher_is_better"])
    methods = task["methods"]
    stats = {label: {**m, **summarize(m["runs"])} for label, m in methods.items()}
    zo = best_zeroth_order(stats, higher)
    rows: list[dict[str, Any]] = []
    if zo is None:
        return None, rows
    zo_x, zo_y = mean_curve([r["history"] for r in finished(methods[zo]["runs"])], "seconds")
    for label, m in stats.items():
        if m["name"] not in PEERS or m["mean"] is None:
            continue
        px, py = mean_curve([r["history"] for r in finished(methods[label]["runs"])], "seconds")
        target = float(np.max(py) if higher else np.min(py))
        t_peer = time_to_reach(px, py, target, higher)
        t_zo = time_to_reach(zo_x, zo_y, target, higher)
        if better(stats[zo]["mean"], m["mean"], higher):
            winner = zo
        elif better(m["mean"], stats[zo]["mean"], higher):
            winner = label
        else:
            winner = "tie"
        rows.append(
            {
                "peer": label,
                "peer_final": m["mean"],
                "zo_final": stats[zo]["mean"],
                "winner": winner,
                "target": target,
                "peer_seconds": t_peer,
                "zo_seconds": t_zo,
                "speedup": speedup(t_peer, t_zo),
            }
        )
    return zo, rows


def all_finals(results: Mapping[str, Any]) -> list[tuple[bool, dict[str, dict[int, float]]]]:
    """Per task ``(higher_is_better, {label: {seed: final metric}})`` for :func:`win_matrix`."""
    out = []
    for task in results["tasks"].values():
        finals = {
            label: {int(r["seed"]): float(r["final_metric"]) for r in finished(m["runs"])}
            for label, m in task["methods"].items()
        }
        out.append((bool(task["higher_is_better"]), {k: v for k, v in finals.items() if v}))
    return out


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "–"
    if v == float("inf"):
        return "∞"
    return f"{v:.{digits}g}"


def _seconds(v: float | None) -> str:
    return "not reached" if v is None else f"{v:.3g} s"


def _header(config: Mapping[str, Any]) -> list[str]:
    """The title, the command that reproduces the run and what the numbers mean."""
    return [
        "# unigrad bench",
        "",
        "Reproduce with:",
        "",
        "```",
        config["command"],
        "```",
        "",
        f"Seeds {', '.join(map(str, config['seeds']))}; started {config.get('started', '?')}; "
        f"total {_fmt(config.get('total_seconds'), 3)} s with {config.get('jobs', 1)} job(s). "
        "Budgets are forward-pass equivalents (FE) in each task's unit of cost; all methods of a task get "
        "the same budget. Wall seconds count training steps only (evaluation excluded). "
        '"Peer" marks third-party black-box optimizers.',
        "",
    ]


def _method_row(label: str, m: Mapping[str, Any]) -> str:
    """One method's row of a task's table: final metric mean ± sd, FE spent, median wall time, run outcomes."""
    s = summarize(m["runs"])
    value = _fmt(s["mean"]) + (f" ± {_fmt(s['sd'], 2)}" if s["sd"] is not None else "")
    status = f"{s['runs'] - s['diverged'] - s['failed']} ok"
    status += f", {s['diverged']} diverged" if s["diverged"] else ""
    status += f", {s['failed']} failed" if s["failed"] else ""
    return (
        f"| {label} | {m['order']} | {'yes' if m['peer'] else ''} | {value} | {_fmt(s['fe'], 3)} | "
        f"{_fmt(s['seconds_median'], 3)} | {status} |"
    )


def _peer_lines(task: Mapping[str, Any]) -> list[str]:
    """unigrad's best zeroth-order method against each peer of the task (nothing if the task has no peer)."""
    zo, rows = peer_comparison(task)
    if not rows:
        if zo is None and any(m["peer"] for m in task["methods"].values()):
            return ["", "No unigrad zeroth-order method finished here, so there is no peer comparison."]
        return []
    lines = [
        "",
        f"unigrad's best zeroth-order method here: **{zo}**. Against each peer: final {task['metric']} "
        "at equal FE, and the wall time to reach the peer's best (mean curve over seeds).",
        "",
        f"| peer | peer final | {zo} final | winner at equal FE | target | {zo} time | peer time | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['peer']} | {_fmt(r['peer_final'])} | {_fmt(r['zo_final'])} | {r['winner']} | "
            f"{_fmt(r['target'])} | {_seconds(r['zo_seconds'])} | {_seconds(r['peer_seconds'])} | "
            + ("not reached" if r["zo_seconds"] is None else f"{_fmt(r['speedup'], 3)}×")
            + " |"
        )
    return lines


def _task_section(name: str, task: Mapping[str, Any]) -> list[str]:
    """A task's section: its table of methods, skipped methods and failed runs, and the peer comparison."""
    higher = task["higher_is_better"]
    lines = [
        f"## {name}",
        "",
        f"{task['description']}. {task['dim']:,} parameters. Budget {task['budget']:.3g} FE, one unit = one "
        f"{task['unit']}. Metric: {task['metric']} ({'higher' if higher else 'lower'} is better).",
        "",
        f"| method | order | peer | {task['metric']} (mean ± sd) | FE spent | wall s (median) | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_method_row(label, m) for label, m in task["methods"].items()]
    failures = [
        f"{label} seed {r['seed']}: {r['message']}"
        for label, m in task["methods"].items()
        for r in m["runs"]
        if r["status"] != "ok"
    ]
    if task["skipped"] or failures:
        lines.append("")
    lines += [f"- skipped {note}" for note in task["skipped"]]
    lines += [f"- {msg}" for msg in failures]
    return [*lines, *_peer_lines(task), ""]


def _win_matrix_lines(results: Mapping[str, Any]) -> list[str]:
    """The win matrix over every (task, seed) pair, if more than one method finished."""
    labels, frac, counts = win_matrix(all_finals(results))
    if len(labels) <= 1:
        return []
    lines = [
        "## Win matrix",
        "",
        "Fraction of (task, seed) pairs where the row method's final metric beats the column method's "
        "(ties count one half); the number of pairs is in parentheses. See `win_matrix.png`.",
        "",
        "| | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for i, a in enumerate(labels):
        cells = [
            "" if i == j else "–" if counts[i, j] == 0 else f"{frac[i, j]:.2f} ({counts[i, j]})"
            for j in range(len(labels))
        ]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def render(results: Mapping[str, Any]) -> str:
    """The text of ``report.md``: the header, one section per task, and the win matrix."""
    lines = _header(results["config"])
    for name, task in results["tasks"].items():
        lines += _task_section(name, task)
    lines += _win_matrix_lines(results)
    return "\n".join(lines)


def write_report(folder: Path, results: Mapping[str, Any]) -> Path:
    """Write ``report.md`` into ``folder``."""
    path = folder / "report.md"
    atomic_write(path, render(results), fsync=False, unique=False)
    return path


def plot_name(kind: str, task: str) -> str:
    """``metric_vs_fe_<task>.png`` or ``metric_vs_seconds_<task>.png``."""
    return f"metric_vs_{kind}_{task}.png"


def write_plots(folder: Path, results: Mapping[str, Any]) -> list[Path]:
    """Per task, the metric against FE and against wall seconds (mean over seeds), and the win matrix."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    written: list[Path] = []
    for name, task in results["tasks"].items():
        for kind, key, xlabel in (
            ("fe", "forward_equivalents", f"forward-pass equivalents ({task['unit']}s)"),
            ("seconds", "seconds", "training wall time (s)"),
        ):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for label, m in task["methods"].items():
                runs = finished(m["runs"])
                xs, ys, low, high = curve_spread([r["history"] for r in runs], key)
                if len(xs):
                    (line,) = ax.plot(xs, ys, label=label, linestyle="--" if m["peer"] else "-")
                    if len(runs) > 1:  # the spread over seeds: lowest to highest
                        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
            if task["kind"] == "function":
                ax.set_yscale("log", nonpositive="clip")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(task["metric"])
            ax.set_title(f"{name}: mean over seeds, band from the lowest to the highest")
            if ax.lines:
                ax.legend(fontsize=8)
            fig.tight_layout()
            path = folder / plot_name(kind, name)
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    labels, frac, counts = win_matrix(all_finals(results))
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * max(len(labels), 2), 1.0 + 0.5 * max(len(labels), 2)))
    ax.imshow(np.nan_to_num(frac, nan=0.5), cmap="RdYlGn", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if i != j and counts[i, j] > 0:
                ax.text(j, i, f"{frac[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title("row beats column (fraction of task-seed pairs)", fontsize=9)
    fig.tight_layout()
    path = folder / "win_matrix.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


__all__ = [
    "best_zeroth_order",
    "better",
    "curve_spread",
    "mean_curve",
    "peer_comparison",
    "render",
    "speedup",
    "summarize",
    "time_to_reach",
    "win_matrix",
    "write_plots",
    "write_report",
]
