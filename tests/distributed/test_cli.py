"""``unigrad train --distributed`` under a two-process launch equals the one-process run, and its
user errors are one line with exit status 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.distributed._launch import launch
from unigrad.cli import main

ARGS = ["--task", "digits-mlp", "--method", "spsa:probes=5", "--budget", "steps=12", "--eval-points", "3"]


def test_two_processes_write_the_one_process_results(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "unigrad", "train", *ARGS, "--distributed", "--out", str(out), "--no-progress"]
    procs = launch(cmd)
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "on 2 processes" in outputs[0][0] and outputs[1][0] == ""  # only rank 0 reports and writes
    dist = json.loads((out / "results.json").read_text())
    assert dist["world_size"] == 2 and dist["run"]["history"][-1]["bytes"] > 0

    single = tmp_path / "single"
    assert main(["train", *ARGS, "--out", str(single), "--no-store", "--no-memory", "--no-progress"]) == 0
    one = json.loads((single / "results.json").read_text())
    (run,) = one["methods"]["spsa"]["runs"]
    # exact: each probe is evaluated by one process on the whole batch with the ops of one process, and both CLIs
    # run with the default --threads 1
    for key in ("test_loss", "test_accuracy", "train_loss", "forward_equivalents"):
        assert dist["run"]["final"][key] == run["final"][key], key


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--method", "spsa", "--distributed"], "needs --out"),
        (["train", "--method", "backprop", "--distributed", "--out", "x"], "--distributed trains es, mezo"),
        (["train", "--method", "spsa", "--timeout", "5"], "need --distributed"),
        (["train", "--method", "spsa", "--distributed", "--out", "x"], "not started by torchrun"),
        (["train", "--method", "spsa", "--distributed", "--out", "x", "--store", "s.sqlite"], "do not apply to --dist"),
        (["train", "--method", "spsa", "--distributed", "--out", "x", "--rerun"], "do not apply to --distributed"),
    ],
)
def test_user_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        assert k not in os.environ
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
