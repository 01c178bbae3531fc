"""perturbed_losses: the linear fast path gives the generic path's losses on every kind of model.

Losses compared with rtol 1e-5: float32 forward passes of one perturbed network computed two ways (the fast path
splits x(W + sU)ᵀ into xWᵀ + s·xUᵀ, the generic path batches the probes), ≤ 4 matmuls of ≤ 16 terms each, so
≲ 4·16·eps32 ≈ 8e-6 of the loss apart (measured ≤ 5e-7 at losses of 0.4 to 2.5, on AVX-512 and AVX2).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import unigrad
from tests.problems import flat_grad, quadratic
from unigrad import Cost
from unigrad.core import probe
from unigrad.core.params import trainable
from unigrad.core.probe import losses_at, perturbed_losses
from unigrad.zeroth.rge import RGE


class Recurrent(nn.Module):
    """One linear cell applied over time: its input is shared at t = 0 and perturbed afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for _ in range(3):
            h = torch.tanh(self.cell(h))
        return self.head(h)


class Scaled(nn.Module):
    """Linear layers plus parameters the fast path does not understand (a LayerNorm and a gain)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.gain = nn.Parameter(torch.ones(8))
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.inp(x)).relu() * self.gain)


class Tied(nn.Module):
    """Two linear maps sharing one weight, and a linear weight also read outside ``F.linear``."""

    def __init__(self, reuse_outside: bool) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.head = nn.Linear(6, 3)
        self.reuse_outside = reuse_outside

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))
        return h + self.a.weight.sum() if self.reuse_outside else h


def _seeded(make: Callable[[], nn.Module]) -> nn.Module:
    """``make()`` with its initial weights drawn from seed 1, leaving the global stream as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return make()


def build(make: Callable[[], nn.Module], shape: tuple[int, ...] = (10, 6)) -> tuple[nn.Module, unigrad.Objective]:
    g = torch.Generator().manual_seed(0)
    model = _seeded(make)
    x = torch.randn(*shape, generator=g)
    y = torch.randint(0, 3, shape[:-1], generator=g)
    loss = lambda out, t: F.cross_entropy(out.reshape(-1, 3), t.reshape(-1), reduction="none").view(t.shape)  # noqa: E731
    return model, unigrad.supervised(loss, x, y)


MODELS = {
    "mlp": lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)),
    "no-bias": lambda: nn.Sequential(nn.Linear(6, 16, bias=False), nn.ReLU(), nn.Linear(16, 3, bias=False)),
    "recurrent": Recurrent,
    "mixed": Scaled,
    "tied": lambda: Tied(reuse_outside=False),
}


def both_paths(model: nn.Module, obj: unigrad.Objective, probes: int = 3, scales=(0.1, -0.1)):
    values = [p.detach() for _, p in trainable(model)]
    g = torch.Generator().manual_seed(2)
    dirs = [torch.randn(probes, *v.shape, generator=g) for v in values]
    s = torch.tensor(scales)
    cost_fast, cost_generic = Cost(), Cost()
    fast = perturbed_losses(model, obj, values, dirs, s, cost_fast)
    generic = perturbed_losses(model, obj, values, dirs, s, cost_generic, fast_linear=False)
    # the reference: materialise every θ + s·u and call the objective
    ref = torch.empty_like(generic)
    for j, sj in enumerate(scales):
        for i in range(probes):
            ref[j, i] = losses_at(model, obj, [v + sj * d[i] for v, d in zip(values, dirs)], Cost())
    return fast, generic, ref, cost_fast, cost_generic


