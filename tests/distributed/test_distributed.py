"""Probe-parallel training on two local processes (Gloo on CPU): the same bits as one process, bytes
that grow with the probes and not with the parameters, a failing process stopping the other within
the timeout, and resuming a checkpoint with another world size."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.distributed._launch import launch
from tests.distributed._worker import synthetic_task
from unigrad import make_estimator
from unigrad.core.errors import UnigradError
from unigrad.core.exchange import LocalExchange, ProbeExchange, gather_bytes, probe_block
from unigrad.core.objective import supervised
from unigrad.nn import perturbation
from unigrad.train import train

WORKER = Path(__file__).with_name("_worker.py")
Q = 5  # odd, so the two processes evaluate blocks of different sizes (2 and 3 probes)
METHODS = {
    "spsa": {"probes": Q, "sigma": 1e-2},
    "es": {"probes": Q, "sigma": 1e-2},
    "mezo": {"probes": Q, "sigma": 1e-2},
    "np": {"probes": Q, "sigma": 1e-2},
}
# the data-parallel comparison: raw ES (no ranks) and SGD, so that rounding moves the parameters smoothly (below)
DATA_PARALLEL = {"options": {**METHODS["es"], "fitness_shaping": "raw"}, "optimizer": "sgd"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _launch(tmp: Path, jobs: list[dict], *, timeout: float = 20.0, fault: dict | None = None) -> list[subprocess.Popen]:
    cfg = tmp / f"config-{len(list(tmp.glob('config-*')))}.json"
    cfg.write_text(json.dumps({"jobs": jobs, "out": str(tmp), "timeout": timeout, "fault": fault}))
    return launch([sys.executable, str(WORKER), str(cfg)], PYTHONWARNINGS="ignore")


def _finish(procs: list[subprocess.Popen], wait: float = 120.0) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        out.append((p.returncode, err))
    return out


def _reference(method: str, options: dict | None = None, **kw) -> list[torch.Tensor]:
    est = make_estimator(method, seed=0, **(METHODS[method] if options is None else options))
    r = train(synthetic_task(kw.pop("hidden", 16)), est, lr=1e-2, budget="steps=4", batch_size=64, eval_points=2, **kw)
    return [p.detach().clone() for p in r.model.parameters()]


def _load(tmp: Path, name: str, rank: int) -> dict:
    return torch.load(tmp / f"{name}.rank{rank}.pt", weights_only=False)


def test_split_and_local_exchange_are_exact():
    assert [probe_block(5, r, 2) for r in range(2)] == [range(0, 2), range(2, 5)]
    assert [len(probe_block(3, r, 4)) for r in range(4)] == [0, 1, 1, 1]
    assert gather_bytes(5, 2, 2) == 48 and gather_bytes(5, 2, 1) == 0
    # a world of one: the estimators compute the same bits with and without the exchange
    task = synthetic_task()
    data = task.data()
    for method in METHODS:
        grads = []
        for ex in (None, LocalExchange()):
            model = task.build_model(0)
            est = make_estimator(method, seed=3, exchange=ex, **METHODS[method])
            e = est.estimate(model, supervised(task.loss_fn, data.x_train[:32], data.y_train[:32]))
            assert e.cost.bytes == 0
            grads.append([p.grad.clone() for p in model.parameters()])
        assert all(torch.equal(a, b) for a, b in zip(*grads)), method


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One launch of two processes running every job of the module's equality, bytes and resume tests."""
    tmp = tmp_path_factory.mktemp("dist")
    # a checkpoint of a one-process run stopped at its first evaluation point (step 2 of 4)
    ckpt = tmp / "one-to-two.ckpt"

    class Stop(Exception):
        pass

    def stop_after_start(point):
        if point["step"] > 0:
            raise Stop

    est = make_estimator("es", seed=0, **METHODS["es"])
    with pytest.raises(Stop):
        train(
            synthetic_task(),
            est,
            lr=1e-2,
            budget="steps=4",
            batch_size=64,
            eval_points=2,
            checkpoint=ckpt,
            on_record=stop_after_start,
        )
    # node perturbation stacks its passes into one batch, whose size differs between one process and two, and a
    # matrix product over more rows may round a row differently: the bitwise promise holds for passes one by one
    jobs = [{"name": m, "method": m, "options": METHODS[m], "check_every": 1, "stack_passes": False} for m in METHODS]
    jobs.append({"name": "spsa-wide", "method": "spsa", "options": METHODS["spsa"], "hidden": 64})
    jobs.append({"name": "es-data", "method": "es", **DATA_PARALLEL, "data_parallel": True})
    jobs.append({"name": "resume", "method": "es", "options": METHODS["es"], "checkpoint": str(ckpt), "resume": True})
    results = _finish(_launch(tmp, jobs))
    assert [rc for rc, _ in results] == [0, 0], results
    return tmp


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_train_bitwise_like_one(two_process_run, method, monkeypatch):
    monkeypatch.setattr(perturbation, "STACK_PASSES", False)
    ref = _reference(method)
    for rank in range(2):
        got = _load(two_process_run, method, rank)
        assert all(torch.equal(a, b) for a, b in zip(got["params"], ref)), (method, rank)
    h0, h1 = _load(two_process_run, method, 0)["history"], _load(two_process_run, method, 1)["history"]
    assert [h["train_loss"] for h in h0] == [h["train_loss"] for h in h1]


