"""The training loop: the order of its hook points, evaluation points, divergence, and the state it restores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import unigrad
from unigrad.core.errors import UnigradError
from unigrad.nn.decorrelation import Decorrelation, decorrelate
from unigrad.train.loop import Batch, Every, Fractions, Hook, TrainingLoop
from unigrad.train.state import dump_state, load_state


class Log(Hook):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_start(self, loop):
        self.calls.append("start")

    def before_step(self, loop, batch):
        self.calls.append("before")

    def after_estimate(self, loop, batch, estimate):
        assert all(p.grad is not None for p in loop.model.parameters())
        self.calls.append("estimate")

    def after_update(self, loop, batch):
        self.calls.append("update")

    def after_step(self, loop, record):
        self.calls.append(f"step{loop.step}")

    def on_step_end(self, loop, record):
        self.calls.append(f"end{loop.step}")

    def on_evaluate(self, loop, point):
        self.calls.append(f"eval{point['step']}")

    def on_end(self, loop):
        self.calls.append("stop")


def _loop(hooks, steps=4, evaluate=True, lr=0.1, x=None):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(8, 3) if x is None else x
    y = torch.randn(8, 1)

    def batches(loop):
        return Batch(unigrad.supervised(lambda out, t, reduction="none": ((out - t) ** 2).mean(1), x, y), x, 8)

    def point(loop):
        return {"step": loop.step, "train_loss": loop.train_loss()}

    return TrainingLoop(
        model,
        unigrad.make_estimator("backprop"),
        torch.optim.SGD(model.parameters(), lr=lr),
        batches,
        spent=lambda loop: loop.step / steps,
        evaluate=point if evaluate else None,
        schedule=Every(2, steps),
        hooks=hooks,
    )


def test_hooks_are_called_in_order_at_their_points():
    log = Log()
    loop = _loop([log]).run()
    step = ["before", "estimate", "update"]
    assert log.calls == [
        "start",
        "eval0",
        *step,
        "step0",
        "end1",
        *step,
        "step1",
        "end2",
        "eval2",
        *step,
        "step2",
        "end3",
        *step,
        "step3",
        "end4",
        "eval4",
        "stop",
    ]
    assert [p["step"] for p in loop.history] == [0, 2, 4] and loop.history[0]["train_loss"] is None
    assert loop.status == "ok" and loop.forward_equivalents > 0 and loop.losses == []


def test_a_non_finite_initial_score_is_refused_and_a_non_finite_loss_diverges():
    loop = _loop([])
    loop.evaluate = lambda loop: None
    with pytest.raises(UnigradError, match="initial model"):
        loop.run()
    loop = _loop([], evaluate=False, x=torch.full((8, 3), float("nan"))).run()
    assert loop.status == "diverged" and loop.failed_step == 1 and loop.step == 0


def test_fractions_schedule_evaluates_every_share_of_the_budget():
    loop = _loop([], steps=10)
    loop.schedule = Fractions(5)
    loop.run()
    assert [p["step"] for p in loop.history] == [0, 2, 4, 6, 8, 10]


def test_decorrelation_counters_travel_in_the_state_dict_and_old_checkpoints_load():
    def fresh():
        torch.manual_seed(0)
        return decorrelate(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), sample=2)

    model = fresh()
    for m in model.modules():
        if isinstance(m, Decorrelation):
            m.step = 7
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    est = unigrad.make_estimator("backprop")
    state = dump_state(model, opt, est)
    assert [int(v) for k, v in state["model"].items() if k.endswith("_extra_state")] == [7, 7]
    # a checkpoint written before the counters were extra state kept them apart, by module name
    old = {**state, "model": {k: v for k, v in state["model"].items() if not k.endswith("_extra_state")}}
    old["decor_steps"] = {k: 5 for k, m in model.named_modules() if isinstance(m, Decorrelation)}
    for saved, expected in ((state, 7), (old, 5)):
        other = fresh()
        load_state(saved, other, torch.optim.SGD(other.parameters(), lr=0.1), est)
        assert [m.step for m in other.modules() if isinstance(m, Decorrelation)] == [expected, expected]
