"""Decorrelation layers: convergence of both rules, weight compensation, the model transform."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unigrad.core.errors import UnigradError
from unigrad.nn.decorrelation import (
    DecorrelatedConv2d,
    DecorrelatedLinear,
    Decorrelation,
    decorrelate,
    is_decorrelated,
    mean_offdiag,
    update_decorrelation,
)
from unigrad.nn.models import mlp, small_cnn
from unigrad.nn.perturbation import layer_grads, perturbable_layers

N = 8
RHO = 0.8  # correlation between every pair of inputs


def _mixing(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Cholesky factor A of the covariance (1 − ρ)·I + ρ·11ᵀ, so x = A·z has that covariance."""
    cov = (1 - RHO) * torch.eye(N, dtype=torch.float64) + RHO * torch.ones(N, N, dtype=torch.float64)
    return torch.linalg.cholesky(cov).to(dtype)


def _batch(g: torch.Generator, b: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(b, N, generator=g, dtype=dtype) @ _mixing(dtype).T


def _cov(x: torch.Tensor) -> torch.Tensor:
    return x.T @ x / x.shape[0]


@pytest.mark.parametrize("rule", ["offdiag", "cov-identity"])
def test_rules_decorrelate_correlated_inputs(rule: str) -> None:
    g = torch.Generator().manual_seed(0)
    layer = Decorrelation(N, rule=rule, lr=0.05)
    test = _batch(g, 20_000)
    before = mean_offdiag(_cov(layer(test)))
    # each off-diagonal second moment of 2e4 rows has SE √((1 + ρ²)/2e4) = 0.009 (float32 rounding ≪ that), so 0.05
    # is 5.5 SE (measured 0.0002–0.008 off over seeds 0–2)
    assert before == pytest.approx(RHO, abs=0.05)
    for _ in range(150):
        layer(_batch(g, 1024))
        layer.update()
    with torch.no_grad():
        c = _cov(layer.eval()(test))
    # measured over seeds 0–2: 0.002–0.003 (offdiag) and 0.010–0.013 (cov-identity) of `before`; the diagonal
    # within 0.018–0.040 of 1 (2e4 rows: SE of each ≈ √(2/2e4) = 0.01)
    assert mean_offdiag(c) < 0.1 * before
    if rule == "cov-identity":
        assert torch.allclose(c.diagonal(), torch.ones(N), atol=0.1)
    assert layer.step == 150


def test_subsample_is_keyed_and_leaves_global_rng() -> None:
    g = torch.Generator().manual_seed(1)
    x = _batch(g, 256)
    state = torch.random.get_rng_state()
    a, b, c = (Decorrelation(N, sample=32, seed=s) for s in (7, 7, 8))
    for m in (a, b, c):
        m(x)
    assert a.last is not None and b.last is not None and c.last is not None
    assert a.last.shape == (32, N)
    assert torch.equal(a.last, b.last)  # same (seed, step): same rows
    assert not torch.equal(a.last, c.last)
    # every recorded row is a row of the batch (R = I so far: x·Iᵀ is exact in IEEE arithmetic, as products with
    # 0 and 1 and sums with zeros are), without repetition
    dist = (a.last[:, None, :] - x[None, :, :]).abs().amax(-1)
    assert (dist.min(dim=1).values == 0).all()
    first = dist.argmin(dim=1)
    assert first.unique().numel() == 32
    a.update(lr=1e-6)
    a(x)
    second = (a.last[:, None, :] - x[None, :, :]).abs().amax(-1).argmin(dim=1)
    assert not torch.equal(first.sort().values, second.sort().values)  # the next step draws other rows
    assert torch.equal(torch.random.get_rng_state(), state)


def test_eval_mode_does_not_record() -> None:
    layer = Decorrelation(N).eval()
    layer(torch.ones(4, N))
    with pytest.raises(UnigradError, match="forward"):
        layer.update()


# Compensation (W ← W·A⁻¹) and the two forward/update routes compute the same float64 quantity in another order:
# sums of ≤ 50 terms with Σ|terms| ≲ 35, times cond(R) ≈ 2 where R is inverted, differ by ≲ 2·50·eps64·35 ≈ 8e-13 even
# in the worst case (measured ≤ 4e-15, on values up to 33), below every atol here (1e-12 or 1e-10, plus as much rtol)


def _fixed_linear() -> DecorrelatedLinear:
    g = torch.Generator().manual_seed(2)
    lin = nn.Linear(N, 5, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(5, N, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(5, generator=g, dtype=torch.float64))
    return DecorrelatedLinear(lin, rule="cov-identity", lr=0.05)


@pytest.mark.parametrize("rule", ["offdiag", "cov-identity"])
def test_compensation_keeps_linear_output(rule: str) -> None:
    g = torch.Generator().manual_seed(3)
    fixed = _batch(g, 64, torch.float64)
    for compensate in (True, False):
        layer = _fixed_linear()
        for _ in range(3):  # move R away from I first
            layer(_batch(g, 256, torch.float64))
            layer.update(rule=rule, compensate=False)
        before = layer(fixed).detach()
        layer(_batch(g, 256, torch.float64))
        layer.update(rule=rule, compensate=compensate)
        after = layer(fixed).detach()
        if compensate:
            torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)
        else:
            assert (after - before).abs().max() > 1e-3  # measured 0.32–0.36


def test_compensation_keeps_decorrelated_mlp_output() -> None:
    g = torch.Generator().manual_seed(4)
    fixed = _batch(g, 64, torch.float64)
    for compensate in (True, False):
        model = decorrelate(mlp([N, 16, 16, 3], seed=0).double(), lr=0.05)
        model(_batch(g, 256, torch.float64))
        stats = update_decorrelation(model, compensate=False, stats=True)
        assert set(stats) == {"1", "3", "5"}
        before = model(fixed).detach()
        model(_batch(g, 256, torch.float64))
        update_decorrelation(model, compensate=compensate)
        after = model(fixed).detach()
        if compensate:
            torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)
        else:
            assert (after - before).abs().max() > 1e-4  # measured 0.023


