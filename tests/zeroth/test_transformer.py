"""Every applicable estimator on a Hugging Face BERT encoder (a tiny random one, so the file stays fast).

The model is ``transformers.BertModel`` (2 layers, hidden size 32, sdpa attention) under a mean pool
over the attention mask and a linear head, on random token ids labelled by a fixed rule. Checked, in
training mode (dropout active, keyed per (seed, step) by the step state): the estimator contract with
bitwise replay, BERT's integer buffers left alone, the direction of each unbiased estimator against
autograd (statistically, or per step against the gradient under the same dropout masks), and a few
steps lowering the loss. Node perturbation trains the transformer's ``nn.Linear`` layers (the other
parameters frozen) and refuses the full model with a one-line error.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.problems import Problem, assert_contract, assert_mean_matches, cosine, flat_grad, true_grad
from unigrad import UnigradError, make_estimator, supervised
from unigrad.core.estimator import Estimator
from unigrad.core.params import trainable
from unigrad.core.replay import ReplayDirection
from unigrad.core.step_state import StepState
from unigrad.optim import ReplaySGD

transformers = pytest.importorskip("transformers", reason="the transformer tests need Hugging Face transformers")

VOCAB, HIDDEN, BATCH, LENGTH = 100, 32, 8, 6
NODE_METHODS = ("np", "anp", "danp")


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyBert(nn.Module):
    """A random 2-layer BERT encoder, mean-pooled over the attention mask (``ids != 0``), and a linear head."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        config = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
        with torch.random.fork_rng(devices=[]):  # BERT initialises from the global generator: keep it local
            torch.manual_seed(seed)
            self.bert = transformers.BertModel(config)
            self.head = nn.Linear(HIDDEN, 2)

    def forward(self, ids: Tensor) -> Tensor:
        mask = ids != 0
        hidden = self.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * m).sum(1) / m.sum(1).clamp_min(1))


def linear_only(model: nn.Module) -> nn.Module:
    """Freeze every parameter that is not the weight or bias of an ``nn.Linear`` (embeddings, layer norms)."""
    linear = {id(p) for mod in model.modules() if isinstance(mod, nn.Linear) for p in mod.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in linear)
    return model


