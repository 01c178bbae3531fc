"""diag-hessian: Hutchinson's diagonal against the autograd Hessian (mean, variance, exactness), diagonal Newton on
quadratics (one step against gradient descent's κ·log steps; the Jacobi rate on a dense one), the three rules'
formulas, training an MLP, the curvature interval, contract, cost and options."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

import unigrad
from tests.problems import Problem, assert_contract, assert_mean_matches, flat_grad, mlp, quadratic, true_grad
from unigrad import UnigradError
from unigrad.core.params import trainable
from unigrad.core.probe import _Bound
from unigrad.core.rng import ProbeNoise
from unigrad.data import classic
from unigrad.second.curvature import FlatLoss, hutchinson_diagonal, keyed_probes
from unigrad.second.diag_hessian import DiagHessian


def _hutchinson(flat: FlatLoss, noise: ProbeNoise, seed: int, step: int, probes: int) -> torch.Tensor:
    """The estimator's diagonal: ``probes`` Hessian probes of ``noise`` keyed ``(seed, step, i, tensor)``."""
    return hutchinson_diagonal(flat.hvp, keyed_probes(noise, seed, step, flat.unflatten(flat.theta0)), probes)


def _hessian(problem: Problem) -> torch.Tensor:
    """The exact Hessian of the mean loss over the flat trainable parameters, by reverse-over-reverse autograd
    (``torch.autograd.functional.hessian``: an independent reference, without torch.func's start-up cost)."""
    params = trainable(problem.model)
    names, shapes, sizes = [n for n, _ in params], [p.shape for _, p in params], [p.numel() for _, p in params]
    bound = _Bound(problem.model, problem.objective)

    def f(t: torch.Tensor) -> torch.Tensor:
        values = {"model." + n: v.view(s) for n, v, s in zip(names, t.split(sizes), shapes, strict=True)}
        return functional_call(bound, values, (), strict=False).mean()

    return torch.autograd.functional.hessian(f, torch.cat([p.detach().reshape(-1) for _, p in params]))


def _samples(problem: Problem, n: int, distribution: str = "rademacher") -> torch.Tensor:
    """``n`` single-probe Hutchinson estimates (steps 0..n−1 of seed 3), stacked ``(n, d)``."""
    flat = FlatLoss(problem.model, problem.objective, trainable(problem.model))
    noise = ProbeNoise(distribution)
    return torch.stack([_hutchinson(flat, noise, 3, step, 1) for step in range(n)])


def _assert_variance_ratio(samples: torch.Tensor, predicted: torch.Tensor, k: float = 5.0) -> None:
    """``Σ_j s_j² / Σ_j predicted_j = 1`` within ``k`` standard errors. The ratio is the mean over rows ``i`` of
    ``u_i = n/(n−1)·Σ_j (x_ij − x̄_j)² / Σ_j predicted_j``; its SE is estimated as ``std(u)/√n``."""
    n = samples.shape[0]
    u = ((samples - samples.mean(0)) ** 2).sum(1) / predicted.sum() * n / (n - 1)
    ratio, se = float(u.mean()), float(u.std()) / math.sqrt(n)
    assert abs(ratio - 1.0) < k * se, (ratio, se)


@pytest.mark.parametrize(
    "problem",
    [quadratic(12, dense=True, dtype=torch.float64), mlp((4, 6, 3), batch=32, dtype=torch.float64)],
    ids=["dense-quadratic", "mlp"],
)
def test_hutchinson_is_unbiased_with_the_rademacher_variance(problem: Problem) -> None:
    h = _hessian(problem)
    diag = torch.diagonal(h)
    samples = _samples(problem, 400)
    # 5 SE (the helper's); atol 1e-12 only absorbs rounding: entries ≲ 10, sums of ≤ 51 terms → ≲ 1e-13
    assert_mean_matches(samples, diag, k=5.0, atol=1e-12)
    # Var[z_j (Hz)_j] = Σ_{k≠j} H_jk² for Rademacher z: compare the sample variances in aggregate, within 5 SE
    # (measured ratio 0.998 with SE 0.023 on the quadratic, 0.992 with SE 0.012 on the MLP; a variance off by
    # 30% reads 13 and 25 SE off)
    predicted = (h * h).sum(1) - diag * diag
    _assert_variance_ratio(samples, predicted)
    # Gaussian probes are unbiased too but add 2·H_jj² (measured 1.034, SE 0.058; 1.023, SE 0.033; leaving the
    # 2·H_jj² out reads 15 and 9 SE off)
    gauss = _samples(problem, 400, "gaussian")
    assert_mean_matches(gauss, diag, k=5.0, atol=1e-12)
    _assert_variance_ratio(gauss, predicted + 2 * diag * diag)


