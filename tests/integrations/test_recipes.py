"""The integration examples run and learn: ``examples/hf_trainer.py`` and ``examples/lightning_recipe.py``
(loaded as ``tests/test_examples.py`` loads the others)."""

from __future__ import annotations

import pytest

from tests.test_examples import load

pytestmark = pytest.mark.usefixtures("one_thread")


def test_hf_trainer_example_lowers_the_loss_with_mezo(capsys):
    pytest.importorskip("transformers")
    before, after = load("hf_trainer").main(steps=60)
    # the example's tiny BERT starts at 0.695 (chance, ln 2 = 0.693); over the estimator's seeds 0–3 sixty MeZO
    # steps lower it by 0.031–0.101 (0.101 at seed 0, the example's): 0.01 is a third of the smallest fall
    assert before == pytest.approx(0.6953, abs=1e-3) and after < before - 0.01, (before, after)
    assert "forward-pass equivalents" in capsys.readouterr().out


def test_lightning_recipe_lowers_the_loss_with_mezo(capsys):
    pytest.importorskip("pytorch_lightning")
    before, after = load("lightning_recipe").main(epochs=10)
    # 80 MeZO steps: over the estimator's seeds 0–3 the loss goes from 1.148 to 0.29–0.34; half the start is far
    # above any of them and far below a run that does not learn
    assert after < before / 2, (before, after)
    out = capsys.readouterr().out
    assert "loss before" in out and "forward-pass equivalents" in out
