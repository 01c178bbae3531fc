"""Activity-perturbed forward gradient: unbiased, lower variance than weight tangents, contract, cost."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unigrad
import unigrad.nn.models
from tests.problems import (
    Problem,
    assert_contract,
    assert_mean_matches,
    estimates,
    flat_grad,
    mean_mismatch,
    mlp,
    train_losses,
)
from unigrad import UnigradError, make_estimator
from unigrad.first.activity_forward_gradient import ActivityForwardGradient
from unigrad.first.forward_gradient import ForwardGradient
from unigrad.nn.local_heads import LocallySupervised, head_key, with_local_heads
from unigrad.train import train


def _conv_problem(seed: int = 0) -> Problem:
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.randn(8, 1, 5, 5, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    return Problem(model, unigrad.supervised(F.cross_entropy, x, y), "conv")


def test_unbiased_on_mlp_and_the_check_has_power() -> None:
    problem = mlp()
    g = problem.grad()
    samples = estimates(ActivityForwardGradient(probes=2, seed=3), problem, 150)
    assert_mean_matches(samples, g)
    assert mean_mismatch(samples, 0.75 * g)  # 17 SE along g (measured) vs the 5 SE threshold


@pytest.mark.parametrize("distribution", ["rademacher", "sphere"])
def test_unbiased_with_other_tangents(distribution: str) -> None:
    problem = mlp(batch=16)
    samples = estimates(ActivityForwardGradient(probes=2, distribution=distribution, seed=1), problem, 100)
    assert_mean_matches(samples, problem.grad())


def test_unbiased_on_conv() -> None:
    problem = _conv_problem()
    samples = estimates(ActivityForwardGradient(probes=2, seed=2), problem, 100)
    assert_mean_matches(samples, problem.grad())


def test_lower_variance_than_weight_tangents() -> None:
    # 10-16-3 MLP: 227 weights but 19 nodes, so activity tangents search a far smaller space (Ren et al.)
    problem = mlp()
    g = problem.grad()
    n, q = 40, 4
    act = estimates(ActivityForwardGradient(probes=q, seed=0), problem, n)
    wgt = estimates(ForwardGradient(probes=q, seed=0), problem, n)
    mse_act = float(((act - g) ** 2).sum(1).mean())
    mse_wgt = float(((wgt - g) ** 2).sum(1).mean())
    # weight tangents: E‖g̃ − g‖² = (d + 1)‖g‖²/q ≈ 57‖g‖² here; measured ~30× above the activity estimate
    # (ratio 0.030–0.037 over seeds 0–5)
    assert mse_act < 0.25 * mse_wgt, (mse_act, mse_wgt)


def test_contract_and_hooks_removed() -> None:
    problem = mlp()
    assert_contract(lambda seed: ActivityForwardGradient(probes=3, seed=seed), problem)
    assert all(not m._forward_hooks for m in problem.model.modules())
    x = problem.objective.inputs

    def failing(model: nn.Module) -> torch.Tensor:
        model(x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ActivityForwardGradient().estimate(problem.model, unigrad.objective(failing, n_samples=64))
    assert all(not m._forward_hooks for m in problem.model.modules())


@pytest.mark.parametrize("vmappable", [True, False])
def test_cost_counts_samples_and_loss_is_exact(vmappable: bool) -> None:
    # float64 (was float32): vmapped vs per-tangent jvps are different kernels, whose float32 sums (≈ 32 samples +
    # 16 units) may differ by ≲ 2·50·eps32 ≈ 1e-5 of the largest entry, above the old atol 1e-7 for small ones;
    # in float64 that is ≲ 2e-14 ≪ 1e-12. The losses: a float64 mean of the same per-sample losses either way.
    problem = mlp(batch=32, dtype=torch.float64)
    x, y = problem.objective.inputs, problem.objective.targets
    obj = unigrad.objective(lambda model: F.cross_entropy(model(x), y, reduction="none"), n_samples=32)
    obj.vmappable = vmappable
    e = ActivityForwardGradient(probes=5, seed=7).estimate(problem.model, obj)
    assert e.cost.jvps == 5 * 32
    assert e.cost.forwards == (2 if vmappable else 6) * 32  # clean pass + the JVPs' primal(s)
    assert e.cost.backwards == e.cost.hvps == 0
    assert e.loss == pytest.approx(problem.loss(), rel=1e-6) and not e.loss_is_probe_mean
    g = flat_grad(problem.model)
    ActivityForwardGradient(probes=5, seed=7).estimate(problem.model, problem.objective)
    assert torch.allclose(g, flat_grad(problem.model), rtol=1e-9, atol=1e-12)  # same noise either way


def test_training_lowers_the_loss() -> None:
    problem = mlp(batch=128, seed=1)
    first, last = train_losses(ActivityForwardGradient(probes=2, seed=0), problem)
    assert last < 0.75 * first, (first, last)  # 0.27–0.31 of the first loss over seeds 0–5


def test_rejects_other_parameters_and_scalar_losses() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    x, y = torch.zeros(3, 4), torch.zeros(3, dtype=torch.long)
    with pytest.raises(UnigradError, match=r"1\.weight"):
        ActivityForwardGradient().estimate(model, unigrad.supervised(F.cross_entropy, x, y))
    model[1].requires_grad_(False)
    scalar = unigrad.objective(lambda m: F.cross_entropy(m(x), y), n_samples=3)
    with pytest.raises(UnigradError, match="per-sample"):
        ActivityForwardGradient().estimate(model, scalar)


def test_registry() -> None:
    est = make_estimator("activity-forward-gradient", probes=2, seed=1)
    assert isinstance(est, ActivityForwardGradient) and est.order == 1
    assert "probes=2" in repr(est)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"probes": 0}, "probes"),
        ({"probes": 1.5}, "probes"),
        ({"distribution": "cauchy"}, "distribution"),
        ({"noise_source": "disk"}, "noise_source"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(UnigradError, match=match):
        ActivityForwardGradient(**options)


# -- local losses (Ren et al. §4) ----------------------------------------------------------------


def _local_problem(seed: int = 0, batch: int = 32) -> Problem:
    g = torch.Generator().manual_seed(seed)
    body = unigrad.nn.models.mlp([6, 8, 7, 3], activation="tanh", seed=seed)
    x = torch.randn(batch, 6, generator=g)
    y = (x @ torch.randn(6, 3, generator=g)).argmax(dim=1)  # a linear teacher
    model = with_local_heads(body, x[:2], seed=seed)
    return Problem(model, unigrad.supervised(F.cross_entropy, x, y), "local")


def _local_reference(problem: Problem) -> torch.Tensor:
    """Gradient of the greedy objective, written out by hand: each block's loss, a stop-gradient at each block input."""
    model, x, y = problem.model, problem.objective.inputs, problem.objective.targets
    l1, l2, l3 = model.body[1], model.body[3], model.body[5]
    h1, h2 = model.heads[head_key("3")], model.heads[head_key("5")]
    model.zero_grad(set_to_none=True)
    a1 = torch.tanh(l1(x))
    a2 = torch.tanh(l2(a1.detach()))
    out = l3(a2.detach())
    losses = F.cross_entropy(h1(a1), y) + F.cross_entropy(h2(a2), y) + F.cross_entropy(out, y)
    losses.backward()
    return flat_grad(model)