def test_hutchinson_is_exact_for_a_diagonal_hessian_and_q_probes_average() -> None:
    problem = quadratic(20, dense=False, cond=1e3, dtype=torch.float64)
    samples = _samples(problem, 20)
    # every operation is exact on any IEEE machine (products with ±1 and ½, a sum of two equal halves, a mean over
    # one sample), so z ⊙ Hz = diag(A) bit for bit (measured) and the variance is exactly 0
    torch.testing.assert_close(samples, problem.model.a.expand(20, -1), rtol=1e-15, atol=0)
    assert float(samples.std(0).max()) < 1e-12  # zero variance
    # q probes are the mean of the single probes 0..q−1 of that step
    dense = mlp((4, 6, 3), batch=16, dtype=torch.float64)
    flat = FlatLoss(dense.model, dense.objective, trainable(dense.model))
    noise = ProbeNoise("rademacher")
    singles = []
    for i in range(4):
        z = torch.cat([t.reshape(-1) for t in noise.direction(0, 7, i, flat.unflatten(flat.theta0))])
        singles.append(z * flat.hvp(z))
    torch.testing.assert_close(_hutchinson(flat, noise, 0, 7, 4), torch.stack(singles).mean(0))


@pytest.mark.parametrize("kappa", [1e2, 1e4, 1e8])
def test_diagonal_newton_solves_a_diagonal_quadratic_in_one_step_unlike_gradient_descent(kappa: float) -> None:
    model, obj = classic.quadratic(10, kappa=kappa)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    e = DiagHessian(rule="newton").estimate(model, obj)
    assert e.loss > 1.0
    opt.step()
    # the diagonal is exact here, so each coordinate moves by g_j/h_j = −1 up to a few roundings: ≲ 4·eps64,
    # whatever κ (measured ≤ 2.2e-16)
    assert float((model.x.detach() - 1.0).abs().max()) < 1e-10
    # gradient descent with step 1/L = 1/κ: the unit-curvature coordinate shrinks by (1 − 1/κ) per step
    model, obj = classic.quadratic(10, kappa=kappa)
    opt = torch.optim.SGD(model.parameters(), lr=1.0 / kappa)
    steps = 100
    for _ in range(steps):
        opt.zero_grad()
        (g,) = torch.autograd.grad(obj(model).sum(), [model.x])
        model.x.grad = g
        opt.step()
    error = abs(float(model.x.detach()[0]) - 1.0)
    # 100 steps of a few roundings each: ≲ 300·eps64 absolute against an error ≥ 0.36 (measured rel ≤ 5e-15)
    assert error == pytest.approx((1.0 - 1.0 / kappa) ** steps, rel=1e-9)
    assert error > 0.3


def test_diagonal_newton_on_a_dense_quadratic_converges_at_the_jacobi_rate() -> None:
    """With the exact diagonal D, θ ← θ − η D⁻¹∇f contracts the error by ρ = max|1 − η λ(D^{-½}AD^{-½})|."""
    lr = 0.5
    problem = quadratic(16, dense=True, cond=10.0, dtype=torch.float64)
    a = problem.model.a
    s = torch.diagonal(a).rsqrt()
    eig = torch.linalg.eigvalsh(s[:, None] * a * s[None, :])
    rho = float((1.0 - lr * eig).abs().max())
    assert rho < 1.0 < float((1.0 - eig).abs().max())  # the full step (η = 1) diverges here (0.861 and 1.364)
    for eta, converges in ((lr, True), (1.0, False)):
        problem = quadratic(16, dense=True, cond=10.0, dtype=torch.float64)
        est = DiagHessian(rule="newton")
        opt = torch.optim.SGD(problem.model.parameters(), lr=eta)
        losses = [problem.loss()]
        for _ in range(60):
            opt.zero_grad()
            est.estimate(problem.model, problem.objective)
            opt.step()
            losses.append(problem.loss())
        if converges:
            # The curvature is a Hutchinson estimate (EMA of one Rademacher probe per step), so the rate is ρ only
            # up to its noise: rate − ρ measured +0.002 for seed 0, mean −0.005 and SD 0.010 over seeds 0–39;
            # 0.05 is 5 SD. The iteration is linear in the error with the same maps on every machine (the probes
            # are exact ±1), so rounding moves these figures by ~1e-13 only.
            rate = (losses[60] / losses[30]) ** (1 / 60)  # per-step error contraction (loss ∝ error²)
            assert abs(rate - rho) < 0.05, (rate, rho)
            # a property of seed 0's probes (measured 1.5e-9; over seeds 0–39 an unlucky first probe can make the
            # first steps expand, up to 0.5), reproduced on any machine up to a relative ~1e-13 (above)
            assert losses[60] < 1e-6 * losses[0]
        else:
            assert losses[60] > losses[0]  # measured 9e20 times larger


