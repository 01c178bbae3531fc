"""The modern zeroth-order family against MeZO: each paper's headline, checked on a ``unigrad compare`` run.

Reads the ``results.json`` of a comparison that includes a MeZO method and prints, for every method, the final
test accuracy (mean ± sd over seeds), the difference from MeZO's, and the forward-pass equivalents (FE) and steps
at which its seed-mean test-accuracy curve first reaches MeZO's final mean accuracy (linear interpolation between
evaluation points; "—" if it never does). Then the headline claims:

- HiZOO converges in fewer steps than MeZO;
- LOZO and SubZero reach MeZO's accuracy (within one standard deviation of the difference);
- FZOO reaches it with fewer forwards;
- Sparse MeZO is more accurate.

    .venv/bin/python benchmarks/zo_family_headlines.py RUN_FOLDER [RUN_FOLDER ...] [--mezo LABEL]

``RUN_FOLDER`` is the ``--out`` of ``unigrad compare`` (``docs/zo-family.md`` has the commands); several folders of
the same task and budget are read as one comparison.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path
from typing import Any


def mean_curve(runs: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """``(x, mean test accuracy)`` at the evaluation points the seeds share (by index), ``x`` the seed mean of
    ``key`` (``forward_equivalents`` or ``step``)."""
    n = min(len(r["history"]) for r in runs)
    return [
        (
            statistics.fmean(r["history"][i][key] for r in runs),
            statistics.fmean(r["history"][i]["test_accuracy"] for r in runs),
        )
        for i in range(n)
    ]


def first_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """The first ``x`` where the curve reaches ``target`` (interpolated), or ``None``."""
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if y1 >= target:
            return x1 if y1 == y0 or y0 >= target else x0 + (target - y0) / (y1 - y0) * (x1 - x0)
    return None


def summary(paths: list[Path], mezo: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    runs = [json.loads((path / "results.json").read_text()) for path in paths]
    data, methods = runs[0], {}
    for other in runs:  # several runs of the same task and budget: their methods side by side
        if other["config"]["task"] != data["config"]["task"] or other["config"]["budget"] != data["config"]["budget"]:
            raise SystemExit("the run folders differ in task or budget; give runs of one comparison")
        methods.update(other["methods"])
    if mezo not in methods:
        raise SystemExit(f"no method {mezo!r} in the runs; give --mezo, one of: {', '.join(methods)}")
    finals = {label: [r["final"]["test_accuracy"] for r in m["runs"] if r.get("final")] for label, m in methods.items()}
    target = statistics.fmean(finals[mezo])
    rows = []
    for label, m in methods.items():
        accs = finals[label]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append(
            {
                "method": label,
                "name": m["name"],
                "order": m["order"],
                "accuracy": statistics.fmean(accs),
                "sd": sd,
                "minus_mezo": statistics.fmean(accs) - target,
                "fe_to_mezo": first_reach(mean_curve(m["runs"], "forward_equivalents"), target),
                "steps_to_mezo": first_reach(mean_curve(m["runs"], "step"), target),
                "fe": statistics.fmean(r["forward_equivalents"] for r in m["runs"]),
                "seconds": statistics.fmean(r["train_seconds"] for r in m["runs"]),
            }
        )
    return rows, {"task": data["config"]["task"], "mezo": mezo, "target": target, "finals": finals}


def verdicts(rows: list[dict[str, Any]], ctx: dict[str, Any]) -> list[str]:
    by: dict[str, dict[str, Any]] = {}
    for r in rows:  # the first method of each estimator (a plain name comes before its variants)
        by.setdefault(r["name"], r)
    mezo = next(r for r in rows if r["method"] == ctx["mezo"])
    out = []

    def close(r: dict[str, Any]) -> bool:
        spread = (r["sd"] ** 2 + mezo["sd"] ** 2) ** 0.5
        return r["minus_mezo"] >= -max(spread, 1e-9)

    for name, claim, holds in (
        ("hizoo", "HiZOO converges in fewer steps", lambda r: r["steps_to_mezo"] is not None
         and r["steps_to_mezo"] < (mezo["steps_to_mezo"] or float("inf"))),
        ("lozo", "LOZO reaches MeZO's accuracy", close),
        ("subzero", "SubZero reaches MeZO's accuracy", close),
        ("fzoo", "FZOO gets there with fewer forwards", lambda r: r["fe_to_mezo"] is not None
         and r["fe_to_mezo"] < (mezo["fe_to_mezo"] or float("inf"))),
        ("sparse-mezo", "Sparse MeZO is more accurate", lambda r: r["minus_mezo"] > 0),
    ):  # fmt: skip
        r = by.get(name)
        if r is None:
            continue
        out.append(f"- {claim}: {'holds' if holds(r) else 'does not hold'} here ({r['method']})")
    return out


def fmt(x: float | None, unit: str = "") -> str:
    return "—" if x is None else f"{x:,.0f}{unit}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+", help="run folders of one task and budget (merged)")
    ap.add_argument("--mezo", default="mezo", help="label of the MeZO method in the run (default: mezo)")
    args = ap.parse_args()
    rows, ctx = summary(args.folders, args.mezo)
    print(f"{ctx['task']}: MeZO ({ctx['mezo']}) ends at {ctx['target']:.3f}")
    print("| method | order | test accuracy | − MeZO | FE to MeZO's final | steps to it | FE | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['order']} | {r['accuracy']:.3f} ± {r['sd']:.3f} | {r['minus_mezo']:+.3f} | "
            f"{fmt(r['fe_to_mezo'])} | {fmt(r['steps_to_mezo'])} | {fmt(r['fe'])} | {r['seconds']:.1f} |"
        )
    print()
    print("\n".join(verdicts(rows, ctx)))


if __name__ == "__main__":
    main()
