"""K-FAC: factors and preconditioned gradient against hand computations (Linear, MLP, Conv2d), the sampled
Fisher's expectation, training speed, factor/inverse intervals, kl_clip, contract, cost and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unigrad
from tests.problems import assert_contract, assert_mean_matches, bce_per_sample, flat_grad, logistic, mlp
from unigrad import UnigradError
from unigrad.core.objective import reduce
from unigrad.first.backprop import Backprop
from unigrad.nn.decorrelation import decorrelate
from unigrad.second.kfac import KFAC

DT = torch.float64

# Tolerances. Factors (rtol 1e-12, atol 1e-14): the estimator and the test form the same float64 averages of
# n ≤ 144 products; each entry errs by ≤ (n + 2)·u·(1/n)Σ|a_i a_j| (u = 2^-53), at most 0.78 of atol + rtol·|ref| on
# every entry checked here (the conv's A; ≤ 0.14 elsewhere; measured ≤ 4e-16). Directions (rtol ≥ 1e-8): two solves
# with damped factors of condition ≤ 7 (≤ 17 in the interval test) err by ≲ 40·eps64 ≈ 1e-14 relative (measured
# ≤ 5e-16 on entries ≤ 0.55).


def _hand_direction(grad: torch.Tensor, a: torch.Tensor, g: torch.Tensor, damping: float) -> torch.Tensor:
    """``(G + γ_G I)⁻¹ grad (A + γ_A I)⁻¹`` with π = √((tr A/dim A)/(tr G/dim G)), by linear solves."""
    pi = math.sqrt((torch.trace(a) / a.shape[0]) / (torch.trace(g) / g.shape[0]))
    eye_a, eye_g = torch.eye(a.shape[0], dtype=DT), torch.eye(g.shape[0], dtype=DT)
    left = torch.linalg.solve(g + math.sqrt(damping) / pi * eye_g, grad)
    return torch.linalg.solve(a + pi * math.sqrt(damping) * eye_a, left, left=False)


def _factors(est: KFAC, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    f = est.state_dict()["factors"][name]
    return f["A"], f["G"]


def _bias_column(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def test_mlp_factors_and_direction_match_a_hand_computation() -> None:
    """Empirical Fisher on a Linear-Tanh-Linear MLP: A = E[ā āᵀ], G = E[g gᵀ] with per-sample output gradients
    g from autograd, and the written .grad is (G + γ_G I)⁻¹ [∇W, ∇b] (A + γ_A I)⁻¹ for both layers."""
    problem = mlp(batch=32, dtype=DT)
    model, obj = problem.model, problem.objective
    x, y = obj.inputs, obj.targets
    damping = 0.05
    est = KFAC(damping=damping, fisher="empirical")
    e = est.estimate(model, obj)
    assert e.info["factors_updated"] and e.info["inverses_updated"] and e.info["layers"] == 2

    with torch.enable_grad():
        s1 = model[0](x)
        h = torch.tanh(s1)
        z = model[2](h)
        losses = F.cross_entropy(z, y, reduction="none")
        g1, g2 = torch.autograd.grad(losses.sum(), [s1, z], retain_graph=True)  # per-sample gradients
        grads = torch.autograd.grad(losses.mean(), list(model.parameters()))
    assert e.loss == pytest.approx(float(losses.detach().mean()), rel=1e-12)  # 32 positive terms: ≲ 33·u
    b = x.shape[0]
    for name, inp, g, (gw, gb), layer in (
        ("0", x, g1, grads[:2], model[0]),
        ("2", h.detach(), g2, grads[2:], model[2]),
    ):
        a_bar = _bias_column(inp)
        a_hand, g_hand = a_bar.T @ a_bar / b, g.T @ g / b
        a_est, g_est = _factors(est, name)
        torch.testing.assert_close(a_est, a_hand, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g_est, g_hand, rtol=1e-12, atol=1e-14)
        v = _hand_direction(torch.cat([gw, gb[:, None]], dim=1), a_hand, g_hand, damping)
        torch.testing.assert_close(layer.weight.grad, v[:, :-1], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(layer.bias.grad, v[:, -1], rtol=1e-9, atol=1e-12)


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        with torch.random.fork_rng(devices=[]):
            self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, dtype=DT)
            self.head = nn.Linear(3 * 4 * 3, 4, dtype=DT)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def test_conv2d_factors_follow_kfc_with_unfolded_patches() -> None:
    """Conv2d: A averages ā āᵀ over the unfolded patches (positions), G sums g gᵀ over positions, per sample."""
    g = torch.Generator().manual_seed(0)
    b = 12
    x = torch.randn(b, 2, 7, 6, generator=g, dtype=DT)
    y = torch.randint(0, 4, (b,), generator=g)
    model, obj = _ConvNet(), unigrad.supervised(F.cross_entropy, x, y)
    damping = 0.02
    est = KFAC(damping=damping, fisher="empirical")
    est.estimate(model, obj)

    conv = model.conv
    with torch.enable_grad():
        s = conv(x)  # (B, 3, 4, 3)
        losses = F.cross_entropy(model.head(torch.tanh(s).flatten(1)), y, reduction="none")
        (gs,) = torch.autograd.grad(losses.sum(), [s], retain_graph=True)
        gw, gb = torch.autograd.grad(losses.mean(), [conv.weight, conv.bias])
    patches = F.unfold(x, 3, padding=1, stride=2).transpose(1, 2)  # (B, L, 18)
    positions = patches.shape[1]
    assert positions == 12
    a_bar = _bias_column(patches).reshape(-1, 19)
    a_hand = a_bar.T @ a_bar / (b * positions)
    gflat = gs.reshape(b, 3, positions).transpose(1, 2).reshape(-1, 3)
    g_hand = gflat.T @ gflat / b
    a_est, g_est = _factors(est, "conv")
    torch.testing.assert_close(a_est, a_hand, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_est, g_hand, rtol=1e-12, atol=1e-14)
    v = _hand_direction(torch.cat([gw.flatten(1), gb[:, None]], dim=1), a_hand, g_hand, damping)
    torch.testing.assert_close(conv.weight.grad, v[:, :-1].reshape(conv.weight.shape), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(conv.bias.grad, v[:, -1], rtol=1e-9, atol=1e-12)


def _single_linear(loss: str, batch: int = 8) -> tuple[nn.Linear, unigrad.Supervised, torch.Tensor]:
    """A Linear(4, 3) (4 → 1 for bce, 4 → 2 for bce2) on a fixed batch, and the exact expected output factor G of the
    true Fisher: E_ŷ[g gᵀ] = (1/B) Σ_b ∇²_z ℓ(z_b)."""
    g = torch.Generator().manual_seed(1)
    out = {"bce": 1, "bce2": 2}.get(loss, 3)
    with torch.random.fork_rng(devices=[]):
        model = nn.Linear(4, out, dtype=DT)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT))
    x = torch.randn(batch, 4, generator=g, dtype=DT)
    with torch.no_grad():
        z = model(x)
    if loss == "ce":
        obj = unigrad.supervised(F.cross_entropy, x, torch.randint(0, 3, (batch,), generator=g))
        p = torch.softmax(z, dim=1)
        exact = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    elif loss == "bce":
        obj = unigrad.supervised(bce_per_sample, x, torch.randint(0, 2, (batch,), generator=g).to(DT))
        p = torch.sigmoid(z)
        exact = (p * (1 - p)).mean(0).reshape(1, 1)
    elif loss == "bce2":  # two binary outputs, averaged per sample: ∇²ℓ = diag(p(1 − p))/2
        obj = unigrad.supervised(F.binary_cross_entropy_with_logits, x, torch.rand(batch, 2, generator=g, dtype=DT))
        p = torch.sigmoid(z)
        exact = torch.diag_embed(p * (1 - p)).mean(0) / 2
    else:  # mean squared error over 3 outputs: ℓ = ‖z − y‖²/3, ∇²ℓ = (2/3) I
        obj = unigrad.supervised(F.mse_loss, x, torch.randn(batch, 3, generator=g, dtype=DT))
        exact = torch.eye(3, dtype=DT) * 2 / 3
    return model, obj, exact


@pytest.mark.parametrize("loss", ["ce", "bce", "bce2", "mse"])
def test_sampled_fisher_output_factor_is_unbiased_for_the_true_fisher(loss: str) -> None:
    """Each call's G (fresh estimator: its first factors are the batch's) averages, over independent label
    draws, to the true Fisher's output factor; A is exact and noiseless."""
    model, obj, exact = _single_linear(loss)
    samples, a_first = [], None
    for seed in range(300):
        est = KFAC(seed=seed)
        est.estimate(model, obj)
        a, g = _factors(est, "")
        samples.append(g.reshape(-1))
        if a_first is None:
            a_first = a
        assert torch.equal(a, a_first)  # A does not see the labels: the same ops on the same inputs every time
    samples_t = torch.stack(samples)
    assert samples_t.std(0).max() > 0  # the labels really are sampled
    assert_mean_matches(samples_t, exact.reshape(-1), k=5.0, atol=1e-12)  # atol: rounding of O(1) entries only
    a_bar = _bias_column(obj.inputs)
    torch.testing.assert_close(a_first, a_bar.T @ a_bar / a_bar.shape[0], rtol=1e-12, atol=1e-14)


