"""MLflow logging: every run's points, parameters and tags read back from the MLflow store, equal to the store's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from unigrad.cli import main
from unigrad.config import validate_config
from unigrad.core.errors import UnigradError
from unigrad.train import train
from unigrad.train.compare import compare
from unigrad.train.mlflow import check_tracking_uri, require_mlflow
from unigrad.train.store import Store

MlflowClient = require_mlflow()  # imported the way unigrad imports it: MLflow's telemetry off first

pytestmark = pytest.mark.usefixtures("one_thread")

COMPARE = dict(budget="steps=20", seeds=1, eval_points=4, memory=False, progress=False)
# the store's point columns and the metrics they are logged as
METRICS = {
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "test_accuracy": "accuracy/test",
    "epoch": "progress/epoch",
    "forward_equivalents": "progress/forward_equivalents",
    "seconds": "progress/seconds",
}


def _client(uri: str) -> Any:
    """A client of the store, opened as unigrad opens it (a folder store needs MLFLOW_ALLOW_FILE_STORE)."""
    return MlflowClient(tracking_uri=check_tracking_uri(uri))


def _runs(uri: str, experiment: str) -> dict[tuple[str, str], Any]:
    """The experiment's active MLflow runs by (method tag, seed tag)."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, experiment
    runs = client.search_runs([found.experiment_id])
    out = {(r.data.tags["method"], r.data.tags["seed"]): r for r in runs}
    assert len(out) == len(runs), "one MLflow run per method and seed"
    return out