@pytest.mark.parametrize("name", list(MODELS))
def test_fast_path_equals_generic(name: str) -> None:
    shape = (2, 5, 6) if name == "recurrent" else (10, 6)  # also a linear layer on (B, T, features)
    model, obj = build(MODELS[name], shape)
    before = [p.detach().clone() for p in model.parameters()]
    fast, generic, ref, cost_fast, cost_generic = both_paths(model, obj)
    assert fast.shape == generic.shape == (2, 3, shape[0])
    assert torch.allclose(generic, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(fast, generic, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fast[0], fast[1])  # the probes are really perturbed
    assert cost_fast == cost_generic == Cost(forwards=2 * 3 * shape[0])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # parameters untouched
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())  # and put back as they were
    assert model not in probe._NO_FAST_PATH


def test_fast_path_is_deterministic() -> None:
    model, obj = build(MODELS["mlp"])
    a = both_paths(model, obj)[0]
    b = both_paths(model, obj)[0]
    assert torch.equal(a, b)  # the same ops on the same machine


def test_frozen_first_layer_shares_the_second() -> None:
    model, obj = build(MODELS["mlp"])
    model[0].requires_grad_(False)
    fast, generic, ref, *_ = both_paths(model, obj)
    assert torch.allclose(fast, ref, rtol=1e-5, atol=1e-6) and torch.allclose(generic, ref, rtol=1e-5, atol=1e-6)


def test_a_weight_used_outside_linear_falls_back() -> None:
    model, obj = build(lambda: Tied(reuse_outside=True))
    fast, generic, ref, *_ = both_paths(model, obj)
    assert torch.equal(fast, generic)  # the generic path ran
    assert torch.allclose(generic, ref, rtol=1e-5, atol=1e-6)
    assert model in probe._NO_FAST_PATH


def test_weight_penalty_in_the_objective_falls_back() -> None:
    model, obj = build(MODELS["mlp"])
    x, y = obj.inputs, obj.targets

    def penalised(m: nn.Module) -> torch.Tensor:
        return F.cross_entropy(m(x), y, reduction="none") + 1e-2 * m[0].weight.square().sum()

    pen = unigrad.objective(penalised, n_samples=10)
    values = [p.detach() for _, p in trainable(model)]
    dirs = [torch.ones(2, *v.shape) for v in values]
    s = torch.tensor([0.5, -0.5])
    fast = perturbed_losses(model, pen, values, dirs, s, Cost())
    generic = perturbed_losses(model, pen, values, dirs, s, Cost(), fast_linear=False)
    assert torch.equal(fast, generic)
    # the penalty does see the perturbed weight: (W ± 0.5)² differ, by 1e-2·2·ΣW = O(0.01) ≫ atol 1e-8
    assert not torch.allclose(fast[0] - fast[1], torch.zeros_like(fast[0]))


def test_scalar_objective_without_linear_layers() -> None:
    problem = quadratic(8)
    values = [p.detach() for _, p in trainable(problem.model)]
    dirs = [torch.eye(8)[:3]]
    out = perturbed_losses(problem.model, problem.objective, values, dirs, torch.tensor([0.1, -0.1]), Cost())
    assert out.shape == (2, 3)
    a, theta, theta_star = problem.model.a, values[0], problem.model.theta_star
    for j, s in enumerate((0.1, -0.1)):
        for i in range(3):
            r = theta + s * dirs[0][i] - theta_star
            # float32 rᵀAr in 8 + 8 terms: ≲ 16·eps32·Σ|r||A||r|/rᵀAr = 16·eps32·1.9 ≈ 4e-6 (measured 1e-7)
            assert float(out[j, i]) == pytest.approx(float(0.5 * r @ a @ r), rel=1e-5)


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_rge_estimate_is_the_same_with_and_without_the_fast_path(distribution: str) -> None:
    model, obj = build(MODELS["mlp"])
    RGE(probes=4, sigma=1e-2, distribution=distribution, seed=3).estimate(model, obj)
    fast = flat_grad(model)
    probe.LINEAR_FAST_PATH = False
    try:
        RGE(probes=4, sigma=1e-2, distribution=distribution, seed=3).estimate(model, obj)
    finally:
        probe.LINEAR_FAST_PATH = True
    # the mean losses (|L| ≤ 1.6) differ by ≲ 8e-6·|L| ≈ 1.3e-5 (module docstring); a central difference divides
    # by 2σ, so each probe's coefficient by ≲ 1.3e-3 and the gradient by that × max|u| ≈ 3.5: 4.5e-3 ≈ 1e-2·max|g|
    # (measured 9e-6 = 2e-5·max|g|; a wrong direction or scale would be off by O(max|g|))
    assert torch.allclose(fast, flat_grad(model), rtol=1e-3, atol=1e-2 * float(fast.abs().max()))