def _scaled_mlp() -> unigrad.Supervised:
    """The mlp problem with input features rescaled over three decades: badly conditioned for SGD."""
    problem = mlp(batch=64, dtype=DT)
    scale = torch.logspace(-1.5, 1.5, 10, dtype=DT)
    obj = problem.objective
    problem.objective = unigrad.supervised(F.cross_entropy, obj.inputs * scale, obj.targets)
    return problem


def _train(estimator: unigrad.Estimator, lr: float, momentum: float, steps: int = 30) -> float:
    problem = _scaled_mlp()
    opt = torch.optim.SGD(problem.model.parameters(), lr=lr, momentum=momentum)
    for _ in range(steps):
        opt.zero_grad()
        estimator.estimate(problem.model, problem.objective)
        opt.step()
    return problem.loss()


def test_kfac_trains_a_badly_conditioned_mlp_faster_than_tuned_sgd() -> None:
    """30 steps: K-FAC + plain SGD (one setting) ends at less than half the loss of backprop + SGD at its best
    learning rate and momentum on a grid. Measured from 0.939: K-FAC 0.052 (seeds 0–3: 0.052–0.099, the same to
    1e-11 with AVX-512 and AVX2 kernels), SGD at best 0.265 (lr 0.3, momentum 0.9). SGD at lr 1 without momentum is
    chaotic (0.48 or 0.54 by kernel) but never the best."""
    start = _scaled_mlp().loss()
    best_sgd = min(_train(Backprop(), lr, momentum) for lr in (0.01, 0.03, 0.1, 0.3, 1.0) for momentum in (0.0, 0.9))
    kfac = _train(KFAC(damping=1e-3, inverse_interval=1), lr=0.3, momentum=0.0)
    assert kfac < 0.5 * best_sgd < 0.5 * start, (kfac, best_sgd, start)