def test_decorrelate_keeps_function_and_parameters() -> None:
    model = mlp([N, 16, 3], seed=0)
    x = _batch(torch.Generator().manual_seed(5), 32)
    ref = model(x).detach()
    params = list(model.parameters())
    out = decorrelate(model, rule="offdiag", sample=16)
    assert out is model
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert sum(isinstance(m, DecorrelatedLinear) for m in model.modules()) == 2
    assert all(m.decor.sample == 16 for m in model.modules() if isinstance(m, DecorrelatedLinear))
    # bitwise: with R = I the wrapper calls the same F.linear on bitwise the same x and W (W·I and x·Iᵀ are exact)
    assert torch.equal(model(x), ref)
    assert "1.decor.R" in model.state_dict()
    decorrelate(model)  # idempotent: no double wrapping
    assert sum(isinstance(m, Decorrelation) for m in model.modules()) == 2


def test_decorrelated_model_trains_with_adam() -> None:
    g = torch.Generator().manual_seed(6)
    x = _batch(g, 256)
    teacher = torch.randn(N, 2, generator=g)
    y = torch.tanh(x @ teacher)
    model = decorrelate(mlp([N, 32, 2], activation="tanh", seed=1), lr=0.01, sample=128)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(150):
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 5 == 4:
            update_decorrelation(model)
    assert losses[-1] < 0.2 * losses[0]  # measured 0.025; 0.010–0.030 over seeds 6–13 (SD 0.007)
    r = model[1].decor.R
    assert not torch.equal(r, torch.eye(N))  # the decorrelation did move


def test_bad_options_raise() -> None:
    with pytest.raises(UnigradError, match="lr"):
        Decorrelation(N, lr=0.0)
    with pytest.raises(UnigradError, match="lr"):
        decorrelate(mlp([N, 2]), lr=-1.0)
    with pytest.raises(UnigradError, match="rule"):
        Decorrelation(N, rule="whiten")
    with pytest.raises(UnigradError, match="rule"):
        decorrelate(mlp([N, 2]), rule="whiten")
    with pytest.raises(UnigradError, match="sample"):
        Decorrelation(N, sample=0)
    with pytest.raises(UnigradError, match="sample"):
        decorrelate(mlp([N, 2]), sample=0)
    layer = Decorrelation(N)
    layer(torch.ones(2, N))
    with pytest.raises(UnigradError, match="rule"):
        layer.update(rule="bad")
    with pytest.raises(UnigradError, match="lr"):
        layer.update(lr=0.0)
    with pytest.raises(UnigradError, match="last dimension"):
        layer(torch.ones(2, N + 1))


def test_patchwise_conv_decorrelation() -> None:
    g = torch.Generator().manual_seed(7)
    model = small_cnn(in_channels=2, image_size=8, channels=(4,), classes=3, seed=0).double()
    x = torch.randn(6, 2, 8, 8, generator=g, dtype=torch.float64)
    x = x + x.mean(dim=1, keepdim=True)  # correlate the channels
    ref = model(x).detach()
    params = [id(p) for p in model.parameters()]
    decorrelate(model, lr=0.05, sample=100, conv=True)
    assert isinstance(model[0], DecorrelatedConv2d) and model[0].decor.features == 2 * 3 * 3
    assert [id(p) for p in model.parameters()] == params
    torch.testing.assert_close(model(x), ref, rtol=1e-12, atol=1e-12)  # R = I: same conv2d, W·I exact (measured 0)
    assert model[0].decor.last is not None and model[0].decor.last.shape == (100, 18)
    update_decorrelation(model, compensate=False)
    moved = model(x).detach()
    assert (moved - ref).abs().max() > 1e-4  # measured 2.5
    model(x)
    update_decorrelation(model, compensate=True)
    torch.testing.assert_close(model(x).detach(), moved, rtol=1e-10, atol=1e-10)
    with pytest.raises(UnigradError, match="groups"):
        DecorrelatedConv2d(nn.Conv2d(4, 4, 3, groups=2))