@pytest.mark.parametrize("rule", ["sophia", "adahessian", "newton"])
def test_the_rules_apply_their_formulas_to_the_stored_curvature(rule: str) -> None:
    # both sides use the same probes (seed 5, step 0) and the same gradient; the formulas differ by a few roundings
    # (1 − β against 0.1, the EMA's products) and |D̂| ≥ 1.9e-3, so ≲ 10·eps64 relative (measured ≤ 4e-15 absolute
    # on directions ≤ 54) ≪ the float64 defaults of assert_close and approx
    problem = mlp((4, 6, 3), batch=32, dtype=torch.float64)
    est = DiagHessian(rule=rule, beta=0.9, gamma=1.0, probes=2, seed=5)
    flat = FlatLoss(problem.model, problem.objective, trainable(problem.model))
    diag = _hutchinson(flat, ProbeNoise("rademacher"), 5, 0, 2)
    e = est.estimate(problem.model, problem.objective)
    g, d = true_grad(problem.model, problem.objective), flat_grad(problem.model)
    state = est.state_dict()
    assert state["updates"] == 1
    if rule == "adahessian":
        torch.testing.assert_close(state["curvature"], 0.1 * diag * diag)
        torch.testing.assert_close(d, g / (diag.abs() + est.eps))  # bias-corrected: v̂ = D̂²
    elif rule == "sophia":
        torch.testing.assert_close(state["curvature"], 0.1 * diag)
        h = 0.1 * diag  # Sophia does not bias-correct
        torch.testing.assert_close(d, (g / h.clamp_min(est.eps)).clamp(-1, 1))
        assert 0 < e.info["clipped_fraction"] < 1  # 47 of 51 (every |ratio| is ≥ 0.25 away from 1)
    else:
        torch.testing.assert_close(d, g / diag.abs().clamp_min(est.eps))
    assert e.info["gradient_norm"] == pytest.approx(float(g.norm()))


@pytest.mark.parametrize(
    ("rule", "lr", "options"), [("sophia", 0.05, {}), ("adahessian", 0.1, {}), ("newton", 0.1, {"eps": 1e-2})]
)
def test_the_rules_with_sgd_train_an_mlp(rule: str, lr: float, options: dict) -> None:
    """Measured loss after / before over seeds 0–5: sophia 0.027–0.036, adahessian 0.18–0.26, newton (ε = 1e-2)
    0.027–0.050; a 1e-12 change of the start changes them by ≤ 1e-11. Diagonal Newton needs a floor on |h| on a
    non-convex MLP (Becker & LeCun's μ): with the default ε = 1e-8, near-zero Hutchinson entries give steps of 10² to
    10³ and the run is chaotic (the same 1e-12 change moves the final loss by O(1); seed 0 ended at 7.6× the start
    with AVX-512 kernels and at 0.11× with AVX2 ones)."""
    problem = mlp((4, 8, 3), batch=32, dtype=torch.float64)
    est = DiagHessian(rule=rule, **options)
    opt = torch.optim.SGD(problem.model.parameters(), lr=lr)
    first = problem.loss()
    for _ in range(40):
        opt.zero_grad()
        e = est.estimate(problem.model, problem.objective)
        if rule == "sophia":
            assert float(flat_grad(problem.model).abs().max()) <= 1.0  # clamp(−1, 1): exact
        opt.step()
    assert problem.loss() < 0.5 * first, (first, problem.loss())
    assert math.isfinite(e.info["curvature_mean"])


def test_momentum_is_the_papers_moving_average() -> None:
    problem = mlp((4, 6, 3), batch=16, dtype=torch.float64)
    est = DiagHessian(rule="adahessian", momentum=0.9, beta=0.5)
    ref = DiagHessian(rule="adahessian", beta=0.5)
    m = torch.zeros(problem.dim, dtype=torch.float64)
    for t in range(1, 4):
        est.estimate(problem.model, problem.objective)
        d = flat_grad(problem.model)
        ref.estimate(problem.model, problem.objective)  # same seed and step: same curvature, g in place of m
        plain = flat_grad(problem.model)
        g = true_grad(problem.model, problem.objective)
        m = 0.9 * m + 0.1 * g
        # d = m̂ / (√v̂ + ε) and plain = g / (√v̂ + ε): their ratio is m̂ / g (a few roundings apart: measured
        # ≤ 9e-16 on values ≤ 3, against the float64 defaults rtol = atol = 1e-7)
        torch.testing.assert_close(d * g, plain * m / (1 - 0.9**t))
        with torch.no_grad():  # move, so the gradients differ between steps
            for _, p in trainable(problem.model):
                p.sub_(0.1 * p.grad)


