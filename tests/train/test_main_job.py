"""The default comparison (``make run``): one method of each order, the fallback without Fashion-MNIST, the summary
in plain numbers, progress bars in the budget's units, and the spread over seeds on the plots."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from unigrad import cli
from unigrad.data.fashion_mnist import FILES
from unigrad.train.compare import DEFAULT_METHODS, DEFAULT_TASK, FALLBACK_TASK, default_task
from unigrad.train.hooks import ProgressBar
from unigrad.train.methods import parse_method
from unigrad.train.plan import Budget
from unigrad.train.plots import curve_band
from unigrad.train.report import _summary_section, steps_to, summary


def test_the_default_comparison_has_every_order_and_the_best_backward_free_method():
    specs = [parse_method(m) for m in DEFAULT_METHODS]
    assert {s.order for s in specs} >= {0, 1, 2}
    assert "backprop" in [s.label for s in specs] and "danp" in [s.label for s in specs]  # danp: anp, decorrelated


def test_without_fashion_mnist_the_default_task_falls_back_and_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIGRAD_FASHION_MNIST", str(tmp_path))
    said: list[str] = []
    assert default_task(said.append) == FALLBACK_TASK
    (line,) = said
    assert FALLBACK_TASK in line and "apt-get install dataset-fashion-mnist" in line and str(tmp_path) in line
    for name in FILES.values():
        (tmp_path / name).write_bytes(b"")
    assert default_task(said.append) == DEFAULT_TASK and len(said) == 1


def test_the_command_line_falls_back_and_ends_with_the_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNIGRAD_FASHION_MNIST", str(tmp_path / "absent"))
    out = tmp_path / "run"
    argv = ["compare", "--methods", "backprop,spsa:probes=2", "--budget", "steps=30", "--seeds", "2"]
    assert cli.main([*argv, "--eval-points", "3", "--out", str(out), "--no-progress", "--no-store"]) == 0
    captured = capsys.readouterr()
    assert f"so this runs {FALLBACK_TASK} instead of {DEFAULT_TASK}" in captured.err
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["task"] == FALLBACK_TASK
    last = captured.out.rstrip().splitlines()
    assert last[-2].startswith(f"Summary: {FALLBACK_TASK}, steps=30, 2 seeds.") and "order 0  spsa" in last[-1]
    assert "**Summary**" in (out / "report.md").read_text()


def _run(seed: int, accuracies: list[float], every: int = 10) -> dict:
    return {
        "seed": seed,
        "status": "ok",
        "history": [{"step": i * every, "test_accuracy": a} for i, a in enumerate(accuracies)],
    }


def _method(order: int, acc: float, fe: float, seconds: float, memory: int | None, runs: list[dict]) -> dict:
    s = {"test_accuracy_mean": acc, "forward_equivalents_mean": fe, "train_seconds_mean": seconds}
    return {"order": order, "summary": s, "peak_memory_bytes": memory, "runs": runs}


def _results(methods: dict) -> dict:
    return {"config": {"task": "toy", "budget": "steps=30", "seeds": [0, 1]}, "methods": methods}


def test_summary_states_the_gap_and_the_ratios_of_the_best_method_of_each_order():
    results = _results(
        {
            "backprop": _method(
                1, 0.80, 100.0, 2.0, 1000, [_run(0, [0.1, 0.5, 0.78, 0.8]), _run(1, [0.1, 0.6, 0.76, 0.8])]
            ),
            "danp": _method(
                0, 0.75, 170.0, 6.0, 2500, [_run(0, [0.1, 0.3, 0.5, 0.76]), _run(1, [0.1, 0.3, 0.6, 0.77])]
            ),
            "spsa": _method(0, 0.40, 250.0, 3.0, 1000, [_run(0, [0.1, 0.2, 0.3, 0.4]), _run(1, [0.1, 0.2, 0.3, 0.4])]),
            "kfac": _method(
                2, 0.81, 170.0, 9.0, 4000, [_run(0, [0.1, 0.77, 0.8, 0.81]), _run(1, [0.1, 0.79, 0.8, 0.81])]
            ),
        }
    )
    head, zeroth, second = summary(results)
    # the target is 0.95 x 0.80 = 0.76: backprop reaches it at steps 20 (both seeds)
    assert head.startswith("Summary: toy, steps=30, 2 seeds. backprop (order 1) ends at test accuracy 0.800")
    assert "reaches 0.76 at step 20" in head
    assert (
        zeroth.split()
        == (
            "order 0 danp: test accuracy 0.750 (-5.0 points); 1.7x the forward-pass equivalents, 3x the wall time, "
            "2.5x the peak memory; 0.76 in 1.5x the steps"
        ).split()
    )  # danp's seeds reach 0.76 at step 30, backprop's at 20; spsa is order 0 too but below danp
    assert second.split()[:8] == "order 2 kfac: test accuracy 0.810 (+1.0 points);".split()
    assert "4x the peak memory; 0.76 in 0.5x the steps" in second
    section = _summary_section(results)
    assert section[0].startswith("**Summary**: toy") and section[2].startswith("- order 0  danp")


def test_steps_to_a_target_is_the_median_over_seeds_and_none_when_half_never_reach_it():
    assert steps_to([_run(0, [0.1, 0.5, 0.9]), _run(1, [0.1, 0.9, 0.9]), _run(2, [0.1, 0.1, 0.9])], 0.9) == 20
    assert steps_to([_run(0, [0.1, 0.9]), _run(1, [0.1, 0.2])], 0.9) is None


def test_no_summary_without_backprop_or_with_one_method():
    one = _results({"backprop": _method(1, 0.8, 1.0, 1.0, 1, [_run(0, [0.8])])})
    assert summary(one) == []
    assert summary(_results({"spsa": _method(0, 0.4, 1.0, 1.0, 1, [_run(0, [0.4])])})) == []


def test_progress_bars_count_the_budgets_own_units(capsys):
    loop = SimpleNamespace(step=7, forward_equivalents=4480.0, seconds=2.5, spent=lambda: 0.35)
    for budget, planned, unit, total, done in [
        (Budget("epochs", 2), 40, "step", 40, 7),
        (Budget("steps", 20), 20, "step", 20, 7),
        (Budget("forwards", 1e4), None, "FE", 1e4, 4480.0),
        (Budget("seconds", 10), None, "s", 10.0, 2.5),
    ]:
        bar = ProgressBar("run", quiet=False, budget=budget, planned=planned)
        bar.on_start(loop)
        bar.on_step_end(loop, None)
        shown = bar.bar.format_dict
        assert (shown["unit"], shown["total"], shown["n"]) == (unit, total, done)
        bar.on_end(loop)
    assert "it/s" not in capsys.readouterr().err


def test_the_band_spans_the_seeds_lowest_to_highest():
    x = np.array([0.0, 1.0, 2.0])
    x_, mean, low, high = curve_band([(x, np.array([0.1, 0.5, 0.7])), (x, np.array([0.3, 0.4, 0.9]))])
    assert np.array_equal(x_, x) and np.allclose(mean, [0.2, 0.45, 0.8])
    assert np.allclose(low, [0.1, 0.4, 0.7]) and np.allclose(high, [0.3, 0.5, 0.9])
    # seeds evaluated at other x: interpolated onto one grid, the band where at least one seed is defined
    grid, mean, low, high = curve_band([(x, np.array([0.0, 1.0, 2.0])), (x + 1, np.array([1.0, 2.0, 3.0]))])
    assert grid[0] == 0 and grid[-1] == 3 and low[0] == high[0] == 0 and low[-1] == high[-1] == 3
    assert np.all(low <= mean) and np.all(mean <= high)
