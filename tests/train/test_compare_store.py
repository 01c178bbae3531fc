"""compare + experiment store: finished runs are not retrained, killed comparisons resume exactly."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unigrad.cli import main
from unigrad.train.checkpoint import load_checkpoint
from unigrad.train.compare import compare
from unigrad.train.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _histories(results: dict) -> dict:
    """Per method and seed, the evaluation points without wall time (which differs between runs)."""
    return {
        (label, run["seed"]): [{k: v for k, v in p.items() if k != "seconds"} for p in run["history"]]
        for label, entry in results["methods"].items()
        for run in entry["runs"]
    }


def test_finished_runs_are_reused_and_rerun_retrains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.sqlite"
    kw = dict(budget="steps=20", seeds=2, eval_points=2, memory=False, progress=False, store=store)
    _, first = compare("digits-mlp", "backprop,spsa", out=tmp_path / "a", **kw)
    capsys.readouterr()
    _, second = compare("digits-mlp", "backprop,spsa", out=tmp_path / "b", **kw)
    assert capsys.readouterr().out.count("not retrained") == 4
    assert _histories(second) == _histories(first)
    assert [r["train_seconds"] for r in second["methods"]["spsa"]["runs"]] == [
        r["train_seconds"] for r in first["methods"]["spsa"]["runs"]
    ]  # the stored runs themselves, not new ones
    _, third = compare("digits-mlp", "backprop", out=tmp_path / "c", rerun=True, **kw)
    assert _histories(third) == {k: v for k, v in _histories(first).items() if k[0] == "backprop"}
    with Store(store) as db:
        assert len(db.runs()) == 4 and {r.status for r in db.runs()} == {"ok"}
        assert [g.name for g in db.groups()] == ["a", "b", "c"]
        assert not list((store.parent / "checkpoints").glob("*.pt"))  # deleted once stored


def test_killed_compare_resumes_to_the_uninterrupted_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.sqlite"
    args = ["compare", "--task", "digits-mlp", "--methods", "backprop,spsa:probes=8", "--budget", "steps=400"]
    args += ["--seeds", "1", "--eval-points", "40", "--no-progress", "--no-memory", "--store", str(store)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "unigrad", *args, "--out", str(tmp_path / "killed")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
        try:
            with Store(store) as db:
                spsa = [r for r in db.runs() if r.method == "spsa"]
                points = db.points(spsa[0].id) if spsa else []
        except Exception:
            continue
        if len(points) >= 5:  # spsa is part-way: kill -9 now
            proc.send_signal(signal.SIGKILL)
            killed_at = points[-1]["step"]
            break
    proc.wait(timeout=60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    (ckpt,) = (store.parent / "checkpoints").glob("*.pt")  # the unfinished spsa run's
    assert 0 < load_checkpoint(ckpt)["step"] < 400
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "resumed")]) == 0
    (said,) = [line for line in capsys.readouterr().out.splitlines() if "checkpoint" in line]
    found = re.fullmatch(rf"\s+spsa\s+seed 0: checkpoint {re.escape(str(ckpt))} found, resuming at step (\d+)", said)
    assert found and 0 < int(found[1]) < 400, said  # one line: the run, its checkpoint, the step it picks up from
    resumed = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert main([*args[:-2], "--no-store", "--out", str(tmp_path / "clean")]) == 0
    clean = json.loads((tmp_path / "clean" / "results.json").read_text())
    # bitwise: the killed CLI, the resumed and the clean run all use the CLI's default --threads 1 on this machine
    assert _histories(resumed) == _histories(clean), killed_at
    assert resumed["methods"]["spsa"]["runs"][0]["steps"] == 400


def test_store_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--task", "digits-mlp", "--no-store", "--rerun", "--budget", "steps=2"]) == 2
    assert "--no-store cannot be combined" in capsys.readouterr().err


def test_half_precision_runs_are_stored_as_runs_with_float32_master_weights(tmp_path: Path) -> None:
    # half-precision runs stored before the trainer stepped float32 masters (float16 with Adam diverged at step 2)
    # are other computations: their key differs, so they are trained again rather than reused
    store = tmp_path / "s.sqlite"
    kw = dict(budget="steps=4", seeds=1, eval_points=2, memory=False, progress=False, log=None, store=store)
    for dtype in ("float32", "float16"):
        _, results = compare("digits-mlp", "backprop", out=tmp_path / dtype, dtype=dtype, **kw)
        assert results["methods"]["backprop"]["runs"][0]["status"] == "ok"
    configs = {r.config["dtype"]: r.config for r in Store(store).runs()}
    assert configs["float16"]["master_weights"] == "float32" and "master_weights" not in configs["float32"]