def bert(*, train: bool = True, linear: bool = False, seed: int = 0) -> Problem:
    """The tiny BERT on a fixed batch: label = parity of the first token; the last position is padding."""
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(1, VOCAB, (BATCH, LENGTH), generator=g)
    ids[: BATCH // 2, -1] = 0
    model = TinyBert(seed).train(train)
    if linear:
        linear_only(model)
    return Problem(model, supervised(F.cross_entropy, ids, ids[:, 0] % 2), "tiny-bert")


def estimator(name: str, problem: Problem, seed: int = 0, **options: object) -> Estimator:
    """``make_estimator(name)``, with ``problem.model`` decorrelated first for ``danp``."""
    est = make_estimator(name, seed=seed, **options)
    if name == "danp":
        problem.model = est.prepare(problem.model)
    return est


def eval_loss(problem: Problem) -> float:
    """The loss without dropout (the training mode is restored)."""
    mode = problem.model.training
    problem.model.eval()
    try:
        return problem.loss()
    finally:
        problem.model.train(mode)


ALL = ("backprop", "forward-gradient", "rge", "spsa", "es", "mezo", *NODE_METHODS, "kfac")


# -- the contract, in training mode -----------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_contract_with_dropout(name: str) -> None:
    problem = bert(linear=name in NODE_METHODS)
    estimator(name, problem)  # danp: decorrelates the model's Linear layers once
    assert_contract(lambda seed: make_estimator(name, seed=seed), problem)


@pytest.mark.parametrize("name", ["np", "anp"])
def test_node_perturbation_refuses_embeddings_in_one_line(name: str) -> None:
    problem = bert()
    with pytest.raises(UnigradError, match=r"only trains nn\.Linear") as err:
        make_estimator(name).estimate(problem.model, problem.objective)
    assert "\n" not in str(err.value)


def test_buffers_left_alone() -> None:
    """``position_ids``/``token_type_ids`` are integer buffers no evaluation changes: same tensors, same values."""
    problem = bert()
    buffers = {n: (b, b.clone(), b._version) for n, b in problem.model.named_buffers()}
    assert any("position_ids" in n for n in buffers)
    for name in ("spsa", "forward-gradient", "backprop"):
        make_estimator(name).estimate(problem.model, problem.objective)
    for n, b in problem.model.named_buffers():
        original, value, version = buffers[n]
        assert b is original and torch.equal(b, value) and b._version == version, n


# -- directions against autograd --------------------------------------------------------------


def _subset(d: int, n: int = 300) -> Tensor:
    return torch.randperm(d, generator=torch.Generator().manual_seed(0))[:n]


@pytest.mark.parametrize("name", ["spsa", "rge", "forward-gradient", "np"])
def test_unbiased_without_dropout(name: str) -> None:
    """The mean of independent estimates is the autograd gradient (dropout off: one fixed function).

    Checked on 300 random coordinates plus the gradient's direction (the helper's tolerances are
    calibrated for up to ~10³ coordinates; E[ĝ] = ∇f implies it for every projection). SPSA and RGE
    carry an O(σ²) smoothing bias, far below the standard errors of 60 estimates here. Eval mode also
    exercises forward-mode AD through BERT's attention (the fused CPU kernel has no JVP)."""
    problem = bert(train=False, linear=name == "np")
    g = problem.grad()
    est = make_estimator(name, probes=4)
    rows = []
    for _ in range(60):
        est.estimate(problem.model, problem.objective)
        rows.append(flat_grad(problem.model))
    samples = torch.stack(rows)
    idx = _subset(g.numel())
    assert_mean_matches(samples[:, idx], g[idx])
    v = g / g.norm()  # along the gradient: mean ‖g‖, within 5 SE
    z = samples @ v
    assert abs(float(z.mean()) - float(g.norm())) <= 5 * float(z.std()) / math.sqrt(len(z))


def _masked_grad(problem: Problem, seed: int, step: int, rule: str) -> Tensor:
    """The autograd gradient under the dropout masks of step ``(seed, step)``."""
    with StepState(problem.model, seed, step, rule):
        return true_grad(problem.model, problem.objective)


def test_backprop_sees_the_step_masks() -> None:
    problem = bert()
    est = make_estimator("backprop", seed=3)
    est.step = 5
    est.estimate(problem.model, problem.objective)
    assert torch.equal(flat_grad(problem.model), _masked_grad(problem, 3, 5, "first"))
    assert not torch.allclose(flat_grad(problem.model), _masked_grad(problem, 3, 6, "first"))


def test_forward_gradient_is_the_jvp_under_the_step_masks() -> None:
    """One tangent: ĝ = (∇f·v)v, so ∇f·ĝ = (∇f·v)² with ∇f under the same dropout masks as the JVP."""
    problem = bert()
    est = make_estimator("forward-gradient", seed=2)
    out = est.estimate(problem.model, problem.objective)
    d = float(out.info["directional_derivatives"][0])
    g = _masked_grad(problem, 2, 0, "first")
    ghat = flat_grad(problem.model)
    assert float(g @ ghat) == pytest.approx(d * d, rel=1e-3)
    assert float(_masked_grad(problem, 2, 1, "first") @ ghat) != pytest.approx(d * d, rel=1e-2)


def test_mezo_difference_is_the_directional_derivative_under_the_step_masks() -> None:
    """Both sides of MeZO's ± pair see the same dropout masks: (f₊ − f₋)/(2σ) = ∇f·z + O(σ²)."""
    problem = bert()
    est = make_estimator("mezo", seed=4, write_grad=False)
    out = est.estimate(problem.model, problem.objective)
    c = float(out.info["projected_gradients"][0])
    params = tuple(p for _, p in trainable(problem.model))
    z = torch.cat([t.reshape(-1).double() for t in ReplayDirection(est.noise, 4, 0, (1.0,), params).materialize()])
    g = _masked_grad(problem, 4, 0, "mean")
    # float32 losses ~0.5 differenced over 2σ = 2e-3: ~1e-4 absolute rounding; |∇f·z| is ~0.1 or more
    assert c == pytest.approx(float(g @ z), rel=2e-2, abs=1e-3)
    other = float(_masked_grad(problem, 4, 1, "mean") @ z)
    assert abs(c - other) > 10 * abs(c - float(g @ z))


@pytest.mark.parametrize("name", ["anp", "es"])
def test_biased_probes_point_downhill(name: str) -> None:
    """ANP (activity changes, not node gradients) and ES (σ = 0.02 smoothing) are not unbiased; their
    estimates still project positively on the gradient: mean of ĝ·∇f/‖∇f‖ over 40 steps above 4 SE."""
    problem = bert(train=False, linear=name == "anp")
    g = problem.grad()
    est = make_estimator(name)
    z = []
    for _ in range(40):
        est.estimate(problem.model, problem.objective)
        z.append(float(flat_grad(problem.model) @ g) / float(g.norm()))
    along = torch.tensor(z)
    assert float(along.mean()) > 4 * float(along.std()) / math.sqrt(len(z))


def test_kfac_points_downhill() -> None:
    """K-FAC's preconditioned direction (Linear layers; the rest plain gradient) is a descent direction."""
    problem = bert(train=False)
    g = problem.grad()
    make_estimator("kfac").estimate(problem.model, problem.objective)
    assert cosine(flat_grad(problem.model), g) > 0.1


# -- training ----------------------------------------------------------------------------------

LRS = {"backprop": 1e-2, "forward-gradient": 3e-3, "kfac": 1e-2}


@pytest.mark.parametrize("name", ALL)
def test_a_few_steps_lower_the_loss(name: str) -> None:
    problem = bert(linear=name in NODE_METHODS)
    est = estimator(name, problem)
    opt = torch.optim.Adam([p for _, p in trainable(problem.model)], lr=LRS.get(name, 1e-3))
    first = eval_loss(problem)
    for _ in range(15):
        opt.zero_grad()
        est.estimate(problem.model, problem.objective)
        opt.step()
    assert eval_loss(problem) < first


def test_memory_lean_mezo_replays_the_dense_step() -> None:
    """``write_grad=False`` + ReplaySGD ends bitwise where in-place MeZO + torch.optim.SGD does, and learns."""
    lean, dense = bert(), bert()
    a, b = make_estimator("mezo", write_grad=False), make_estimator("mezo")
    opt_a = ReplaySGD(lean.model.parameters(), lr=1e-3)
    opt_b = torch.optim.SGD(dense.model.parameters(), lr=1e-3)
    first = eval_loss(lean)
    for _ in range(15):
        opt_a.step(a.estimate(lean.model, lean.objective).info["direction"])
        opt_b.zero_grad()
        b.estimate(dense.model, dense.objective)
        opt_b.step()
    for (_, p), (_, q) in zip(trainable(lean.model), trainable(dense.model), strict=True):
        assert p.grad is None and torch.equal(p, q)
    assert eval_loss(lean) < first
