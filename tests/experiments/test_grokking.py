"""Grokking: the modular-addition data, training with weight decay, equal-FE budgets, the experiment's files."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from unigrad import UnigradError
from unigrad.experiments.grokking import (
    BACKPROP_FE_PER_SAMPLE,
    METHODS,
    Method,
    build_model,
    eval_steps,
    modular_addition,
    run_experiment,
    train_one,
)


@pytest.mark.parametrize(("p", "fraction"), [(7, 0.3), (13, 0.5), (23, 0.4)])
def test_split_is_deterministic_disjoint_and_covers_every_pair(p: int, fraction: float) -> None:
    state = torch.random.get_rng_state()
    d = modular_addition(p, fraction, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not used
    again = modular_addition(p, fraction, seed=3)
    assert torch.equal(d.train, again.train) and torch.equal(d.test, again.test)
    train, test = set(d.train.tolist()), set(d.test.tolist())
    assert not train & test
    assert train | test == set(range(p * p))
    assert len(train) == round(fraction * p * p)
    # another seed draws another split of the same size
    other = modular_addition(p, fraction, seed=4)
    assert other.train.numel() == d.train.numel() and not torch.equal(other.train, d.train)
    # inputs are [onehot(a), onehot(b)] of pair a·p + b, labels (a + b) mod p
    assert d.inputs.shape == (p * p, 2 * p)
    assert torch.equal(d.inputs.sum(1), torch.full((p * p,), 2.0))
    a, b = d.inputs[:, :p].argmax(1), d.inputs[:, p:].argmax(1)
    assert torch.equal(a * p + b, torch.arange(p * p))
    assert torch.equal(d.targets, (a + b) % p)


def test_bad_data_options_raise() -> None:
    with pytest.raises(UnigradError, match="train_fraction"):
        modular_addition(7, 1.0)
    with pytest.raises(UnigradError, match="p must be"):
        modular_addition(1, 0.5)


def test_eval_steps_are_log_spaced_and_include_both_ends() -> None:
    s = eval_steps(3000, 60)
    assert s[0] == 0 and s[1] == 1 and s[-1] == 3000
    assert s == sorted(set(s))
    ratios = [b / a for a, b in itertools.pairwise(s[1:])]  # integer ratios, one correctly rounded division each
    assert max(ratios) <= 2.0 + 1e-12 and 40 <= len(s) <= 62


def test_backprop_with_weight_decay_fits_a_tiny_training_set_and_shrinks_the_weights() -> None:
    data = modular_addition(7, 0.5, seed=0)
    budget = 150 * BACKPROP_FE_PER_SAMPLE * data.train.numel()
    with_wd = train_one(Method("bp", "backprop", {}, 1e-2, 1.0), data, hidden=64, budget_fe=budget, seed=0, points=20)
    no_wd = train_one(Method("bp", "backprop", {}, 1e-2, 0.0), data, hidden=64, budget_fe=budget, seed=0, points=20)
    assert with_wd["steps"] == 150 and with_wd["fe_per_step_per_sample"] == BACKPROP_FE_PER_SAMPLE
    # measured over seeds 0–2: the training set is fitted by step 24–31 of 150, the loss falls to 0.017–0.019 of its
    # start with decay (0.001 without), and the final norms' ratio is 0.74–0.75 (seed-to-seed SD 0.005): every margin
    # is many times the spread, which rounding differences along the trajectory cannot bridge
    for r in (with_wd, no_wd):
        assert r["final_train_acc"] == 1.0 and r["step_fit"] is not None
        assert r["train_loss"][-1] < 0.1 * r["train_loss"][0]
    # same start, same gradients until the decay acts: weight decay ends with the smaller weights. The initial norms
    # are bitwise equal: the same seed builds the same weights and the same expression measures them
    assert with_wd["weight_norm"][0] == no_wd["weight_norm"][0]
    assert with_wd["weight_norm"][-1] < 0.9 * no_wd["weight_norm"][-1]


def test_every_method_gets_the_same_forward_pass_budget() -> None:
    methods = (METHODS[0], Method("anp", "anp", {"probes": 2}, 3e-3, 0.1, 0), Method("s", "spsa", {}, 1e-3, 0.1, 0))
    data = modular_addition(5, 0.4, seed=0)
    budget = 30 * BACKPROP_FE_PER_SAMPLE * data.train.numel()
    runs = {m.label: train_one(m, data, hidden=8, budget_fe=budget, seed=0, points=8) for m in methods}
    assert {k: r["steps"] for k, r in runs.items()} == {"backprop": 30, "anp": 30, "s": 45}  # anp q=2: 3 FE; spsa: 2
    for r in runs.values():  # FE are sums of whole numbers below 2⁵³: exact in float64
        assert r["fe"][-1] == pytest.approx(budget) and r["step"][-1] == r["steps"]
    # seed s of every method starts from the same weights: one value in the set (bitwise, as above), and `expected`
    # is train_one's own float32 expression on the same weights, so approx's default rel=1e-6 has nothing to absorb
    w0 = {r["weight_norm"][0] for r in runs.values()}
    expected = torch.sqrt(sum((p.detach() ** 2).sum() for p in build_model(5, 8, 0).parameters()))
    assert len(w0) == 1 and w0.pop() == pytest.approx(float(expected))


def test_quick_mode_writes_figure_results_and_report(tmp_path) -> None:
    out = tmp_path / "grok"
    text = run_experiment(out, quick=True)
    assert (out / "grokking.png").stat().st_size > 10_000
    assert text == (out / "report.md").read_text() and "| backprop |" in text
    results = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in results["methods"]] == [m.label for m in METHODS]
    for m in results["methods"]:
        r = m["runs"][0]
        assert len(r["step"]) == len(r["train_acc"]) == len(r["test_acc"]) and r["step"][0] == 0
        assert all(0.0 <= a <= 1.0 for a in r["train_acc"] + r["test_acc"])
    with pytest.raises(UnigradError, match="unknown grokking options"):
        run_experiment(out, quick=True, width=3)
