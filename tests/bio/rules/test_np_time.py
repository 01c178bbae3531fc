"""NP in time on a rate RNN: unbiased for the BPTT gradient (α in the right place), ANP aligned with BPTT, the local
readout exact, intrinsic noise (NP refuses inaccessible noise, ANP learns from it, NP reads accessible noise),
decorrelated layers, training on Mackey–Glass, WP on the RNN, contract, cost and option checks."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
from torch import nn

import unigrad
from tests.problems import (
    Problem,
    assert_contract,
    cosine,
    estimates,
    flat_grad,
    mean_mismatch,
    true_grad,
)
from unigrad import UnigradError, make_estimator
from unigrad.bio import RateRNN
from unigrad.bio.rules.np_time import NPTime
from unigrad.bio.tasks import get_bio_task
from unigrad.noise import OrnsteinUhlenbeck, WhiteGaussian


def rnn_problem(
    n_rec: int = 5,
    steps: int = 8,
    batch: int = 64,
    *,
    tau: float = 2.0,
    dtype: torch.dtype = torch.float64,
    intrinsic: object = None,
) -> Problem:
    """A Mackey–Glass batch and a small RateRNN with α = dt/τ = 1/tau (α ≠ 1, so a misplaced α shows)."""
    task = get_bio_task("mackey-glass", steps=steps, washout=2)
    obj = task.objective(task.sample(batch, seed=0, step=0).to(dtype=dtype))
    model = RateRNN(1, n_rec, 1, tau=tau, dt=1.0, seed=0, dtype=dtype, intrinsic=intrinsic)  # type: ignore[arg-type]
    return Problem(model, obj, f"rate-rnn{n_rec}")


def assert_unbiased(samples: torch.Tensor, target: torch.Tensor, *, k: float = 5.0) -> None:
    """The mean of independent ``samples`` (rows) equals ``target``: per coordinate and along the target within
    ``k`` standard errors (:func:`tests.problems.mean_mismatch`), and jointly by Hotelling's T² test (p > 1e-6)
    over the coordinates that vary, which allows for the strong correlations between coordinates (the weights
    of one unit share its noise), where a chi-square over independent coordinates would not.

    Tolerances: k = 5 standard errors estimated from the rows; atol = 1e-9 only matters for a coordinate that barely
    varies, and exceeds the float64 rounding of these estimates (≲ eps64·|L|/σ ≈ 2e-13 at σ = 1e-3); p > 1e-6 is a
    5-SD event for T². Coordinates varying by less than 1e-12 (rounding level) are left out of T² since they would
    make the covariance singular. Measured over estimator seeds 0–3: p ≥ 0.03 in every test using this."""
    reasons = [r for r in mean_mismatch(samples, target, k=k, atol=1e-9) if not r.startswith("chi-square")]
    assert not reasons, "; ".join(reasons)
    samples, target = samples.double(), target.double().reshape(-1)
    live = samples.std(0) > 1e-12 * (1 + target.abs())
    x, t = samples[:, live], target[live]
    n, d = x.shape
    diff = x.mean(0) - t
    t2 = float(n * diff @ torch.linalg.pinv(torch.cov(x.T)) @ diff)
    p = scipy.stats.f.sf((n - d) / (d * (n - 1)) * t2, d, n - d)
    assert p > 1e-6, f"Hotelling T² = {t2:.1f} over {d} coordinates, p = {p:.2g}"


def along(samples: torch.Tensor, target: torch.Tensor) -> float:
    """Standard error of the mean of ``samples`` along ``target``, relative to ``‖target‖`` (the tests bound it to
    show that enough samples were drawn to see an error of a few percent; the measured values are in each test)."""
    v = target / target.norm()
    return float((samples @ v).std() / math.sqrt(samples.shape[0]) / target.norm())


@pytest.mark.parametrize("readout", ["perturb", "local"])
def test_np_in_time_is_unbiased_for_bptt(readout: str) -> None:
    problem = rnn_problem()
    g = true_grad(problem.model, problem.objective)
    samples = estimates(NPTime(sigma=1e-3, readout=readout, seed=1), problem, 200)
    # the test can see an error of a few percent (dropping α = 0.5 would double the recurrent part); measured along:
    # 0.016 (perturb) and 0.002 (local), SD over estimator seeds 0–3 ≤ 0.001
    assert along(samples, g) < 0.03
    assert_unbiased(samples, g)


def test_local_readout_is_the_exact_readout_gradient() -> None:
    problem = rnn_problem()
    model = problem.model
    with torch.enable_grad():
        gw, gb = torch.autograd.grad(problem.objective(model).mean(), [model.out.weight, model.out.bias])
    NPTime(sigma=1e-3, readout="local", seed=0).estimate(model, problem.objective)
    # float64: the same Σ_t,b (∂L/∂y)·rᵀ of T·B = 512 terms, in another order than autograd's: ≲ 2·512·eps64·Σ|terms|,
    # which is ≤ 0.003 of rtol·|g| + atol here (computed from the terms)
    assert torch.allclose(model.out.weight.grad, gw, rtol=1e-10, atol=1e-14)
    assert torch.allclose(model.out.bias.grad, gb, rtol=1e-10, atol=1e-14)


def test_anp_aligns_with_bptt_on_the_recurrent_weights() -> None:
    # a chaotic 16-unit network over 20 steps; cosines on W_rec alone (credit assigned through time)
    problem = rnn_problem(n_rec=16, steps=20, batch=16, tau=5.0)
    model = problem.model
    with torch.enable_grad():
        (g_rec,) = torch.autograd.grad(problem.objective(model).mean(), [model.rec.weight])
    est = NPTime(sigma=1e-3, variant="anp", seed=2)
    cos = []
    for _ in range(40):
        est.estimate(model, problem.objective)
        cos.append(cosine(model.rec.weight.grad, g_rec))
    c = torch.tensor(cos)
    # 4 SE below the mean cosine (0.37 ± 0.018; the lower end is 0.28–0.29 over estimator seeds 0–3)
    assert float(c.mean()) - 4 * float(c.std()) / math.sqrt(len(cos)) > 0.1, cos


def test_anp_scale_option_multiplies_the_update() -> None:
    problem = rnn_problem(batch=4)
    out = {}
    for scale in ("n", "sqrt", "none"):
        NPTime(sigma=1e-2, variant="anp", scale=scale, seed=5).estimate(problem.model, problem.objective)
        out[scale] = flat_grad(problem.model)
    n = 8 * 5 + 8 * 1  # T·n_rec units and T·n_out outputs
    # float64: c multiplies each trial's coefficient, so the sums of T·B = 32 terms round differently; ≲ 2·36·eps64
    # ·c·Σ|terms| (Σ|terms| ≤ 23·|g| here) is ≤ 0.004 of rtol·|g| + atol (computed from the terms)
    assert torch.allclose(out["n"], n * out["none"], rtol=1e-10, atol=1e-15)
    assert torch.allclose(out["sqrt"], math.sqrt(n) * out["none"], rtol=1e-10, atol=1e-15)


def test_np_refuses_inaccessible_intrinsic_noise_and_anp_learns_from_it() -> None:
    noisy = rnn_problem(n_rec=16, steps=20, batch=16, tau=5.0, intrinsic=WhiteGaussian(1e-3, accessible=False))
    clean = rnn_problem(n_rec=16, steps=20, batch=16, tau=5.0)  # same seed: same weights, no noise
    np_rule = NPTime(variant="np", passes="two-noisy", noise="external", readout="local")
    with pytest.raises(UnigradError, match="inaccessible"):
        np_rule.estimate(noisy.model, noisy.objective)
    assert noisy.model.trial == 0  # refused before running anything
    g = true_grad(clean.model, clean.objective)
    est = NPTime(variant="anp", passes="two-noisy", noise="external", seed=0)
    cos = []
    for _ in range(20):
        est.estimate(noisy.model, noisy.objective)
        cos.append(cosine(flat_grad(noisy.model), g))
    assert noisy.model.trial == 40  # each pass drew a fresh trial of the network's own noise
    c = torch.tensor(cos)
    # 4 SE below the mean cosine: measured 0.74 (the noise is the network's own, keyed by the model's seed)
    assert float(c.mean()) - 4 * float(c.std()) / math.sqrt(len(cos)) > 0.3, cos


def test_np_reads_accessible_intrinsic_noise_without_bias() -> None:
    # only the network's own white noise probes (nothing injected): normaliser 2·v, unbiased for white noise
    noisy = rnn_problem(intrinsic=WhiteGaussian(1e-3))
    clean = rnn_problem()
    g = true_grad(clean.model, clean.objective)
    samples = estimates(NPTime(passes="two-noisy", noise="external", readout="local", seed=0), noisy, 200)
    assert along(samples, g) < 0.03  # measured 0.002
    assert_unbiased(samples, g)


def test_np_with_injected_and_intrinsic_noise_is_unbiased() -> None:
    # both passes noisy (intrinsic + injected): the perturbation is the noise difference, variance 2σ² + 2v
    noisy = rnn_problem(intrinsic=WhiteGaussian(5e-4))
    clean = rnn_problem()
    g = true_grad(clean.model, clean.objective)
    samples = estimates(NPTime(sigma=1e-3, passes="two-noisy", seed=0), noisy, 200)
    assert along(samples, g) < 0.03  # measured 0.017–0.018 over estimator seeds 0–3
    assert_unbiased(samples, g)


def test_decorrelated_layers_use_the_decorrelated_inputs() -> None:
    problem = rnn_problem(batch=32)
    model = unigrad.decorrelate(problem.model, lr=0.05)
    for _ in range(3):  # move R away from I
        problem.objective(model)
        unigrad.update_decorrelation(model)
    assert not torch.allclose(model.rec.decor.R, torch.eye(5, dtype=torch.float64))
    g = true_grad(model, problem.objective)
    samples = estimates(NPTime(sigma=1e-3, seed=3), problem, 200)
    assert along(samples, g) < 0.03  # measured 0.020–0.024 over estimator seeds 0–3 (SD 0.0014)
    assert_unbiased(samples, g)
    # in training mode every decorrelation holds the baseline pass's rows of all steps (T·B), not only the last
    assert model.rec.decor.last.shape == (8 * 32, 5)
    assert model.out.decor.last.shape == (8 * 32, 5)


@pytest.mark.parametrize("variant", ["np", "anp"])
def test_training_lowers_the_mackey_glass_error(variant: str) -> None:
    task = get_bio_task("mackey-glass", steps=30, washout=5)
    held_out = task.sample(64, seed=1, step=0)
    model = RateRNN(1, 16, 1, tau=2.0, dt=1.0, gain=1.0, seed=0)
    est = NPTime(sigma=1e-3, variant=variant, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def error() -> float:
        with torch.no_grad():
            return task.score(model(held_out.inputs), held_out)

    before = error()
    for k in range(60):
        opt.zero_grad()
        est.estimate(model, task.objective(task.sample(16, seed=0, step=k)))
        opt.step()
    after = error()
    # measured after/before 0.052 (np) and 0.10 (anp), 0.035–0.18 over model and estimator seeds 0–5 (SDs 0.02 and
    # 0.04); after/chance 0.17 and 0.34 (0.17–0.77); unchanged when the initial weights are perturbed by 1 ulp
    assert after < 0.3 * before and after < task.chance, (before, after)


@pytest.mark.parametrize(
    "options",
    [
        {"variant": "np"},
        {"variant": "anp"},
        {"variant": "np", "readout": "local", "probes": 2},
        {"variant": "anp", "passes": "two-noisy", "noise_source": "generator"},
    ],
)
def test_contract(options: dict) -> None:
    assert_contract(lambda seed: NPTime(seed=seed, **options), rnn_problem(batch=8, dtype=torch.float32))


@pytest.mark.parametrize("passes", ["clean-noisy", "two-noisy"])
def test_cost_and_loss(passes: str) -> None:
    problem = rnn_problem(batch=8)
    est = NPTime(probes=3, passes=passes, seed=0).estimate(problem.model, problem.objective)
    assert est.cost.forwards == (1 + 3) * 8 and est.cost.backwards == 0
    assert est.info["probe_losses"].shape == (3,)
    if passes == "clean-noisy":
        assert not est.loss_is_probe_mean
        assert est.loss == pytest.approx(problem.loss(), rel=1e-12)
    else:  # the clean pass is the model's forward: a few float64 roundings apart
        assert est.loss_is_probe_mean
        # the mean over noisy passes: measured 2e-4 to 9e-4 away over estimator seeds 0–3
        assert est.loss == pytest.approx(problem.loss(), rel=1e-2)


def test_wp_works_on_a_rate_rnn() -> None:
    problem = rnn_problem(batch=16)
    assert_contract(lambda seed: make_estimator("wp", sigma=1e-3, seed=seed), rnn_problem(batch=8))
    g = true_grad(problem.model, problem.objective)
    samples = estimates(make_estimator("wp", sigma=1e-4, probes=32, seed=0), problem, 60)
    assert along(samples, g) < 0.1  # measured 0.029–0.035 over estimator seeds 0–3
    assert_unbiased(samples, g)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"probes": 0}, "probes"),
        ({"probes": 1.5}, "probes"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"sigma": True}, "sigma"),
        ({"variant": "wp"}, "variant"),
        ({"scale": "log"}, "scale"),
        ({"readout": "exact"}, "readout"),
        ({"passes": "one"}, "passes"),
        ({"noise": "both"}, "noise"),
        ({"noise_source": "disk"}, "noise_source"),
        ({"noise": "external"}, "two-noisy"),
        ({"noise": "external", "passes": "two-noisy"}, "readout='local'"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(UnigradError, match=match):
        NPTime(**options)


def test_bad_models_and_objectives() -> None:
    problem = rnn_problem(batch=4)
    est = NPTime()
    mlp = nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1))
    with pytest.raises(UnigradError, match="RateRNN"):
        est.estimate(mlp, problem.objective)
    with pytest.raises(UnigradError, match=r"\.inputs"):
        est.estimate(problem.model, unigrad.objective(lambda m: m(problem.objective.inputs).sum((0, 2)), 4))
    extra = rnn_problem(batch=4).model
    extra.register_parameter("gain_param", nn.Parameter(torch.ones(1, dtype=torch.float64)))
    with pytest.raises(UnigradError, match="gain_param"):
        est.estimate(extra, problem.objective)
    with pytest.raises(UnigradError, match="intrinsic"):
        NPTime(noise="external", passes="two-noisy", variant="anp").estimate(problem.model, problem.objective)
    noisy = rnn_problem(batch=4, intrinsic=OrnsteinUhlenbeck(0.01, 5.0))
    with pytest.raises(UnigradError, match="two-noisy"):
        est.estimate(noisy.model, noisy.objective)


def test_frozen_layers_are_left_alone() -> None:
    problem = rnn_problem(batch=4)
    problem.model.inp.requires_grad_(False)
    NPTime(seed=0).estimate(problem.model, problem.objective)
    assert problem.model.inp.weight.grad is None and problem.model.rec.weight.grad is not None


def lif_problem(batch: int = 64, steps: int = 12) -> Problem:
    """A Mackey–Glass batch and a small spiking network that fires (about 10% of unit-steps)."""
    from unigrad.bio.lif import LIFNetwork

    task = get_bio_task("mackey-glass", steps=steps, washout=2)
    obj = task.objective(task.sample(batch, seed=0, step=0).to(dtype=torch.float64))
    model = LIFNetwork(1, 6, 1, tau_mem=5.0, tau_out=3.0, threshold=0.5, seed=0, dtype=torch.float64)
    return Problem(model, obj, "lif6")


def test_lif_local_readout_is_the_exact_gradient_of_the_leaky_readout() -> None:
    problem = lif_problem()
    model = problem.model
    with torch.no_grad():  # 0.069 measured, a deterministic forward pass: rounding flips no spike that matters
        assert model.run(problem.objective.inputs).spikes.mean() > 0.05  # the readout sees spikes
    with torch.enable_grad():
        gw, gb = torch.autograd.grad(problem.objective(model).mean(), [model.out.weight, model.out.bias])
    NPTime(sigma=1e-3, readout="local", seed=0).estimate(model, problem.objective)
    assert gw.abs().max() > 1e-3  # 0.83 measured
    # float64: the leaky trace and Σ_t,b over T·B = 768 terms, ordered differently from autograd's backward through
    # the readout recursion: ≲ 2·780·eps64·Σ|terms| is ≤ 0.004 of rtol·|g| + atol here (computed from the terms)
    assert torch.allclose(model.out.weight.grad, gw, rtol=1e-10, atol=1e-14)
    assert torch.allclose(model.out.bias.grad, gb, rtol=1e-10, atol=1e-14)


def test_np_on_a_spiking_network_is_unbiased_for_the_readout() -> None:
    # the readout is linear in W_out: its smoothed gradient is the exact one, through the leaky trace of the spikes
    problem = lif_problem()
    model = problem.model
    with torch.enable_grad():
        gw, gb = torch.autograd.grad(problem.objective(model).mean(), [model.out.weight, model.out.bias])
    est = NPTime(sigma=1e-3, seed=3)
    rows = []
    for _ in range(300):
        est.estimate(model, problem.objective)
        rows.append(torch.cat([model.out.weight.grad.reshape(-1), model.out.bias.grad]))
    assert_unbiased(torch.stack(rows), torch.cat([gw.reshape(-1), gb]))


def test_np_on_a_spiking_network_points_along_the_surrogate_gradient() -> None:
    """Spikes have no derivative: NP estimates the gradient of the noise-smoothed loss, which the surrogate-gradient
    BPTT approximates. The mean of many estimates for W_in, b and W_rec is aligned with it (cos 0.94 measured)."""
    problem = lif_problem()
    model = problem.model
    hidden = [model.inp.weight, model.inp.bias, model.rec.weight]
    with torch.enable_grad():
        g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(problem.objective(model).mean(), hidden)])
    est = NPTime(sigma=1e-2, seed=3)
    rows = []
    for _ in range(400):
        est.estimate(model, problem.objective)
        rows.append(torch.cat([p.grad.reshape(-1) for p in hidden]))
    mean = torch.stack(rows).mean(0)
    # measured 0.945 (0.94–0.96 over estimator seeds 0–3, SD 0.008)
    assert float(torch.nn.functional.cosine_similarity(mean, g, dim=0)) > 0.85


@pytest.mark.parametrize("variant", ["np", "anp"])
def test_np_trains_a_spiking_network(variant: str) -> None:
    from unigrad.bio.lif import LIFNetwork

    task = get_bio_task("mackey-glass", steps=30, washout=5)
    held_out = task.sample(64, seed=1, step=0)
    model = LIFNetwork(1, 32, 1, tau_mem=5.0, tau_out=5.0, threshold=0.5, seed=0)
    est = NPTime(sigma=1e-2, variant=variant, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def error() -> float:
        with torch.no_grad():
            return task.score(model(held_out.inputs), held_out)

    before = error()
    for k in range(200):
        opt.zero_grad()
        est.estimate(model, task.objective(task.sample(16, seed=0, step=k)))
        opt.step()
    after = error()
    # Spiking + noise makes this run sensitive: after/chance is 0.79 (np) / 0.72 (anp) at seed 0, but 0.73–0.91 /
    # 0.72–0.87 over twelve 1-ulp perturbations of the initial weights (SDs 0.041 / 0.048; 0.75–0.80 / 0.72–0.90
    # over seeds 0–5), so the old bound 0.9·chance was within 2 SDs. Beating chance (1.0) has ≥ 4 SDs of margin; the
    # start is 4.8× chance (a forward pass of the seed-0 network, 2.9–5.1× over seeds 0–5)
    assert after < task.chance < 0.25 * before, (before, after)
