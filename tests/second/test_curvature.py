"""The curvature module: products against explicit matrices (Hessian, Gauss-Newton, per-sample gradients); CG;
Lanczos's extreme eigenvalues against eigvalsh; Hutchinson's unbiasedness; the likelihoods' sampling distributions,
output gradients and refusals.

Tolerances of the products: the products, gradients and losses are float64 computations of the same sums (≤ 227
parameters, 64 samples, 3 outputs) by two routes (double backward against torch.func's explicit matrices): rounding
≲ 10³·eps64·scale ≈ 2e-13 with entries of order 1 (measured ≤ 7e-16), far below assert_close's float64 defaults
(rtol = atol = 1e-7) and the 1e-12 on losses of about 1.1.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import unigrad
from tests.problems import assert_mean_matches, mlp, quadratic
from unigrad import UnigradError
from unigrad.core.params import trainable
from unigrad.core.rng import ProbeNoise, generator
from unigrad.second.curvature import (
    FORMS,
    FlatLoss,
    Likelihood,
    conjugate_gradient,
    hutchinson_diagonal,
    hutchinson_trace,
    keyed_probes,
    lanczos,
    likelihood_of,
    loss_kind,
    reduction_ratio,
    tridiagonal,
)


def _flat_fns(problem):
    params = trainable(problem.model)
    names, shapes, sizes = [n for n, _ in params], [p.shape for _, p in params], [p.numel() for _, p in params]
    obj = problem.objective

    def values(theta):
        return {n: t.view(s) for n, t, s in zip(names, theta.split(sizes), shapes, strict=True)}

    def outputs(theta):
        return functional_call(problem.model, values(theta), (obj.inputs,))

    def f(theta):
        return obj.score(outputs(theta)).mean()

    return params, outputs, f


def test_hvp_and_ggn_products_match_the_explicit_matrices() -> None:
    problem = mlp(dtype=torch.float64)
    params, outputs, f = _flat_fns(problem)
    before = [p.detach().clone() for _, p in params]
    fl = FlatLoss(problem.model, problem.objective, params, outputs=True)
    theta = fl.theta0
    h = torch.func.hessian(f)(theta)
    jac = torch.func.jacrev(outputs)(theta)  # (B, k, d)
    z = outputs(theta).detach()
    hz = torch.func.hessian(lambda zz: problem.objective.score(zz).mean())(z)  # (B, k, B, k)
    b, k, d = jac.shape
    ggn = jac.reshape(b * k, d).T @ hz.reshape(b * k, b * k) @ jac.reshape(b * k, d)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(d, generator=g, dtype=torch.float64)
        torch.testing.assert_close(fl.hvp(v), h @ v)
        torch.testing.assert_close(fl.ggn_vp(v), ggn @ v)
    assert abs(fl.loss - float(f(theta))) < 1e-12
    torch.testing.assert_close(fl.grad, torch.func.grad(f)(theta))
    # GGN is positive semi-definite, the Hessian of this tanh network is not: forming G and eigvalsh err by
    # ≲ d·eps64·‖G‖ ≈ 227 · 2.2e-16 · 0.71 ≈ 4e-14 (measured λ_min = −1e-16) ≪ 1e-10; λ_min(H) = −0.38, far from 0
    assert float(torch.linalg.eigvalsh(0.5 * (ggn + ggn.T))[0]) > -1e-10
    assert float(torch.linalg.eigvalsh(h)[0]) < 0
    for (_, p), p0 in zip(params, before, strict=True):
        assert torch.equal(p.detach(), p0)  # the products never write the parameters
    batch = problem.objective.n_samples
    assert (fl.cost.forwards, fl.cost.backwards, fl.cost.hvps, fl.cost.jvps) == (batch, 4 * batch, 3 * batch, 3 * batch)


def test_per_sample_gradients_and_values_elsewhere() -> None:
    problem = mlp(dtype=torch.float64)
    params, outputs, f = _flat_fns(problem)
    fl = FlatLoss(problem.model, problem.objective, params)
    jac = fl.per_sample_grads()
    per_sample = torch.func.jacrev(lambda t: problem.objective.score(outputs(t)))(fl.theta0)
    torch.testing.assert_close(jac, per_sample)
    torch.testing.assert_close(jac.mean(0), fl.grad)
    other = fl.theta0 + 0.1
    value, grad = fl.value_and_grad(other)
    assert abs(value - float(f(other))) < 1e-12 and abs(fl.value(other) - value) < 1e-12
    torch.testing.assert_close(grad, torch.func.grad(f)(other))


def test_gauss_newton_needs_a_supervised_objective() -> None:
    problem = quadratic(4)
    with pytest.raises(UnigradError, match="supervised objective"):
        FlatLoss(problem.model, problem.objective, trainable(problem.model), outputs=True)
    fl = FlatLoss(problem.model, problem.objective, trainable(problem.model))
    with pytest.raises(UnigradError, match="outputs=True"):
        fl.ggn_vp(torch.ones(4))


def test_conjugate_gradient_solves_spd_systems_in_at_most_d_products() -> None:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    a = (q * torch.logspace(0, 2, 12, dtype=torch.float64)) @ q.T
    b = torch.randn(12, generator=g, dtype=torch.float64)
    res = conjugate_gradient(lambda v: a @ v, b, max_iter=100, tol=1e-8)
    # stopped at ‖r‖ ≤ 1e-8‖b‖ with λ_min = 1: ‖x − x*‖ ≤ ‖r‖/λ_min ≤ 3.7e-8 < the default atol 1e-7 (measured ≤ 5e-11)
    torch.testing.assert_close(res.x, torch.linalg.solve(a, b))
    # d = 12 in exact arithmetic; rounding leaves ‖r‖/‖b‖ = 7e-8 after 12 products, 3e-10 to 1.4e-9 after 13:
    # measured 13 (AVX-512 and AVX2), slack for two more
    assert res.iterations <= 12 + 3 and not res.negative_curvature
    # with few iterations the quadratic model still decreases monotonically along the saved iterates
    res = conjugate_gradient(lambda v: a @ v, b, max_iter=5, save_at=lambda i: True)
    phis = [float(0.5 * x @ a @ x - b @ x) for _, x in res.iterates]
    # (the smallest decrease, 0.093, is ~10¹³ times φ's rounding error, 12·eps64·|φ| ≈ 1e-14)
    assert len(phis) == 5 and all(p2 < p1 for p1, p2 in itertools.pairwise(phis))
    # relative-progress stopping ends earlier than the residual test on the same system (measured 12 products
    # against 16); the test looks back k = 10 iterations, so it cannot stop before 11, and 100 is max_iter
    early = conjugate_gradient(lambda v: a @ v, b, max_iter=100, tol=1e-14, progress_tol=0.05)
    assert 10 < early.iterations < 100
    assert float(0.5 * early.x @ a @ early.x - b @ early.x) < 0  # measured −2.03


def test_conjugate_gradient_stops_on_negative_curvature_with_a_descent_direction() -> None:
    a = torch.diag(torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64))
    b = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    res = conjugate_gradient(lambda v: a @ v, b, max_iter=10)
    assert res.negative_curvature
    assert float(b @ res.x) > 0  # a descent direction for φ(x) = ½xᵀAx − bᵀx at 0 (bᵀx = 2.25 exactly)


# -- Lanczos ------------------------------------------------------------------------------------------


def _symmetric(eig: torch.Tensor, seed: int = 2) -> torch.Tensor:
    """``Q diag(eig) Qᵀ`` with a random rotation ``Q`` (float64, symmetrised)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eig), len(eig), generator=g, dtype=torch.float64))
    a = (q * eig) @ q.T
    return 0.5 * (a + a.T)


