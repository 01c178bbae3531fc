"""The sentiment lexicons: the files as shipped, the word rule, the split, the few-shot subsets, the transfer set."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("vaderSentiment")
pytest.importorskip("afinn")

from unigrad import UnigradError
from unigrad.data import lexicon


def test_vader_file_as_shipped():
    lines, entries = lexicon.parse_vader(lexicon._package_text("vaderSentiment", "vader_lexicon.txt"))
    assert len(lines) == 7520 and len(entries) == 7506
    assert sum(m >= 1 for _, m, _ in lines) == 2580 and sum(m <= -1 for _, m, _ in lines) == 3250
    assert all(len(r) == 10 for _, _, r in lines)
    # the stated mean is the mean of the ratings on every line but one
    assert [t for t, m, r in lines if abs(m - sum(r) / 10) > 1e-9] == ["lmfao"]


def test_duplicated_tokens_pool_their_ratings():
    entries = lexicon.vader()
    assert len(entries["lol"].ratings) == 20 and len(entries["good"].ratings) == 10
    assert entries["lol"].mean == pytest.approx((2.9 + 1.8) / 2)
    assert entries["d:"].mean == pytest.approx((-2.9 + 1.2) / 2)  # two lines of opposite sign: near-neutral


def test_words_and_margin():
    words, labels = lexicon.vader_words()
    assert len(words) == 5578 and lexicon.balance(labels) == {"negative": 3143, "positive": 2435}
    assert all(w.isascii() and w.isalpha() and w == w.lower() for w in words)
    entries = lexicon.vader()
    assert all(abs(entries[w].mean) >= 1.0 and (entries[w].mean > 0) == bool(y) for w, y in zip(words, labels))
    assert len(lexicon.vader_words(2.0)[0]) < len(words)
    with pytest.raises(UnigradError, match="margin"):
        lexicon.vader_words(0.0)


def test_split_is_fixed_stratified_and_disjoint():
    _, labels = lexicon.vader_words()
    train, test = lexicon.split(labels)
    again = lexicon.split(labels)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not set(train) & set(test) and len(train) + len(test) == len(labels)
    assert len(test) == round(0.2 * len(labels))
    assert lexicon.balance(labels[train]) == {"negative": 2514, "positive": 1948}
    assert lexicon.balance(labels[test]) == {"negative": 629, "positive": 487}
    assert not np.array_equal(lexicon.split(labels, seed=1)[1], test)


def test_k_shot_is_balanced_nested_and_from_training():
    _, labels = lexicon.vader_words()
    train, _ = lexicon.split(labels)
    k16, k512 = lexicon.k_shot(labels, train, 16), lexicon.k_shot(labels, train, 512)
    assert lexicon.balance(labels[k16]) == {"negative": 16, "positive": 16}
    assert lexicon.balance(labels[k512]) == {"negative": 512, "positive": 512}
    assert set(k16) <= set(k512) <= set(train)
    assert np.array_equal(k16, lexicon.k_shot(labels, train, 16))
    assert not np.array_equal(k16, lexicon.k_shot(labels, train, 16, seed=1))
    with pytest.raises(UnigradError, match="more than the 1948 training examples of class positive"):
        lexicon.k_shot(labels, train, 2000)


def test_afinn_and_the_transfer_set():
    entries = lexicon.afinn()
    assert len(entries) == 3382
    known = {t.lower() for t in lexicon.vader()}
    assert sum(w not in known for w in entries) == 732
    words, labels = lexicon.transfer_words()
    assert len(words) == 684 and lexicon.balance(labels) == {"negative": 493, "positive": 191}
    assert not set(words) & known
    assert all(lexicon.is_word(w) and (entries[w] > 0) == bool(y) for w, y in zip(words, labels))


def test_prompt():
    assert lexicon.sentences(["great"]) == ["It was great."]
    assert lexicon.LABEL_WORDS == ("terrible", "great") and lexicon.LABELS == ("negative", "positive")


def test_missing_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)
    with pytest.raises(UnigradError) as info:
        lexicon._package_text("vaderSentiment", "vader_lexicon.txt")
    message = str(info.value)
    assert "\n" not in message and "pip install 'unigrad[finetune]'" in message and "vaderSentiment" in message