def test_node_perturbation_gathers_per_sample_losses_and_refuses_data_parallel(two_process_run):
    batch = 64
    for rank in range(2):
        costs = _load(two_process_run, "np", rank)["costs"]
        # B per-sample losses per probe: (W−1)·B·⌈q/W⌉·8 = 1,536 bytes a step, whatever the width
        assert [b for _, b in costs] == [gather_bytes(Q, batch, 2)] * 4
        # the clean pass and this process's noisy passes
        assert [f for f, _ in costs] == [(1 + len(probe_block(Q, rank, 2))) * batch] * 4
    ex = LocalExchange()
    ex.data_parallel = True
    task = synthetic_task()
    with pytest.raises(UnigradError, match="np cannot run data-parallel"):
        make_estimator("np", exchange=ex).estimate(
            task.build_model(0), supervised(task.loss_fn, task.data().x_train[:8], task.data().y_train[:8])
        )


def test_bytes_per_step_follow_the_probes_not_the_parameters(two_process_run):
    batch, signs = 64, 2
    per_step = gather_bytes(Q, signs, 2)  # (W−1)·signs·⌈q/W⌉·8 = 48 bytes
    narrow = [_load(two_process_run, "spsa", r)["costs"] for r in range(2)]
    wide = [_load(two_process_run, "spsa-wide", r)["costs"] for r in range(2)]
    for rank in range(2):
        assert [b for _, b in narrow[rank]] == [per_step] * 4
        assert [b for _, b in wide[rank]] == [per_step] * 4  # 7.9× the parameters (6,154 vs 778), same bytes
        # each process counts the forwards it ran itself: its block of probes, both signs, the whole batch
        assert [f for f, _ in narrow[rank]] == [len(probe_block(Q, rank, 2)) * signs * batch] * 4
    d_narrow = sum(p.numel() for p in synthetic_task(16).build_model(0).parameters())
    d_wide = sum(p.numel() for p in synthetic_task(64).build_model(0).parameters())
    assert d_wide > 5 * d_narrow
    # the run's forward-pass equivalents are those of one process doing everything, and rank 0 reports its bytes
    got = _load(two_process_run, "spsa", 0)
    assert got["forward_equivalents"] == 4 * Q * signs * batch
    assert got["history"][-1]["bytes"] == 4 * per_step


def test_data_parallel_matches_one_process_to_rounding(two_process_run):
    # The loss table is a weighted mean of two 32-sample float32 means instead of one 64-sample mean: ≲ 100·u·L
    # ≈ 1.4e-5 apart (u = 6e-8, L ≈ 2.3). Each coefficient (f⁺ − f⁻)/2σ then moves by ≲ 1.4e-3, each gradient entry
    # by ≲ 1.4e-3·max_j (1/q)Σ|ε_ij| ≈ 2.8e-3, and 4 SGD steps of lr 1e-2 by ≲ 1.1e-4, 3e-4 with room for the feedback
    # through later steps (measured with ±1.4e-5 on every loss: ≤ 4.2e-5). With centred ranks and Adam (the other
    # jobs) no such bound exists: a step's losses come within 1e-6 of each other, and a swapped rank or a flipped
    # Adam sign moves a parameter by up to 2·lr (measured: 0.03).
    ref = _reference("es", DATA_PARALLEL["options"], optimizer=DATA_PARALLEL["optimizer"])
    for rank in range(2):
        got = _load(two_process_run, "es-data", rank)
        assert all(torch.allclose(a, b, rtol=0, atol=3e-4) for a, b in zip(got["params"], ref))
        # every process evaluates all probes on its half of the batch and sends its table and shard size
        assert [f for f, _ in got["costs"]] == [Q * 2 * 32] * 4
        assert [b for _, b in got["costs"]] == [(2 * Q + 1) * 8] * 4


