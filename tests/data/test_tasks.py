"""The task registry: names, models that fit their data, the metric."""

from __future__ import annotations

import pytest
import torch

from unigrad import UnigradError
from unigrad.data import TASKS, fashion_mnist, get_task

OFFLINE = ["digits-mlp", "mnist1d-mlp"]


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(UnigradError) as info:
        get_task("cifar-resnet")
    for name in TASKS:
        assert name in str(info.value)


@pytest.mark.parametrize("name", OFFLINE)
def test_model_maps_inputs_to_logits(name):
    task = get_task(name)
    data = task.data()
    logits = task.build_model(0)(data.x_test[:7])
    assert logits.shape == (7, 10)
    loss = task.loss_fn(logits, data.y_test[:7], reduction="none")
    assert loss.shape == (7,) and torch.isfinite(loss).all()


@pytest.mark.skipif(not fashion_mnist.DEFAULT_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("name", ["fashion-mlp", "fashion-mlp3", "fashion-cnn"])
def test_fashion_models_fit_the_images(name, monkeypatch):
    monkeypatch.delenv("UNIGRAD_FASHION_MNIST", raising=False)
    task = get_task(name)
    assert task.build_model(0)(task.data().x_test[:3]).shape == (3, 10)


def test_accuracy_metric():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.0, 1.0]])
    assert get_task("digits-mlp").metric(logits, torch.tensor([0, 1, 1, 0])) == 0.5