def test_pairs_refuse_other_layers_and_keep_the_layer_under_its_name() -> None:
    with pytest.raises(UnigradError, match=r"^DecorrelatedLinear wraps an nn.Linear, got Conv2d$"):
        DecorrelatedLinear(nn.Conv2d(2, 2, 3))  # type: ignore[arg-type]
    with pytest.raises(UnigradError, match=r"^DecorrelatedConv2d wraps an nn.Conv2d, got Linear$"):
        DecorrelatedConv2d(nn.Linear(2, 2))  # type: ignore[arg-type]
    lin, conv = nn.Linear(5, 3).double(), nn.Conv2d(2, 4, 3)
    a, b = DecorrelatedLinear(lin, sample=7, seed=3, compensate=True), DecorrelatedConv2d(conv)
    assert a.inner is a.linear is lin and b.inner is b.conv is conv
    assert (a.decor.features, a.decor.sample, a.decor.seed, a.compensate) == (5, 7, 3, True)
    assert a.decor.R.dtype == torch.float64 and b.decor.features == 2 * 3 * 3 and not b.compensate
    assert list(a.state_dict()) == ["decor.R", "decor._extra_state", "linear.weight", "linear.bias"]
    assert is_decorrelated(nn.Sequential(nn.ReLU(), b)) and not is_decorrelated(nn.Sequential(lin))


@pytest.mark.parametrize("rule", ["offdiag", "cov-identity"])
@pytest.mark.parametrize("rows", [4, 40])  # 2·rows < n takes the low-rank route X̂ᵀ(X̂R)/b, else A·R
def test_update_is_a_times_r_on_both_routes(rule: str, rows: int) -> None:
    g = torch.Generator().manual_seed(5)
    d = Decorrelation(30, rule=rule, lr=0.05, dtype=torch.float64)
    with torch.no_grad():
        d.R.copy_(torch.eye(30, dtype=torch.float64) + 0.1 * torch.randn(30, 30, generator=g, dtype=torch.float64))
    d(torch.randn(rows, 30, generator=g, dtype=torch.float64))
    before = d.R.clone()
    a = d.update()
    torch.testing.assert_close(d.R, a @ before, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(d.R, before)


def test_decorrelated_conv_is_one_perturbable_layer_with_exact_layer_grads() -> None:
    g = torch.Generator().manual_seed(3)
    model = small_cnn(in_channels=2, image_size=6, channels=(3,), classes=4, seed=0).double()
    decorrelate(model, conv=True)
    dconv = model[0]
    with torch.no_grad():
        dconv.decor.R.add_(0.2 * torch.randn(18, 18, generator=g, dtype=torch.float64))
    x = torch.randn(5, 2, 6, 6, generator=g, dtype=torch.float64)
    # forward: W·(R·p) at every position, as with explicit patches
    c = dconv.conv
    patches = nn.functional.unfold(x, 3, padding=1).transpose(1, 2)  # (B, L, 18)
    ref = (patches @ dconv.decor.R.T @ c.weight.flatten(1).T + c.bias).transpose(1, 2).reshape(5, 3, 6, 6)
    h = dconv(x)
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-10)
    assert dconv.decor.last.shape == (5 * 36, 18)
    torch.testing.assert_close(dconv.decor.last, patches.reshape(-1, 18) @ dconv.decor.R.T)
    # the layer's weight gradient of an output signal is the autograd gradient with respect to W
    signal = torch.randn(h.shape, generator=g, dtype=torch.float64)
    (gw_ref,) = torch.autograd.grad((h * signal).sum(), [c.weight])
    gw, gb = layer_grads(dconv, x, signal)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gb, signal.sum((0, 2, 3)))
    assert [n for n, _ in perturbable_layers(model)] == ["0", "4"]  # not the layers inside


@pytest.mark.parametrize("rows", [3, 40])  # 40 rows > 6 outputs: the forward folds R into W (x·(W·R)ᵀ)
def test_decorrelated_linear_forward_and_layer_grads_on_both_routes(rows: int) -> None:
    g = torch.Generator().manual_seed(11)
    layer = DecorrelatedLinear(nn.Linear(9, 6).double())
    with torch.no_grad():
        layer.decor.R.add_(0.3 * torch.randn(9, 9, generator=g, dtype=torch.float64))
    x = torch.randn(rows, 9, generator=g, dtype=torch.float64)
    lin = layer.linear
    h = layer(x)
    torch.testing.assert_close(h, x @ layer.decor.R.T @ lin.weight.T + lin.bias, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.decor.last, x @ layer.decor.R.T, rtol=1e-12, atol=1e-12)
    signal = torch.randn(h.shape, generator=g, dtype=torch.float64)
    gw_ref, gb_ref = torch.autograd.grad((h * signal).sum(), [lin.weight, lin.bias])
    gw, gb = layer_grads(layer, x, signal)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gb, gb_ref)


def test_statistics_are_not_taken_inside_transforms_and_are_used_once() -> None:
    d = Decorrelation(4)
    torch.vmap(d)(torch.randn(3, 5, 4))  # batched probes: not recorded
    assert d.last is None
    d(torch.randn(5, 4))
    assert d.last is not None
    d.update()
    assert d.last is None  # the next update needs a new training-mode forward
