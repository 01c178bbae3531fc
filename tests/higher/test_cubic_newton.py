"""Cubic-regularized Newton (ARC): saddle escape where Newton stalls, the Krylov/secular subproblem against the
global-optimality conditions, Rosenbrock and ill-conditioned quadratics, quadratic local convergence, contract."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from tests.problems import Problem, assert_contract, flat_grad, logistic, mlp
from unigrad import UnigradError
from unigrad.core.objective import objective
from unigrad.data.classic import Point, quadratic, rosenbrock, rosenbrock_value
from unigrad.higher.cubic_newton import CubicNewton, krylov_cubic_step, solve_cubic_subproblem
from unigrad.second.newton import Newton


def _saddle_value(v: torch.Tensor) -> torch.Tensor:
    """``x² − y² + y⁴/4``: a saddle at the origin, minima ``(0, ±√2)`` with value −1."""
    x, y = v[0], v[1]
    return x**2 - y**2 + y**4 / 4


def _saddle(start: tuple[float, float]) -> tuple[Point, object]:
    return Point(start), objective(lambda m: _saddle_value(m()).reshape(1), n_samples=1)


def _run(est, model: torch.nn.Module, obj, steps: int, gtol: float = 1e-10) -> tuple[int, list[float]]:
    """Estimates before the one whose gradient norm is below ``gtol``, and ``‖x − 1‖`` after each step."""
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    errors = []
    for k in range(steps):
        opt.zero_grad()
        e = est.estimate(model, obj)
        if e.info["gradient_norm"] < gtol:
            return k, errors
        opt.step()
        errors.append(float((model.x.detach() - 1.0).norm()))
    return steps, errors


def _hessian_eigenvalues(fn, x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(torch.func.hessian(fn)(x.detach()))


# -- 1. saddles ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("start", [(0.5, 0.0), (0.0, 0.0)])
def test_escapes_the_saddle_where_newton_stalls(start: tuple[float, float]) -> None:
    # On y = 0 the gradient (2x, 0) has no y-component and H = diag(2, −2) is diagonal, so damped Newton
    # keeps y = 0 and converges to (or stays at) the saddle; from (0.5, 0) the Krylov space of g alone is
    # span{e_x} too, so ARC needs the random Lanczos restart to see the negative curvature. (Newton in an
    # exact trust region escapes as well: its hard case steps along the eigenvector of λ_min, below.)
    newton = Newton(trust_region=False)
    model, obj = _saddle(start)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(20):
        opt.zero_grad()
        newton.estimate(model, obj)
        opt.step()
    x = model.x.detach()
    # exact on any IEEE machine: g_y = 0 and H is diagonal, so every step's y-component is an exact 0
    assert float(x[1]) == 0.0  # never leaves the line y = 0
    assert float(_hessian_eigenvalues(_saddle_value, x)[0]) < -1.9  # near a saddle, not a minimum (H_yy = −2)
    if start == (0.0, 0.0):
        assert torch.equal(x, torch.zeros(2, dtype=torch.float64))  # g = 0: stalls at the saddle (exact zero steps)
    else:  # heads for the saddle: damping shrinks x by 10/11 per step (0.5·(10/11)²⁰ = 0.074)
        assert abs(float(x[0])) < 0.25
    model, obj = _saddle(start)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    trust = Newton()
    for _ in range(30):
        opt.zero_grad()
        trust.estimate(model, obj)
        opt.step()
    # within 1e-8 after 5 steps (measured), then quadratic convergence to rounding level (measured 0) for 25 more
    assert abs(abs(float(model.x[1])) - math.sqrt(2.0)) < 1e-8

    model, obj = _saddle(start)
    est, opt = CubicNewton(), torch.optim.SGD(model.parameters(), lr=1.0)
    iterations = 0
    while iterations < 40:  # until a second-order stationary point, as far as the Krylov space sees
        opt.zero_grad()
        e = est.estimate(model, obj)
        if e.info["gradient_norm"] < 1e-10 and e.info["min_eigenvalue"] > 0:
            break
        opt.step()
        iterations += 1
    x = model.x.detach()
    assert iterations < 40  # measured: 6 from (0.5, 0), 7 from (0, 0)
    # stopped at ‖∇f‖ < 1e-10 with μ = 2 at the minimum (H = diag(2, 4)): ‖x − x*‖ ≤ 5e-11 (measured ≤ 8e-12) and
    # f − f* ≤ ‖∇f‖²/(2μ) = 2.5e-21, plus rounding of f ≈ 1e-16
    assert abs(float(x[0])) < 1e-8 and abs(abs(float(x[1])) - math.sqrt(2.0)) < 1e-8, x
    assert float(_hessian_eigenvalues(_saddle_value, x)[0]) > 1.9  # a second-order stationary point
    assert float(_saddle_value(x)) == pytest.approx(-1.0, abs=1e-12)


def test_first_step_from_the_saddle_is_the_hard_case_along_negative_curvature() -> None:
    model, obj = _saddle((0.0, 0.0))
    est = CubicNewton(sigma=4.0)
    e = est.estimate(model, obj)
    assert e.info["restarts"] >= 1 and e.info["hard_case"] and e.info["min_eigenvalue"] == pytest.approx(-2.0)
    step = -model.x.grad
    # the global minimiser of −s_y² + (σ/3)‖s‖³ has ‖s‖ = 2/σ along ±e_y; f(0, ±1/2) < 0 = f(0, 0): accepted.
    # The eigenvector of −2 is computed to ~eps64·‖H‖/gap ≈ 1e-16 (measured step_x = 3e-18); ρ = 2.81; σ/2 is exact
    assert float(step[0]) == pytest.approx(0.0, abs=1e-12) and abs(float(step[1])) == pytest.approx(0.5)
    assert e.info["accepted"] and e.info["rho"] >= 0.9 and est.sigma == 2.0


# -- 2. Rosenbrock and an ill-conditioned quadratic ------------------------------------------------------


def test_rosenbrock_converges_with_quadratic_rate() -> None:
    model, obj = rosenbrock((-1.2, 1.0))
    est = CubicNewton()
    iterations, errors = _run(est, model, obj, 200)
    # measured: 31 iterations to ‖∇f‖ < 1e-10 (newton's trust region and scipy's trust-exact: 26)
    assert iterations <= 60, iterations
    assert float((model.x.detach() - 1.0).abs().max()) < 1e-8  # ≤ ‖∇f‖/μ = 1e-10/0.40 = 2.5e-10
    # near the solution the number of correct digits roughly doubles per step (measured tail 2.9e-3, 1.9e-5, 5.9e-9:
    # ratios 1.86, 1.75; the next error, 1e-16, is rounding, below the 1e-13 cut)
    tail = [e for e in errors if 1e-13 < e < 1e-2]
    assert len(tail) >= 2
    ratios = [math.log(b) / math.log(a) for a, b in itertools.pairwise(tail)]
    assert all(r > 1.6 for r in ratios), (tail, ratios)
    assert est.accepted <= iterations and est.sigma >= est.sigma_min


def test_quadratic_local_convergence_on_a_5d_rosenbrock() -> None:
    start = torch.full((5,), 1.05, dtype=torch.float64)
    for point in (start, torch.ones(5, dtype=torch.float64)):  # H ≻ 0 from the start to the (nondegenerate) minimum
        assert float(_hessian_eigenvalues(rosenbrock_value, point)[0]) > 0.4
    model, obj = rosenbrock(start)
    iterations, errors = _run(CubicNewton(), model, obj, 50, gtol=1e-11)
    # measured: ‖x − 1‖ = 1.5e-1, 3.0e-2, 8.7e-3, 1.4e-4, 3.4e-7, 2.2e-13 (6 steps); stopped at ‖∇f‖ < 1e-11 with
    # μ ≥ 0.497 (above): errors[-1] ≤ 2e-11
    assert iterations <= 10 and errors[-1] < 1e-10, errors
    tail = [e for e in errors if 1e-13 < e < 1e-2]
    assert len(tail) >= 3
    # ratios 1.87, 1.68, 1.96. The last error, 2.2e-13, is near the rounding floor (an error of ~400·eps64 in ∇f),
    # but its ratio stays above 1.6 for any last error below 4.4e-11, which the stopping rule guarantees (2e-11);
    # the earlier errors are far above rounding
    ratios = [math.log(b) / math.log(a) for a, b in itertools.pairwise(tail)]
    assert all(r > 1.6 for r in ratios), (tail, ratios)


def test_ill_conditioned_quadratic_in_a_few_steps() -> None:
    model, obj = quadratic(20, kappa=1e4)
    iterations, errors = _run(CubicNewton(krylov_dim=20), model, obj, 30)
    # measured: 6 steps from σ₀ = 1 (every step very successful, σ halves; the first is strongly regularized);
    # stopped at ‖∇f‖ < 1e-10 with μ = 1: errors[-1] < 1e-10 (measured 0)
    assert iterations <= 8 and errors[-1] < 1e-10, (iterations, errors)
    model, obj = quadratic(20, kappa=1e4)
    est = CubicNewton(sigma=1e-9, sigma_min=1e-9, krylov_dim=25)  # krylov_dim is capped at d = 20
    e = est.estimate(model, obj)
    assert e.info["krylov_dim"] == 20
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    # ≈ the Newton step: the minimiser, up to the shift λ = σ‖s‖ ≈ 1e-9·‖x₀ − 1‖ = 4.5e-9 (measured 4.47e-9); Lanczos
    # rounding on κ = 1e4 adds ≲ κ·eps64 ≈ 2e-12, so 1e-5 is loose
    assert float((model.x.detach() - 1.0).abs().max()) < 1e-5


# -- 3. the subproblem ----------------------------------------------------------------------------------


def _model(h: np.ndarray, g: np.ndarray, sigma: float, s: np.ndarray) -> float:
    return float(g @ s + 0.5 * s @ h @ s + sigma / 3 * np.linalg.norm(s) ** 3)


def _check_global_minimiser(h: np.ndarray, g: np.ndarray, sigma: float, s: np.ndarray, seed: int) -> None:
    """Cartis, Gould & Toint (2011) Thm 3.1: s is a global minimiser iff (H + λI)s = −g, λ = σ‖s‖, H + λI ⪰ 0;
    also no local search from random starts finds a lower model value.

    Tolerances (n ≤ 12, float64, entries of order ``scale``): the residual and λ_min(H) + λ err by ≲ n·eps64·scale
    plus the secular solver's tolerance (measured residual ≤ 1.1e-12·scale; the PSD margin, 0 in exact arithmetic in
    the hard case, measured ≥ 0); BFGS stopped at ‖∇m‖ < 1e-10 cannot beat the global minimum by more than the
    rounding of m (≲ 1e-14)."""
    n = h.shape[0]
    lam = sigma * float(np.linalg.norm(s))
    scale = max(1.0, float(np.linalg.norm(g)), float(np.abs(h).max()))
    assert np.linalg.norm((h + lam * np.eye(n)) @ s + g) < 1e-8 * scale
    assert float(np.linalg.eigvalsh(h)[0]) + lam > -1e-8 * scale
    best = _model(h, g, sigma, s)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        res = minimize(
            lambda z: _model(h, g, sigma, z),
            rng.normal(size=n) * 3,
            jac=lambda z: g + h @ z + sigma * np.linalg.norm(z) * z,
            method="BFGS",
            options={"gtol": 1e-10},
        )
        assert best <= res.fun + 1e-9 * max(1.0, abs(res.fun))


def _random_problem(n: int, seed: int, *, hard: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = rng.normal(size=n) * 3
    if hard:
        eig = rng.uniform(-1.5, 5.0, size=n)
        eig[:2] = -2.0  # a double eigenvalue, the smallest
    h = (q * eig) @ q.T
    h = 0.5 * (h + h.T)
    g = rng.normal(size=n)
    if hard:
        g -= q[:, :2] @ (q[:, :2].T @ g)  # no component on the eigenspace of λ_min: the hard case
    return h, g


@pytest.mark.parametrize(
    ("seed", "sigma", "hard"), [(0, 1.0, False), (1, 0.1, False), (2, 10.0, False), (3, 1.0, True), (4, 0.3, True)]
)
def test_full_krylov_step_is_the_global_minimiser_of_the_cubic_model(seed: int, sigma: float, hard: bool) -> None:
    n = 7
    h, g = _random_problem(n, seed, hard=hard)
    ht, gt = torch.from_numpy(h), torch.from_numpy(g)
    gen = torch.Generator().manual_seed(seed)
    step, sol, lz = krylov_cubic_step(
        lambda v: ht @ v, gt, sigma, n, lambda i: torch.randn(n, generator=gen, dtype=torch.float64)
    )
    s = step.numpy()
    assert lz.basis.shape == (n, n)
    # orthogonality measured ≤ 3.3e-16 (reorthogonalised basis: ~n·eps64), the projection ≤ 7.2e-13 (‖H‖ ≲ 10)
    assert np.allclose(lz.basis.numpy() @ lz.basis.numpy().T, np.eye(n), atol=1e-12)
    assert np.allclose(lz.basis.numpy() @ h @ lz.basis.numpy().T, lz.tridiagonal, atol=1e-10)
    _check_global_minimiser(h, g, sigma, s, seed)
    # the model's value in the tridiagonal's coordinates and here: a few roundings (measured ≤ 1.1e-15 relative)
    assert sol.model_decrease == pytest.approx(-_model(h, g, sigma, s), rel=1e-10)
    if hard:
        # the Krylov space of g misses the eigenspace of −2 (it breaks down); the restart recovers it
        assert lz.restarts >= 1 and sol.hard_case
        # λ = −λ_min: an eigenvalue, accurate to ~eps64·‖H‖ (measured ≤ 9e-16 relative, also ‖s‖)
        assert sol.multiplier == pytest.approx(2.0, rel=1e-9)
        assert np.linalg.norm(s) == pytest.approx(2.0 / sigma, rel=1e-9)
    else:
        assert lz.restarts == 0 and not sol.hard_case


def test_subproblem_with_a_zero_gradient() -> None:
    t = np.diag([3.0, 1.0, -0.5])
    sol = solve_cubic_subproblem(t, np.zeros(3), 2.0)
    assert sol.hard_case and np.allclose(np.abs(sol.y), [0.0, 0.0, 0.25])  # ‖y‖ = −λ_min/σ along e₃
    sol = solve_cubic_subproblem(np.diag([3.0, 1.0]), np.zeros(2), 2.0)
    assert not sol.hard_case and np.array_equal(sol.y, np.zeros(2)) and sol.model_decrease == 0.0


def test_small_krylov_space_minimises_the_model_restricted_to_it() -> None:
    n, k, sigma = 12, 4, 0.7
    h, g = _random_problem(n, 7)
    ht, gt = torch.from_numpy(h), torch.from_numpy(g)
    step, _, lz = krylov_cubic_step(lambda v: ht @ v, gt, sigma, k, lambda i: torch.zeros(n, dtype=torch.float64))
    q = lz.basis.numpy().T  # the Krylov space of g: [g, Hg, H²g, H³g]
    krylov = np.stack([np.linalg.matrix_power(h, i) @ g for i in range(k)], axis=1)
    # a projection with an orthonormal basis: ~n·eps64 relative (measured 3.3e-16)
    assert np.linalg.norm(krylov - q @ (q.T @ krylov)) < 1e-8 * np.linalg.norm(krylov)
    hq, gq = q.T @ h @ q, q.T @ g
    _check_global_minimiser(hq, gq, sigma, q.T @ step.numpy(), 0)
    assert _model(h, g, sigma, step.numpy()) < 0  # measured −17


# -- 4. the estimator: acceptance, cost, contract, state ---------------------------------------------------


def test_rejected_step_leaves_theta_and_raises_sigma() -> None:
    model, obj = _saddle((0.0, 0.0))
    est = CubicNewton(sigma=1e-8)  # the model's minimiser is 2e8 away along y: f there is huge
    e = est.estimate(model, obj)
    assert not e.info["accepted"] and e.info["rho"] < 0.1
    assert torch.equal(model.x.grad, torch.zeros(2, dtype=torch.float64)) and est.sigma == 2e-8
    assert est.accepted == 0 and e.cost.forwards == 2


def test_training_a_float32_mlp_decreases_the_loss_monotonically() -> None:
    problem = mlp((6, 8, 3), batch=32)
    est = CubicNewton(krylov_dim=15)
    opt = torch.optim.SGD(problem.model.parameters(), lr=1.0)
    losses = [problem.loss()]
    for _ in range(8):
        opt.zero_grad()
        est.estimate(problem.model, problem.objective)
        opt.step()
        losses.append(problem.loss())
    # only steps with ρ ≥ eta1 > 0 are taken: each taken step lowered the loss by ≥ 10% (measured), far above float32
    # rounding, and a rejected one leaves the parameters, hence the loss, bitwise as they were
    assert all(b <= a for a, b in itertools.pairwise(losses)), losses
    # measured 1.097 → 0.0899 with 7 steps accepted (the same to 1e-5 relative on AVX-512 and AVX2)
    assert losses[-1] < 0.7 * losses[0] and est.accepted >= 4, (losses, est.accepted)


def test_contract_and_cost() -> None:
    problem = logistic(features=5, batch=32, dtype=torch.float64)
    assert_contract(lambda seed: CubicNewton(seed=seed), problem, seeded=False)
    e = CubicNewton().estimate(problem.model, problem.objective)
    assert e.info["restarts"] == 0
    assert e.cost.hvps == problem.dim * 32 and e.cost.backwards == 32 and e.cost.forwards == 2 * 32
    e = CubicNewton(krylov_dim=3).estimate(problem.model, problem.objective)
    assert e.cost.hvps == 3 * 32 and e.info["krylov_dim"] == 3
    assert CubicNewton.order == 3 and CubicNewton.name == "cubic-newton"


def test_contract_at_a_saddle_where_the_seed_picks_the_escape_direction() -> None:
    def value(m: torch.nn.Module) -> torch.Tensor:
        x = m()
        r2 = x[1] ** 2 + x[2] ** 2  # a circle of minima in the (y, z) plane
        return (x[0] ** 2 - r2 + r2**2 / 4).reshape(1)

    problem = Problem(Point((0.0, 0.0, 0.0)), objective(value, n_samples=1), "saddle-3d")
    assert_contract(lambda seed: CubicNewton(sigma=100.0, seed=seed), problem, seeded=True)
    steps = []
    for seed in (0, 1):  # same σ and step: the seed only rotates the step within the circle of escape directions
        e = CubicNewton(sigma=100.0, seed=seed).estimate(problem.model, problem.objective)
        assert e.info["accepted"] and e.info["hard_case"]
        steps.append(-flat_grad(problem.model))
    for s in steps:  # the x-component is rounding (~eps64·‖s‖), the norm 2/σ
        assert float(s[0]) == pytest.approx(0.0, abs=1e-12) and float(s.norm()) == pytest.approx(0.02)
    assert not torch.allclose(steps[0], steps[1])  # measured 0.02 apart


def test_state_dict_resumes_exactly() -> None:
    model, obj = _saddle((0.0, 0.0))
    a = CubicNewton(sigma=0.05, seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(2):
        opt.zero_grad()
        a.estimate(model, obj)
        opt.step()
    state, x = a.state_dict(), model.x.detach().clone()
    assert state["step"] == 2 and state["sigma"] == a.sigma and state["accepted"] == a.accepted
    runs = []
    for est in (a, CubicNewton(seed=0)):
        if est is not a:
            est.load_state_dict(state)
        with torch.no_grad():
            model.x.copy_(x)
        grads = []
        for _ in range(3):
            opt.zero_grad()
            est.estimate(model, obj)
            grads.append(flat_grad(model))
            opt.step()
        runs.append((torch.stack(grads), est.sigma, est.accepted, model.x.detach().clone()))
    (ga, sa, na, xa), (gb, sb, nb, xb) = runs
    assert torch.equal(ga, gb) and sa == sb and na == nb and torch.equal(xa, xb)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"sigma": 0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"sigma_min": -1.0}, "sigma_min"),
        ({"sigma": 1e-9, "sigma_min": 1e-8}, "sigma_min"),
        ({"eta1": 0.0}, "eta1"),
        ({"eta1": 1.0}, "eta1"),
        ({"eta1": 0.5, "eta2": 0.4}, "eta2"),
        ({"eta2": 1.0}, "eta2"),
        ({"gamma": 1.0}, "gamma"),
        ({"krylov_dim": 0}, "krylov_dim"),
        ({"krylov_dim": 2.5}, "krylov_dim"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(UnigradError, match=match):
        CubicNewton(**options)
