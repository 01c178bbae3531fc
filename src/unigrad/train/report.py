"""``report.md`` of a comparison: the table, the command line, the plots and what each column measures.

Runs that recorded diagnostics (:mod:`unigrad.dynamics.diagnostics`) add a section: their cost in
seconds next to the training time, what each diagnostic measures and its plot against the step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from unigrad.core.io import atomic_write
from unigrad.train.plots import AXES, diagnostic_filename, diagnostic_groups, write_diagnostic_plots, write_plots


def human(n: float | None, unit: str = "") -> str:
    """``12345678`` → ``12.3M``."""
    if n is None:
        return "—"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for div, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.3g} {suffix}"
    return f"{n} B"


def _pm(mean: float | None, sd: float | None, fmt: str) -> str:
    if mean is None:
        return "—"
    return format(mean, fmt) + (f" ± {format(sd, fmt)}" if sd is not None else "")


def table(results: dict[str, Any]) -> str:
    """The Markdown summary table, one row per method; a column per extra evaluation set when the task has them
    (the text tasks' ``transfer`` set)."""
    summaries = [m["summary"] for m in results["methods"].values() if m.get("summary") is not None]
    keys = {k.removesuffix("_mean") for s in summaries for k in s if k.endswith("_accuracy_mean")}
    extra = sorted(keys - {"test_accuracy"})
    head = (
        "| method | order | optimizer | test accuracy | "
        + "".join(f"{k.replace('_', ' ')} | " for k in extra)
        + "final train loss | forward-pass equivalents | wall time (s) | peak memory |"
    )
    rows = [head, "|" + "---|" * (8 + len(extra))]
    for label, m in results["methods"].items():
        s = m.get("summary")
        if s is None:
            continue
        acc = _pm(s["test_accuracy_mean"], s["test_accuracy_sd"], ".3f")
        if s["diverged"]:
            acc += f" (diverged {s['diverged']}/{s['seeds']})"
        cells = "".join(f"{_pm(s.get(f'{k}_mean'), s.get(f'{k}_sd'), '.3f')} | " for k in extra)
        rows.append(
            f"| {label} | {m['order']} | {m['optimizer']} {m['lr']:g} | {acc} | {cells}"
            f"{_pm(s['train_loss_mean'], s['train_loss_sd'], '.3f')} | {human(s['forward_equivalents_mean'])} "
            f"| {s['train_seconds_mean']:.1f} | {human_bytes(m.get('peak_memory_bytes'))} |"
        )
    return "\n".join(rows)


REFERENCE = "backprop"
"""The method every ratio of :func:`summary` is taken against, when the comparison has it."""

TARGET_FRACTION = 0.95
""":func:`summary`'s accuracy target: this fraction of the reference's final mean test accuracy, rounded down to
a hundredth."""


def steps_to(runs: list[dict[str, Any]], target: float) -> float | None:
    """The median over seeds of the first evaluated step at which the test accuracy reaches ``target``; a seed
    that never does counts as infinitely many steps (``None`` when at least half of them never do)."""
    firsts = [
        next((p["step"] for p in r["history"] if (p.get("test_accuracy") or 0.0) >= target), np.inf) for r in runs
    ]
    if not firsts:
        return None
    median = float(np.median(firsts))
    return median if np.isfinite(median) else None


def summary(results: dict[str, Any]) -> list[str]:
    """The comparison in plain numbers, one line per derivative order: the best method of that order (highest
    mean test accuracy), its accuracy gap to backprop (in points), its cost (forward-pass equivalents and
    training wall time) and peak memory as ratios to backprop's, and the steps it takes to reach
    :data:`TARGET_FRACTION` of backprop's final accuracy against backprop's. Empty without a backprop run
    or with one method only."""
    methods = results["methods"]
    ref = methods.get(REFERENCE)
    if ref is None or len(methods) < 2 or ref.get("summary") is None:
        return []
    rs = ref["summary"]
    ref_acc = rs["test_accuracy_mean"]
    if ref_acc is None:
        return []
    target = np.floor(TARGET_FRACTION * ref_acc * 100) / 100
    ref_steps = steps_to(ref["runs"], target)

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2g}x" if a is not None and b else "—"

    best: dict[int, tuple[str, dict[str, Any]]] = {}
    for label, m in methods.items():
        s = m.get("summary")
        if label == REFERENCE or s is None or s["test_accuracy_mean"] is None:
            continue
        order = int(m["order"])
        if order not in best or s["test_accuracy_mean"] > best[order][1]["summary"]["test_accuracy_mean"]:
            best[order] = (label, m)
    c = results["config"]
    seeds = len(c["seeds"])
    reached = (
        f"reaches {target:.2f} at step {ref_steps:.0f}" if ref_steps is not None else f"never reaches {target:.2f}"
    )
    lines = [
        f"Summary: {c['task']}, {c['budget']}, {seeds} seed{'s' * (seeds != 1)}. {REFERENCE} (order {ref['order']}) "
        f"ends at test accuracy {ref_acc:.3f} and {reached}; the best method of each order against it:"
    ]
    for order in sorted(best):
        label, m = best[order]
        s = m["summary"]
        gap = 100 * (s["test_accuracy_mean"] - ref_acc)
        steps = steps_to(m["runs"], target)
        reach = (
            f"{target:.2f} in {ratio(steps, ref_steps)} the steps"
            if steps is not None and ref_steps
            else f"{target:.2f} not reached"
        )
        lines.append(
            f"  order {order}  {label}: test accuracy {s['test_accuracy_mean']:.3f} ({gap:+.1f} points); "
            f"{ratio(s['forward_equivalents_mean'], rs['forward_equivalents_mean'])} the forward-pass equivalents, "
            f"{ratio(s['train_seconds_mean'], rs['train_seconds_mean'])} the wall time, "
            f"{ratio(m.get('peak_memory_bytes'), ref.get('peak_memory_bytes'))} the peak memory; {reach}"
        )
    return lines