_SPECTRUM = torch.cat([torch.tensor([-3.0]), torch.linspace(0.1, 1.0, 10), torch.tensor([5.0])]).double()


@pytest.mark.parametrize("form", FORMS)
def test_lanczos_finds_the_extreme_eigenvalues(form: str) -> None:
    a = _symmetric(_SPECTRUM)
    start = torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = torch.linalg.eigvalsh(a)
    lz = lanczos(lambda v: a @ v, start, 8, form=form)
    ritz = torch.linalg.eigvalsh(lz.tridiagonal)
    # the extremes are well separated (gaps 4 and 3.1 against a spread of 8): after 8 steps they are exact to
    # ~1e-12 (measured 8e-13 and 9e-14); 1e-9 leaves room for other BLAS, ≪ the gaps
    assert abs(float(ritz[-1] - exact[-1])) < 1e-9 and abs(float(ritz[0] - exact[0])) < 1e-9
    # Ritz values lie inside the spectrum (interlacing), up to rounding of order eps64·‖A‖ ≈ 1e-15
    assert float(ritz[-1]) <= float(exact[-1]) + 1e-12 and float(ritz[0]) >= float(exact[0]) - 1e-12
    # with full reorthogonalisation Q is orthonormal and T = QAQᵀ to rounding (measured ≤ 4.5e-16)
    eye = torch.eye(8, dtype=torch.float64)
    torch.testing.assert_close(lz.basis @ lz.basis.T, eye, rtol=0, atol=1e-13)
    torch.testing.assert_close(lz.basis @ a @ lz.basis.T, lz.tridiagonal, rtol=0, atol=1e-13)
    # d steps span the space: every eigenvalue (measured ≤ 4.4e-15 off)
    full = torch.linalg.eigvalsh(lanczos(lambda v: a @ v, start, 12, form=form).tridiagonal)
    torch.testing.assert_close(full, exact, rtol=0, atol=1e-12)
    # the top Ritz value rises monotonically with the steps (T_k is a leading block of T_{k+1}: Cauchy interlacing)
    tops = [
        float(torch.linalg.eigvalsh(lanczos(lambda v: a @ v, start, k, form=form).tridiagonal)[-1]) for k in range(1, 9)
    ]
    assert all(t2 >= t1 - 1e-12 for t1, t2 in itertools.pairwise(tops))
    # without reorthogonalisation the recurrence alone still gives the spectrum of this small, well-conditioned A
    # (measured 3.8e-10 off; loss of orthogonality grows as Ritz values converge, hence the looser bound)
    plain = lanczos(lambda v: a @ v, start, 12, form=form, reorthogonalize=False)
    torch.testing.assert_close(torch.linalg.eigvalsh(plain.tridiagonal), exact, rtol=0, atol=1e-7)