def test_resume_with_two_processes_from_a_one_process_checkpoint(two_process_run):
    ref = _reference("es")
    for rank in range(2):
        got = _load(two_process_run, "resume", rank)
        assert got["history"][0]["step"] == 0 and got["history"][-1]["step"] == 4
        assert all(torch.equal(a, b) for a, b in zip(got["params"], ref))


def test_a_dead_process_stops_the_other_and_a_one_process_resume_finishes_the_run(tmp_path):
    ckpt = tmp_path / "two-to-one.ckpt"
    job = {"name": "dies", "method": "mezo", "options": METHODS["mezo"], "checkpoint": str(ckpt), "budget": "steps=4"}
    (rc0, err0), (rc1, _) = _finish(_launch(tmp_path, [job], timeout=20.0, fault={"rank": 1, "step": 3, "kind": "die"}))
    assert rc1 == 17 and rc0 == 2, err0
    lines = [line for line in err0.splitlines() if line.startswith("error:")]
    # the dead peer is noticed, not waited out: a timeout would say "did not answer within the 20 s timeout"
    # (no wall-clock bound here: two processes importing torch on a loaded machine took 23 s)
    assert len(lines) == 1 and "rank 0: the all-gather failed: another process died" in lines[0], err0
    # rank 0 wrote the checkpoint of step 2 (eval_points=2); one process finishes the run from it
    est = make_estimator("mezo", seed=0, **METHODS["mezo"])
    r = train(
        synthetic_task(), est, lr=1e-2, budget="steps=4", batch_size=64, eval_points=2, checkpoint=ckpt, resume=True
    )
    assert r.history[-1]["step"] == 4
    assert all(torch.equal(a, b) for a, b in zip(r.model.parameters(), _reference("mezo")))


def test_a_hung_process_makes_the_other_fail_within_the_timeout(tmp_path):
    job = {"name": "hangs", "method": "spsa", "options": METHODS["spsa"]}
    procs = _launch(tmp_path, [job], timeout=2.0, fault={"rank": 1, "step": 1, "kind": "hang"})
    t0 = time.perf_counter()
    try:
        _, err0 = procs[0].communicate(timeout=60)
        waited = time.perf_counter() - t0
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 2, err0
    lines = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "did not answer within the 2 s timeout" in lines[0], err0
    # the 2 s timeout plus a process start that imports torch: a few seconds, up to ~20 s on an overloaded machine
    assert waited < 30.0


class _TwoRanks(ProbeExchange):
    """Rank 0 of a pretend pair whose other rank answers ``offset`` plus what this one sends."""

    def __init__(self, offset: int) -> None:
        super().__init__(0, 2)
        self.offset = offset

    def all_gather(self, value: torch.Tensor) -> torch.Tensor:
        return torch.stack([value, value + self.offset])


def test_parameter_check_and_padding_of_uneven_blocks():
    params = [p for p in synthetic_task().build_model(0).parameters()]
    _TwoRanks(0).check_identical(params, step=3)
    with pytest.raises(UnigradError, match="parameters differ between processes at step 3 \\(rank 1 against rank 0\\)"):
        _TwoRanks(1).check_identical(params, step=3)
    # rank 0 holds probes 0, 1 of 5; the other rank's block (padded to 3) lands at probes 2..4
    ex = _TwoRanks(0)
    table = ex.gather(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64), 5)
    assert table.shape == (2, 5) and ex.bytes_sent == gather_bytes(5, 2, 2) == 48
    assert table[:, :2].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(UnigradError, match="do not match probes"):
        ex.gather(torch.zeros(2, 3, dtype=torch.float64), 5)


def test_methods_without_probes_are_refused():
    with pytest.raises(UnigradError, match="cannot spread its work over processes"):
        train(synthetic_task(), "backprop", budget="steps=1", exchange=LocalExchange())
