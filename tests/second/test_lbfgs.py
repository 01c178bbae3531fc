"""L-BFGS: iteration counts against scipy's L-BFGS-B, finite termination and superlinear convergence, the
two-loop recursion against the dense BFGS update, the strong-Wolfe line search, reuse, resume, contract, cost."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, rosen, rosen_der

from tests.problems import assert_contract, flat_grad, logistic
from unigrad import UnigradError
from unigrad.core.objective import objective
from unigrad.data.classic import Point, quadratic, rosenbrock, rosenbrock_value
from unigrad.first.backprop import Backprop
from unigrad.second.lbfgs import LBFGS, _strong_wolfe

GTOL = 1e-10
# Errors at convergence: a run stopped at ‖∇f‖ < GTOL is within GTOL/μ of x* (μ the smallest Hessian eigenvalue at x*:
# 1 on the quadratics, 0.40 and 0.50 on the 2-D and 10-D Rosenbrock functions), i.e. ≤ 2.5e-10. Iteration counts
# against scipy carry slack of at least two steps over the measured figures (rounding decides the last line searches).


def _run(est: LBFGS, model: torch.nn.Module, obj, steps: int, gtol: float = GTOL) -> tuple[int, list[float]]:
    """Iterations (estimates before the one whose gradient norm is below ``gtol``) and the distance to 1 after each."""
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


def _scipy_nit(fun, jac, x0: np.ndarray, maxcor: int = 10) -> int:
    """Iterations of scipy's L-BFGS-B to a projected-gradient max-norm below GTOL (no ftol stop)."""
    ref = minimize(fun, x0, jac=jac, method="L-BFGS-B", options={"maxcor": maxcor, "gtol": GTOL, "ftol": 0.0})
    assert ref.success, ref.message
    return ref.nit


def _quadratic_np(n: int, kappa: float):
    eig = np.logspace(0.0, math.log10(kappa), n)
    return (lambda x: 0.5 * float(np.sum(eig * (x - 1.0) ** 2))), (lambda x: eig * (x - 1.0))


def _ratios(errors: list[float]) -> list[float]:
    return [b / a for a, b in itertools.pairwise(errors)]


# -- convergence -------------------------------------------------------------------------------------


def test_quadratic_finite_termination_and_iterations_against_scipy() -> None:
    n, kappa = 20, 100.0
    # with m ≥ n and an exact line search (the zoom's cubic is exact on a quadratic; c2 small makes the
    # search use it) BFGS terminates in n steps: measured 20 iterations, the error then exactly 0
    model, obj = quadratic(n, kappa)
    iterations, _ = _run(LBFGS(history=n, c2=1e-3), model, obj, 3 * n)
    assert iterations <= n + 1, iterations  # one step of slack for rounding (measured 20 also from perturbed starts)
    assert float((model.x.detach() - 1.0).norm()) < 1e-10  # ≤ GTOL/μ = 1e-10 (above)
    # m = 10 < n with the exact search: measured 26 iterations (27 on AVX-512 kernels)
    model, obj = quadratic(n, kappa)
    iterations, _ = _run(LBFGS(c2=1e-3), model, obj, 3 * n)
    assert iterations <= 1.5 * n, iterations
    # defaults (c2 = 0.9, α = 1 accepted almost always) against scipy's L-BFGS-B, maxcor = m = 10:
    # measured 106 iterations against scipy's 104, 104–110 from starts moved by 1e-13 to 1e-7 (and 71 vs 72 for
    # m = 20, 49 vs 46 for m = 40)
    model, obj = quadratic(n, kappa)
    iterations, _ = _run(LBFGS(), model, obj, 500)
    fun, jac = _quadratic_np(n, kappa)
    nit = _scipy_nit(fun, jac, np.zeros(n))
    assert iterations <= 1.25 * nit + 2, (iterations, nit)
    assert float((model.x.detach() - 1.0).norm()) < 1e-8


