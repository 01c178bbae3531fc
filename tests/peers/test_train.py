"""A peer trains through unigrad's trainer like any estimator."""

import math

import pytest

from unigrad import UnigradError
from unigrad.data.tasks import get_task
from unigrad.train.trainer import train

pytest.importorskip("evotorch")


def test_snes_trains_digits_through_the_trainer():
    run = train("digits-mlp", "snes", optimizer="sgd", lr=1.0, budget="steps=30", batch_size=64, progress=False)
    assert run.status == "ok"
    first, last = run.history[0], run.history[-1]
    # measured over seeds 0–5: test loss down by 0.70–0.83 (SD 0.04), accuracy up by 0.51–0.61 (SD 0.05): the
    # bounds are ≥ 8 SDs away
    assert last["test_loss"] < first["test_loss"] - 0.3, (first["test_loss"], last["test_loss"])
    assert last["test_accuracy"] > first["test_accuracy"] + 0.2
    population = 4 + int(3 * math.log(4810))  # EvoTorch's default for digits-mlp's 4,810 parameters
    n, pos, samples = get_task("digits-mlp").data().x_train.shape[0], 0, 0
    for _ in range(30):  # the batches the trainer drew (the last one of an epoch may be short)
        batch = min(64, n - pos)
        samples, pos = samples + batch, (pos + batch) % n
    assert run.forward_equivalents == population * samples


def test_adam_is_refused_with_advice():
    with pytest.raises(UnigradError, match="--optimizer sgd --lr 1"):
        train("digits-mlp", "snes", optimizer="adam", lr=1e-3, budget="steps=3", batch_size=64, progress=False)


def test_nevergrad_ngopt_keeps_going_past_its_cma_generations_in_970_dimensions():
    """Asking nevergrad's CMA for a whole batch before telling failed after ~1,400 evaluations at d ≈ 1,000."""
    pytest.importorskip("nevergrad")
    import torch
    from torch import nn

    from unigrad import make_estimator
    from unigrad.core.objective import objective

    model = nn.Module()
    model.x = nn.Parameter(torch.full((970,), 0.5))
    quadratic = objective(lambda m: (m.x**2).sum(), n_samples=1)
    est = make_estimator("nevergrad", seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    first = float(quadratic(model))
    for _ in range(70):  # 70 × 24 candidates: past where the batched version failed
        opt.zero_grad()
        est.estimate(model, quadratic)
        opt.step()
    assert float(quadratic(model)) < first
