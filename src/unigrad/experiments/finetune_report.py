"""The fine-tuning experiment's report and figure (:mod:`unigrad.experiments.finetune`)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unigrad.experiments._common import grid, mean_sd, pyplot, save_figure, table

ORDER_STYLE = {0: "-", 1: "--", 2: ":"}


def _missing(have: int, total: int) -> str:
    return f" ({have} of {total})"


def _final(run: dict[str, Any], key: str) -> float | None:
    value = run["history"][-1].get(key) if run["history"] else None
    return None if value is None else float(value)


def _cell(runs: Sequence[dict[str, Any]], key: str, fmt: str = "{:.3f}") -> str:
    return mean_sd([_final(r, key) for r in runs], fmt, none="–", missing=_missing)


def _mean(values: Sequence[float | None]) -> float | None:
    have = [v for v in values if v is not None]
    return statistics.fmean(have) if have else None


def runs_of(results: dict[str, Any], setting: str, label: str) -> list[dict[str, Any]]:
    """The runs of ``label`` in ``setting`` (``"scratch"`` for the control), by seed."""
    return sorted(
        (r for r in results["runs"] if r["setting"] == setting and r["label"] == label), key=lambda r: r["seed"]
    )


def zero_shot(results: dict[str, Any], setting: str) -> dict[str, float | None]:
    """The step-0 point of the setting's first run: the untrained pretrained model."""
    for r in results["runs"]:
        if r["setting"] == setting and r["history"]:
            return r["history"][0]
    return {}


def _peak(results: dict[str, Any], label: str) -> str:
    for p in results["peaks"]:
        if p["label"] == label:
            return f"{p['peak_bytes'] / 2**20:.0f}"
    return "–"


def setting_table(results: dict[str, Any], setting: str) -> list[str]:
    """The markdown table of one setting: every method's accuracy on both test sets and its cost."""
    z = zero_shot(results, setting)
    rows: list[list[Any]] = [
        ["zero-shot (prototypes, no training)", "–", "–", f"{z.get('test_accuracy', float('nan')):.3f}",
         f"{z.get('transfer_accuracy') or float('nan'):.3f}", "0", "0", "0", "–", ""]
    ]  # fmt: skip
    for m in results["methods"]:
        runs = runs_of(results, setting, m["label"])
        if not runs:
            continue
        bad = [f"seed {r['seed']}: {r['status']}" for r in runs if r["status"] != "ok"]
        rows.append(
            [
                m["label"],
                m["order"],
                len(runs),
                _cell(runs, "test_accuracy"),
                _cell(runs, "transfer_accuracy"),
                f"{statistics.fmean(r['forward_equivalents'] for r in runs):,.0f}",
                f"{statistics.fmean(r['steps'] for r in runs):.0f}",
                mean_sd([r["train_seconds"] for r in runs], "{:.0f}", none="–", missing=_missing),
                _peak(results, m["label"]),
                "; ".join(bad),
            ]
        )
    header = ["method", "order", "seeds", "VADER test acc", "AFINN transfer acc", "FE", "steps", "train s", "peak MiB"]
    header.append("note")
    return table(header, rows)


def goals(results: dict[str, Any]) -> list[str]:
    """The issue's goal at k = 512: the best order-0 method within 2 points of backprop and above the probe."""
    if "k512" not in results["settings"]:
        return []

    def acc(label: str) -> float | None:
        return _mean([_final(r, "test_accuracy") for r in runs_of(results, "k512", label)])

    zo = [(a, m["label"]) for m in results["methods"] if m["order"] == 0 and (a := acc(m["label"])) is not None]
    bp, probe = acc("backprop + Adam"), acc("linear probe (backprop, head)")
    if not zo or bp is None or probe is None:
        return ["Goals need backprop, the linear probe and an order-0 method at k512."]
    best, label = max(zo)
    seeds = len(runs_of(results, "k512", label))
    return [
        f"- Best order-0 method at k512: {label}, {best:.3f} (mean over {seeds} seed{'s' * (seeds > 1)}).",
        f"- Backprop + Adam: {bp:.3f}; gap {100 * (bp - best):+.1f} points "
        f"(goal: within 2): {'met' if bp - best <= 0.02 else 'NOT met'}.",
        f"- Linear probe: {probe:.3f}; best order-0 minus probe {100 * (best - probe):+.1f} points "
        f"(goal: above): {'met' if best > probe else 'NOT met'}.",
    ]