def render(results: dict[str, Any]) -> str:
    c, env = results["config"], results["environment"]
    seeds = c["seeds"]
    lines = [
        f"# {c['task']}: {', '.join(results['methods'])}",
        "",
        f"Task: {c['task_description']}. Budget: {c['budget']} per run, batch size {c['batch_size']}, "
        f"seeds {', '.join(map(str, seeds))}, {c['device']} {c['dtype']}.",
        "",
    ]
    if c.get("command"):
        lines += ["Command:", "", "```", c["command"], "```", ""]
    lines += [table(results), ""]
    lines += _summary_section(results)
    over = f" ± sd over {len(seeds)} seeds" if len(seeds) > 1 else ""
    lines += [
        f"Test accuracy and final train loss: mean{over}"
        " at the end of the budget (the last good state for diverged runs); the train loss is the running mean of "
        "the estimator's loss since the previous evaluation point (a probe mean for methods that never evaluate "
        "the unperturbed parameters). Forward-pass equivalents count samples: forwards + 2·backwards + JVPs + "
        "4·HVPs. Wall time is training only (evaluation excluded), mean over seeds. Peak memory: the peak bytes "
        "of tensor storage allocated while building a fresh model, estimator and optimizer and taking two "
        "training steps on one batch (parameters, gradients, optimizer state, activations, perturbations and "
        "noise); not counted are the dataset and the shared noise table of the probing estimators (4M floats, "
        "16 MiB, built once per process and shared by every estimator that reads it; see docs/noise.md).",
        "",
    ]
    table_users = {
        label: m["options"].get("table_size", 1 << 22)
        for label, m in results["methods"].items()
        if m["options"].get("noise_source") == "table"
    }
    if table_users:
        sizes = ", ".join(f"{label}: {n:,} normals, {human_bytes(4 * n)}" for label, n in table_users.items())
        lines += [
            f"{', '.join(table_users)} read their noise from a shared table (noise_source=table) that is built once "
            f"per process ({sizes} in float32) and is not included in the peak memory above.",
            "",
        ]
    options = [
        f"- {label}: {m['name']} {m['options'] or '(default options)'}" for label, m in results["methods"].items()
    ]
    lines += ["Estimator options:", "", *options, ""]
    diverged = [r["message"] for m in results["methods"].values() for r in m["runs"] if r["status"] == "diverged"]
    if diverged:
        lines += ["Diverged runs:", "", *[f"- {msg}" for msg in diverged], ""]
    for _, filename, _ in AXES.values():
        lines += [f"![{filename}]({filename})", ""]
    lines += diagnostics_section(results)
    total = c.get("total_seconds")
    lines += [
        f"Environment: Python {env['python']}, PyTorch {env['torch']}, NumPy {env['numpy']}, {env['platform']}, "
        f"{env['cpu_count']} CPUs, {env['torch_threads']} torch threads"
        + (f"; total {total:.0f} s" if total is not None else "")
        + ".",
        "",
    ]
    return "\n".join(lines)


def _summary_section(results: dict[str, Any]) -> list[str]:
    """The report's summary (:func:`summary`) as a paragraph of list items; none without a backprop run."""
    lines = summary(results)
    if not lines:
        return []
    head = lines[0].replace("Summary:", "**Summary**:", 1)
    return [head, "", *[f"- {line.strip()}" for line in lines[1:]], ""]


def diagnostics_section(results: dict[str, Any]) -> list[str]:
    """The report's diagnostics section (no lines when no run recorded diagnostics)."""
    from unigrad.dynamics.diagnostics import DIAGNOSTICS

    groups = diagnostic_groups(results)
    if not groups:
        return []
    config = results["config"].get("diagnostics") or {}
    every = config.get("every")
    when = f"every {every} steps" if every else "on the step after each evaluation point"
    lines = [
        "## Diagnostics",
        "",
        f"Measured {when}, on that step's batch at the parameters it starts from (the step values describe the "
        "update it takes); g is the true gradient of the batch, d the method's estimate. Their cost is not in the "
        "forward-pass equivalents or the wall time above.",
        "",
        "| method | training (s) | diagnostics (s) | ratio |",
        "|---|---|---|---|",
    ]
    for label, m in results["methods"].items():
        runs = [r for r in m["runs"] if "diagnostics_seconds" in r]
        if not runs:
            continue
        train = sum(r["train_seconds"] for r in runs) / len(runs)
        diag = sum(r["diagnostics_seconds"] for r in runs) / len(runs)
        ratio = f"{diag / train:.2f}" if train > 0 else "—"
        lines.append(f"| {label} | {train:.2f} | {diag:.2f} | {ratio} |")
    lines.append("")
    for name in groups:
        what, cost = DIAGNOSTICS[name]
        filename = diagnostic_filename(name)
        lines += [f"- **{name}**: {what}; cost {cost}.", "", f"![{filename}]({filename})", ""]
    return lines


def write_report(folder: Path, results: dict[str, Any]) -> Path:
    """Write ``report.md`` and the plots into ``folder`` (each file atomically: :mod:`unigrad.core.io`)."""
    write_plots(folder, results)
    write_diagnostic_plots(folder, results)
    path = folder / "report.md"
    text = render(results)
    atomic_write(path, text, fsync=False, unique=False)
    return path
