"""The task registry: names, models that fit their data, the metric."""

from __future__ import annotations

import pytest
import torch

from unigrad import UnigradError
from unigrad.data import TASKS, TaskData, fashion_mnist, get_task
from unigrad.data.tasks import cast_inputs

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


def test_task_data_keeps_token_ids_integer():
    ids, x = torch.tensor([[101, 2009, 0]]), torch.ones(1, 3)
    data = TaskData(ids, torch.tensor([1]), x, torch.tensor([0])).to("cpu", torch.float64)
    assert data.x_train.dtype == torch.long and torch.equal(data.x_train, ids)
    assert data.x_test.dtype == torch.float64
    assert cast_inputs(ids, "cpu", torch.float16).dtype == torch.long


TEXT_TASKS = {
    "tiny-sentiment": 128,
    "minilm-sentiment-k16": 32,
    "minilm-sentiment-k512": 1024,
    "minilm-sentiment": 4462,
}


@pytest.mark.parametrize("name", list(TEXT_TASKS))
def test_text_task_data(name):
    pytest.importorskip("transformers")
    data = get_task(name).data()
    assert data.x_train.dtype == data.x_test.dtype == torch.long
    assert data.x_train.shape[0] == TEXT_TASKS[name] and data.x_test.shape[0] == 1116
    if name != "minilm-sentiment":  # k words per class
        assert torch.bincount(data.y_train).tolist() == [TEXT_TASKS[name] // 2] * 2
    assert (data.x_train[:, 0] == 101).all() and data.x_train.shape[1] == data.x_test.shape[1]
    longest = max(int((x != 0).sum(dim=1).max()) for x in (data.x_train, data.x_test))
    assert longest == data.x_train.shape[1]  # no column of padding alone


def test_text_tasks_carry_the_transfer_set_and_others_no_extra_set():
    pytest.importorskip("transformers")
    from unigrad.data.lexicon import load_transfer

    data = get_task("tiny-sentiment").data()
    assert list(data.extra) == ["transfer"]
    x, y = data.extra["transfer"]
    assert x.shape[0] == 684 and torch.bincount(y).tolist() == [493, 191]
    assert all(torch.equal(a, b) for a, b in zip((x, y), load_transfer()))
    moved = data.to("cpu", torch.float64).extra["transfer"]
    assert moved[0].dtype == torch.long and torch.equal(moved[0], x)
    assert get_task("digits-mlp").data().extra == {}


def test_tiny_sentiment_trains_on_token_ids():
    pytest.importorskip("transformers")
    task = get_task("tiny-sentiment")
    data = task.data()
    model = task.build_model(0)
    logits = model(data.x_test[:5])
    assert logits.shape == (5, 2)
    task.loss_fn(logits, data.y_test[:5]).backward()
    assert model.head.weight.grad is not None
    assert task.batch_size == 64 and get_task("minilm-sentiment-k16").batch_size == 32