def test_local_losses_unbiased_for_the_greedy_objective() -> None:
    problem = _local_problem()
    g = _local_reference(problem)
    samples = estimates(ActivityForwardGradient(probes=2, local_losses=True, seed=4), problem, 150)
    # the heads' part is exact (no noise), so there the check is rounding only: float32 sums of 32 samples of
    # entries ≤ 0.32 by two routes, ≲ 2·32·eps32·0.32 ≈ 2.5e-6 (atol 1e-5: the default 1e-6 was below that bound)
    assert_mean_matches(samples, g, atol=1e-5)
    # ... every sample has it (same bound; atol was 1e-6; measured bitwise)
    n_heads = sum(p.numel() for p in problem.model.heads.parameters())
    assert torch.allclose(samples[:, -n_heads:], g[-n_heads:].expand(150, -1), rtol=1e-4, atol=1e-5)
    # and the check has power: the end-to-end gradient of the model's loss is a different target
    assert mean_mismatch(samples[:, :-n_heads], problem.grad()[:-n_heads])  # 49 SE on one coordinate (measured)


def test_local_losses_train_every_block_and_report_head_losses() -> None:
    problem = _local_problem(seed=1, batch=128)
    est = ActivityForwardGradient(probes=2, local_losses=True, seed=0)
    e = est.estimate(problem.model, problem.objective)
    assert len(e.info["local_losses"]) == 2 and all(v > 0 for v in e.info["local_losses"])
    assert e.info["directional_derivatives"].shape == (2, 3, 128)  # probes × blocks × samples
    assert e.cost.forwards == 2 * 128 and e.cost.jvps == 2 * 128
    first, last = train_losses(est, problem)
    assert last < 0.75 * first, (first, last)  # 0.06–0.08 of the first loss over seeds 0–5


def test_local_losses_contract_and_errors() -> None:
    assert_contract(lambda seed: ActivityForwardGradient(probes=2, local_losses=True, seed=seed), _local_problem())
    plain = mlp()
    with pytest.raises(UnigradError, match="with_local_heads"):
        ActivityForwardGradient(local_losses=True).estimate(plain.model, plain.objective)
    problem = _local_problem()
    x, y = problem.objective.inputs, problem.objective.targets
    custom = unigrad.objective(lambda m: F.cross_entropy(m(x), y, reduction="none"), n_samples=32)
    with pytest.raises(UnigradError, match="supervised"):
        ActivityForwardGradient(local_losses=True).estimate(problem.model, custom)
    with pytest.raises(UnigradError, match="local_losses"):
        ActivityForwardGradient(local_losses="yes")


def test_train_adds_heads_for_local_losses() -> None:
    result = train(
        "digits-mlp", "activity-forward-gradient", lr=1e-2, estimator_options={"local_losses": True}, budget="steps=60"
    )
    assert isinstance(result.model, LocallySupervised)
    assert result.final["test_accuracy"] > 0.2  # chance is 0.1; measured 0.69–0.77 over seeds 0–3


def test_unbiased_on_decorrelated_conv() -> None:
    # a patch-wise decorrelated convolution is one layer: tangents on its output, gradient G·Rᵀ
    problem = _conv_problem(seed=4)
    unigrad.decorrelate(problem.model, conv=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        r = problem.model[0].decor.R
        r.add_(0.2 * torch.randn(r.shape, generator=g))
    samples = estimates(ActivityForwardGradient(probes=2, seed=5), problem, 100)
    assert_mean_matches(samples, problem.grad())
    conv_weight = samples[:, : problem.model[0].weight.numel()]
    assert conv_weight.abs().sum() > 0
