"""A tiny bench run end to end: files written, budgets, reproducibility, divergence."""

from __future__ import annotations

import json

import pytest

from unigrad.core.errors import UnigradError
from unigrad.suite.report import plot_name
from unigrad.suite.run import bench, run_loop
from unigrad.suite.tasks import get_bench_task, method_spec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    folder = bench(tasks="sphere-10", methods="spsa,backprop", seeds=1, budget=300, out=out, log=lambda _: None)
    return folder, json.loads((folder / "results.json").read_text())


def test_tiny_run_writes_results_report_and_plots(tiny):
    folder, results = tiny
    for name in ("results.json", "report.md", plot_name("fe", "sphere-10"), plot_name("seconds", "sphere-10")):
        assert (folder / name).stat().st_size > 0
    assert (folder / "win_matrix.png").stat().st_size > 0
    report = (folder / "report.md").read_text()
    assert "unigrad bench --tasks sphere-10 --methods spsa,backprop --seeds 1 --budget 300" in report
    assert "| spsa | 0 |" in report and "| backprop | 1 |" in report and "## Win matrix" in report
    task = results["tasks"]["sphere-10"]
    assert task["budget"] == 300 and set(task["methods"]) == {"spsa", "backprop"}
    assert results["environment"]["torch"]
    for m in task["methods"].values():
        (run,) = m["runs"]
        assert run["status"] == "ok"
        h = run["history"]
        assert h[0]["forward_equivalents"] == 0 and h[-1]["forward_equivalents"] == run["forward_equivalents"]
        assert 300 <= run["forward_equivalents"] < 300 + 8  # stops once the budget is spent (spsa: 8 per step)
        assert run["final_metric"] == h[-1]["metric"] < h[0]["metric"]  # f(x) went down
        assert [p["forward_equivalents"] for p in h] == sorted(p["forward_equivalents"] for p in h)


def test_same_seed_gives_identical_final_metrics(tiny, tmp_path):
    _, first = tiny
    folder = bench(tasks="sphere-10", methods="spsa,backprop", seeds=1, budget=300, out=tmp_path, log=lambda _: None)
    again = json.loads((folder / "results.json").read_text())
    for label in ("spsa", "backprop"):
        a = first["tasks"]["sphere-10"]["methods"][label]["runs"][0]
        b = again["tasks"]["sphere-10"]["methods"][label]["runs"][0]
        assert a["final_metric"] == b["final_metric"]
        assert [p["metric"] for p in a["history"]] == [p["metric"] for p in b["history"]]


def test_divergence_keeps_the_last_good_value():
    task = get_bench_task("rosenbrock-10")
    spec = method_spec(task, "backprop:optimizer=sgd:lr=1.0")
    run = run_loop(task.problem(), spec, seed=0, budget=300, eval_points=300)
    assert run["status"] == "diverged" and "diverged at step" in run["message"]
    assert run["history"] and all(p["metric"] < float("inf") for p in run["history"])


def test_bad_arguments_raise_before_anything_runs(tmp_path):
    with pytest.raises(UnigradError, match="unknown task"):
        bench(tasks="nope", out=tmp_path / "x")
    with pytest.raises(UnigradError, match="budget_scale"):
        bench(tasks="sphere-10", budget_scale=0, out=tmp_path / "x")
    with pytest.raises(UnigradError, match="no methods"):
        bench(tasks="sphere-10", methods=" , ", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_command_line_reproduces_the_seeds():
    from unigrad.suite.run import command_line
    from unigrad.train.methods import parse_seeds

    for seeds in ([0], [0, 1, 2], [5], [0, 5, 7]):
        text = command_line({"tasks": ["sphere-10"], "methods": None, "seeds": seeds, "budget_scale": 0.5})
        assert parse_seeds(text.split("--seeds ")[1].split()[0]) == seeds
        assert text.endswith("--budget-scale 0.5") and "--methods" not in text


def test_budget_and_budget_scale_are_exclusive(tmp_path):
    with pytest.raises(UnigradError, match="either a budget"):
        bench(tasks="sphere-10", budget=100, budget_scale=0.5, out=tmp_path / "x")


def test_a_scaled_down_budget_does_not_warn_about_the_suites_evaluation_points():
    import warnings

    from unigrad.suite.run import run_one

    # 1,000 forward-pass equivalents are 6 backprop steps, fewer than the task's evaluation points: the suite chose
    # those points, so the trainer's warning about points a run could not reach is not for the user
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = run_one("digits-mlp", method_spec(get_bench_task("digits-mlp"), "backprop"), 0, 1000.0)
    assert out["status"] == "ok" and out["steps"] == 6


def test_the_zo_family_group_runs_every_modern_method(tmp_path):
    folder = bench(tasks="sphere-10", methods="zo-family", seeds=1, budget=2000, out=tmp_path, log=lambda _: None)
    task = json.loads((folder / "results.json").read_text())["tasks"]["sphere-10"]
    assert set(task["methods"]) == {"mezo", "sparse-mezo", "hizoo", "lozo", "subzero", "fzoo", "mezo-svrg", "eggroll"}
    for name, m in task["methods"].items():
        (run,) = m["runs"]
        assert run["status"] == "ok", name
        assert run["final_metric"] < run["history"][0]["metric"], name  # f(x) went down