def test_shared_input_is_multiplied_once_per_direction(monkeypatch) -> None:
    # 4 directions × 2 signs: the first layer sees the same x in all 8 probes, so it needs x·Wᵀ once
    # and x·U_iᵀ once per direction (5 products) instead of 8 (for a layer of 6 inputs only when allowed to).
    monkeypatch.setattr(probe, "MIN_SHARED_REDUCTION", 1)
    model, obj = build(MODELS["mlp"])
    values = [p.detach() for _, p in trainable(model)]
    dirs = [torch.ones(4, *v.shape) for v in values]

    def first_layer_products(fast: bool) -> int:
        with torch.profiler.profile(record_shapes=True) as prof:
            perturbed_losses(model, obj, values, dirs, torch.tensor([0.1, -0.1]), Cost(), fast_linear=fast)
        return sum(
            1
            for e in prof.events()
            if e.name in ("aten::addmm", "aten::mm", "aten::bmm") and [10, 6] in [list(s) for s in e.input_shapes]
        )

    assert first_layer_products(fast=True) == 5


def test_inputs_recomputed_inside_the_objective() -> None:
    model, obj = build(MODELS["mlp"])
    x, y = obj.inputs, obj.targets
    values = [p.detach() for _, p in trainable(model)]
    g = torch.Generator().manual_seed(5)
    dirs = [torch.randn(4, *v.shape, generator=g) for v in values]
    scales = torch.tensor([0.1, -0.1])

    # equal values in a new tensor at every call: still shared, and exact
    same = unigrad.objective(lambda m: F.cross_entropy(m(x * 1.0), y, reduction="none"), n_samples=10)
    fast = perturbed_losses(model, same, values, dirs, scales, Cost())
    assert torch.allclose(fast, perturbed_losses(model, same, values, dirs, scales, Cost(), fast_linear=False))

    # an input that changes at every call (like dropout on the data): products must not be reused
    calls = []

    def drifting(m: nn.Module) -> torch.Tensor:
        calls.append(1)
        return F.cross_entropy(m(x + 0.1 * len(calls)), y, reduction="none")

    fast = perturbed_losses(model, unigrad.objective(drifting, n_samples=10), values, dirs, scales, Cost())
    calls.clear()
    names = [n for n, _ in trainable(model)]
    for i in range(4):  # the fast path's order: a ± pair after the other
        for j, s in enumerate(scales.tolist()):
            vals = {n: v + s * d[i] for n, v, d in zip(names, values, dirs)}
            with torch.no_grad():
                expected = torch.func.functional_call(model, vals, (x + 0.1 * (len(calls) + 1),))
            calls.append(1)
            assert torch.allclose(fast[j, i], F.cross_entropy(expected, y, reduction="none"), rtol=1e-5, atol=1e-6)


def _conv_net(first_channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(first_channels, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.Tanh(),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 3),
    )  # fmt: skip