def _history(uri: str, run: Any) -> dict[str, list[tuple[int, float]]]:
    client = _client(uri)
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def _check_run(uri: str, run: Any, points: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """The MLflow run holds exactly ``points`` (float64: the values themselves), one value per step; returns its
    metric histories."""
    history = _history(uri, run)
    assert set(history) == set(METRICS.values())  # no vs_forwards/ copies: MLflow plots against any metric
    for key, metric in METRICS.items():
        assert history[metric] == [(p["step"], p[key]) for p in points if p.get(key) is not None], metric
    return history


def test_compare_logs_every_point_the_parameters_and_tags_and_stored_runs_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, uri = tmp_path / "s.sqlite", (tmp_path / "ml").as_uri()
    _, results = compare(
        "digits-mlp", "backprop,spsa:probes=4", out=tmp_path / "a", store=store, mlflow=tmp_path / "ml", **COMPARE
    )
    runs = _runs(uri, "a")  # the experiment is named after the run folder
    assert sorted(runs) == [("backprop", "0"), ("spsa", "0")]
    logged = {}
    with Store(store) as db:
        for label, entry in results["methods"].items():
            (result,) = entry["runs"]
            (rec,) = [r for r in db.runs() if r.method == label]
            points = db.points(rec.id)
            assert [p["step"] for p in points] == [0, 5, 10, 15, 20]
            assert [p["test_loss"] for p in points] == [p["test_loss"] for p in result["history"]]
            run = runs[(label, "0")]
            logged[label] = _check_run(uri, run, points)
            assert run.info.status == "FINISHED" and run.info.run_name == f"{label} seed 0"
            tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
            assert tags == {"task": "digits-mlp", "method": label, "seed": "0", "unigrad_version": "0.1.0"}
            params = run.data.params
            assert params["method"] == label and params["task"] == "digits-mlp" and params["seed"] == "0"
            assert params["estimator"] == result["method"] and params["budget"] == "steps=20"
            assert params["optimizer"] == entry["optimizer"] and float(params["lr"]) == entry["lr"]
            assert params["batch_size"] == "64" and params["eval_points"] == "4" and params["decorrelation"] == "null"
            assert params["environment.torch"] == results["environment"]["torch"]
    assert runs[("spsa", "0")].data.params["estimator_options.probes"] == "4"
    capsys.readouterr()

    # a second comparison finds both runs finished in the store: not retrained, but logged all the same
    compare("digits-mlp", "backprop,spsa:probes=4", out=tmp_path / "b", store=store, mlflow=uri, **COMPARE)
    assert capsys.readouterr().out.count("not retrained") == 2
    again = _runs(uri, "b")
    assert sorted(again) == sorted(runs)
    for key, run in again.items():
        assert _history(uri, run) == logged[key[0]]
        assert run.data.params == runs[key].data.params and run.data.tags["method"] == key[0]
        assert run.info.status == "FINISHED"
    assert sorted(_runs(uri, "a")) == sorted(runs)  # the first comparison's experiment is left as it was


def test_logging_leaves_the_runs_bitwise_as_they_are(tmp_path: Path) -> None:
    def runs(results: dict[str, Any]) -> dict[str, Any]:
        untimed = ("seconds", "train_seconds")
        return {
            label: [{k: v for k, v in p.items() if k not in untimed} for r in entry["runs"] for p in r["history"]]
            + [{k: v for k, v in r.items() if k not in (*untimed, "history", "final")} for r in entry["runs"]]
            for label, entry in results["methods"].items()
        }

    _, plain = compare("digits-mlp", "backprop,spsa:probes=4", out=tmp_path / "plain", **COMPARE)
    _, logged = compare("digits-mlp", "backprop,spsa:probes=4", out=tmp_path / "log", mlflow=tmp_path / "ml", **COMPARE)
    assert runs(logged) == runs(plain) and len(_runs((tmp_path / "ml").as_uri(), "log")) == 2


class _Kill(Exception):
    pass


def test_a_resumed_run_logs_each_step_once_and_replaces_the_earlier_run(tmp_path: Path) -> None:
    uri = (tmp_path / "ml").as_uri()
    kw: dict[str, Any] = dict(budget="steps=24", eval_points=6, seed=3, mlflow=tmp_path / "ml", mlflow_experiment="e")
    train("digits-mlp", "backprop", lr=1e-2, **kw)  # an earlier run of another configuration, same method and seed
    (earlier,) = _runs(uri, "e").values()
    assert earlier.data.params["lr"] == "0.01" and len(_history(uri, earlier)["loss/test"]) == 7

    seen: list[dict[str, Any]] = []

    def kill_at_the_fourth_point(point: dict[str, Any]) -> None:
        seen.append(point)
        if len(seen) == 4:
            raise _Kill

    ckpt = tmp_path / "run.pt"
    with pytest.raises(_Kill):
        train("digits-mlp", "backprop", checkpoint=ckpt, on_record=kill_at_the_fourth_point, **kw)
    (killed,) = _runs(uri, "e").values()
    assert killed.info.status == "FAILED"  # ended by an exception; the point it was killed at is not logged
    assert [s for s, _ in _history(uri, killed)["loss/test"]] == [p["step"] for p in seen[:3]]
    resumed = train("digits-mlp", "backprop", checkpoint=ckpt, resume=True, **kw)
    clean = train("digits-mlp", "backprop", budget="steps=24", eval_points=6, seed=3)
    assert [p["test_loss"] for p in resumed.history] == [p["test_loss"] for p in clean.history]
    (run,) = _runs(uri, "e").values()  # the killed run and the earlier one are deleted
    assert run.info.run_id not in (earlier.info.run_id, killed.info.run_id) and run.info.status == "FINISHED"
    history = _check_run(uri, run, resumed.history)  # every step once, the resumed run's values only
    assert [s for s, _ in history["loss/test"]] == [0, 4, 8, 12, 16, 20, 24]
    assert run.data.params["lr"] == "0.001"
    client = _client(uri)
    assert client.get_run(killed.info.run_id).info.lifecycle_stage == "deleted"


def test_an_sqlite_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    r = train("digits-mlp", "spsa", estimator_options={"probes": 2}, budget="steps=4", eval_points=2, mlflow=uri)
    assert (tmp_path / "db" / "mlflow.db").is_file()
    (run,) = _runs(uri, "digits-mlp").values()  # a train() call's experiment: the task's name by default
    _check_run(uri, run, r.history)
    assert run.data.params["estimator_options.probes"] == "2" and run.data.tags["method"] == "spsa"
    client = _client(uri)
    location = client.get_experiment(run.info.experiment_id).artifact_location
    assert location == (tmp_path / "db" / "mlartifacts").as_uri()  # beside the database, not in the working dir


def test_the_cli_flag_and_the_config_key(tmp_path: Path) -> None:
    argv = ["train", "--task", "digits-mlp", "--method", "spsa:probes=2", "--budget", "steps=4", "--eval-points", "2"]
    argv += ["--no-progress", "--no-memory", "--no-store", "--out", str(tmp_path / "t")]
    assert main([*argv, "--mlflow", str(tmp_path / "flag")]) == 0
    (result,) = json.loads((tmp_path / "t" / "results.json").read_text())["methods"]["spsa"]["runs"]
    (run,) = _runs((tmp_path / "flag").as_uri(), "t").values()
    _check_run((tmp_path / "flag").as_uri(), run, result["history"])

    config = tmp_path / "c.toml"
    config.write_text(f'mlflow = "{tmp_path / "file"}"\n[compare]\nmethods = ["spsa:probes=2", "spsa:probes=3"]\n')
    argv = ["compare", "--config", str(config), "--task", "digits-mlp", "--budget", "steps=4", "--seeds", "1"]
    assert main([*argv, "--no-progress", "--no-memory", "--no-store", "--out", str(tmp_path / "c")]) == 0
    results = json.loads((tmp_path / "c" / "results.json").read_text())
    runs = _runs((tmp_path / "file").as_uri(), "c")
    assert sorted(runs) == [("spsa:probes=2", "0"), ("spsa:probes=3", "0")]  # a method named twice: its spec
    for label, entry in results["methods"].items():
        _check_run((tmp_path / "file").as_uri(), runs[(label, "0")], entry["runs"][0]["history"])


@pytest.mark.parametrize("value", ["", 3, "a\x00b"])
def test_the_config_key_is_checked(value: Any) -> None:
    for command in ("train", "compare"):
        with pytest.raises(UnigradError, match=r"^f.toml: mlflow: must"):
            validate_config({"mlflow": value}, command, source="f.toml")
    assert validate_config({"mlflow": "sqlite:///m.db"}, "compare") == {"mlflow": "sqlite:///m.db"}


def test_without_the_package_it_is_refused_before_anything_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "sqlalchemy", None)  # the SQLite store's packages missing
        with pytest.raises(UnigradError, match=r"sqlalchemy and alembic packages; pip install 'unigrad\[mlflow\]'"):
            train("digits-mlp", "backprop", budget="steps=2", mlflow=f"sqlite:///{tmp_path / 'x' / 'm.db'}")
    assert not (tmp_path / "x").exists()
    for name in ("mlflow", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)  # import mlflow now fails
    with pytest.raises(UnigradError, match=r"^MLflow logging needs the mlflow-skinny package; pip install 'unigrad\["):
        compare("digits-mlp", "backprop", out=tmp_path / "out", mlflow=tmp_path / "ml", **COMPARE)
    with pytest.raises(UnigradError, match=r"pip install 'unigrad\[mlflow\]'"):
        train("digits-mlp", "backprop", budget="steps=2", mlflow=tmp_path / "ml")
    assert not (tmp_path / "out").exists() and not (tmp_path / "ml").exists()
    argv = ["compare", "--task", "digits-mlp", "--methods", "backprop", "--budget", "steps=2", "--no-store"]
    assert main([*argv, "--out", str(tmp_path / "cli"), "--mlflow", str(tmp_path / "ml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'unigrad[mlflow]'" in err and not (tmp_path / "cli").exists()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://localhost:5000", r"writes a local store, not a server: give a folder or sqlite:///FILE\.db"),
        ("databricks://profile", r"writes a local store"),
        ("sqlite://", r"reads sqlite:///PATH"),
        ("file", r"exists and is not a folder"),
        ("dir", r"is a folder; give a file"),
    ],
)
def test_a_remote_or_unusable_store_is_refused(tmp_path: Path, uri: str, message: str) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    if uri in ("file", "dir"):
        uri = str(tmp_path / uri) if uri == "file" else f"sqlite:///{tmp_path / uri}"
    with pytest.raises(UnigradError, match=message):
        compare("digits-mlp", "backprop", out=tmp_path / "out", mlflow=uri, **COMPARE)
    assert not (tmp_path / "out").exists()
    assert check_tracking_uri(tmp_path / "new" / "ml") == (tmp_path / "new" / "ml").as_uri()


def test_nothing_contacts_a_network_and_no_telemetry_is_kept(tmp_path: Path) -> None:
    # MLflow keeps no telemetry in tests or CI; this process is neither, and its connections are recorded
    ci = {"PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "TF_BUILD", "JENKINS_URL"}
    env = {k: v for k, v in os.environ.items() if k not in ci and not k.startswith("MLFLOW_") and k != "DO_NOT_TRACK"}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "home" / ".config"))
    script = f"""
import socket
tries = []
def refuse(*args, **kwargs):
    tries.append(args)
    raise OSError("no network")
socket.socket.connect = socket.create_connection = socket.getaddrinfo = refuse
from unigrad.cli import main
argv = ["compare", "--task", "digits-mlp", "--methods", "backprop", "--budget", "steps=2", "--seeds", "1"]
code = main([*argv, "--no-store", "--no-progress", "--no-memory", "--out", {str(tmp_path / "out")!r},
             "--mlflow", {str(tmp_path / "ml")!r}])
assert code == 0 and tries == [], (code, tries)
"""
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (run,) = _runs((tmp_path / "ml").as_uri(), "out").values()
    assert run.info.status == "FINISHED"
    assert not (tmp_path / "home" / ".config" / "mlflow").exists()  # MLflow's telemetry installation id
