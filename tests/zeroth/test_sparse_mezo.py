"""Sparse MeZO: unbiased for the gradient restricted to its mask, zero outside it, the mask the small entries."""

from __future__ import annotations

import pytest
import torch

from tests.problems import assert_contract, assert_mean_matches, estimates, flat_grad, mlp, quadratic, train_losses
from unigrad import UnigradError, make_estimator
from unigrad.core.params import trainable
from unigrad.optim import ReplaySGD
from unigrad.zeroth.sparse_mezo import SparseMeZO


def _mask(problem, sparsity: float) -> torch.Tensor:
    est = SparseMeZO(sparsity=sparsity)
    params = trainable(problem.model)
    est._begin(params)
    return torch.cat([est.mask(k, p).reshape(-1) for k, (_, p) in enumerate(params)])


def test_unbiased_for_the_masked_gradient() -> None:
    problem = quadratic(16, dense=True)
    m = _mask(problem, 0.5)
    assert int(m.sum()) == 8  # half of the 16 entries, the smallest in magnitude
    samples = estimates(SparseMeZO(probes=8, sigma=0.5, sparsity=0.5, seed=3), problem, 300)
    assert torch.all(samples[:, ~m] == 0)  # nothing outside the mask
    assert_mean_matches(samples, problem.grad() * m)


def test_the_mask_holds_the_smallest_entries() -> None:
    problem = mlp()
    for sparsity in (0.0, 0.5, 0.9):
        m = _mask(problem, sparsity)
        theta = torch.cat([p.detach().abs().reshape(-1) for _, p in trainable(problem.model)])
        per_tensor = [p.numel() for _, p in trainable(problem.model)]
        lo = 0
        for n in per_tensor:
            mk, tk = m[lo : lo + n], theta[lo : lo + n]
            assert abs(int(mk.sum()) - round((1 - sparsity) * n)) <= 1
            if mk.any() and (~mk).any():
                assert tk[mk].max() <= tk[~mk].min()
            lo += n


def test_contract_and_training() -> None:
    assert_contract(lambda seed: SparseMeZO(probes=2, seed=seed), mlp())
    before, after = train_losses(SparseMeZO(probes=4, sigma=1e-3, sparsity=0.5, seed=0), mlp(), steps=60, lr=0.05)
    assert after < before


def test_compressed_direction_replays_the_dense_grad() -> None:
    problem = mlp()
    dense = SparseMeZO(probes=3, seed=5)
    dense.estimate(problem.model, problem.objective)
    g = flat_grad(problem.model)
    lean = SparseMeZO(probes=3, seed=5, write_grad=False)
    e = lean.estimate(problem.model, problem.objective)
    assert torch.equal(flat_grad(problem.model), g)  # .grad left as the dense estimate wrote it
    replayed = torch.cat([t.reshape(-1).double() for t in e.info["direction"].materialize()])
    assert torch.equal(replayed, g)
    before = [p.detach().clone() for p in problem.model.parameters()]
    ReplaySGD(problem.model.parameters(), lr=0.1).step(e.info["direction"])
    moved = torch.cat([(b - p.detach()).reshape(-1).double() for b, p in zip(before, problem.model.parameters())])
    torch.testing.assert_close(moved, 0.1 * g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [-0.1, 1.0, "half", True])
def test_bad_sparsity(bad) -> None:
    with pytest.raises(UnigradError, match="sparsity"):
        make_estimator("sparse-mezo", sparsity=bad)