@pytest.mark.parametrize(
    "x0",
    [(-1.2, 1.0), tuple(-1.2 if i % 2 == 0 else 1.0 for i in range(10))],
    ids=["2d", "10d"],
)
def test_rosenbrock_converges_within_a_factor_of_scipy(x0: tuple[float, ...]) -> None:
    """Measured (gtol 1e-10, m = maxcor = 10): 2-D from (−1.2, 1) 38 iterations vs scipy's 39; the 10-D chained
    function from (−1.2, 1, −1.2, 1, …) 88 vs 80."""
    model, obj = rosenbrock(x0)
    iterations, _ = _run(LBFGS(), model, obj, 400)
    nit = _scipy_nit(rosen, rosen_der, np.array(x0))
    assert iterations <= 1.25 * nit + 2, (iterations, nit)
    assert float((model.x.detach() - 1.0).norm()) < 1e-8


def test_superlinear_on_rosenbrock_linear_for_gradient_descent() -> None:
    # Rosenbrock 2-D (m ≥ n: the BFGS regime, Dennis–Moré): far from x* the error shrinks by a roughly constant
    # factor (measured mean 0.72), near x* the ratios fall below 0.1 (measured tail 0.007, 0.009, 0.003, unchanged
    # from starts moved by up to 1e-7)
    model, obj = rosenbrock((-1.2, 1.0))
    _, errors = _run(LBFGS(), model, obj, 200)
    tail = [e for e in errors if 1e-12 < e < 1e-3]
    far = _ratios([e for e in errors if 1e-2 < e < 1.0])
    near = _ratios(tail)[-3:]
    assert len(near) == 3 and all(r < 0.1 for r in near), (tail, near)
    assert sum(far) / len(far) > 0.3, far
    # the quadratic (n = 20, κ = 100), m = 10 and exact searches: the last ratios are below 0.1 on average. With
    # m < n single ratios hang on rounding (0.19, 0.016, 0.071, 0.063 with AVX-512 kernels, 0.032 to 0.048 with AVX2,
    # up to 0.18 from starts moved by 1e-7); their geometric mean was 0.041 to 0.065 over 16 such runs …
    n, kappa = 20, 100.0
    model, obj = quadratic(n, kappa)
    _, errors = _run(LBFGS(c2=1e-3), model, obj, 3 * n)
    last = _ratios([e for e in errors if e > 1e-12])[-4:]
    assert len(last) == 4 and math.prod(last) ** 0.25 < 0.1, last
    # … while gradient descent with the best fixed step 2/(μ+L) contracts by (κ−1)/(κ+1) per step, for ever
    model, obj = quadratic(n, kappa)
    opt = torch.optim.SGD(model.parameters(), lr=2.0 / (1.0 + kappa))
    gd, est = [], Backprop()
    for _ in range(300):
        opt.zero_grad()
        est.estimate(model, obj)
        opt.step()
        gd.append(float((model.x.detach() - 1.0).norm()))
    rate = (kappa - 1.0) / (kappa + 1.0)
    # the faster eigen-components still add ≤ 1.2e-4 at steps 280–300 (measured); errors ≥ 3.5e-3 round at ~1e-13
    assert all(abs(r - rate) < 1e-3 for r in _ratios(gd)[-20:]), _ratios(gd)[-20:]


def test_without_line_search_sgd_decreases_the_loss_faster_than_gradient_descent() -> None:
    """Measured (lr 0.5, 30 steps, float32): L-BFGS from 0.93 to about 4e-4, gradient descent to about 0.21; every
    L-BFGS step lowered the loss by ≥ 8.9%, far above float32 rounding."""
    losses = {}
    for name, est in (("lbfgs", LBFGS(line_search="none")), ("gd", Backprop())):
        problem = logistic()
        opt = torch.optim.SGD(problem.model.parameters(), lr=0.5)
        trace = [problem.loss()]
        for _ in range(30):
            opt.zero_grad()
            e = est.estimate(problem.model, problem.objective)
            opt.step()
            trace.append(problem.loss())
        if name == "lbfgs":
            assert e.cost.forwards == e.cost.backwards == 64 and e.info["alpha"] == 1.0
            assert all(b < a for a, b in itertools.pairwise(trace)), trace
        losses[name] = trace[-1]
    assert losses["lbfgs"] < 0.1 * losses["gd"], losses


# -- the direction and the line search ---------------------------------------------------------------


