"""Diagnostics in training runs: they never change the trajectory, follow their schedule, survive a
resume, and reach results.json, the report and its plots through the command line."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from unigrad import UnigradError, cli
from unigrad.dynamics.diagnostics import DIAGNOSTICS, VALUES
from unigrad.train import train

TASK = "digits-mlp"
ALL = tuple(DIAGNOSTICS)


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def _no_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.parametrize(
    ("method", "options", "decor"),
    [
        ("rge", {"probes": 4, "noise_source": "generator"}, None),  # noise keyed by the step
        ("np", {"probes": 2}, {"lr": 1e-3}),  # decorrelation statistics recorded by every forward
        ("kfac", {"inverse_interval": 3}, None),  # running curvature factors
    ],
)
def test_diagnostics_leave_the_trajectory_bitwise_unchanged(method: str, options: dict, decor: dict | None) -> None:
    kw = dict(
        estimator_options=options,
        decorrelation=decor,
        budget="steps=24",
        batch_size=32,
        eval_points=3,
        optimizer="adam",
        lr=1e-3,
    )
    plain = train(TASK, method, **kw)
    seen = train(TASK, method, diagnostics=ALL, diagnostics_every=5, **kw)
    assert all(torch.equal(a, b) for a, b in zip(_params(plain.model), _params(seen.model), strict=True))
    assert plain.optimizer.state_dict()["state"].keys() == seen.optimizer.state_dict()["state"].keys()
    assert plain.estimator.state_dict()["step"] == seen.estimator.state_dict()["step"] == 24
    assert plain.forward_equivalents == seen.forward_equivalents
    assert _no_seconds(plain.history) == _no_seconds(seen.history)
    assert [d["step"] for d in seen.diagnostics] == [0, 5, 10, 15, 20]
    every_value = {k for keys in VALUES.values() for k in keys}
    assert all(every_value <= set(d) for d in seen.diagnostics)
    assert seen.diagnostics_seconds > 0
    assert "diagnostics" not in plain.to_dict() and seen.to_dict()["diagnostic_names"] == list(ALL)


def test_default_schedule_is_the_step_after_each_evaluation_point() -> None:
    r = train(TASK, "backprop", budget="steps=20", batch_size=32, eval_points=4, diagnostics=["alignment", "drift"])
    assert [h["step"] for h in r.history] == [0, 5, 10, 15, 20]
    assert [d["step"] for d in r.diagnostics] == [0, 5, 10, 15]  # the last point has no following step
    # backprop's estimate and the diagnostic's true gradient are the same forward and backward on the same batch;
    # cos in float64 over ~5000 terms: ≲ 5000·eps64 ≈ 1e-12 ≪ 1e-6 (measured ≤ 4.4e-16)
    assert all(d["alignment"] == pytest.approx(1.0, abs=1e-6) for d in r.diagnostics)
    drifts = [d["drift"] for d in r.diagnostics]
    assert drifts[0] == 0.0 and all(b > a for a, b in itertools.pairwise(drifts))


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(UnigradError, match="unknown diagnostic 'sharp'; valid diagnostics: alignment"):
        train(TASK, "backprop", budget="steps=1", diagnostics=["sharp"])
    with pytest.raises(UnigradError, match="diagnostics_every must be an integer >= 1"):
        train(TASK, "backprop", budget="steps=1", diagnostics=["norms"], diagnostics_every=0)


class _Stop(Exception):
    pass


def test_a_resumed_run_continues_its_diagnostics(tmp_path: Path) -> None:
    kw = dict(budget="steps=30", batch_size=32, eval_points=5, estimator_options={"probes": 2})
    diag = dict(diagnostics=["variance", "sharpness", "step"], diagnostics_every=4)
    whole = train(TASK, "rge", **kw, **diag)
    path = tmp_path / "run.pt"
    calls = []

    def crash(point: dict) -> None:  # dies at the third evaluation point, before its checkpoint
        calls.append(point)
        if len(calls) == 3:
            raise _Stop

    with pytest.raises(_Stop):
        train(TASK, "rge", checkpoint=path, on_record=crash, **kw, **diag)
    with pytest.raises(UnigradError, match="differs in diagnostics"):
        train(TASK, "rge", checkpoint=path, resume=True, **kw, diagnostics=["variance"], diagnostics_every=4)
    resumed = train(TASK, "rge", checkpoint=path, resume=True, **kw, **diag)
    assert all(torch.equal(a, b) for a, b in zip(_params(resumed.model), _params(whole.model), strict=True))
    assert resumed.diagnostics == whole.diagnostics
    assert [d["step"] for d in resumed.diagnostics] == [0, 4, 8, 12, 16, 20, 24, 28]


def test_cli_bad_name_is_one_line_and_makes_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    argv = ["train", "--task", TASK, "--budget", "steps=2", "--no-store", "--out", str(out)]
    assert cli.main([*argv, "--diagnostics", "alignment,sharp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: unknown diagnostic 'sharp'; valid diagnostics: alignment, drift, norms")
    assert cli.main([*argv, "--diagnostics-every", "5"]) == 2
    assert "--diagnostics-every needs --diagnostics" in capsys.readouterr().err
    assert not out.exists()


def test_cli_train_records_diagnostics_and_writes_their_plots(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, store = tmp_path / "run", tmp_path / "runs.sqlite"
    argv = ["train", "--task", TASK, "--method", "backprop", "--budget", "steps=40", "--eval-points", "4"]
    argv += ["--no-progress", "--no-memory", "--store", str(store)]
    assert cli.main([*argv, "--diagnostics", "alignment,norms", "--out", str(out)]) == 0
    assert "s diagnostics)" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    (run,) = results["methods"]["backprop"]["runs"]
    assert results["config"]["diagnostics"] == {"names": ["alignment", "norms"], "every": None}
    assert [d["step"] for d in run["diagnostics"]] == [0, 10, 20, 30]
    for d in run["diagnostics"]:  # backprop vs the same true gradient, in float64 (see above): ≪ 1e-6
        assert d["alignment"] == pytest.approx(1.0, abs=1e-6) and d["norm_ratio"] == pytest.approx(1.0, abs=1e-6)
        assert math.isfinite(d["gradient_norm"]) and d["gradient_norm"] > 0
    assert run["diagnostics_seconds"] > 0
    assert (out / "diagnostics_alignment.png").stat().st_size > 0 and (out / "diagnostics_norms.png").exists()
    report = (out / "report.md").read_text()
    assert "## Diagnostics" in report and "![diagnostics_norms.png](diagnostics_norms.png)" in report

    # the store keeps the diagnostics with the run; a run without them is another record
    again = tmp_path / "again"
    assert cli.main([*argv, "--diagnostics", "alignment,norms", "--out", str(again)]) == 0
    assert "not retrained" in capsys.readouterr().out
    stored = json.loads((again / "results.json").read_text())["methods"]["backprop"]["runs"][0]
    assert stored["diagnostics"] == run["diagnostics"]
    plain = tmp_path / "plain"
    assert cli.main([*argv, "--out", str(plain)]) == 0
    assert "not retrained" not in capsys.readouterr().out
    assert "diagnostics" not in json.loads((plain / "results.json").read_text())["methods"]["backprop"]["runs"][0]
    assert not list(plain.glob("diagnostics_*.png")) and "## Diagnostics" not in (plain / "report.md").read_text()
