"""Small test problems with known gradients, and the statistics the estimator tests share.

Problems (each builder returns a :class:`Problem`: a model, its objective and a name; everything is
built from local ``torch.Generator``s, so it is deterministic and leaves the global RNG alone):

- :func:`quadratic` — ``f(θ) = ½(θ−θ*)ᵀA(θ−θ*)`` on one parameter vector, ``A`` dense SPD or
  diagonal (for large d). Central differences are exact on it, so the Gaussian-smoothed gradient
  *is* the gradient ``A(θ−θ*)``, at any σ.
- :func:`logistic` — logistic regression (``nn.Linear(features, 1)``) on a fixed synthetic batch.
- :func:`mlp` — a small ``in-hidden-out`` tanh MLP with cross-entropy on a fixed batch labelled by a
  random teacher network.

Helpers:

- :func:`true_grad` — the autograd gradient of the mean loss, flattened in ``trainable`` order.
- :func:`flat_grad` — the ``.grad`` an estimator wrote, flattened the same way.
- :func:`estimates` — ``n`` successive estimates of one estimator (independent noise: each call
  advances the step that keys the noise), stacked ``(n, d)`` in float64.
- :func:`assert_mean_matches` — a test that the mean of independent estimates equals a target,
  with tolerances derived from the sample standard errors.
- :func:`cosine` — cosine similarity of two flat tensors.
- :func:`assert_contract` — ``.grad`` written, parameters and global RNG untouched, seeded replay and
  resume bitwise, different seeds differ.
- :func:`train_losses` — loss before and after a few Adam steps driven by an estimator.
- :func:`mean_cosines`, :func:`loglog_slope` — the √(q/d) scaling of the cosine on diagonal quadratics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import unigrad
from unigrad.core.estimator import Estimator
from unigrad.core.objective import Objective, reduce
from unigrad.core.params import trainable


@dataclass
class Problem:
    """A model and the objective it is trained on."""

    model: nn.Module
    objective: Objective
    name: str

    @property
    def dim(self) -> int:
        """Number of trainable parameters d."""
        return sum(p.numel() for _, p in trainable(self.model))

    def loss(self) -> float:
        """Mean loss at the current parameters."""
        with torch.no_grad():
            return float(reduce(self.objective(self.model)))

    def grad(self) -> Tensor:
        """The exact gradient of the mean loss (autograd), flattened."""
        return true_grad(self.model, self.objective)


# -- problems ------------------------------------------------------------------------------------


class Quadratic(nn.Module):
    """``f(θ) = ½(θ−θ*)ᵀA(θ−θ*)``; ``a`` is the matrix ``A`` (d, d) or its diagonal (d,)."""

    def __init__(self, a: Tensor, theta_star: Tensor, theta: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())
        self.register_buffer("a", a)
        self.register_buffer("theta_star", theta_star)

    def forward(self) -> Tensor:
        r = self.theta - self.theta_star
        ar = self.a * r if self.a.dim() == 1 else self.a @ r
        return 0.5 * (r * ar).sum()

    def exact_grad(self) -> Tensor:
        """``A(θ−θ*)``, computed directly."""
        r = (self.theta - self.theta_star).detach()
        return self.a * r if self.a.dim() == 1 else self.a @ r


def _call(model: nn.Module) -> Tensor:
    return model()


def quadratic(
    d: int = 16, *, dense: bool = True, cond: float = 10.0, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Problem:
    """A d-dimensional quadratic with eigenvalues log-spaced in ``[1, cond]`` (random rotation if
    ``dense``, else diagonal), ``θ* ~ N(0, I)`` and ``θ = θ* + N(0, I)``. The objective is a scalar
    and costs one sample per call."""
    g = torch.Generator().manual_seed(seed)
    eig = torch.logspace(0.0, math.log10(cond), d, dtype=torch.float64)
    eig = eig[torch.randperm(d, generator=g)]
    if dense:
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        a = (q * eig) @ q.T
        a = 0.5 * (a + a.T)
    else:
        a = eig
    theta_star = torch.randn(d, generator=g, dtype=torch.float64)
    theta = theta_star + torch.randn(d, generator=g, dtype=torch.float64)
    model = Quadratic(a.to(dtype), theta_star.to(dtype), theta.to(dtype))
    return Problem(model, unigrad.objective(_call, n_samples=1), f"quadratic(d={d}{'' if dense else ', diag'})")


def _init(model: nn.Module, g: torch.Generator, gain: float = 1.0) -> None:
    """Re-initialise every parameter from ``g``: weights ~ N(0, gain²/fan_in), biases ~ N(0, 0.1²)."""
    with torch.no_grad():
        for p in model.parameters():
            std = gain / math.sqrt(p.shape[1]) if p.dim() > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def bce_per_sample(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-sample binary cross-entropy of ``(B, 1)`` logits against 0/1 targets ``(B,)``."""
    return F.binary_cross_entropy_with_logits(logits.squeeze(-1), targets, reduction="none")