def test_two_loop_recursion_equals_the_dense_bfgs_update() -> None:
    """``−H g`` from the two-loop recursion against ``H`` built densely by the BFGS update of the last m pairs
    from ``H₀ = γI`` (Nocedal & Wright eq. 7.19)."""
    x0 = [-1.2 if i % 2 == 0 else 1.0 for i in range(6)]
    model, obj = rosenbrock(x0)
    est = LBFGS(history=3)
    _run(est, model, obj, 8)
    assert len(est.s) == 3
    est.line_search = "none"
    e = est.estimate(model, obj)
    assert e.info["alpha"] == 1.0
    s, y, g = est.s, est.y, est.g_prev
    eye = torch.eye(6, dtype=torch.float64)
    h = float(s[-1] @ y[-1]) / float(y[-1] @ y[-1]) * eye
    for si, yi in zip(s, y):
        rho = 1.0 / float(yi @ si)
        h = (eye - rho * torch.outer(si, yi)) @ h @ (eye - rho * torch.outer(yi, si)) + rho * torch.outer(si, si)
    # .grad holds −d = H g; the two are the same product in another order, cond(H) = 2.2: ≲ 50·eps64 relative
    # (measured 3.5e-18 on entries ≥ 4.7e-5, ≤ 4e-5 of the allowance)
    torch.testing.assert_close(model.x.grad, h @ g, rtol=1e-10, atol=1e-14)
    with torch.enable_grad():
        (exact,) = torch.autograd.grad(rosenbrock_value(model.x), model.x)
    # the same ops (the objective's reshape and mean over one sample are exact): measured bitwise equal
    torch.testing.assert_close(g, exact, rtol=1e-12, atol=0)


def test_first_step_is_the_scaled_gradient_and_the_accepted_step_satisfies_strong_wolfe() -> None:
    model, obj = rosenbrock((-1.2, 1.0))
    x = model.x.detach().clone()

    def value_grad(v: torch.Tensor) -> tuple[float, torch.Tensor]:
        v = v.clone().requires_grad_(True)
        with torch.enable_grad():
            f = rosenbrock_value(v)
            (g,) = torch.autograd.grad(f, v)
        return float(f.detach()), g

    f0, g0 = value_grad(x)
    est = LBFGS()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for k in range(6):
        opt.zero_grad()
        e = est.estimate(model, obj)
        d = -model.x.grad / e.info["alpha"]
        # (α·d)/α and the scale are a few roundings: ≤ 4·u ≈ 4.4e-16 relative per entry (measured equal); the loss is
        # the same ops on the same point (measured equal)
        if k == 0:
            torch.testing.assert_close(d, -g0 * min(1.0, 1.0 / float(g0.abs().sum())), rtol=1e-14, atol=0)
        x, (f0, g0) = model.x.detach().clone(), value_grad(model.x.detach())
        assert e.loss == pytest.approx(f0, rel=1e-14)
        opt.step()
        f1, g1 = value_grad(model.x.detach())
        assert e.info["wolfe"]
        # the search tested these very values (SGD(lr=1) lands bitwise on its trial point); margins measured ≥ 2e-3
        assert f1 <= f0 + est.c1 * e.info["alpha"] * float(g0 @ d)
        assert abs(float(g1 @ d)) <= est.c2 * abs(float(g0 @ d))
        assert not torch.equal(model.x.detach(), x)


def _mt3(a: float, beta: float = 0.01, el: float = 39.0) -> tuple[float, float]:
    """Moré & Thuente's function 3: a kink smoothed over ``[1 − β, 1 + β]`` plus a ripple."""
    if a <= 1 - beta:
        f0, d0 = 1 - a, -1.0
    elif a >= 1 + beta:
        f0, d0 = a - 1, 1.0
    else:
        f0, d0 = (a - 1) ** 2 / (2 * beta) + beta / 2, (a - 1) / beta
    w = el * math.pi / 2
    return f0 + 2 * (1 - beta) / (el * math.pi) * math.sin(w * a), d0 + (1 - beta) * math.cos(w * a)


