"""The documented example runs and every method in it learns."""

import importlib.util
from pathlib import Path


def load(name):
    path = Path(__file__).parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_learns_with_every_method(capsys):
    results = load("quickstart").main(steps=80)
    assert set(results) == {"backprop", "spsa", "mezo"}
    assert all(acc > 0.3 for acc in results.values()), results  # chance is 0.1
    assert "forward-pass equivalents" in capsys.readouterr().out


def test_anp_learns_from_noise_it_cannot_read(capsys):
    before, after = load("inaccessible_noise").main(steps=100)
    assert before < 0.2 and after > 0.5, (before, after)


def test_in_situ_training_beats_deployed_backprop_on_a_mismatched_crossbar(capsys):
    results = load("in_situ_crossbar").main(steps=400)
    assert results["in-situ-anp"] > results["deployed-backprop"] + 0.05, results
    assert "accuracy on the device" in capsys.readouterr().out
