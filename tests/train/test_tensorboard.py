"""TensorBoard logging: every run's points and configuration read back from the event files, equal to the store's."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from unigrad.cli import main
from unigrad.config import validate_config
from unigrad.core.errors import UnigradError
from unigrad.train import train
from unigrad.train.compare import compare
from unigrad.train.store import Store
from unigrad.train.tensorboard import folder_name, point_scalars, run_folder

pytestmark = pytest.mark.usefixtures("one_thread")

COMPARE = dict(budget="steps=20", seeds=1, eval_points=4, memory=False, progress=False)
# the store's point columns and the tags they are logged under
TAGS = {
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "test_accuracy": "accuracy/test",
    "epoch": "progress/epoch",
    "forward_equivalents": "progress/forward_equivalents",
    "seconds": "progress/seconds",
}


def _events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _expected(points: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """The ``(step, value)`` TensorBoard holds for ``key`` of ``points``: float32, points without a value left out."""
    return [(p["step"], float(np.float32(p[key]))) for p in points if p.get(key) is not None]


def _configuration(acc: EventAccumulator) -> dict[str, Any]:
    (event,) = acc.Tensors("configuration/text_summary")
    text = tensor_util.make_ndarray(event.tensor_proto).item().decode()
    return json.loads(textwrap.dedent(text))


def _hparams(acc: EventAccumulator) -> dict[str, Any]:
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)[hparams_metadata.SESSION_START_INFO_TAG]
    info = hparams_metadata.parse_session_start_info_plugin_data(content)
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def _check_run(folder: Path, points: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """The event folder holds exactly ``points`` under the tags of :data:`TAGS` (and against forward-pass
    equivalents); returns its scalars."""
    scalars = _scalars(_events(folder))
    for key, tag in TAGS.items():
        assert scalars[tag] == _expected(points, key), tag
    fe_steps = {p["step"]: round(p["forward_equivalents"]) for p in points}
    assert scalars["vs_forwards/accuracy/test"] == [(fe_steps[s], v) for s, v in scalars["accuracy/test"]]
    assert scalars["vs_forwards/loss/train"] == [(fe_steps[s], v) for s, v in scalars["loss/train"]]
    return scalars


def test_compare_logs_every_point_and_the_configuration_and_stored_runs_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "s.sqlite"
    _, results = compare(
        "digits-mlp", "backprop,spsa:probes=4", out=tmp_path / "a", store=store, tensorboard=tmp_path / "tb", **COMPARE
    )
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["backprop", "spsa"]
    logged = {}
    with Store(store) as db:
        for label, entry in results["methods"].items():
            (run,) = entry["runs"]
            (rec,) = [r for r in db.runs() if r.method == label]
            points = db.points(rec.id)
            assert [p["step"] for p in points] == [0, 5, 10, 15, 20]
            folder = tmp_path / "tb" / label / "seed-0"
            logged[label] = _check_run(folder, points)
            for key in TAGS:  # the store's points are the run's history
                assert _expected(points, key) == _expected(run["history"], key)
            acc = _events(folder)
            config = _configuration(acc)
            assert config["method"] == label and config["task"] == "digits-mlp" and config["seed"] == 0
            assert config["estimator"] == run["method"] and config["budget"] == "steps=20"
            assert config["optimizer"] == entry["optimizer"] and config["lr"] == entry["lr"]
            assert config["batch_size"] == 64 and config["eval_points"] == 4
            assert config["environment"] == results["environment"]
            hp = _hparams(acc)
            assert hp["method"] == label and hp["lr"] == entry["lr"] and hp["seed"] == 0
    assert _hparams(_events(tmp_path / "tb" / "spsa" / "seed-0"))["estimator_options.probes"] == 4
    capsys.readouterr()

    # a second comparison finds both runs finished in the store: not retrained, but logged all the same
    compare(
        "digits-mlp", "backprop,spsa:probes=4", out=tmp_path / "b", store=store, tensorboard=tmp_path / "tb2", **COMPARE
    )
    assert capsys.readouterr().out.count("not retrained") == 2
    for label in ("backprop", "spsa"):
        first, again = tmp_path / "tb" / label / "seed-0", tmp_path / "tb2" / label / "seed-0"
        assert _scalars(_events(again)) == {t: v for t, v in logged[label].items()}
        assert _configuration(_events(again)) == _configuration(_events(first))
        assert _hparams(_events(again)) == _hparams(_events(first))


def _without_timing(results: dict[str, Any]) -> dict[str, Any]:
    """``results.json`` without what differs between two runs of the same comparison: times."""
    timing = {"seconds", "train_seconds", "train_seconds_mean", "total_seconds", "started"}

    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in timing}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return strip(results)


def test_logging_leaves_the_results_bitwise_as_they_are(tmp_path: Path) -> None:
    methods = "backprop,spsa:probes=4"
    compare("digits-mlp", methods, out=tmp_path / "plain", **COMPARE)
    compare("digits-mlp", methods, out=tmp_path / "logged", tensorboard=tmp_path / "tb", **COMPARE)
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    logged = json.loads((tmp_path / "logged" / "results.json").read_text())
    assert _without_timing(logged) == _without_timing(plain)
    assert list((tmp_path / "tb" / "spsa" / "seed-0").glob("events.out.tfevents.*"))


class _Kill(Exception):
    pass


def test_a_resumed_run_shows_each_point_once_and_replaces_what_its_folder_held(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(budget="steps=24", eval_points=6, seed=3, tensorboard=tmp_path / "tb")
    folder = run_folder(tmp_path / "tb", "backprop", 3)
    train("digits-mlp", "backprop", lr=1e-2, **kw)  # an earlier run of another configuration in the same folder
    assert len(_scalars(_events(folder))["loss/test"]) == 7

    seen: list[dict[str, Any]] = []

    def kill_at_the_fourth_point(point: dict[str, Any]) -> None:
        seen.append(point)
        if len(seen) == 4:
            raise _Kill

    ckpt = tmp_path / "run.pt"
    with pytest.raises(_Kill):
        train("digits-mlp", "backprop", checkpoint=ckpt, on_record=kill_at_the_fourth_point, **kw)
    resumed = train("digits-mlp", "backprop", checkpoint=ckpt, resume=True, **kw)
    clean = train("digits-mlp", "backprop", tensorboard=None, **{k: v for k, v in kw.items() if k != "tensorboard"})
    assert [p["test_loss"] for p in resumed.history] == [p["test_loss"] for p in clean.history]
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    _check_run(folder, resumed.history)  # every step once, the resumed run's values only
    assert _configuration(_events(folder))["lr"] == 1e-3


def test_the_cli_flag_and_the_config_key(tmp_path: Path) -> None:
    argv = ["train", "--task", "digits-mlp", "--method", "spsa:probes=2", "--budget", "steps=4", "--eval-points", "2"]
    argv += ["--no-progress", "--no-memory", "--no-store", "--out", str(tmp_path / "t")]
    assert main([*argv, "--tensorboard", str(tmp_path / "flag")]) == 0
    (run,) = json.loads((tmp_path / "t" / "results.json").read_text())["methods"]["spsa"]["runs"]
    _check_run(tmp_path / "flag" / "spsa" / "seed-0", run["history"])

    config = tmp_path / "c.toml"
    config.write_text(f'tensorboard = "{tmp_path / "file"}"\n[compare]\nmethods = ["spsa:probes=2", "spsa:probes=3"]\n')
    argv = ["compare", "--config", str(config), "--task", "digits-mlp", "--budget", "steps=4", "--seeds", "1"]
    assert main([*argv, "--no-progress", "--no-memory", "--no-store", "--out", str(tmp_path / "c")]) == 0
    results = json.loads((tmp_path / "c" / "results.json").read_text())
    for label, entry in results["methods"].items():
        _check_run(tmp_path / "file" / folder_name(label) / "seed-0", entry["runs"][0]["history"])
    labels = ["spsa:probes=2", "spsa:probes=3"]  # a method named twice is labelled by its spec
    assert sorted(results["methods"]) == labels
    assert sorted(p.name for p in (tmp_path / "file").iterdir()) == sorted(folder_name(x) for x in labels)


@pytest.mark.parametrize("value", ["", 3, "a\x00b"])
def test_the_config_key_is_checked(value: Any) -> None:
    for command in ("train", "compare"):
        with pytest.raises(UnigradError, match=r"^f.toml: tensorboard: must"):
            validate_config({"tensorboard": value}, command, source="f.toml")
    assert validate_config({"tensorboard": "logs/tb"}, "compare") == {"tensorboard": "logs/tb"}


def test_without_the_package_it_is_refused_before_anything_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails
    with pytest.raises(UnigradError, match=r"pip install 'unigrad\[tensorboard\]'"):
        compare("digits-mlp", "backprop", out=tmp_path / "out", tensorboard=tmp_path / "tb", **COMPARE)
    with pytest.raises(UnigradError, match=r"pip install 'unigrad\[tensorboard\]'"):
        train("digits-mlp", "backprop", budget="steps=2", tensorboard=tmp_path / "tb")
    assert not (tmp_path / "out").exists() and not (tmp_path / "tb").exists()
    argv = ["compare", "--task", "digits-mlp", "--methods", "backprop", "--budget", "steps=2", "--no-store"]
    assert main([*argv, "--out", str(tmp_path / "cli"), "--tensorboard", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'unigrad[tensorboard]'" in err and not (tmp_path / "cli").exists()


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tb").write_text("")
    with pytest.raises(UnigradError, match="exists and is not a folder"):
        compare("digits-mlp", "backprop", out=tmp_path / "out", tensorboard=tmp_path / "tb", **COMPARE)


def test_folder_names_are_safe_and_distinct() -> None:
    assert folder_name("backprop") == "backprop" and folder_name("mezo-svrg") == "mezo-svrg"
    names = [folder_name(x) for x in ("spsa:probes=16", "spsa_probes=16", "backprop:train=head|x.*", "..", ".x")]
    assert names[0].startswith("spsa_probes=16-") and names[1] == "spsa_probes=16"
    assert all(n and "/" not in n and not n.startswith(".") and ":" not in n and "|" not in n for n in names)
    assert len(set(names)) == len(names)
    long = "a" * 300
    assert len(folder_name(long)) < 120 and folder_name(long) != folder_name(long + "b")
    assert run_folder("tb", "spsa:probes=16", 2) == Path("tb") / names[0] / "seed-2"


def test_extra_evaluation_sets_and_bytes_get_their_tags() -> None:
    point = {"epoch": 1.0, "step": 7, "forward_equivalents": 99.6, "seconds": 0.5, "train_loss": None}
    point |= {"test_loss": 1.0, "test_accuracy": 0.5, "transfer_loss": 2.0, "transfer_accuracy": 0.25, "bytes": 64}
    tags = {(tag, step): value for tag, value, step in point_scalars(point)}
    assert tags[("loss/transfer", 7)] == 2.0 and tags[("accuracy/transfer", 7)] == 0.25
    assert tags[("vs_forwards/accuracy/transfer", 100)] == 0.25 and tags[("progress/bytes", 7)] == 64.0
    assert not any(tag.startswith(("loss/train", "vs_forwards/progress", "progress/step")) for tag, _ in tags)
