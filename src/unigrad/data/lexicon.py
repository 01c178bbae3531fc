"""Human-rated sentiment lexicons, read offline from the files their PyPI packages ship.

**VADER** (Hutto & Gilbert 2014; ``vaderSentiment``, MIT licence): ``vader_lexicon.txt``, one entry a
line (CRLF), ``token<TAB>mean<TAB>sd<TAB>[r1, …, r10]``: 7,520 lines of words, emoticons and slang, each
rated by 10 people on the valence scale −4 … +4. 14 tokens appear twice (``lol``, ``ok``, ``xd``, …; two of
them, ``d:`` and ``d=``, with opposite signs): each token is kept once, with the ratings of both lines
pooled (its mean is the mean of all 20 ratings), so 7,506 entries. Means are computed from the ratings
(the file's mean column disagrees once: ``lmfao`` states 2.5, its ratings average 2.4).

**AFINN** (Nielsen 2011; ``afinn``, data ODbL, code GPL): ``AFINN-en-165.txt``, ``word<TAB>valence``
with integer valences −5 … +5: 3,382 entries.

The binary task (:func:`vader_words`): the VADER entries that are **words**, i.e. purely ASCII
alphabetic tokens (all of them are lower case; emoticons, ``:-)``, ``<3`` and the like are left out),
labelled positive (1) when the mean rating is ``≥ margin`` and negative (0) when ``≤ −margin``; the
near-neutral ones in between are left out. With the default margin 1.0: 2,435 positive and 3,143
negative words (5,578).

* :func:`split`: a fixed stratified 80/20 train/test split by entry: 1,948 positive / 2,514 negative in
  training, 487 / 629 in the test set (44% positive in both).
* :func:`k_shot`: MeZO's few-shot subsets, k words per class from the training split, nested (the first k
  of one seeded permutation per class, so k = 16 ⊂ k = 512).
* :func:`transfer_words`: an independent test set, the AFINN words that are not VADER tokens (single
  words by the same rule, nonzero valence → its sign): 191 positive and 493 negative words.

Every word becomes the sentence ``PROMPT.format(word=word)``, ``"It was {word}."``, MeZO's SST-2 prompt
(Malladi et al. 2023, arXiv:2305.17333), whose label words ``"terrible"`` and ``"great"``
(:data:`LABEL_WORDS`) make the zero-shot class prototypes ``"It was terrible."`` and ``"It was great."``.
Randomness comes from a local ``numpy.random.Generator``; global RNG states are never touched.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from unigrad.core.errors import UnigradError
from unigrad.core.options import check_number, check_positive
from unigrad.data.digits import stratified_split
from unigrad.nn.text import PAD_ID, require

PROMPT = "It was {word}."
"""MeZO's SST-2 prompt template."""

LABELS = ("negative", "positive")
"""Class names by label index."""

LABEL_WORDS = ("terrible", "great")
"""MeZO's SST-2 label words by label index: the prototypes are ``PROMPT`` filled with these."""

MARGIN = 1.0
"""Default margin: |mean rating| below it is near-neutral and left out."""

TEST_FRACTION = 0.2
SPLIT_SEED = 0
K_SHOT_SEED = 0


def _package_text(package: str, *parts: str) -> str:
    """The UTF-8 text of a data file inside an installed package."""
    require(package)
    return importlib.resources.files(package).joinpath(*parts).read_text("utf-8")


@dataclass(frozen=True)
class VaderEntry:
    """One VADER token: its 10 (or, for a duplicated token, 20) human ratings and their mean."""

    token: str
    ratings: tuple[int, ...]

    @property
    def mean(self) -> float:
        """Mean rating (−4 … +4)."""
        return sum(self.ratings) / len(self.ratings)


def parse_vader(text: str) -> tuple[list[tuple[str, float, tuple[int, ...]]], dict[str, VaderEntry]]:
    """The lines of ``vader_lexicon.txt`` as ``(token, mean, ratings)`` and the entries by token (duplicates
    pooled, in order of first appearance)."""
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split("\t")
        if len(parts) != 4:
            raise UnigradError(f"vader_lexicon.txt line {n} has {len(parts)} fields, not 4; reinstall vaderSentiment")
        ratings = tuple(int(r) for r in parts[3].strip("[]").split(","))
        lines.append((parts[0], float(parts[1]), ratings))
    entries: dict[str, VaderEntry] = {}
    for token, _, ratings in lines:
        before = entries[token].ratings if token in entries else ()
        entries[token] = VaderEntry(token, before + ratings)
    return lines, entries


