"""Checkpoints: atomic and checksummed files, and bitwise-exact resume after kill -9."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from unigrad.core.errors import UnigradError
from unigrad.train import train
from unigrad.train.checkpoint import MAGIC, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_round_trip_and_corruption_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.arange(5.0), "step": 3, "history": [{"a": 1.0}]})
    state = load_checkpoint(path)
    assert torch.equal(state["w"], torch.arange(5.0)) and state["step"] == 3
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the payload
    path.write_bytes(bytes(data))
    with pytest.raises(UnigradError, match="corrupted"):
        load_checkpoint(path)
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(UnigradError, match="corrupted"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UnigradError, match="not a unigrad checkpoint"):
        load_checkpoint(path)
    with pytest.raises(UnigradError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    assert MAGIC.endswith(b"\n")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UnigradError, match="No space left on device; the previous checkpoint is kept"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_a_checkpoint_path_that_cannot_be_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(UnigradError, match="Is a directory; no checkpoint was written"):  # nothing was there to keep
        save_checkpoint(tmp_path / "dir.pt", {"step": 1})
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(UnigradError, match=r"^cannot write checkpoint .*file/c\.pt: .*; no checkpoint was written$"):
        save_checkpoint(tmp_path / "file" / "c.pt", {"step": 1})  # its folder would be under a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.pt", "file"] and not any((tmp_path / "dir.pt").iterdir())


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


# threads=None: both sides run on the suite's thread count (train's own default is one thread), so the suite's
# two-thread configuration checks bitwise resume on two threads
RUN = dict(budget="steps=120", eval_points=6, lr=3e-3, threads=None)

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads({threads})
    from unigrad.train import train
    from unigrad.{module} import {cls}

    class Killed({cls}):
        def _estimate(self, model, objective, params):
            if self.step == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)
            return super()._estimate(model, objective, params)

    train("digits-mlp", Killed(seed=0, **{options}), checkpoint=sys.argv[1], {run}{decor})
    """
)


@pytest.mark.parametrize(
    ("name", "module", "cls", "options", "decor", "dtype"),
    [
        ("spsa", "zeroth.spsa", "SPSA", {"probes": 4}, None, "float32"),
        ("anp", "zeroth.anp", "ANP", {"probes": 2}, {"lr": 1e-3}, "float32"),  # danp: decorrelation counters, R too
        ("backprop", "first.backprop", "Backprop", {}, None, "float32"),
        ("kfac", "second.kfac", "KFAC", {"inverse_interval": 3}, None, "float32"),  # running factors and inverses
        ("lbfgs", "second.lbfgs", "LBFGS", {"history": 4}, None, "float32"),  # the (s, y) history
        # half precision: the float32 master weights the optimizer steps are in the checkpoint too
        ("spsa", "zeroth.spsa", "SPSA", {"probes": 4}, None, "float16"),
        ("backprop", "first.backprop", "Backprop", {}, None, "bfloat16"),
    ],
)
def test_resume_after_kill_9_is_bitwise_exact(
    tmp_path: Path, name: str, module: str, cls: str, options: dict, decor: dict | None, dtype: str
) -> None:
    kill_at = random.Random(f"{name}-{os.getpid()}").randrange(25, 115)  # a random step, past the first checkpoint
    decor_arg = f", decorrelation={decor!r}" if decor else ""
    run = {**RUN, "dtype": dtype}
    run_arg = ", ".join(f"{k}={v!r}" for k, v in run.items())
    # bitwise resume is promised for the same ops on the same machine and thread count: the killed run uses this
    # process's threads (a matmul split over another number of threads may round differently)
    threads = torch.get_num_threads()
    script = SCRIPT.format(module=module, cls=cls, options=options, run=run_arg, decor=decor_arg, threads=threads)
    path = tmp_path / "run.pt"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path), str(kill_at)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    interrupted = load_checkpoint(path)
    assert 0 < interrupted["step"] <= kill_at and not interrupted["finished"]  # the last checkpoint before the kill
    half = dtype != "float32"
    assert ("masters" in interrupted) == half
    if half:
        assert all(m.dtype == torch.float32 for m in interrupted["masters"])

    kw = {"estimator_options": options, "decorrelation": decor, **run}
    resumed = train("digits-mlp", name, checkpoint=path, resume=True, **kw)
    whole = train("digits-mlp", name, **kw)
    assert resumed.steps == whole.steps == 120
    assert all(torch.equal(a, b) for a, b in zip(_params(resumed.model), _params(whole.model), strict=True)), kill_at
    moments = [[t for t in s.values() if torch.is_tensor(t)] for s in resumed.optimizer.state_dict()["state"].values()]
    whole_moments = [
        [t for t in s.values() if torch.is_tensor(t)] for s in whole.optimizer.state_dict()["state"].values()
    ]
    assert all(
        torch.equal(a, b) for x, y in zip(moments, whole_moments, strict=True) for a, b in zip(x, y, strict=True)
    )
    assert all(p.dtype == torch.float32 for g in resumed.optimizer.param_groups for p in g["params"])
    assert resumed.forward_equivalents == whole.forward_equivalents
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in whole.history]
    assert load_checkpoint(path)["finished"]


def test_resume_of_a_finished_run_returns_it_and_other_runs_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.pt"
    first = train("digits-mlp", "spsa", checkpoint=path, budget="steps=20", eval_points=2)
    again = train("digits-mlp", "spsa", checkpoint=path, resume=True, budget="steps=20", eval_points=2)
    assert again.steps == 20 and again.history == first.history
    assert all(torch.equal(a, b) for a, b in zip(_params(first.model), _params(again.model), strict=True))
    with pytest.raises(UnigradError, match=r"different run \(differs in budget, lr\)"):
        train("digits-mlp", "spsa", checkpoint=path, resume=True, budget="steps=30", eval_points=2, lr=0.01)


def test_resumed_divergence_keeps_the_last_good_state(tmp_path: Path) -> None:
    path = tmp_path / "run.pt"
    kw = {"optimizer": "sgd", "lr": 1e6, "optimizer_options": {"momentum": 0.9}, "eval_points": 40}
    first = train("digits-mlp", "backprop", checkpoint=path, budget="steps=40", **kw)
    assert first.status == "diverged"
    again = train("digits-mlp", "backprop", checkpoint=path, resume=True, budget="steps=40", **kw)
    assert again.status == "diverged" and again.message == first.message
    assert again.last_good_step == first.last_good_step and again.history == first.history
    assert all(torch.equal(a, b) for a, b in zip(_params(first.model), _params(again.model), strict=True))