def control(results: dict[str, Any]) -> list[str]:
    """Pretrained against random initialisation, same architecture, data and budget."""
    if not any(r["setting"] == "scratch" for r in results["runs"]):
        return []
    rows = []
    for label in sorted({r["label"] for r in results["runs"] if r["setting"] == "scratch"}):
        for setting, name in (("k512", "pretrained"), ("scratch", "random init")):
            runs = runs_of(results, setting, label)
            if runs:
                start = _mean([r["history"][0].get("test_accuracy") for r in runs])
                rows.append(
                    [label, name, f"{start:.3f}", _cell(runs, "test_accuracy"), _cell(runs, "transfer_accuracy")]
                )
    return [
        "## Pretrained against random initialisation (k512, same architecture and budget)",
        "",
        *table(["method", "start", "test acc at step 0", "test acc at the end", "AFINN transfer acc"], rows),
        "",
    ]


def report(results: dict[str, Any]) -> str:
    """``report.md``: one table per setting, the goals at k512 and the control."""
    lines = [
        "# Fine-tuning a pretrained transformer with every order"
        + (" (quick: not results)" if results["quick"] else ""),
        "",
        "Tasks: " + ", ".join(f"{s} = `{t}`" for s, t in results["settings"].items()) + ". Budget (forward-pass "
        "equivalents, samples): " + ", ".join(f"{s} {b:,.0f}" for s, b in results["budget_fe"].items()) + ". "
        f"{results['points']} evaluation points per run. Accuracies: mean ± sd over seeds at the end of the budget. "
        f"Peak memory: two steps on `{results['peaks'][0]['task'] if results['peaks'] else '?'}` "
        "(model included). Training time summed over the runs: "
        f"{sum(r['train_seconds'] for r in results['runs']) / 60:.0f} min (evaluation excluded).",
        "",
    ]
    for setting in results["settings"]:
        lines += [f"## {setting}", "", *setting_table(results, setting), ""]
    lines += ["## Goals (k512)", "", *goals(results), "", *control(results)]
    specs = [[m["label"], f"`{m['spec']}`", m["optimizer"], f"{m['lr']:g}", m["order"]] for m in results["methods"]]
    lines += ["## Methods", "", *table(["method", "spec", "optimizer", "lr", "order"], specs)]
    return "\n".join(lines) + "\n"


def _curve(runs: Sequence[dict[str, Any]], x: str) -> tuple[list[float], list[float]]:
    n = min(len(r["history"]) for r in runs)
    xs = [statistics.fmean(float(r["history"][i][x]) for r in runs) for i in range(n)]
    ys = [statistics.fmean(float(r["history"][i]["test_accuracy"] or 0.0) for r in runs) for i in range(n)]
    return xs, ys


def plot(results: dict[str, Any], path: Path) -> None:
    """Test accuracy against FE (left) and seconds (right), one row per setting, mean over seeds."""
    plt = pyplot()
    settings = [*results["settings"], *(["scratch"] if any(r["setting"] == "scratch" for r in results["runs"]) else [])]
    fig, axes = plt.subplots(len(settings), 2, figsize=(12, 3.4 * len(settings)), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for row, setting in zip(axes, settings, strict=True):
        for k, m in enumerate(results["methods"]):
            runs = [r for r in runs_of(results, setting, m["label"]) if r["history"]]
            if not runs:
                continue
            for ax, x in zip(row, ("forward_equivalents", "seconds"), strict=True):
                xs, ys = _curve(runs, x)
                ax.plot(xs, ys, ORDER_STYLE.get(m["order"], "-"), color=colors[k % 20], marker=".", label=m["label"])
        title = "k512, random init (control)" if setting == "scratch" else setting
        row[0].set(title=f"{title}: test accuracy against work", xlabel="forward-pass equivalents", ylabel="accuracy")
        row[1].set(title=f"{title}: against wall time", xlabel="seconds of training", ylabel="accuracy")
        grid(row)
    axes[0][1].legend(fontsize=7, loc="lower right", ncol=2)
    save_figure(fig, path)