@functools.cache
def vader() -> dict[str, VaderEntry]:
    """Every VADER entry by token (7,506; duplicates pooled), read once per process."""
    return parse_vader(_package_text("vaderSentiment", "vader_lexicon.txt"))[1]


@functools.cache
def afinn() -> dict[str, int]:
    """Every AFINN-en-165 entry (3,382) by word: integer valence −5 … +5, read once per process."""
    out = {}
    for line in _package_text("afinn", "data", "AFINN-en-165.txt").splitlines():
        word, valence = line.rsplit("\t", 1)
        out[word] = int(valence)
    return out


def is_word(token: str) -> bool:
    """Whether ``token`` is a word of the task: ASCII letters only."""
    return token.isascii() and token.isalpha()


def vader_words(margin: float = MARGIN) -> tuple[list[str], np.ndarray]:
    """The VADER words with mean rating ``≥ margin`` (label 1) or ``≤ −margin`` (label 0), in file order."""
    check_number("margin", margin, low=0, low_inclusive=False, high=4)
    words, labels = [], []
    for token, entry in vader().items():
        if is_word(token) and abs(entry.mean) >= margin:
            words.append(token)
            labels.append(int(entry.mean > 0))
    return words, np.array(labels, dtype=np.int64)


def split(labels: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices: a stratified split with :data:`TEST_FRACTION` of each class in the test
    set (:func:`unigrad.data.digits.stratified_split`; the same seed gives the same split)."""
    return stratified_split(labels, round(TEST_FRACTION * len(labels)), seed)


def k_shot(labels: np.ndarray, train: np.ndarray, k: int, seed: int = K_SHOT_SEED) -> np.ndarray:
    """``k`` training indices per class (sorted), drawn from ``train``: the first ``k`` of one seeded
    permutation of each class, so a smaller ``k`` is a subset of a larger one."""
    check_positive("k", k, integer=True)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels[train]):
        members = train[labels[train] == c]
        if k > len(members):
            raise UnigradError(f"k = {k} is more than the {len(members)} training examples of class {LABELS[c]}")
        chosen.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(chosen))


def transfer_words() -> tuple[list[str], np.ndarray]:
    """AFINN words that are not VADER tokens (single words by :func:`is_word`, nonzero valence), labelled by
    the sign of their valence (1 positive, 0 negative), in file order."""
    known = {t.lower() for t in vader()}
    pairs = [(w, v) for w, v in afinn().items() if is_word(w) and w.lower() not in known and v != 0]
    return [w for w, _ in pairs], np.array([int(v > 0) for _, v in pairs], dtype=np.int64)


def sentences(words: list[str]) -> list[str]:
    """Each word in the prompt template."""
    return [PROMPT.format(word=w) for w in words]


def balance(labels: np.ndarray) -> dict[str, int]:
    """How many examples each class has, by class name."""
    return {name: int((labels == c).sum()) for c, name in enumerate(LABELS)}


# The task tensors: every sentence tokenised once per process, padded to the longest of the lexicon.


@functools.cache
def _vader_ids() -> tuple[Tensor, Tensor]:
    from unigrad.nn.text import encode

    words, labels = vader_words()
    return encode(sentences(words)), torch.from_numpy(labels)


def _trim(*ids: Tensor) -> list[Tensor]:
    """``ids`` without the trailing columns that are padding in every row of all of them."""
    width = max(int((x != PAD_ID).sum(dim=1).max()) if x.numel() else 0 for x in ids)
    return [x[:, :width].contiguous() for x in ids]


def load_sentiment(k: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of the VADER task: token ids ``(N, L)`` int64 of the prompted words
    and labels (0 negative, 1 positive); the training set is the whole training split, or ``k`` words per
    class from it (:func:`k_shot`). The test set is always the whole test split."""
    ids, y = _vader_ids()
    train, test = split(y.numpy())
    if k is not None:
        train = k_shot(y.numpy(), train, k)
    x_train, x_test = _trim(ids[train], ids[test])
    return x_train, y[train], x_test, y[test]


@functools.cache
def load_transfer() -> tuple[Tensor, Tensor]:
    """``(ids, labels)`` of the AFINN transfer set (:func:`transfer_words`), prompted and tokenised."""
    from unigrad.nn.text import encode

    words, labels = transfer_words()
    return encode(sentences(words)), torch.from_numpy(labels)
