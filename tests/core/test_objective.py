"""Objectives: per-sample losses from ``supervised``, declared costs from ``objective``, non-finite checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unigrad
from unigrad import Cost, NonFiniteLossError, UnigradError, make_estimator
from unigrad.core.objective import check_finite, check_losses, evaluate, loss_and_gradient, n_samples, reduce


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
    # it says what became non-finite; it does not guess a cause (it used to advise lowering the learning rate or
    # sigma, which was wrong for half-precision runs that diverged through Adam's eps)
    with pytest.raises(NonFiniteLossError, match=r"^the reward became nan; stopping$"):
        check_finite(math.nan, "the reward")
    model, x, _ = data()
    obj = unigrad.objective(lambda m: m(x).sum() * bad, n_samples=12)
    with pytest.raises(NonFiniteLossError):
        make_estimator("backprop").estimate(model, obj)
    assert issubclass(NonFiniteLossError, UnigradError) and not math.isfinite(bad)


# -- what an objective must return: every estimator refuses anything else with one line ----------------

ZEROTH = ["rge", "spsa", "cge", "es", "mezo", "np", "anp", "inp", "wp", "mgd"]
FIRST = ["backprop", "forward-gradient", "activity-forward-gradient", "feedback-alignment", "dfa"]
SECOND = ["newton", "lbfgs", "hessian-free", "natural-gradient", "diag-hessian", "kfac", "cubic-newton"]
# the curvature methods that need unigrad.supervised by default are switched to their any-objective forms
ANY_OBJECTIVE = {"hessian-free": {"curvature": "hessian"}, "natural-gradient": {"fisher": "empirical"}}
ANY_OBJECTIVE["kfac"] = {"fisher": "empirical"}


def tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A two-layer MLP (every estimator above can train it) and a batch of 6."""
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    return model, torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)


def bad_outputs(x: torch.Tensor, y: torch.Tensor) -> dict[str, object]:
    per_sample = lambda m: F.cross_entropy(m(x), y, reduction="none")  # noqa: E731
    return {
        "python float": lambda m: F.cross_entropy(m(x), y).item(),
        "(B, k) matrix": lambda m: F.mse_loss(m(x), torch.zeros(6, 3), reduction="none"),
        "integer losses": lambda m: (per_sample(m) * 100).long(),
        "a string": lambda m: "loss",
        "a list": lambda m: per_sample(m).tolist(),
    }


@pytest.mark.parametrize("kind", ["python float", "(B, k) matrix", "integer losses", "a string", "a list"])
@pytest.mark.parametrize("method", ZEROTH + FIRST + SECOND)
def test_every_estimator_refuses_a_bad_objective_output_in_one_line(method: str, kind: str) -> None:
    model, x, y = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    est = make_estimator(method, **ANY_OBJECTIVE.get(method, {}))
    with pytest.raises(UnigradError, match=r"must return per-sample losses of shape \(B,\) or a 0-d scalar") as e:
        est.estimate(model, bad_outputs(x, y)[kind])
    assert "\n" not in str(e.value) and str(e.value).startswith("the objective returned")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing was changed
    assert est.step == 0


@pytest.mark.parametrize("kind", ["python float", "integer losses", "a string"])
@pytest.mark.parametrize("method", ["spsa", "backprop", "kfac", "natural-gradient", "hessian-free"])
def test_supervised_refuses_a_bad_loss_function_output(method: str, kind: str) -> None:
    """The Gauss-Newton and Fisher paths call the loss function on the outputs themselves."""
    model, x, y = tiny()
    loss_fn = {
        "python float": lambda out, t: F.cross_entropy(out, t).item(),
        "integer losses": lambda out, t: F.cross_entropy(out, t, reduction="none").long(),
        "a string": lambda out, t: "loss",
    }[kind]
    with pytest.raises(UnigradError, match=r"^the loss function returned .* must return per-sample losses"):
        make_estimator(method).estimate(model, unigrad.supervised(loss_fn, x, y))


@pytest.mark.parametrize("method", FIRST + SECOND)
def test_differentiating_estimators_refuse_losses_cut_off_from_the_parameters(method: str) -> None:
    """A detached loss gave a raw autograd error, or (lbfgs, forward gradients) silently a zero direction."""
    model, x, y = tiny()
    detached = lambda m: F.cross_entropy(m(x), y, reduction="none").detach()  # noqa: E731
    with pytest.raises(UnigradError, match=f"^{method} differentiates the objective, but its losses do not depend"):
        make_estimator(method, **ANY_OBJECTIVE.get(method, {})).estimate(model, detached)


@pytest.mark.parametrize("method", ZEROTH)
def test_zeroth_order_estimators_take_detached_losses(method: str) -> None:
    """Order 0 only measures losses: a black box (a device, numpy) may well return a detached tensor."""
    model, x, y = tiny()
    e = make_estimator(method).estimate(model, lambda m: F.cross_entropy(m(x), y, reduction="none").detach())
    assert math.isfinite(e.loss)


def test_check_losses_passes_valid_losses_through_unchanged() -> None:
    for losses in (torch.rand(5), torch.tensor(1.5), torch.rand(1, dtype=torch.float64), torch.rand(3).half()):
        assert check_losses(losses) is losses
    matrix = torch.rand(4, 2)
    assert check_losses(matrix, elementwise=True) is matrix  # a loss function's elementwise losses
    with pytest.raises(UnigradError, match=r"shape \(4, 2\), which is ambiguous.*losses.mean\(dim=1\)"):
        check_losses(matrix)
    with pytest.raises(UnigradError, match=r"torch\.complex64"):
        check_losses(torch.rand(3, dtype=torch.complex64))


def test_loss_and_gradient_is_autograd_with_zeros_where_the_loss_does_not_reach() -> None:
    model, x, y = data()
    unused = nn.Parameter(torch.ones(3))
    params = [*model.named_parameters(), ("unused", unused)]
    cost = Cost()
    loss, grads = loss_and_gradient(unigrad.supervised(F.cross_entropy, x, y), model, params, cost, "backprop")
    expected = F.cross_entropy(model(x), y)
    reference = torch.autograd.grad(expected, list(model.parameters()))
    assert loss == pytest.approx(float(expected.detach()), rel=1e-6)
    assert all(torch.allclose(g, r, atol=1e-7) for g, r in zip(grads, reference))
    assert torch.equal(grads[-1], torch.zeros(3))
    assert (cost.forwards, cost.backwards) == (len(x), len(x))
