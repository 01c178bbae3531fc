"""What one estimator step does to buffers and stochastic layers (``unigrad.core.step_state``), for every
registered estimator: batch-norm statistics advance once, as one forward would; the two sides of a probe
share their dropout mask; the caller's generator is left as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unigrad
from unigrad.core import probe
from unigrad.core.step_state import StepState
from unigrad.registry import ESTIMATORS

NAMES = sorted(ESTIMATORS)
# the rules of unigrad.bio train a rate network on a trial or episode task: on any other model they refuse
NEEDS_OWN_MODELS = {
    "np-time": "RateRNN",
    "miconi": "rate network",
    "exploratory-hebb": "rate network",
    "nrl": "EpisodeObjective",
    "reinforce": "EpisodeObjective",
}
# estimators that train only nn.Linear/nn.Conv2d weights: the batch-norm affine parameters are frozen for them
LINEAR_ONLY = {"np", "anp", "inp", "dfa", "activity-forward-gradient"}
PEERS = {"cma": "cma", "sep-cma": "cma", "nevergrad": "nevergrad"} | dict.fromkeys(
    ("pgpe", "snes", "cem", "xnes"), "evotorch"
)


def bn_dropout_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)  # only the initial weights; the tests then check the global stream is kept
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)


@pytest.mark.parametrize("name", NAMES)
def test_a_step_moves_the_buffers_once_and_leaves_parameters_and_the_global_stream(name):
    if name in PEERS:
        pytest.importorskip(PEERS[name])
    x, y = batch()
    objective = unigrad.supervised(F.cross_entropy, x, y)
    model = bn_dropout_model()
    if name in LINEAR_ONLY:
        model[1].requires_grad_(False)
    bn = model[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = bn_dropout_model()
    reference[1](reference[0](x))  # one training-mode forward at θ: the running statistics it leaves
    estimator = unigrad.make_estimator(name)
    rng = torch.get_rng_state()
    if name in NEEDS_OWN_MODELS:
        with pytest.raises(unigrad.UnigradError, match=NEEDS_OWN_MODELS[name]):
            estimator.estimate(model, objective)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # refused before touching
        return
    estimator.estimate(model, objective)
    after = model.state_dict()
    assert torch.equal(torch.get_rng_state(), rng)  # the step drew nothing from the caller's stream
    for k in ("0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"):
        assert torch.equal(after[k], before[k]), k  # parameters bitwise as they were
    assert int(bn.num_batches_tracked) == 1  # once per step, not once per evaluation
    moved = (reference[1].running_mean - before["1.running_mean"]).abs().max()
    for stat in ("running_mean", "running_var"):
        got, want = getattr(bn, stat), getattr(reference[1], stat)
        if estimator.order >= 1:  # the first evaluation is at θ: exactly one forward's update
            assert torch.equal(got, want), (name, stat)
        else:
            # the mean of the statistics the probes left. Antithetic schemes (spsa, rge, es, pgpe, mezo): equal to
            # θ's up to rounding (μ is linear in the first layer's weights); non-antithetic populations (cma, snes,
            # cem, nevergrad, cge, mgd, wp, oua) differ by O(σ): measured ≤ 0.15 of one update's move, bound 0.3
            assert (got - want).abs().max() <= 0.3 * max(moved, (want - before[f"1.{stat}"]).abs().max()), name
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def dropout_model() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3)).double()


def batch6(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def mask_gradient(seed: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The gradient at the dropout masks of step 0 of ``seed`` (backprop draws them under the same key)."""
    model = dropout_model()
    unigrad.make_estimator("backprop", seed=seed).estimate(model, unigrad.supervised(F.cross_entropy, x, y))
    return flat_grad(model)


@pytest.mark.parametrize("fast_path", [True, False])
def test_both_sides_of_an_spsa_pair_see_the_same_dropout_mask(monkeypatch, fast_path):
    """The central difference of a pair measures ∇f·u at the step's masks. With a fresh mask per side (as
    before) it measured the masks: |Δ/2σ| was ~10³× larger than ∇f·u."""
    monkeypatch.setattr(probe, "LINEAR_FAST_PATH", fast_path)  # off: the vmapped probes of batched_losses
    x, y = batch6(3)
    g = mask_gradient(7, x, y)
    model = dropout_model()
    est = unigrad.make_estimator("spsa", seed=7, probes=4, sigma=1e-4)  # g = (1/q) Σ c_i u_i, u_i = ±1
    est.estimate(model, unigrad.supervised(F.cross_entropy, x, y))
    c = est_info_coefficients(est, model, x, y)
    d = g.numel()
    u = regenerate_signs(est, model)
    # c_i = Δ_i/(2σ) = ∇f·u_i + O(σ²‖∇³f‖‖u‖³); with ‖u‖² = d = 163 in float64 the residual measured ~1e-7
    assert torch.allclose(c, u @ g, rtol=1e-5, atol=1e-6 * d**0.5), (c, u @ g)


def regenerate_signs(est, model) -> torch.Tensor:
    values = [p.detach() for p in model.parameters()]
    dirs = est.noise.block(est.seed, est.step - 1, range(est.probes), values)
    return torch.cat([u.reshape(est.probes, -1) for u in dirs], dim=1)


