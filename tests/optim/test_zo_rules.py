"""The update rules of ZO-Bench as torch.optim optimizers: signSGD moves every coordinate by lr; the conservative
step keeps the lowest of θ, θ − lr·g, θ + lr·g and counts its forwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import unigrad
from tests.problems import mlp
from unigrad import UnigradError
from unigrad.optim import ConserveSGD, SignSGD
from unigrad.train import train


def test_sign_sgd_moves_each_coordinate_by_lr() -> None:
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0, 0.5]))
    p.grad = torch.tensor([0.3, -1e-6, 0.0, -5.0])
    SignSGD([p], lr=0.1).step()
    assert torch.equal(p.detach(), torch.tensor([0.9, -1.9, 3.0, 0.6]))


def _quadratic_closure(p: nn.Parameter):
    calls = []

    def closure() -> float:
        calls.append(1)
        return float((p.detach() ** 2).sum())

    return closure, calls


@pytest.mark.parametrize(
    ("grad", "kept"),
    [([1.0, 1.0], [0.9, 0.9]), ([-1.0, -1.0], [0.9, 0.9]), ([10.0, -10.0], [1.0, 1.0])],
    ids=["down", "up-is-down", "neither"],
)
def test_conserve_keeps_the_lowest_candidate(grad, kept) -> None:
    p = nn.Parameter(torch.tensor([1.0, 1.0]))
    p.grad = torch.tensor(grad)
    closure, calls = _quadratic_closure(p)
    opt = ConserveSGD([p], lr=0.1)
    loss = opt.step(closure)
    assert torch.allclose(p.detach(), torch.tensor(kept)) and len(calls) == 3
    assert loss == pytest.approx(float((p.detach() ** 2).sum()))
    if kept == [1.0, 1.0]:
        assert torch.equal(p.detach(), torch.tensor([1.0, 1.0]))  # θ itself, bit for bit


def test_conserve_never_raises_the_batch_loss_in_training() -> None:
    problem = mlp()
    est = unigrad.make_estimator("spsa", probes=2, sigma=1e-3, seed=0)
    opt = ConserveSGD(problem.model.parameters(), lr=0.5)
    for _ in range(20):
        before = problem.loss()
        opt.zero_grad()
        est.estimate(problem.model, problem.objective)
        opt.step(problem.loss)
        assert problem.loss() <= before
    assert sum(opt.kept) == 20


def test_the_loop_passes_a_closure_and_counts_its_forwards() -> None:
    runs = {
        name: train("digits-mlp", "spsa", optimizer=name, lr=1e-2, budget="steps=3", estimator_options={"probes": 2})
        for name in ("sgd", "conserve-sgd")
    }
    assert runs["conserve-sgd"].forward_equivalents == pytest.approx(runs["sgd"].forward_equivalents * 7 / 4)


def test_conserve_needs_a_closure() -> None:
    with pytest.raises(UnigradError, match="closure"):
        ConserveSGD([nn.Parameter(torch.ones(2))]).step()