def _yanai(b1: float, b2: float):
    """Moré & Thuente's functions 4–6 (Yanai, Ozawa & Kaneko 1981)."""

    def gamma(b: float) -> float:
        return math.sqrt(1 + b * b) - b

    def phi(a: float) -> tuple[float, float]:
        r1, r2 = math.sqrt((1 - a) ** 2 + b2**2), math.sqrt(a * a + b1**2)
        return gamma(b1) * r1 + gamma(b2) * r2, gamma(b1) * (a - 1) / r1 + gamma(b2) * a / r2

    return phi


@pytest.mark.parametrize(
    ("phi", "c1", "c2"),
    [
        (lambda a: (-a / (a * a + 2.0), (a * a - 2.0) / (a * a + 2.0) ** 2), 1e-3, 0.1),
        (lambda a: ((a + 0.004) ** 5 - 2 * (a + 0.004) ** 4, 5 * (a + 0.004) ** 4 - 8 * (a + 0.004) ** 3), 0.1, 0.1),
        (_mt3, 0.1, 0.1),
        (_yanai(1e-3, 1e-3), 1e-3, 1e-3),
        (_yanai(1e-2, 1e-3), 1e-3, 1e-3),
        (_yanai(1e-3, 1e-2), 1e-3, 1e-3),
    ],
    ids=[f"more-thuente-{i}" for i in range(1, 7)],
)
@pytest.mark.parametrize("alpha0", [1e-3, 1e-1, 1e1, 1e3])
def test_line_search_on_the_more_thuente_functions(phi, c1: float, c2: float, alpha0: float) -> None:
    """The six test functions of Moré & Thuente (1994, ACM TOMS 20), with their constants and four initial steps:
    the returned step satisfies the strong Wolfe conditions within the budget of 25 evaluations (measured at
    most 18, on functions 2, 3 and 6 from α₀ = 1e-3)."""
    f0, slope = phi(0.0)
    calls = []

    def counted(a: float) -> tuple[float, float]:
        calls.append(a)
        return phi(a)

    alpha, ok = _strong_wolfe(counted, f0, slope, alpha0, c1, c2, 25)
    fa, da = phi(alpha)
    assert ok and alpha > 0 and len(calls) <= 25
    assert fa <= f0 + c1 * alpha * slope and abs(da) <= c2 * abs(slope), (alpha, fa, da)
    assert alpha == calls[-1]  # success is declared on the last trial


# -- reuse, resume, cost, contract -------------------------------------------------------------------


def test_reuse_saves_one_evaluation_per_call_without_changing_the_steps() -> None:
    """The accepted point's loss and gradient are reused for the same objective object; a new object (as a new
    minibatch would be) or ``reuse=False`` evaluates afresh; the steps are bitwise the same."""
    traces, costs = {}, {}
    for reuse in (True, False):
        model, obj = rosenbrock((-1.2, 1.0))
        est, opt = LBFGS(reuse=reuse), torch.optim.SGD(model.parameters(), lr=1.0)
        trace, cost = [], []
        for k in range(12):
            opt.zero_grad()
            e = est.estimate(model, obj)
            assert e.info["reused"] == (reuse and k > 0)
            assert e.cost.forwards == e.cost.backwards == e.info["evaluations"]
            cost.append(e.cost.forwards)
            trace.append(model.x.grad.clone())
            opt.step()
        traces[reuse], costs[reuse] = trace, cost
    # reused values are the line search's evaluation at a point bitwise equal to the new parameters: the same ops
    assert all(torch.equal(a, b) for a, b in zip(traces[True], traces[False]))
    assert [b - a for a, b in zip(costs[True], costs[False])] == [0] + [1] * 11
    # a different objective object with the same values: no reuse, and the same direction
    model, obj = rosenbrock((-1.2, 1.0))
    same = objective(lambda m: rosenbrock_value(m()).reshape(1), n_samples=1)
    est, opt = LBFGS(), torch.optim.SGD(model.parameters(), lr=1.0)
    est.estimate(model, obj)
    opt.step()
    e = est.estimate(model, same)
    assert not e.info["reused"] and e.cost.forwards == costs[False][1]
    assert torch.equal(model.x.grad, traces[True][1])
    # parameters that differ from the accepted point (a step of lr 0.5): no reuse either
    model, obj = rosenbrock((-1.2, 1.0))
    est, opt = LBFGS(), torch.optim.SGD(model.parameters(), lr=0.5)
    est.estimate(model, obj)
    opt.step()
    assert not est.estimate(model, obj).info["reused"]