def est_info_coefficients(est, model, x, y) -> torch.Tensor:
    """The per-probe coefficients c_i from the written direction: solve Σ (c_i/q) u_i = .grad (u_i orthogonal
    in expectation; solved exactly by least squares)."""
    u = regenerate_signs(est, model)
    sol = torch.linalg.lstsq(u.T, flat_grad(model).unsqueeze(1)).solution.squeeze(1)
    return sol * est.probes


def test_forward_gradient_tangents_see_the_primals_dropout_mask():
    x, y = batch6(4)
    g = mask_gradient(5, x, y)
    model = dropout_model()
    est = unigrad.make_estimator("forward-gradient", seed=5, probes=3)
    e = est.estimate(model, unigrad.supervised(F.cross_entropy, x, y))
    values = [p.detach() for p in model.parameters()]
    v = torch.cat([t.reshape(3, -1) for t in est.noise.block(5, 0, range(3), values)], dim=1)
    # JVPs are exact: agreement to float64 rounding of a 163-term dot product
    assert torch.allclose(e.info["directional_derivatives"].double(), v @ g, rtol=1e-5, atol=1e-6)


def test_a_step_replays_exactly_whatever_the_callers_stream():
    x, y = batch6(5)
    x = x.float()
    grads = []
    for caller_seed in (0, 123):
        torch.manual_seed(caller_seed)
        model = dropout_model().float()
        unigrad.make_estimator("es", seed=3, probes=6).estimate(model, unigrad.supervised(F.cross_entropy, x, y))
        grads.append(flat_grad(model))
    assert torch.equal(grads[0], grads[1])


def test_masks_change_from_step_to_step():
    x, y = batch6(6)
    x = x.float()
    model = dropout_model().float()
    objective = unigrad.supervised(F.cross_entropy, x, y)
    est = unigrad.make_estimator("backprop")
    est.estimate(model, objective)
    first = flat_grad(model).clone()
    model.zero_grad()
    est.estimate(model, objective)  # same parameters, next step: another mask
    assert not torch.equal(first, flat_grad(model))


def test_a_failed_step_leaves_the_buffers_as_they_were():
    model = bn_dropout_model()
    x, _ = batch()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def diverging(m):
        out = m(x)
        return out.sum(dim=1) * float("nan")

    with pytest.raises(unigrad.NonFiniteLossError):
        unigrad.make_estimator("spsa").estimate(model, diverging)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_live_buffers_advance_with_every_evaluation():
    class Counter(nn.Module):
        live_buffers = ("calls",)

        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 1)
            self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
            self.register_buffer("seen", torch.zeros((), dtype=torch.int64))

        def forward(self, x):
            self.calls.add_(1)
            self.seen.add_(1)
            return self.lin(x).squeeze(1)

    model = Counter()
    objective = unigrad.objective(lambda m: m(torch.ones(3, 2)) ** 2, n_samples=3)
    unigrad.make_estimator("spsa", probes=3).estimate(model, objective)
    assert int(model.calls) == 6  # three ± pairs: six evaluations, each counted
    assert int(model.seen) == 1  # an ordinary buffer: once per step


def test_rule_is_checked():
    with pytest.raises(ValueError, match="rule"):
        StepState(nn.Linear(1, 1), 0, 0, rule="last")


class _Noisy(nn.Module):
    """A layer that draws from the global generator in its forward (not provably draw-free)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.rand_like(x)


def test_a_quiet_step_skips_the_generator_bookkeeping_and_a_noisy_one_keeps_it():
    x, y = batch()
    seen: list[int] = []

    def objective_for(model: nn.Module):
        base = unigrad.supervised(F.cross_entropy, x, y)

        def spy(m: nn.Module) -> torch.Tensor:  # counts the step's hooks on the model at every call
            seen.append(len(m._forward_pre_hooks))
            return base(m)

        return base, unigrad.objective(spy, x.shape[0])

    quiet = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    plain, spied = objective_for(quiet)
    state = StepState(quiet, 0, 0, quiet=unigrad.core.rowwise.rowwise(quiet, plain))
    assert state.quiet and not state.slots
    with state:
        assert not quiet._forward_pre_hooks  # nothing installed: no draws to seed
    # a model that draws at random is never quiet: every call of a ± pair sees the same draws
    noisy = nn.Sequential(nn.Linear(5, 6), _Noisy(), nn.Linear(6, 3))
    assert not unigrad.core.rowwise.rowwise(noisy, plain)
    est = unigrad.make_estimator("spsa", probes=2, sigma=1e-3, seed=0)
    est.estimate(noisy, spied)
    assert seen and all(n == 1 for n in seen)  # the step's seeding hook was there at every call
    before = torch.random.get_rng_state()
    est.estimate(quiet, plain)
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's generator untouched either way


def test_a_static_buffer_is_not_tracked():
    model = unigrad.decorrelate(nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)))
    state = StepState(model, 0, 0)
    assert not [s for s in state.slots if s.name == "R"]