def test_lanczos_continues_past_an_invariant_subspace_with_keyed_vectors() -> None:
    a = torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
    start = torch.zeros(6, dtype=torch.float64)
    start[:2] = 1.0  # the Krylov space of e₁ + e₂ is 2-dimensional: a breakdown after 2 steps

    def random_vector(i: int) -> torch.Tensor:
        return torch.randn(6, generator=generator(7, 0xC0DE, i), dtype=torch.float64)

    rng_state = torch.get_rng_state()
    lz = lanczos(lambda v: a @ v, start, 6, random_vector=random_vector)
    assert torch.equal(torch.get_rng_state(), rng_state)  # keyed vectors only: the global RNG is untouched
    assert lz.restarts >= 1
    # the basis spans the whole space and T = QAQᵀ keeps the (tiny) coupling: every eigenvalue (measured ≤ 4.5e-16)
    torch.testing.assert_close(lz.basis @ lz.basis.T, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-13)
    torch.testing.assert_close(torch.linalg.eigvalsh(lz.tridiagonal), torch.diagonal(a), rtol=0, atol=1e-12)
    again = lanczos(lambda v: a @ v, start, 6, random_vector=random_vector)
    assert torch.equal(again.basis, lz.basis) and again.alphas == lz.alphas  # the same keys, the same bits
    # a zero start draws its first vector; without random vectors an exact invariant subspace ends the run
    assert lanczos(lambda v: a @ v, torch.zeros(6, dtype=torch.float64), 3, random_vector=random_vector).restarts >= 1
    e1 = torch.zeros(6, dtype=torch.float64)
    e1[0] = 1.0
    alone = lanczos(lambda v: a @ v, e1, 4)  # an eigenvector: β₀ = 0 exactly
    assert alone.alphas == [1.0] and alone.basis.shape == (1, 6)


def test_lanczos_stop_and_refusals() -> None:
    a = _symmetric(_SPECTRUM)
    start = torch.ones(12, dtype=torch.float64)
    seen: list[tuple[int, int]] = []

    def converged(alphas: list[float], betas: list[float], beta: float) -> bool:
        seen.append((len(alphas), len(betas)))
        evals, evecs = torch.linalg.eigh(tridiagonal(alphas, betas))
        return beta * abs(float(evecs[-1, -1])) <= 1e-6 * abs(float(evals[-1]))

    lz = lanczos(lambda v: a @ v, start, 12, form="modified", stop=converged)
    assert len(lz.alphas) < 12 and len(lz.betas) == len(lz.alphas) - 1
    assert seen == [(j + 1, j) for j in range(len(lz.alphas))]  # asked after every step, with β_{j−1} and before
    # the residual bound ‖Ay − μy‖ ≤ 1e-6·|μ| bounds the eigenvalue error by it (Bauer–Fike; measured 3.5e-12
    # after 7 steps)
    assert abs(float(torch.linalg.eigvalsh(lz.tridiagonal)[-1]) - 5.0) < 1e-5
    for steps in (0, 13):
        with pytest.raises(UnigradError, match="steps") as info:
            lanczos(lambda v: a @ v, start, steps)
        assert "\n" not in str(info.value)
    with pytest.raises(UnigradError, match="random_vector"):
        lanczos(lambda v: a @ v, torch.zeros(12, dtype=torch.float64), 3)
    with pytest.raises(UnigradError, match="form"):
        lanczos(lambda v: a @ v, start, 3, form="block")