def test_intervals_skip_the_sampled_backward_and_keep_the_preconditioner() -> None:
    """factor_interval=2, inverse_interval=3: factors (and the extra backward) on steps 0, 2, 4, 6; the
    inverses on steps 0, 3, 6; in between, the direction uses the last inverses (the factors of that moment)."""
    problem = mlp(batch=16, dtype=DT)
    model, obj = problem.model, problem.objective
    est = KFAC(factor_interval=2, inverse_interval=3, damping=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    inverses_prev, factors_at_inversion = None, None
    for step in range(7):
        opt.zero_grad()
        before = est.state_dict()
        e = est.estimate(model, obj)
        state = est.state_dict()
        assert e.info["factors_updated"] == (step % 2 == 0)
        assert e.info["inverses_updated"] == (step % 3 == 0)
        assert e.cost.forwards == 16 and e.cost.backwards == (32 if step % 2 == 0 else 16)
        if step > 0:
            # (the first layer's A is the fixed batch's, so its running mean stays put)
            old, new = before["factors"], state["factors"]
            # an update changes these factors by far more than rounding; without one they are the same tensors
            changed = [not torch.equal(new[n][k], old[n][k]) for n, k in (("0", "G"), ("2", "A"), ("2", "G"))]
            assert changed == [step % 2 == 0] * 3
        if e.info["inverses_updated"]:
            factors_at_inversion = {n: (f["A"].clone(), f["G"].clone()) for n, f in state["factors"].items()}
        else:
            # not recomputed: the stored inverses are kept as they are
            assert all(torch.equal(state["inverses"][n][k], inverses_prev[n][k]) for n in ("0", "2") for k in "AG")
            # the written direction is the last inversion's preconditioner applied to this gradient (tolerances:
            # top of the file)
            with torch.enable_grad():
                grads = torch.autograd.grad(reduce(obj(model)), list(model.parameters()))
            for i, n in ((0, "0"), (2, "2")):
                a, g = factors_at_inversion[n]
                v = _hand_direction(torch.cat([grads[i], grads[i + 1][:, None]], dim=1), a, g, 0.01)
                torch.testing.assert_close(model[int(n)].weight.grad, v[:, :-1], rtol=1e-8, atol=1e-12)
        inverses_prev = state["inverses"]
        opt.step()
    assert est.state_dict()["factors"]["0"]["updates"] == 4


def test_running_factors_use_the_papers_averaging_weights() -> None:
    """A_k = ε A_{k−1} + (1 − ε) A_batch with ε = min(1 − 1/k, decay): decay=1 is the plain mean of the batches."""
    problem = mlp(batch=16, dtype=DT)
    model, obj = problem.model, problem.objective
    mean_est, ema_est = KFAC(decay=1.0, fisher="empirical"), KFAC(decay=0.6, fisher="empirical")
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    batches, ema = [], None
    for k in range(1, 5):
        single = KFAC(fisher="empirical")  # a fresh estimator's factors are the batch's
        single.estimate(model, obj)
        a_batch = _factors(single, "2")[0]
        batches.append(a_batch)
        eps = min(1 - 1 / k, 0.6)
        ema = a_batch if ema is None else eps * ema + (1 - eps) * a_batch
        opt.zero_grad()
        ema_est.estimate(model, obj)
        mean_est.estimate(model, obj)
        opt.step()
    # the same batch factors averaged in another order: a few roundings of entries ≤ 1 (tanh features), ≲ 1e-15
    torch.testing.assert_close(_factors(mean_est, "2")[0], torch.stack(batches).mean(0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(_factors(ema_est, "2")[0], ema, rtol=1e-12, atol=1e-14)


def test_kl_clip_scales_the_preconditioned_layers() -> None:
    """ν = min(1, √(kl_clip / (lr² Σ⟨V, ∇⟩))) multiplies every preconditioned direction; no clipping when loose."""
    problem = mlp(batch=16, dtype=DT)
    model, obj = problem.model, problem.objective
    grad = problem.grad()
    KFAC(damping=0.01).estimate(model, obj)
    v = flat_grad(model)
    vg = float(v @ grad)
    lr, kl = 0.5, 1e-4
    nu = math.sqrt(kl / (lr**2 * vg))
    assert nu < 1
    e = KFAC(damping=0.01, kl_clip=kl, lr=lr).estimate(model, obj)
    # ⟨V, ∇⟩ over 227 terms, Σ|terms| / Σ terms = 1.13: ≲ 300·u relative (measured equal)
    assert e.info["kl_scale"] == pytest.approx(nu, rel=1e-10)
    torch.testing.assert_close(flat_grad(model), nu * v, rtol=1e-10, atol=1e-14)
    e = KFAC(damping=0.01, kl_clip=1e6, lr=lr).estimate(model, obj)
    # the same seed, step and ops as the first call, then ν = 1 exactly: bitwise
    assert e.info["kl_scale"] == 1.0 and torch.equal(flat_grad(model), v)


def test_plain_gradient_outside_linear_and_conv_layers() -> None:
    """A LayerNorm's parameters get the plain gradient of the mean loss; the Linear layers are preconditioned."""
    g = torch.Generator().manual_seed(2)
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    x = torch.randn(10, 5, generator=g, dtype=DT)
    obj = unigrad.supervised(F.cross_entropy, x, torch.randint(0, 3, (10,), generator=g))
    with torch.enable_grad():
        gn = torch.autograd.grad(reduce(obj(model)), [model[1].weight, model[1].bias])
    e = KFAC().estimate(model, obj)
    assert e.info["layers"] == 2
    # the plain gradient is the estimator's autograd.grad of reduce(obj(model)), the same forward and backward
    # kernels as here (its hooks only record): bitwise on one machine
    assert torch.equal(model[1].weight.grad, gn[0]) and torch.equal(model[1].bias.grad, gn[1])


def test_grouped_convolutions_get_the_plain_gradient() -> None:
    g = torch.Generator().manual_seed(5)
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 9, 3)).to(DT)
    x = torch.randn(6, 2, 5, 5, generator=g, dtype=DT)
    obj = unigrad.supervised(F.cross_entropy, x, torch.randint(0, 3, (6,), generator=g))
    with torch.enable_grad():
        gw, gb = torch.autograd.grad(reduce(obj(model)), [model[0].weight, model[0].bias])
    assert KFAC().estimate(model, obj).info["layers"] == 1
    assert torch.equal(model[0].weight.grad, gw) and torch.equal(model[0].bias.grad, gb)  # as above: the same ops


class _Tokens(nn.Module):
    """A Linear layer applied at T = 4 positions per sample, averaged, then a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        with torch.random.fork_rng(devices=[]):
            self.embed = nn.Linear(3, 5, dtype=DT)
            self.head = nn.Linear(5, 2, dtype=DT)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 4, 3)
        return self.head(torch.tanh(self.embed(x)).mean(dim=1))


def test_positions_of_a_linear_layer_average_a_and_sum_g() -> None:
    """A Linear layer on (B, T, n) inputs: A = (1/BT) Σ_{b,t} ā āᵀ, G = (1/B) Σ_{b,t} g gᵀ (the Conv2d convention)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(10, 4, 3, generator=g, dtype=DT)
    model = _Tokens()
    obj = unigrad.supervised(F.cross_entropy, x, torch.randint(0, 2, (10,), generator=g))
    est = KFAC(fisher="empirical")
    est.estimate(model, obj)
    with torch.enable_grad():
        s = model.embed(x)
        losses = F.cross_entropy(model.head(torch.tanh(s).mean(dim=1)), obj.targets, reduction="none")
        (gs,) = torch.autograd.grad(losses.sum(), [s])
    a_bar = _bias_column(x).reshape(-1, 4)
    a_est, g_est = _factors(est, "embed")
    torch.testing.assert_close(a_est, a_bar.T @ a_bar / 40, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_est, gs.reshape(-1, 5).T @ gs.reshape(-1, 5) / 10, rtol=1e-12, atol=1e-14)


def test_empirical_fisher_works_for_any_objective_and_matches_the_supervised_one() -> None:
    problem = mlp(batch=16, dtype=DT)
    model, sup = problem.model, problem.objective
    plain = unigrad.objective(lambda m: F.cross_entropy(m(sup.inputs), sup.targets, reduction="none"), n_samples=16)
    KFAC(fisher="empirical").estimate(model, sup)
    expected = flat_grad(model)
    e = KFAC(fisher="empirical").estimate(model, plain)
    # the supervised objective computes the very same cross_entropy(model(x), y, reduction="none"): the same ops
    assert torch.equal(flat_grad(model), expected)
    assert e.cost.forwards == 16 and e.cost.backwards == 16
    with pytest.raises(UnigradError, match="supervised objective"):
        KFAC().estimate(model, plain)


def test_contract_and_cost() -> None:
    assert_contract(lambda seed: KFAC(seed=seed, inverse_interval=2), mlp(batch=32, dtype=DT))
    assert_contract(lambda seed: KFAC(seed=seed, fisher="empirical"), mlp(batch=32), seeded=False)
    assert_contract(lambda seed: KFAC(seed=seed), logistic(batch=32))
    problem = mlp(batch=32)
    e = KFAC().estimate(problem.model, problem.objective)
    assert e.cost.forwards == 32 and e.cost.backwards == 64
    assert e.info["damping"] == 0.03 and KFAC.order == 2
    assert all(not m._forward_hooks for m in problem.model.modules())  # the hooks live only for the call


def test_resume_continues_the_running_factors_bitwise() -> None:
    def run(split: int | None) -> torch.Tensor:
        problem = mlp(batch=16)
        model, obj = problem.model, problem.objective
        est = KFAC(inverse_interval=3, seed=4)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(6):
            if step == split:
                resumed = KFAC(inverse_interval=3, seed=4)
                resumed.load_state_dict(est.state_dict())
                est = resumed
            opt.zero_grad()
            est.estimate(model, obj)
            opt.step()
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    assert torch.equal(run(None), run(4))


def test_refusals() -> None:
    problem = mlp(batch=8, dtype=DT)
    with pytest.raises(UnigradError, match="decorrelated layers"):
        KFAC().estimate(decorrelate(problem.model), problem.objective)
    smooth = unigrad.supervised(
        nn.CrossEntropyLoss(label_smoothing=0.2), problem.objective.inputs, problem.objective.targets
    )
    model = mlp(batch=8, dtype=DT).model
    with pytest.raises(UnigradError, match="matches none"):
        KFAC().estimate(model, smooth)
    assert all(not m._forward_hooks for m in model.modules())  # removed on the way out of an error too
    KFAC(fisher="empirical").estimate(mlp(batch=8, dtype=DT).model, smooth)  # the empirical Fisher takes any loss


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"damping": 0}, "damping"),
        ({"damping": -1.0}, "damping"),
        ({"decay": 0}, "decay"),
        ({"decay": 1.5}, "decay"),
        ({"factor_interval": 0}, "factor_interval"),
        ({"inverse_interval": 2.5}, "inverse_interval"),
        ({"fisher": "exact"}, "fisher"),
        ({"kl_clip": 1e-3}, "lr"),
        ({"lr": 0.1}, "kl_clip"),
        ({"kl_clip": -1.0, "lr": 0.1}, "kl_clip"),
        ({"kl_clip": 1e-3, "lr": 0}, "lr"),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(UnigradError, match=match):
        KFAC(**options)
