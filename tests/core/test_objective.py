"""Objectives: per-sample losses from ``supervised``, declared costs from ``objective``, non-finite checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unigrad
from unigrad import Cost, NonFiniteLossError, UnigradError, make_estimator
from unigrad.core.objective import check_finite, evaluate, n_samples, reduce


def data(batch: int = 12, features: int = 5, classes: int = 4) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Linear(features, classes)
    x = torch.randn(batch, features, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    return model, x, y


@pytest.mark.parametrize(
    "loss_fn", [nn.CrossEntropyLoss(), F.cross_entropy, lambda out, y: F.cross_entropy(out, y, reduction="none")]
)
def test_supervised_cross_entropy_is_per_sample(loss_fn) -> None:
    model, x, y = data()
    obj = unigrad.supervised(loss_fn, x, y)
    with torch.no_grad():
        losses = obj(model)
    assert losses.shape == (12,)
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, reduction="none")
        mean = F.cross_entropy(model(x), y)
    assert torch.allclose(losses, expected)  # the same ops on the same tensors
    # the mean of 12 positive float32 losses, summed in two orders: each ≲ 11u = 6.6e-7 relative (u = eps32/2)
    assert float(reduce(losses)) == pytest.approx(float(mean), rel=2e-6)
    assert obj.n_samples == 12


def test_loss_module_switched_to_per_sample() -> None:
    loss = nn.CrossEntropyLoss()  # reduction="mean" by default
    model, x, y = data()
    unigrad.supervised(loss, x, y)(model)
    assert loss.reduction == "none"


@pytest.mark.parametrize("outputs", [1, 3])
def test_supervised_mse_is_per_sample(outputs: int) -> None:
    model, x, _ = data(classes=outputs)
    targets = torch.randn(12, outputs, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        losses = unigrad.supervised(F.mse_loss, x, targets)(model)
    assert losses.shape == (12,)  # elementwise squared errors averaged within each sample
    with torch.no_grad():
        expected = ((model(x) - targets) ** 2).mean(dim=1)
        mean = F.mse_loss(model(x), targets)
    assert torch.allclose(losses, expected)  # float32 squares, means of ≤ 3 terms: a few ulp ≪ rtol 1e-5
    # 12·outputs ≤ 36 positive float32 terms summed in two orders: each ≲ 35u ≈ 2.1e-6 relative
    assert float(losses.mean()) == pytest.approx(float(mean), rel=5e-6)


def test_scalar_loss_still_works() -> None:
    model, x, y = data()
    obj = unigrad.supervised(lambda out, t: F.cross_entropy(out, t), x, y)  # no reduction argument
    with torch.no_grad():
        loss = obj(model)
    assert loss.dim() == 0
    assert n_samples(obj, loss) == 12  # the batch size is still known


def test_batch_mismatch_and_bad_inputs() -> None:
    _, x, y = data()
    with pytest.raises(UnigradError, match="batch size: 12 vs 11"):
        unigrad.supervised(F.cross_entropy, x, y[:11])
    with pytest.raises(UnigradError, match="tensors"):
        unigrad.supervised(F.cross_entropy, x.tolist(), y)


def test_declared_cost_is_counted() -> None:
    model, x, y = data()
    calls = []

    def fn(m: nn.Module) -> torch.Tensor:
        calls.append(1)
        return F.cross_entropy(m(x), y)  # a scalar: the cost cannot be read off the output

    obj = unigrad.objective(fn, n_samples=12)
    cost = Cost()
    evaluate(obj, model, cost)
    evaluate(obj, model, cost, probes=3)
    assert cost.forwards == 12 + 3 * 12 and len(calls) == 2
    e = make_estimator("backprop").estimate(model, obj)
    assert e.cost.forwards == 12 and e.cost.backwards == 12
    with pytest.raises(UnigradError, match="n_samples"):
        unigrad.objective(fn, n_samples=0)


def test_undeclared_cost_is_the_number_of_losses() -> None:
    model, x, y = data()

    def per_sample(m: nn.Module) -> torch.Tensor:
        return F.cross_entropy(m(x), y, reduction="none")

    assert n_samples(per_sample, per_sample(model)) == 12
    assert n_samples(per_sample, torch.tensor(1.0)) == 1
    cost = Cost()
    evaluate(per_sample, model, cost)
    assert cost.forwards == 12


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_loss_is_an_error(bad: float) -> None:
    with pytest.raises(NonFiniteLossError, match="loss became"):
        check_finite(bad)
    with pytest.raises(NonFiniteLossError):
        check_finite(torch.tensor(bad))
    assert check_finite(torch.tensor(2.5)) == 2.5
    model, x, _ = data()
    obj = unigrad.objective(lambda m: m(x).sum() * bad, n_samples=12)
    with pytest.raises(NonFiniteLossError):
        make_estimator("backprop").estimate(model, obj)
    assert issubclass(NonFiniteLossError, UnigradError) and not math.isfinite(bad)
