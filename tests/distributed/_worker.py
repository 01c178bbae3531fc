"""One process of a multi-process test run: ``python _worker.py CONFIG.json`` under RANK/WORLD_SIZE/MASTER_*.

Runs each job of the config with :func:`unigrad.distributed.distributed_train` in one process group and
saves, per job and rank, the final parameters, the history and each step's cost. A ``fault`` makes one
rank exit (``"die"``) or stop answering (``"hang"``) when it starts a given step. A
:class:`~unigrad.core.errors.UnigradError` is printed as ``error: <message>`` with exit status 2, as the CLI does
(through :func:`unigrad.distributed.exit_process`).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import torch

from unigrad.core.errors import UnigradError
from unigrad.core.rng import generator
from unigrad.data.tasks import Task
from unigrad.nn.models import mlp
from unigrad.registry import make_estimator


def _synthetic_data() -> tuple[torch.Tensor, ...]:
    g = generator(7, 7)
    x = torch.randn(640, 20, generator=g)
    w = torch.randn(20, 10, generator=g)
    y = (x @ w).argmax(1)
    return x[:512], y[:512], x[512:], y[512:]


@functools.cache
def synthetic_task(hidden: int = 16) -> Task:
    """A small classification task whose MLP 20-h-h-10 has ``d`` growing with ``hidden``."""
    return Task(
        f"synthetic-{hidden}", "synthetic", _synthetic_data, lambda seed: mlp([20, hidden, hidden, 10], seed=seed)
    )


def run_job(job: dict, fault: dict | None, rank: int, out: Path, timeout: float) -> None:
    from unigrad.distributed import distributed_train

    if job.get("stack_passes") is False:  # node perturbation's passes one by one: bitwise like one process
        from unigrad.nn import perturbation

        perturbation.STACK_PASSES = False
    est = make_estimator(job["method"], seed=job.get("seed", 0), **job.get("options", {}))
    costs: list[tuple[int, int]] = []
    inner = est.estimate

    def estimate(model, objective):
        step = len(costs)
        if fault is not None and fault["rank"] == rank and step == fault["step"]:
            if fault["kind"] == "die":
                os._exit(17)
            time.sleep(600)
        e = inner(model, objective)
        costs.append((e.cost.forwards, e.cost.bytes))
        return e

    est.estimate = estimate
    r = distributed_train(
        synthetic_task(job.get("hidden", 16)),
        est,
        backend="gloo",
        timeout=timeout,
        data_parallel=job.get("data_parallel", False),
        check_every=job.get("check_every"),
        lr=job.get("lr", 1e-2),
        optimizer=job.get("optimizer", "adam"),
        budget=job.get("budget", "steps=4"),
        batch_size=job.get("batch_size", 64),
        seed=job.get("seed", 0),
        eval_points=job.get("eval_points", 2),
        checkpoint=job.get("checkpoint"),
        resume=job.get("resume", False),
    )
    torch.save(
        {
            "params": [p.detach().clone() for p in r.model.parameters()],
            "history": r.history,
            "costs": costs,
            "forward_equivalents": r.forward_equivalents,
        },
        out / f"{job['name']}.rank{rank}.pt",
    )


def main() -> None:
    torch.set_num_threads(1)
    cfg = json.loads(Path(sys.argv[1]).read_text())
    from unigrad.distributed import exit_process, init, shutdown

    try:
        rank, _ = init("gloo", cfg["timeout"])
        for job in cfg["jobs"]:
            run_job(job, cfg.get("fault"), rank, Path(cfg["out"]), cfg["timeout"])
    except UnigradError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        exit_process(2)
    shutdown()


if __name__ == "__main__":
    main()
