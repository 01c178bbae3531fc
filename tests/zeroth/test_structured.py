"""The structured family's two ways of evaluating its probes agree: perturbing where the forward reads the
parameters (memory-lean) and the dense directions through the batched probe path."""

from __future__ import annotations

import pytest
import torch

from tests.problems import flat_grad, flat_params, mlp
from unigrad import UnigradError, make_estimator

FAMILY = {
    "sparse-mezo": {"sparsity": 0.5},
    "hizoo": {"hessian_smooth": 0.1},
    "lozo": {"rank": 2, "lazy": 2, "momentum": 0.5},
    "subzero": {"rank": 3, "refresh": 2},
    "fzoo": {},
}


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_forward_and_dense_agree(name) -> None:
    problem = mlp()
    before = flat_params(problem.model)
    grads = {}
    for perturb in ("forward", "dense"):
        est = make_estimator(name, probes=3, sigma=1e-2, seed=4, perturb=perturb, **FAMILY[name])
        out = []
        for _ in range(3):  # several steps: the state (H, momentum, factors) evolves the same way
            est.estimate(problem.model, problem.objective)
            out.append(flat_grad(problem.model))
        grads[perturb] = torch.stack(out)
    assert torch.equal(flat_params(problem.model), before)
    # the losses differ in the last bits (another order of operations); HiZOO's second differences amplify that
    scale = float(grads["dense"].abs().max())
    torch.testing.assert_close(grads["forward"], grads["dense"], rtol=1e-3, atol=1e-3 * scale)


def test_bad_perturb() -> None:
    with pytest.raises(UnigradError, match="perturb"):
        make_estimator("lozo", perturb="in_place")


def _embedding_problem():
    import torch.nn.functional as F
    from torch import nn

    import unigrad

    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Embedding(1100, 1000), nn.Flatten(), nn.Linear(2000, 3))  # 1.1M embedding entries
    with torch.no_grad():
        model[0].weight.mul_(0.05)
    ids, y = torch.randint(0, 1100, (16, 2), generator=g), torch.randint(0, 3, (16,), generator=g)
    return model, unigrad.supervised(F.cross_entropy, ids, y)


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_embedding_rows_alone(name) -> None:
    """Forward mode perturbs only the looked-up rows of an embedding; the compressed direction replays it in row
    blocks; both agree with the dense directions."""
    model, objective = _embedding_problem()
    runs = {}
    for perturb, write in (("dense", True), ("forward", True), ("forward", False)):
        est = make_estimator(name, probes=2, sigma=1e-2, seed=1, perturb=perturb, write_grad=write, **FAMILY[name])
        whole = []  # the parameters whose direction was formed whole
        direction = est._direction
        est._direction = lambda step, k, p, i, w=whole, d=direction: w.append(k) or d(step, k, p, i)
        e = est.estimate(model, objective)
        if write:
            runs[perturb] = [p.grad.clone() for p in model.parameters()]
        else:
            chunks = list(e.info["direction"].chunks(0))
            assert len(chunks) > 1  # the embedding in blocks of rows, never whole
            runs["replayed"] = e.info["direction"].materialize()
            assert 0 not in whole  # neither the probes nor the replay formed the embedding's direction whole
    for key in ("forward", "replayed"):
        for a, b in zip(runs[key], runs["dense"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))