def logistic(features: int = 8, batch: int = 64, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Problem:
    """Logistic regression ``σ(wᵀx + b)`` on a fixed batch with noisy labels from a random ``w_true``;
    d = features + 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, features, generator=g, dtype=torch.float64)
    w_true = torch.randn(features, generator=g, dtype=torch.float64)
    y = (x @ w_true + 0.5 * torch.randn(batch, generator=g, dtype=torch.float64) > 0).to(torch.float64)
    with torch.random.fork_rng(devices=[]):
        model = nn.Linear(features, 1, dtype=dtype)
    _init(model, g)
    return Problem(model, unigrad.supervised(bce_per_sample, x.to(dtype), y.to(dtype)), f"logistic(d={features + 1})")


def mlp(
    sizes: tuple[int, int, int] = (10, 16, 3),
    batch: int = 64,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Problem:
    """A ``Linear-Tanh-Linear`` MLP with cross-entropy on a fixed batch of Gaussian inputs labelled by
    a random teacher of the same shape (10-16-3: d = 227)."""
    n_in, hidden, n_out = sizes
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        teacher = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out)).to(torch.float64)
        model = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out)).to(dtype)
    _init(teacher, g, gain=2.0)
    _init(model, g)
    x = torch.randn(batch, n_in, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = teacher(x).argmax(dim=1)
    return Problem(model, unigrad.supervised(F.cross_entropy, x.to(dtype), y), f"mlp{sizes}")


# -- gradients -----------------------------------------------------------------------------------


def true_grad(model: nn.Module, objective: Objective) -> Tensor:
    """Autograd gradient of the mean loss w.r.t. the trainable parameters, flattened (float64).

    Leaves ``.grad`` untouched.
    """
    params = [p for _, p in trainable(model)]
    with torch.enable_grad():
        loss = reduce(objective(model))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).detach().double().reshape(-1) for p, g in zip(params, grads)]
    )


def flat_grad(model: nn.Module) -> Tensor:
    """The ``.grad`` of every trainable parameter, flattened (float64)."""
    return torch.cat([p.grad.detach().double().reshape(-1) for _, p in trainable(model)])


def flat_params(model: nn.Module) -> Tensor:
    """The trainable parameters, flattened (a detached copy)."""
    return torch.cat([p.detach().reshape(-1).clone() for _, p in trainable(model)])


def estimates(estimator: Estimator, problem: Problem, n: int) -> Tensor:
    """``n`` successive estimates, stacked ``(n, d)`` float64 (each call advances the noise step)."""
    out = []
    for _ in range(n):
        estimator.estimate(problem.model, problem.objective)
        out.append(flat_grad(problem.model))
    return torch.stack(out)


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two flat tensors."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return float(a @ b / (a.norm() * b.norm()))


# -- statistics ----------------------------------------------------------------------------------


def mean_mismatch(samples: Tensor, target: Tensor, *, k: float = 5.0, atol: float = 1e-6) -> list[str]:
    """Reasons to reject ``E[samples] = target`` (empty if none), from ``n`` independent rows.

    Three checks, each with tolerances of ``k`` standard errors estimated from the rows:

    1. per coordinate: ``|mean_j − t_j| ≤ k·SE_j + atol``;
    2. along the target's direction ``v = t/‖t‖`` (the most powerful check for noisy
       directional estimators): ``|mean·v − ‖t‖| ≤ k·SE(samples·v) + atol``;
    3. aggregate (chi-square): ``Σ_j ((mean_j − t_j)/SE_j)²`` at most its mean plus ``k`` of its standard
       deviations, over the coordinates with ``k·SE_j > atol`` (see below; needs n ≥ 6).

    Why the defaults hold (the callers are fixed-seed tests with n ≳ 50 rows):

    - ``k = 5``: under ``E[samples] = target`` each ``(mean_j − t_j)/SE_j`` is about Student-t with
      ν = n − 1 dof; for ν ≥ 49, P(|t| > 5) < 1e-5, so < 1% family-wise over d ≤ 10³ coordinates, and the
      direction check is one such t. A fixed seed makes the verdict the same on every machine up to
      rounding, which moves these statistics by ~1e-6 of an SE.
    - ``atol = 1e-6`` only matters where an estimate is (nearly) deterministic (k·SE_j ≲ atol); there it
      absorbs float32 rounding between two routes to the same entry, ≲ (terms summed)·eps32·scale, e.g.
      64 samples × 1.2e-7 × entries of |·| ≤ 0.1. Callers with larger deterministic entries pass their own.
    - chi-square: each ``z_j²`` is a squared t_ν (mean ν/(ν−2), variance 2ν²(ν−1)/((ν−2)²(ν−4))), and
      correlated coordinates (rank-one or shared-tangent estimates, symmetric matrices) add to the
      variance: Var Σ z_j² ≈ Var(z_j²)·tr(R²) with R the coordinates' correlation matrix (tr(R²) = d
      when they are independent), tr(R²) estimated from the rows, bias-corrected for n, floored at d.
      The plain χ²_d bound d + k·√(2d) was tighter than this (measured tr(R²) up to 10·d on conv nets).
      Coordinates with ``k·SE_j ≤ atol`` only carry rounding noise and are left to check 1.
    """
    samples, target = samples.double(), target.double().reshape(-1)
    n = samples.shape[0]
    if n < 2:
        raise ValueError("need at least two samples")
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(n)
    reasons = []
    err = (mean - target).abs()
    bad = err > k * se + atol
    if bad.any():
        j = int(((err - k * se) / (se + atol)).argmax())
        reasons.append(
            f"{int(bad.sum())} coordinate(s) off by more than {k} SE; worst j={j}: "
            f"mean {float(mean[j]):.6g} vs {float(target[j]):.6g} (SE {float(se[j]):.3g})"
        )
    if target.norm() > 0:
        v = target / target.norm()
        z = samples @ v
        se_z = float(z.std() / math.sqrt(n))
        off = abs(float(z.mean()) - float(target.norm()))
        if off > k * se_z + atol:
            reasons.append(f"along the target: {float(z.mean()):.6g} vs {float(target.norm()):.6g} (SE {se_z:.3g})")
    live = k * se > atol
    d, nu = int(live.sum()), n - 1
    if d and nu > 4:
        chi2 = float((((mean - target)[live] / se[live]) ** 2).sum())
        # rows standardised per coordinate: R̂ = UᵀU/ν, tr(R̂²) = ‖UUᵀ‖²_F/ν² (an n×n product), and
        # E[tr(R̂²)] ≈ (1 + 1/ν)·tr(R²) + d²/ν (Wishart) gives the bias-corrected estimate
        u = (samples[:, live] - mean[live]) / (se[live] * math.sqrt(n))
        tr_r2 = max(float(d), (float(((u @ u.T) ** 2).sum()) / nu - d * d) / (nu + 1))
        var_t2 = 2 * nu**2 * (nu - 1) / ((nu - 2) ** 2 * (nu - 4))
        limit = d * nu / (nu - 2) + k * math.sqrt(var_t2 * tr_r2)
        if chi2 > limit:
            reasons.append(f"chi-square {chi2:.1f} > {limit:.1f} over {d} coordinates (tr R² ≈ {tr_r2:.0f})")
    return reasons


def assert_mean_matches(samples: Tensor, target: Tensor, *, k: float = 5.0, atol: float = 1e-6) -> None:
    """Assert that the mean of independent ``samples`` (rows) matches ``target`` (see :func:`mean_mismatch`)."""
    reasons = mean_mismatch(samples, target, k=k, atol=atol)
    assert not reasons, "; ".join(reasons)


# -- contract checks shared by the estimator tests -----------------------------------------------


def assert_contract(make: Callable[[int], Estimator], problem: Problem, *, seeded: bool = True) -> None:
    """The estimator contract on ``problem`` for estimators built by ``make(seed)``:

    - a finite ``.grad`` of the right shape is written on every trainable parameter;
    - parameters are bitwise unchanged and the global RNG state is untouched by ``estimate``;
    - the same seed at the same step replays bitwise (also after ``load_state_dict``);
    - with ``seeded``, a different seed gives a different estimate.
    """
    model, obj = problem.model, problem.objective
    before, rng = flat_params(model), torch.get_rng_state()
    a, b = make(0), make(0)
    for _ in range(2):  # steps 0 and 1
        a.estimate(model, obj)
        ga = [p.grad.clone() for _, p in trainable(model)]
        b.estimate(model, obj)
        gb = [p.grad.clone() for _, p in trainable(model)]
        assert all(torch.equal(x, y) for x, y in zip(ga, gb)), "same seed and step must replay bitwise"
    for _, p in trainable(model):
        assert p.grad is not None and p.grad.shape == p.shape and torch.isfinite(p.grad).all()
    assert torch.equal(flat_params(model), before), "estimate() changed the parameters"
    assert torch.equal(torch.get_rng_state(), rng), "estimate() touched the global RNG"
    resumed = make(0)
    resumed.load_state_dict(a.state_dict())
    a.estimate(model, obj)
    ga = flat_grad(model)
    resumed.estimate(model, obj)
    assert torch.equal(flat_grad(model), ga), "load_state_dict must resume the noise stream exactly"
    if seeded:
        other = make(1)
        other.step = a.step - 1
        other.estimate(model, obj)
        assert not torch.equal(flat_grad(model), ga), "a different seed must give a different estimate"


def train_losses(estimator: Estimator, problem: Problem, steps: int = 40, lr: float = 0.03) -> tuple[float, float]:
    """Loss before and after ``steps`` of Adam driven by ``estimator`` on ``problem``."""
    opt = torch.optim.Adam(problem.model.parameters(), lr=lr)
    first = problem.loss()
    for _ in range(steps):
        opt.zero_grad()
        estimator.estimate(problem.model, problem.objective)
        opt.step()
    return first, problem.loss()


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    lx = torch.tensor(xs, dtype=torch.float64).log()
    ly = torch.tensor(ys, dtype=torch.float64).log()
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())


def mean_cosines(make: Callable[[], Estimator], dims: list[int], n: int = 40) -> list[float]:
    """Mean cosine with the exact gradient of ``n`` estimates on diagonal quadratics of each dimension."""
    out = []
    for d in dims:
        problem = quadratic(d, dense=False, cond=2.0, seed=d)
        g = problem.grad()
        est = make()
        out.append(sum(cosine(row, g) for row in estimates(est, problem, n)) / n)
    return out
