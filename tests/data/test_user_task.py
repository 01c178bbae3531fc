"""A task of the user's own, named by an import path: through train, compare, bench and a TOML config, and every
way a bad one is refused in one line."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import pytest

from unigrad import cli
from unigrad.core.errors import UnigradError
from unigrad.data import tasks as tasks_module
from unigrad.data.tasks import get_task, load_user_task
from unigrad.suite import tasks as suite_tasks

EXAMPLES = Path(__file__).parents[2] / "examples"
TASK = "custom_task:make_task"


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """The examples folder on the path, and no task of an earlier test kept."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setattr(tasks_module, "_USER_TASKS", {})
    suite_tasks.user_bench_task.cache_clear()
    yield
    suite_tasks.user_bench_task.cache_clear()


def _module(tmp_path, monkeypatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_the_example_task_loads_with_its_source_and_checked_data():
    task = get_task(TASK)
    assert task.name == "spirals-resmlp" and task.source == TASK and task.batch_size == 32
    data = task.data()
    assert data.x_train.shape == (600, 2) and data.y_test.shape == (300,)
    a, b = task.build_model(3), task.build_model(3)
    assert all(p.equal(q) for p, q in zip(a.parameters(), b.parameters()))  # same seed, same weights
    assert get_task(TASK) is task  # the function is called once per process


def test_train_compare_and_config_run_a_user_task(tmp_path, capsys):
    out = tmp_path / "train"
    argv = ["train", "--task", TASK, "--method", "danp", "--budget", "steps=30", "--eval-points", "3"]
    assert cli.main([*argv, "--out", str(out), "--no-progress", "--no-memory", "--no-store"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["task"] == "spirals-resmlp" and results["config"]["task_source"] == TASK
    run = results["methods"]["danp"]["runs"][0]
    assert run["steps"] == 30 and run["history"][-1]["test_accuracy"] is not None

    store = tmp_path / "store.sqlite"
    out = tmp_path / "compare"
    argv = ["compare", "--task", TASK, "--methods", "backprop,spsa:probes=2", "--budget", "steps=40", "--seeds", "2"]
    assert cli.main([*argv, "--eval-points", "2", "--out", str(out), "--no-progress", "--store", str(store)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"backprop", "spsa"}
    backprop = results["methods"]["backprop"]
    # the residual MLP learns the spirals: from chance (1/3) to well above it in 40 steps of backprop
    assert backprop["summary"]["test_accuracy_mean"] > 0.5 and backprop["peak_memory_bytes"] > 0
    with sqlite3.connect(store) as db:  # the store keys the runs by the import path too
        configs = [json.loads(c) for (c,) in db.execute("SELECT config FROM runs")]
    assert len(configs) == 4 and all(c["task_source"] == TASK for c in configs)
    assert "Summary: spirals-resmlp" in capsys.readouterr().out

    config = tmp_path / "task.toml"
    config.write_text(f'task = "{TASK}"\nno_store = true\nno_memory = true\n[train]\nmethod = "backprop"\n')
    out = tmp_path / "config"
    argv = ["train", "--config", str(config), "--budget", "steps=10", "--eval-points", "2", "--no-progress"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["task_source"] == TASK


def test_bench_runs_a_user_task(tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", "--tasks", TASK, "--methods", "backprop,spsa", "--seeds", "1", "--budget", "5000"]
    assert cli.main([*argv, "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    entry = results["tasks"][TASK]
    assert set(entry["methods"]) == {"backprop", "spsa"}
    for m in entry["methods"].values():
        (run,) = m["runs"]
        assert run["status"] == "ok" and 5000 <= run["forward_equivalents"] < 5000 + 3 * 32 * 2 * 16
    task = suite_tasks.get_bench_task(TASK)
    assert task.batch_size == 32 and task.budget == 3 * 5 * 600 and not task.default
    assert task.dim == sum(p.numel() for p in get_task(TASK).build_model(0).parameters())


@pytest.mark.parametrize(
    ("spec", "body", "message"),
    [
        ("bad:", "", "is not a task name or an import path"),
        ("not.a module:f", "", "is not a task name or an import path"),
        ("no_such_module_xyz:make", "", "no module named 'no_such_module_xyz'"),
        ("utask_a:make", "import no_such_dependency_xyz\n", "importing utask_a failed: ModuleNotFoundError"),
        ("utask_b:make", "raise RuntimeError('boom')\n", "importing utask_b failed: RuntimeError: boom"),
        ("utask_c:mkae", "def make(): pass\n", "utask_c has no 'mkae'; it has make"),
        ("utask_d:make", "make = 3\n", "make is a int, not a function"),
        ("utask_e:make", "def make(): raise ValueError('no data here')\n", "make() failed: ValueError: no data here"),
        ("utask_f:make", "def make(): return {}\n", "make() returned a dict, not a unigrad.data.tasks.Task"),
        (
            "utask_g:make",
            """
            from unigrad.data.tasks import TASKS
            def make(): return TASKS["digits-mlp"]
            """,
            "its name 'digits-mlp' is a built-in task's",
        ),
        (
            "utask_h:make",
            """
            from unigrad.data.tasks import Task
            def make(): return Task("h", "h", lambda: None, lambda s: None, batch_size=0)
            """,
            "batch_size must be an integer >= 1, got 0",
        ),
    ],
)
def test_a_bad_task_path_is_one_line(tmp_path, monkeypatch, spec, body, message):
    name = spec.partition(":")[0]
    if body:
        _module(tmp_path, monkeypatch, name, body)
    with pytest.raises(UnigradError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        load_user_task(spec)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("loader", "builder", "message"),
    [
        ("lambda: (x, y)", "build", "must return four tensors .* got tuple of 2"),
        ("lambda: (x, y.float(), x, y)", "build", r"y_train must be integer class labels of shape \(N,\), got \(8,\)"),
        ("lambda: (x, y, x[:3], y)", "build", "x_test has 3 samples and y_test 8"),
        ("lambda: 1 / 0", "build", "its loader failed: ZeroDivisionError"),
        ("lambda: (x, y, x, y)", "lambda seed: 'model'", "builder returned a str, not a torch nn.Module"),
    ],
)
def test_bad_data_or_model_of_a_user_task_is_one_line(tmp_path, monkeypatch, loader, builder, message):
    name = f"utask_data_{abs(hash((loader, builder))) % 10**8}"  # a module of its own: imports are cached
    _module(
        tmp_path,
        monkeypatch,
        name,
        f"""
        import torch
        from unigrad.data.tasks import Task
        from unigrad.nn.models import mlp
        x, y = torch.randn(8, 2), torch.arange(8) % 2
        def build(seed): return mlp([2, 4, 2], seed=seed)
        def make(): return Task("data-check", "d", {loader}, {builder})
        """,
    )
    task = load_user_task(f"{name}:make")
    with pytest.raises(UnigradError, match=message) as e:
        task.data()
        task.build_model(0)
    assert "\n" not in str(e.value)


def test_the_cli_refuses_a_bad_task_path_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["compare", "--task", "no_such_module_xyz:make", "--out", str(out), "--no-store"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: task 'no_such_module_xyz:make': no module named") and err.count("\n") == 1
    assert not out.exists()