# -- Hutchinson ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_diagonal_and_trace_are_unbiased(distribution: str) -> None:
    a = _symmetric(torch.linspace(-2.0, 3.0, 8, dtype=torch.float64), seed=4)
    off = (a * a).sum() - (torch.diagonal(a) ** 2).sum()  # Σ_{j≠k} A_jk²
    noise = ProbeNoise(distribution, source="generator")
    like = [torch.zeros(8, dtype=torch.float64)]
    n = 2000
    diag = torch.stack([hutchinson_diagonal(lambda v: a @ v, keyed_probes(noise, 1, s, like), 1) for s in range(n)])
    # single-probe estimates over independent keys: mean diag A within 5 SE (the helper's; atol: rounding only)
    assert_mean_matches(diag, torch.diagonal(a), atol=1e-12)
    traces = torch.tensor([hutchinson_trace(lambda v: a @ v, keyed_probes(noise, 2, s, like), 2)[0] for s in range(n)])
    se = float(traces.std()) / math.sqrt(n)
    assert abs(float(traces.mean()) - float(torch.trace(a))) < 5 * se
    # the variance of one sample zᵀAz is 2Σ_{j≠k}A_jk² (Rademacher) plus 2Σ_j A_jj² (Gaussian); 2-probe means
    # have half of it. A variance from 2000 samples has a relative SE of about √(2/n)·√(1 + κ/2) ≈ 0.03–0.05
    # (κ the excess kurtosis), so 0.15 is at least 3 SE (measured ratios 1.02 and 0.96)
    predicted = 2 * float(off) + (2 * float((torch.diagonal(a) ** 2).sum()) if distribution == "gaussian" else 0.0)
    assert abs(float(traces.var()) / (predicted / 2) - 1) < 0.15
    # the estimate's own standard error is the sample sd over √q
    mean, err = hutchinson_trace(lambda v: a @ v, keyed_probes(noise, 3, 0, like), 400)
    assert abs(mean - float(torch.trace(a))) < 5 * err
    # an sd from 400 samples has a relative SE of about √(1/(2n))·√(1 + κ/2) ≈ 0.04–0.07; 0.3 is over 4 SE
    # (measured ratios 0.91 and 0.98)
    assert abs(err / math.sqrt(predicted / 400) - 1) < 0.3


def test_hutchinson_probes_are_keyed_and_exact_on_a_diagonal_matrix() -> None:
    a = torch.diag(torch.tensor([1.0, -2.0, 0.5, 4.0, 3.0], dtype=torch.float64))
    like = [torch.zeros(2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)]  # two tensors, flattened
    rng_state = torch.get_rng_state()
    probe = keyed_probes(ProbeNoise("rademacher"), 0, 5, like)
    first = hutchinson_diagonal(lambda v: a @ v, probe, 3)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.equal(
        first, hutchinson_diagonal(lambda v: a @ v, keyed_probes(ProbeNoise("rademacher"), 0, 5, like), 3)
    )
    assert torch.equal(first, torch.diagonal(a))  # z ⊙ Az = z² ⊙ diag A = diag A exactly for ±1 entries
    assert not torch.equal(probe(0), probe(1))  # the probes of one key differ
    trace, err = hutchinson_trace(lambda v: a @ v, probe, 3)
    assert trace == float(torch.trace(a)) and err == 0.0
    with pytest.raises(UnigradError, match="probes"):
        hutchinson_trace(lambda v: a @ v, probe, 0)


# -- likelihoods --------------------------------------------------------------------------------------


def _outputs(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)


def test_likelihood_samples_from_the_predictive_distribution() -> None:
    n = 20000
    # categorical: class frequencies against softmax(z), per input and class within 5 SE √(p(1−p)/n)
    z = _outputs((3, 4))
    labels = Likelihood("cross_entropy").sample(z, generator(1, 2), n)
    assert labels.shape == (3, n) and labels.dtype == torch.int64
    freq = F.one_hot(labels, 4).double().mean(1)
    p = torch.softmax(z, dim=1)
    assert bool(((freq - p).abs() < 5 * torch.sqrt(p * (1 - p) / n)).all())
    # Bernoulli: the mean of the 0/1 targets against σ(z)
    z = _outputs((3, 2))
    y = Likelihood("bce").sample(z, generator(1, 3), n)
    assert y.shape == (3, n, 2) and set(y.unique().tolist()) <= {0.0, 1.0}
    p = torch.sigmoid(z)
    assert bool(((y.mean(1) - p).abs() < 5 * torch.sqrt(p * (1 - p) / n)).all())
    # Gaussian N(z, k/2): mean z (SE √(k/(2n))) and variance k/2 (SE ≈ (k/2)√(2/n)) for k = 2 outputs
    y = Likelihood("mse").sample(z, generator(1, 4), n)
    assert bool(((y.mean(1) - z).abs() < 5 * math.sqrt(1.0 / n)).all())
    assert bool(((y.var(1) - 1.0).abs() < 5 * math.sqrt(2.0 / n)).all())


