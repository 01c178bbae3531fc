"""MeZO-SVRG: at the anchor the estimate is the anchor's; elsewhere its mean is ∇f(θ) − ∇f(θ̄) + g̃; its cost."""

from __future__ import annotations

import pytest
import torch

from tests.problems import assert_contract, assert_mean_matches, flat_grad, logistic, mlp
from unigrad import UnigradError, make_estimator
from unigrad.train import train
from unigrad.zeroth.mezo_svrg import MeZOSVRG


def test_at_the_anchor_the_estimate_is_the_anchor_estimate() -> None:
    problem = mlp()
    est = MeZOSVRG(probes=4, refresh=5, seed=1)
    e0 = est.estimate(problem.model, problem.objective)
    anchor = flat_grad(problem.model)
    assert e0.info["anchor_step"]
    e1 = est.estimate(problem.model, problem.objective)  # θ = θ̄: the corrections cancel exactly
    assert not e1.info["anchor_step"]
    torch.testing.assert_close(flat_grad(problem.model), anchor, rtol=0, atol=0)


def test_mean_is_the_corrected_gradient() -> None:
    problem = logistic()
    est = MeZOSVRG(probes=4, sigma=1e-3, refresh=10**9, seed=2)
    est.estimate(problem.model, problem.objective)  # anchor at θ̄
    g_anchor = flat_grad(problem.model)
    grad_bar = problem.grad()
    with torch.no_grad():
        for p in problem.model.parameters():
            p.add_(0.3)  # move away from the anchor
    samples = []
    for _ in range(300):
        est.estimate(problem.model, problem.objective)
        samples.append(flat_grad(problem.model))
    assert_mean_matches(torch.stack(samples), problem.grad() - grad_bar + g_anchor)


def test_cost_state_and_contract() -> None:
    problem = mlp()
    est = MeZOSVRG(probes=3, refresh=2)
    first, second = (est.estimate(problem.model, problem.objective) for _ in range(2))
    assert first.cost.forwards == 6 * 64 and second.cost.forwards == 12 * 64
    d = sum(p.numel() for p in problem.model.parameters())
    assert second.info["state_bytes"] == 2 * 4 * d
    assert_contract(lambda seed: MeZOSVRG(probes=2, refresh=2, seed=seed), mlp())


def test_the_training_loop_gives_it_an_anchor_batch() -> None:
    run = train(
        "digits-mlp", "mezo-svrg", optimizer="adam", lr=1e-3, budget="steps=20", seed=0,
        estimator_options={"probes": 4, "anchor_samples": 300, "refresh": 5},
    )  # fmt: skip
    assert run.status == "ok" and run.estimator.anchor_objective.n_samples == 300
    # 4 anchor steps of 2·4·300 samples, 16 minibatch steps of 4·4 forwards of a batch of about 62.5
    assert run.forward_equivalents == pytest.approx(4 * 2400 + 16 * 16 * 1437 / 23, rel=0.05)


@pytest.mark.parametrize(("key", "bad"), [("refresh", 0), ("anchor_samples", 0), ("anchor_scale", 0.0)])
def test_bad_options(key, bad) -> None:
    with pytest.raises(UnigradError, match=key):
        make_estimator("mezo-svrg", **{key: bad})