def _direct_and_moded(model: nn.Module, obj: unigrad.Objective, g: torch.Generator, monkeypatch):
    """Losses of three probes through the layer-by-layer run and through the function mode, checking which ran;
    also the probes, ``(values, dirs, scales)``."""
    values = [p.detach() for _, p in trainable(model)]
    dirs = [torch.randn(3, *v.shape, generator=g) for v in values]
    s = torch.tensor([0.1, -0.1])
    calls = []
    monkeypatch.setattr(
        probe._LinearProbes, "__enter__", lambda self: calls.append(1) or TorchFunctionMode.__enter__(self)
    )
    direct = perturbed_losses(model, obj, values, dirs, s, Cost())
    assert not calls  # no function mode
    monkeypatch.setattr(probe, "SEQUENTIAL_FAST_PATH", False)
    moded = perturbed_losses(model, obj, values, dirs, s, Cost())
    assert calls
    return direct, moded, (values, dirs, s)


@pytest.mark.parametrize("channels", [1, 8])
def test_convolutions_take_the_fast_path_exactly(channels: int) -> None:
    # a convolution is linear in its weights: the first one (unperturbed input) shares its products when each
    # output sums enough products (8·3·3 = 72 ≥ MIN_SHARED_REDUCTION), else materialises W + s·U like the others
    g = torch.Generator().manual_seed(0)
    model = _seeded(lambda: _conv_net(channels))
    x, y = torch.randn(10, channels, 6, 6, generator=g), torch.randint(0, 3, (10,), generator=g)
    obj = unigrad.supervised(F.cross_entropy, x, y)
    fast, generic, ref, cost_fast, cost_generic = both_paths(model, obj)
    assert torch.allclose(generic, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(fast, generic, rtol=1e-5, atol=1e-6)
    assert cost_fast == cost_generic and model not in probe._NO_FAST_PATH
    values = [p.detach() for _, p in trainable(model)]
    dirs = [torch.ones(4, *v.shape) for v in values]
    with torch.profiler.profile(record_shapes=True) as prof:
        perturbed_losses(model, obj, values, dirs, torch.tensor([0.1, -0.1]), Cost())
    first = [e for e in prof.events() if e.name == "aten::convolution" and [10, channels, 6, 6] in e.input_shapes]
    assert len(first) == (5 if channels * 9 >= probe.MIN_SHARED_REDUCTION else 8)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Sequential(
            nn.Flatten(), nn.Linear(36, 70), nn.ReLU(), nn.Linear(70, 16), nn.Tanh(), nn.Linear(16, 3)
        ),
        lambda: nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, padding_mode="reflect"),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 2 * 2, 3),
        ),
        lambda: nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3), nn.Flatten(), nn.Linear(12 * 4 * 4, 3)
        ),
    ],
    ids=["mlp", "conv-reflect", "conv"],
)
@pytest.mark.parametrize("frozen", [None, "0", "bias"])
def test_a_plain_sequential_runs_without_the_function_mode_bitwise(make, frozen, monkeypatch) -> None:
    # the layer-by-layer run of a plain nn.Sequential must give exactly the function mode's losses
    g = torch.Generator().manual_seed(0)
    model = _seeded(make)
    for name, p in model.named_parameters():
        if frozen is not None and (name.startswith(frozen) or name.endswith(frozen)):
            p.requires_grad_(False)
    x, y = torch.randn(10, 1, 6, 6, generator=g), torch.randint(0, 3, (10,), generator=g)
    obj = unigrad.supervised(F.cross_entropy, x, y)
    direct, moded, (values, dirs, s) = _direct_and_moded(model, obj, g, monkeypatch)
    assert torch.equal(direct, moded)
    generic = perturbed_losses(model, obj, values, dirs, s, Cost(), fast_linear=False)
    assert torch.allclose(direct, generic, rtol=1e-5, atol=1e-6)


class _Bag(nn.Module):
    """Word vectors averaged over a sentence, then a linear layer (optionally tied to the vectors)."""

    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.out = nn.Linear(8, 3)
        self.tied = tied

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids).mean(1)
        return self.out(h) + (h @ self.emb.weight[:3].T if self.tied else 0)