_PER_SAMPLE = {  # ℓ(z_b, y_b) of one sample, as the objective computes it
    "cross_entropy": lambda zb, yb: F.cross_entropy(zb[None], yb[None]),
    "bce": F.binary_cross_entropy_with_logits,
    "mse": F.mse_loss,
}


@pytest.mark.parametrize("loss", list(_PER_SAMPLE))
def test_likelihood_output_gradients_are_the_scores_at_the_sampled_targets(loss: str) -> None:
    fn = _PER_SAMPLE[loss]
    z = _outputs((3, 4))
    like = Likelihood(loss)
    m = 5
    y = like.sample(z, generator(4, 4), m)
    g = like.output_grads(z, generator(4, 4), m)  # the same key: the same draws
    assert g.shape == (3, m, 4) and g.dtype == z.dtype
    scale = 2.0 if loss == "bce" else 1.0  # √k with k = 4: bce's loss is its negative log-likelihood over k
    for b in range(3):
        for j in range(m):
            zb = z[b].clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(zb, y[b, j]), zb)
            # the same quantity by two routes (closed form, autograd): rounding of O(1) numbers only
            torch.testing.assert_close(g[b, j], scale * grad, rtol=1e-12, atol=1e-14)
    # the output Fisher: E[g gᵀ] = ∇²_z ℓ per input (the Hessian does not depend on y), over 4000 draws (5 SE;
    # atol: rounding only)
    draws = like.output_grads(z, generator(4, 5), 4000)
    outer = torch.einsum("bmk,bml->mbkl", draws, draws).reshape(4000, -1)
    hessians = [torch.func.hessian(lambda zz, yb=y[b, 0]: fn(zz, yb))(z[b]) for b in range(3)]
    assert_mean_matches(outer, torch.stack(hessians).reshape(-1), atol=1e-12)


def test_likelihood_refuses_other_losses_in_one_line() -> None:
    for other in ("hinge", F.mse_loss, None):
        with pytest.raises(UnigradError, match=r"cross_entropy \(categorical\), bce .* and mse") as info:
            Likelihood(other)
        assert "\n" not in str(info.value) and repr(other) in str(info.value)
    z = _outputs((6, 3))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    smooth = unigrad.supervised(torch.nn.CrossEntropyLoss(label_smoothing=0.2), torch.zeros(6, 1), y)
    with pytest.raises(UnigradError, match="matches none") as info:
        likelihood_of(smooth, z, smooth.score(z), method="this estimator", instead="use another")
    assert "\n" not in str(info.value) and "mean squared error" in str(info.value)
    targets = {"cross_entropy": y, "bce": (z > 0).double(), "mse": _outputs((6, 3)) + 1}
    fns = {"cross_entropy": F.cross_entropy, "bce": F.binary_cross_entropy_with_logits, "mse": F.mse_loss}
    for loss, fn in fns.items():
        objective = unigrad.supervised(fn, torch.zeros(6, 1), targets[loss])
        assert likelihood_of(objective, z, objective.score(z), method="m", instead="i") == Likelihood(loss)
    scalar = unigrad.supervised(lambda out, tgt: F.mse_loss(out, tgt), torch.zeros(6, 1), targets["mse"])
    assert loss_kind(scalar, z, scalar.score(z)) is None  # one loss for the batch: no per-sample comparison


def test_reduction_ratio_rejects_a_non_finite_trial_and_reads_rounding_as_agreement():
    assert reduction_ratio(1.0, 0.5, 1.0, torch.float64) == pytest.approx(0.5)
    assert reduction_ratio(1.0, float("nan"), 1.0, torch.float64) == -math.inf
    assert reduction_ratio(1.0, float("inf"), 1.0, torch.float64) == -math.inf
    # no change at all, no predicted change: agreement (ρ = 1), not 0/0
    assert reduction_ratio(3.0, 3.0, 0.0, torch.float32) == 1.0