def test_curvature_is_updated_only_every_interval_calls() -> None:
    problem = mlp((4, 6, 3), batch=16, dtype=torch.float64)
    est = DiagHessian(rule="newton", interval=3, probes=2)
    for step in range(7):
        before = est.curvature
        e = est.estimate(problem.model, problem.objective)
        updated = step % 3 == 0
        assert e.info["curvature_updated"] is updated
        assert (e.cost.forwards, e.cost.backwards, e.cost.hvps) == (16, 16, 2 * 16 if updated else 0)
        assert est.updates == step // 3 + 1
        if not updated:
            assert torch.equal(est.curvature, before)  # not recomputed: the stored tensor is kept as it is
            h = est.curvature / (1 - est.beta**est.updates)
            g = true_grad(problem.model, problem.objective)
            # the estimator's own formula on the same values (measured bitwise equal)
            torch.testing.assert_close(flat_grad(problem.model), g / h.abs().clamp_min(est.eps))


def test_spatial_average_over_convolution_kernels() -> None:
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        conv = torch.nn.Sequential(
            torch.nn.Conv2d(2, 3, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(27, 2)
        )
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    x = torch.randn(8, 2, 5, 5, generator=g)
    y = torch.randint(0, 2, (8,), generator=g)
    obj = unigrad.supervised(torch.nn.functional.cross_entropy, x, y)
    est = DiagHessian(rule="adahessian", spatial_average=True, beta=0.0)
    est.estimate(conv, obj)
    # float32; the test repeats the estimator's probe (seed 0, step 0), HVP, mean and square (β = 0, no bias
    # correction left: 1 − 0¹ = 1), so the two sides agree to a few eps32 (measured bitwise) ≪ rtol 1.3e-6
    kernel = est.curvature[: 3 * 2 * 3 * 3].view(3, 2, 3, 3)
    torch.testing.assert_close(kernel, kernel[:, :, :1, :1].expand_as(kernel))  # constant over each 3×3 kernel
    flat = FlatLoss(conv, obj, trainable(conv))
    diag = _hutchinson(flat, ProbeNoise("rademacher"), 0, 0, 1)
    expect = diag[:54].view(3, 2, 3, 3).abs().mean(dim=(2, 3), keepdim=True).expand(3, 2, 3, 3) ** 2
    torch.testing.assert_close(kernel, expect)
    torch.testing.assert_close(est.curvature[54:], diag[54:] ** 2)  # other tensors keep their entries


@pytest.mark.parametrize(
    "options",
    [{"rule": "sophia", "gamma": 1.0}, {"rule": "adahessian", "momentum": 0.9}, {"rule": "newton", "interval": 2}],
)
def test_contract_and_resume(options: dict) -> None:
    problem = mlp((4, 6, 3), batch=16, dtype=torch.float64)
    assert_contract(lambda seed: DiagHessian(seed=seed, **options), problem)


def test_cost_and_info() -> None:
    problem = mlp((4, 6, 3), batch=16, dtype=torch.float64)
    e = DiagHessian(probes=3).estimate(problem.model, problem.objective)
    assert (e.cost.forwards, e.cost.backwards, e.cost.hvps, e.cost.jvps) == (16, 16, 48, 0)
    assert e.loss == pytest.approx(problem.loss())  # the same forward (measured equal); rel 1e-6 is loose
    assert set(e.info) >= {"curvature_mean", "gradient_norm", "curvature_updated"}
    assert DiagHessian.order == 2 and DiagHessian.name == "diag-hessian"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"rule": "kfac"}, "rule"),
        ({"probes": 0}, "probes"),
        ({"beta": 1.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"interval": 0}, "interval"),
        ({"eps": 0.0}, "eps"),
        ({"gamma": -1.0}, "gamma"),
        ({"momentum": 1.0}, "momentum"),
        ({"distribution": "sphere"}, "distribution"),
        ({"noise_source": "disk"}, "noise_source"),
        ({"spatial_average": True}, "spatial_average"),
        ({"bias_correction": "yes"}, "bias_correction"),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(UnigradError, match=match):
        DiagHessian(**options)


def test_a_different_model_is_refused() -> None:
    est = DiagHessian()
    est.estimate(*classic.quadratic(3, kappa=2.0))
    with pytest.raises(UnigradError, match="fresh estimator"):
        est.estimate(*classic.quadratic(4, kappa=2.0))