@pytest.mark.parametrize("tied", [False, True])
def test_an_embedding_perturbs_only_the_rows_it_looks_up(tied: bool) -> None:
    g = torch.Generator().manual_seed(0)
    model = _seeded(lambda: _Bag(tied))
    ids, y = torch.randint(0, 50, (10, 5), generator=g), torch.randint(0, 3, (10,), generator=g)
    obj = unigrad.supervised(F.cross_entropy, ids, y)
    values = [p.detach() for _, p in trainable(model)]
    dirs = [torch.randn(3, *v.shape, generator=g) for v in values]
    s = torch.tensor([0.1, -0.1])
    with torch.profiler.profile(record_shapes=True) as prof:
        fast = perturbed_losses(model, obj, values, dirs, s, Cost())
    generic = perturbed_losses(model, obj, values, dirs, s, Cost(), fast_linear=False)
    # E[ids] + s·U[ids] against (E + s·U)[ids]: one rounding apart per entry, in losses of order 1
    assert torch.allclose(fast, generic, rtol=1e-5, atol=1e-6)
    formed = [e for e in prof.events() if e.name == "aten::add" and [50, 8] in e.input_shapes]
    assert (model in probe._NO_FAST_PATH) == tied  # a weight read outside the lookup: the generic path
    assert tied or not formed  # the perturbed 50 × 8 table is never formed


@pytest.mark.parametrize("source", ["table", "generator"])
def test_a_large_tensor_s_noise_is_drawn_only_where_it_is_used(source: str, monkeypatch) -> None:
    # a tensor larger than SPAN whose noise is not a table slice (row windows, or the generator) comes as lazy
    # probes: the lookup draws only its rows, the combination draws each probe whole once; same results as stacked
    from unigrad.core import rng
    from unigrad.zeroth._probing import combine

    g = torch.Generator().manual_seed(0)
    model = _seeded(_Bag)
    ids, y = torch.randint(0, 50, (10, 5), generator=g), torch.randint(0, 3, (10,), generator=g)
    obj = unigrad.supervised(F.cross_entropy, ids, y)
    params = trainable(model)
    values = [p.detach() for _, p in params]
    noise = rng.ProbeNoise("gaussian", source, table_size=256)  # the 50 × 8 table is read in row windows
    monkeypatch.setattr(rng, "SPAN", 64)
    lazy = noise.block(0, 0, range(3), values, views=True)
    assert isinstance(lazy[0], rng.ProbeViews) and isinstance(lazy[0][1], rng.LazyProbe)
    stacked = noise.block(0, 0, range(3), values)
    assert torch.equal(rng.stacked(lazy[0]), stacked[0])
    assert torch.equal(lazy[0][2].rows(ids), stacked[0][2][ids])
    s = torch.tensor([0.1, -0.1])
    fast = perturbed_losses(model, obj, values, lazy, s, Cost())
    assert torch.allclose(fast, perturbed_losses(model, obj, values, stacked, s, Cost()), rtol=1e-6, atol=1e-7)
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    got = combine(params, noise, 0, 0, c, 3)
    want = [(c.float() @ u.reshape(3, -1)).view(u.shape[1:]) for u in stacked]
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-6) for a, b in zip(got, want))


@pytest.mark.parametrize(
    "make", [lambda: nn.Linear(6, 3), lambda: nn.Conv2d(1, 3, 3, padding=1, padding_mode="circular")]
)
def test_a_single_layer_runs_without_the_function_mode_bitwise(make, monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    model = _seeded(make)
    conv = isinstance(model, nn.Conv2d)
    x = torch.randn(10, 1, 4, 4, generator=g) if conv else torch.randn(10, 6, generator=g)
    y = torch.randn(10, 3, 4, 4, generator=g) if conv else torch.randn(10, 3, generator=g)
    obj = unigrad.supervised(F.mse_loss, x, y)
    direct, moded, _ = _direct_and_moded(model, obj, g, monkeypatch)
    assert torch.equal(direct, moded)
