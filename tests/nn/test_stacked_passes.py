"""Stacked node-perturbation passes: the same estimate as passes one by one, up to rounding; used only where
every sample's loss depends on that sample alone; decorrelation statistics kept from the baseline pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unigrad
from unigrad import make_estimator
from unigrad.core.cost import Cost
from unigrad.nn import perturbation
from unigrad.nn.models import mlp, small_cnn
from unigrad.nn.perturbation import LayerTaps, gaussian_node_noise, noisy_passes, stackable


def _data(shape: tuple[int, ...], classes: int, batch: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g)


def _grads(method: str, model: nn.Module, objective, stack: bool, monkeypatch, **options) -> tuple[list, float]:
    monkeypatch.setattr(perturbation, "STACK_PASSES", stack)
    est = make_estimator(method, probes=5, sigma=1e-2, seed=3, **options)
    if hasattr(est, "prepare"):
        model = est.prepare(model)
    e = est.estimate(model, objective)
    return [p.grad.clone() for p in model.parameters() if p.requires_grad], e


@pytest.mark.parametrize("method", ["np", "anp", "inp", "dnp", "danp"])
def test_stacked_passes_give_the_one_by_one_estimate(method, monkeypatch):
    x, y = _data((12,), 4)
    objective = unigrad.supervised(F.cross_entropy, x, y)
    (g1, e1), (g2, e2) = (
        _grads(method, mlp([12, 16, 8, 4], activation="tanh", seed=1), objective, stack, monkeypatch)
        for stack in (False, True)
    )
    assert e1.cost == e2.cost  # the same forward samples, counted the same way
    assert e1.loss == e2.loss  # the baseline pass is the same pass
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(e1.info["probe_losses"], e2.info["probe_losses"], rtol=1e-6, atol=1e-7)


def test_stacked_passes_on_a_conv_net(monkeypatch):
    x, y = _data((1, 8, 8), 3)
    objective = unigrad.supervised(F.cross_entropy, x, y)
    model = small_cnn(in_channels=1, image_size=8, channels=(3, 4), classes=3, seed=0)
    (g1, _), (g2, _) = (_grads("np", model, objective, stack, monkeypatch) for stack in (False, True))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_noise_of_a_stacked_pass_is_the_noise_of_the_pass_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    x, y = _data((5,), 3, batch=6)
    objective = unigrad.supervised(F.cross_entropy, x, y)
    with LayerTaps(model, record_inputs=True):
        f0 = objective(model).detach()
    noise = unigrad.core.rng.ProbeNoise("gaussian", "auto")
    noises = [gaussian_node_noise(noise, 0, 0, i, 0.1) for i in range(3)]
    stacked = list(noisy_passes(model, objective, Cost(), f0, noises, "np", bytes_per_pass=1))
    for i, p in enumerate(stacked):
        with LayerTaps(model, node_noise=noises[i]) as alone:
            f = objective(model)
        for a, b in zip(p.added, alone.added, strict=True):
            assert torch.equal(a, b)
        torch.testing.assert_close(p.losses, f, rtol=1e-6, atol=1e-7)


class _BatchMean(nn.Module):
    def forward(self, x):
        return x - x.mean(0)  # mixes the rows of a batch


def test_passes_are_stacked_only_when_each_sample_stands_alone():
    x, y = _data((4,), 2, batch=5)
    good = unigrad.supervised(F.cross_entropy, x, y)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert stackable(model, good)
    # a loss that may mix samples, a custom module, batch norm or dropout in training mode, a hook
    assert not stackable(model, unigrad.supervised(lambda out, tgt: F.cross_entropy(out, tgt, reduction="none"), x, y))
    assert not stackable(model, unigrad.objective(lambda m: F.cross_entropy(m(x), y, reduction="none"), 5))
    assert not stackable(nn.Sequential(nn.Linear(4, 3), _BatchMean()), good)
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    assert not stackable(bn, good) and stackable(bn.eval(), good)
    drop = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    assert not stackable(drop, good) and stackable(drop.eval(), good)
    handle = model[0].register_forward_hook(lambda *a: None)
    assert not stackable(model, good)
    handle.remove()
    _BatchMean.rowwise = True  # a module class may vouch for itself
    try:
        assert stackable(nn.Sequential(nn.Linear(4, 3), _BatchMean()), good)
    finally:
        del _BatchMean.rowwise
    rowwise = lambda out, tgt: F.cross_entropy(out, tgt, reduction="none")  # noqa: E731
    rowwise.rowwise = True  # so may a loss function
    assert stackable(model, unigrad.supervised(rowwise, x, y))


def test_batch_norm_in_training_mode_runs_the_passes_one_by_one(monkeypatch):
    # a batch statistic over stacked passes would differ from each pass's own: the estimate must not change
    x, y = _data((6,), 3)
    objective = unigrad.supervised(F.cross_entropy, x, y)

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
        return model[1].requires_grad_(False) and model

    (g1, _), (g2, _) = (_grads("np", build(), objective, stack, monkeypatch) for stack in (False, True))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def test_decorrelation_keeps_the_baseline_statistics(monkeypatch):
    x, y = _data((12,), 4)
    objective = unigrad.supervised(F.cross_entropy, x, y)
    for stack in (False, True):
        monkeypatch.setattr(perturbation, "STACK_PASSES", stack)
        est = make_estimator("danp", probes=4, sigma=1e-2, decor_sample=None)
        model = est.prepare(mlp([12, 16, 4], seed=0))
        est.estimate(model, objective)
        first = next(m for m in model.modules() if isinstance(m, unigrad.nn.decorrelation.Decorrelation))
        assert torch.equal(first.last, x @ first.R.T)  # the clean inputs of the first layer, not a noisy pass's


def test_stacking_keeps_to_the_memory_budget(monkeypatch):
    x, y = _data((12,), 4)
    objective = unigrad.supervised(F.cross_entropy, x, y)
    model = mlp([12, 16, 4], seed=0)
    f0 = objective(model).detach()
    noise = unigrad.core.rng.ProbeNoise("gaussian", "auto")
    noises = [gaussian_node_noise(noise, 0, 0, i, 0.1) for i in range(5)]
    rows = []
    model.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
    assert not stackable(model, objective)  # a hook of the caller's: it would see stacked batches
    model._forward_pre_hooks.clear()
    spy = []
    monkeypatch.setattr(LayerTaps, "evaluate", lambda self, *a, run=LayerTaps.evaluate: spy.append(1) or run(self, *a))
    passes = list(noisy_passes(model, objective, Cost(), f0, noises, "np", bytes_per_pass=100, memory_budget=250))
    assert len(passes) == 5 and len(spy) == 3  # groups of 2, 2 and 1 passes


def test_modules_that_may_mix_the_batch_are_not_row_wise():
    x, y = _data((4,), 2, batch=5)
    good = unigrad.supervised(F.cross_entropy, x, y)
    for tail, ok in [
        (nn.Softmax(dim=1), True),
        (nn.Softmax(dim=0), False),
        (nn.Softmax(dim=-1), False),  # the last dimension may be the batch of a 1-d output
        (nn.LogSoftmax(), False),  # an implicit dimension
        (nn.Flatten(), True),
        (nn.Flatten(0), False),
    ]:
        assert stackable(nn.Sequential(nn.Linear(4, 2), tail), good) is ok, tail
    assert stackable(nn.Sequential(nn.Embedding(5, 4), nn.Flatten(), nn.Linear(4, 2)), good)
    assert not stackable(nn.Sequential(nn.Embedding(5, 4, max_norm=1.0), nn.Flatten(), nn.Linear(4, 2)), good)


@pytest.mark.parametrize("method", ["np", "anp", "inp", "danp"])
@pytest.mark.parametrize("stack", [False, True])
def test_direct_passes_are_bitwise_the_hooked_passes(method, stack, monkeypatch):
    x, y = _data((12,), 4)
    objective = unigrad.supervised(F.cross_entropy, x, y)
    runs, entered = [], []
    monkeypatch.setattr(
        LayerTaps, "__enter__", lambda self, enter=LayerTaps.__enter__: entered.append(1) or enter(self)
    )
    for direct in (False, True):
        monkeypatch.setattr(perturbation, "DIRECT_PASSES", direct)
        entered.clear()
        model = mlp([12, 16, 8, 4], activation="tanh", seed=1)
        runs.append((_grads(method, model, objective, stack, monkeypatch), len(entered)))
    ((g1, e1), hooked), ((g2, e2), direct) = runs
    assert hooked and not direct  # the chain ran without hooks, and gave the hooked result bit for bit
    assert e1.loss == e2.loss and e1.cost == e2.cost
    assert torch.equal(e1.info["probe_losses"], e2.info["probe_losses"])
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)


def test_direct_passes_only_for_a_chain_of_children():
    x, y = _data((6,), 3, batch=4)
    objective = unigrad.supervised(F.cross_entropy, x, y)
    chain = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    nested = nn.Sequential(nn.Sequential(nn.Linear(6, 5), nn.ReLU()), nn.Linear(5, 3))
    lin = nn.Linear(6, 3)
    twice = nn.Sequential(lin, nn.ReLU(), lin)
    assert perturbation._chain(chain, perturbation.perturbable_layers(chain)) is not None
    assert perturbation._chain(lin, perturbation.perturbable_layers(lin)) == [(lin, 0)]
    assert perturbation._chain(nested, perturbation.perturbable_layers(nested)) is None
    assert perturbation._chain(twice, perturbation.perturbable_layers(twice)) is None
    seen = []  # a hook of the caller's: the pass runs under hooks, so the caller's hook sees it
    chain.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    taps = LayerTaps(chain, record_inputs=True)
    taps.evaluate(objective, chain, Cost())
    assert seen == [(4, 3)] and all(t is not None for t in taps.inputs)