def test_resume_from_a_checkpoint_continues_bitwise() -> None:
    model, obj = rosenbrock((-1.2, 1.0, -1.2, 1.0))
    est, opt = LBFGS(history=3), torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(6):
        opt.zero_grad()
        est.estimate(model, obj)
        opt.step()
    buf = io.BytesIO()
    torch.save(est.state_dict(), buf)  # as the trainer's checkpoints: weights_only
    buf.seek(0)
    resumed = LBFGS(history=3)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.step == 6 and len(resumed.s) == 3
    x = model.x.detach().clone()
    ours, theirs = [], []
    for run in (est, resumed):
        model.x.data.copy_(x)
        out = ours if run is est else theirs
        for _ in range(5):
            opt.zero_grad()
            run.estimate(model, obj)
            out.append(flat_grad(model))
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_contract_and_cost() -> None:
    problem = logistic(features=5, batch=32, dtype=torch.float64)
    assert_contract(lambda seed: LBFGS(seed=seed), problem, seeded=False)  # deterministic: no noise to seed
    est = LBFGS()
    e = est.estimate(problem.model, problem.objective)
    assert e.cost.forwards == e.cost.backwards == 32 * e.info["evaluations"] and e.info["evaluations"] >= 2
    assert e.cost.hvps == 0 and not e.info["pair_stored"]
    # float64 sums over 32 samples and 6 parameters by the same ops (measured equal): rel 1e-12 ≫ 40·u
    assert e.info["gradient_norm"] == pytest.approx(float(problem.grad().norm()), rel=1e-12)
    assert e.loss == pytest.approx(problem.loss(), rel=1e-12)
    assert LBFGS.order == 2 and LBFGS.name == "lbfgs"


def test_zero_gradient_gives_a_zero_step() -> None:
    model, obj = quadratic(4, 10.0, x0=[1.0, 1.0, 1.0, 1.0])
    e = LBFGS().estimate(model, obj)
    assert torch.equal(model.x.grad, torch.zeros(4, dtype=torch.float64))
    assert e.info["alpha"] == 0.0 and e.info["evaluations"] == 1


def test_line_search_bisects_into_a_non_finite_region_and_gives_up_without_budget() -> None:
    # f = (x − 0.5)² for x ≥ 0.3, NaN below; from x = 1 the first trial x = 0 is NaN: the zoom bisects to x = 0.5
    model = Point([1.0])
    obj = objective(lambda m: torch.where(m.x < 0.3, torch.nan, (m.x - 0.5) ** 2), n_samples=1)
    e = LBFGS().estimate(model, obj)
    assert e.info["wolfe"] and e.info["alpha"] == 0.5 and e.info["evaluations"] == 3
    torch.testing.assert_close(model.x.grad, torch.tensor([0.5], dtype=torch.float64))
    # f = 1e6·x² from x = 1e-3: the first trial overshoots; with a budget of one evaluation no decrease is found
    model = Point([1e-3])
    obj = objective(lambda m: 1e6 * m.x**2, n_samples=1)
    e = LBFGS(max_evals=1).estimate(model, obj)
    assert not e.info["wolfe"] and e.info["alpha"] == 0.0 and e.info["evaluations"] == 2
    assert torch.equal(model.x.grad, torch.zeros(1, dtype=torch.float64))
    e = LBFGS().estimate(model, obj)
    assert e.info["wolfe"] and 0 < e.info["alpha"] < 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"history": 0}, "history"),
        ({"history": 2.5}, "history"),
        ({"line_search": "armijo"}, "line_search"),
        ({"c1": 0}, "c1"),
        ({"c2": 1.0}, "c2"),
        ({"c1": 0.5, "c2": 0.4}, "c2"),
        ({"max_evals": 0}, "max_evals"),
        ({"curvature_eps": -1e-3}, "curvature_eps"),
        ({"reuse": "yes"}, "reuse"),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(UnigradError, match=match):
        LBFGS(**options)
