"""Decorrelated training: dbp/dnp variants, ``decorrelate=1`` specs, R in snapshots, the compare CLI."""

from __future__ import annotations

import json

import pytest
import torch

import unigrad
from unigrad import Decorrelated, UnigradError
from unigrad.cli import main
from unigrad.core.rng import generator
from unigrad.data import get_task
from unigrad.nn.decorrelation import Decorrelation, decorrelate, mean_offdiag
from unigrad.train import measure_peak_memory, train
from unigrad.train.methods import DECORRELATION_DEFAULTS, parse_method, parse_methods
from unigrad.train.trainer import _DATA_TAG, evaluate

TASK = "digits-mlp"


def _decors(model: torch.nn.Module) -> list[Decorrelation]:
    return [m for m in model.modules() if isinstance(m, Decorrelation)]


def _first_offdiag(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Mean |offdiag(C)| of the first layer's x̂ on ``x`` (a training-mode forward records it)."""
    model.train()
    with torch.no_grad():
        model(x)
    return mean_offdiag(_decors(model)[0].covariance())


def test_dbp_learns_and_decorrelates_digits():
    task = get_task(TASK)
    spec = parse_method("dbp")
    assert spec.name == "backprop" and spec.label == "dbp" and spec.order == 1
    assert spec.decorrelation == DECORRELATION_DEFAULTS
    r = train(task, spec.name, lr=spec.lr, budget="epochs=2", seed=0, decorrelation=spec.decorrelation)
    assert r.status == "ok" and r.to_dict()["decorrelation"] == spec.decorrelation
    h = r.history
    # measured over seeds 0–5: last/first train loss 0.16–0.21, accuracy 0.894–0.908 (chance 0.1), and the first
    # layer's mean |offdiag(C)| at 0.3006–0.3008 of its start (below): all ≥ 10 seed-to-seed SDs from the thresholds
    assert h[-1]["train_loss"] < 0.5 * h[1]["train_loss"]
    assert h[-1]["test_accuracy"] > 0.8
    decors = _decors(r.model)
    assert len(decors) == 2  # one per Linear of the 64-64-10 MLP
    for d in decors:
        assert d.step == r.steps  # one update per optimizer step
        assert not torch.allclose(d.R, torch.eye(d.features))
    # the R matrices are buffers, not parameters: the optimizer never sees them
    assert {id(p) for g in r.optimizer.param_groups for p in g["params"]} == {id(p) for p in r.model.parameters()}
    assert all(d.R is not p for d in decors for p in r.model.parameters())
    x = task.data().x_train[:512]
    start = decorrelate(task.build_model(0), seed=0, **spec.decorrelation)
    before, after = _first_offdiag(start, x), _first_offdiag(r.model, x)
    assert after < 0.5 * before


def test_spsa_decorrelate_spec_parses_and_runs():
    spec = parse_method("spsa:decorrelate=1:decor_lr=1e-4:probes=4")
    assert spec.name == "spsa" and spec.order == 0 and spec.options["probes"] == 4
    assert spec.decorrelation is not None and spec.decorrelation["lr"] == 1e-4
    assert spec.label != "spsa"
    r = train(
        TASK, spec.name, lr=spec.lr, estimator_options=spec.options, budget="steps=3", decorrelation=spec.decorrelation
    )
    assert r.status == "ok" and r.steps == 3
    assert all(d.step == 3 for d in _decors(r.model))
    # spsa's probes all run batched, so each step adds one plain forward of the batch for the statistics
    assert r.forward_equivalents == pytest.approx(3 * 64 * (2 * 4 + 1))  # sums of integers: exact
    assert all(not torch.equal(d.R, torch.eye(d.features)) for d in _decors(r.model))


def test_variant_labels_and_errors():
    assert [m.label for m in parse_methods("backprop,dbp")] == ["backprop", "dbp"]
    assert parse_method("backprop:decorrelate=1").label == "dbp"
    assert parse_method("dbp:decorrelate=0").decorrelation is None
    dnp = parse_method("dnp")
    assert dnp.name == "np" and dnp.order == 0 and dnp.decorrelation is not None
    with pytest.raises(UnigradError, match=r"unknown method 'dxp'; valid methods: .*dbp, .*dnp"):
        parse_method("dxp")
    with pytest.raises(UnigradError, match="needs decorrelate=1"):
        parse_method("spsa:decor_lr=1e-3")
    with pytest.raises(UnigradError, match="decorrelation rule"):
        parse_method("dbp:decor_rule=whiten")
    with pytest.raises(UnigradError, match="decorrelation option"):
        train(TASK, "backprop", budget="steps=1", decorrelation={"rate": 1e-3})


def test_divergence_restores_R_with_the_parameters():
    task = get_task(TASK)
    decor = {**DECORRELATION_DEFAULTS, "lr": 0.1}  # far too large a decorrelation rate: R blows up
    kw = {"lr": 3e-3, "eval_points": 20, "decorrelation": decor}
    r = train(task, "backprop", budget="epochs=2", **kw)
    assert r.status == "diverged" and "decorrelation lr" in r.message
    good = r.last_good_step
    assert 0 < good < r.steps
    decors = _decors(r.model)
    assert all(d.step == good and torch.isfinite(d.R).all() for d in decors)
    assert not torch.allclose(decors[0].R, torch.eye(decors[0].features))
    # the restored model is the one evaluated at the last good point (the same evaluation): R and W belong together
    data = task.data()
    assert evaluate(r.model, task, data.x_test, data.y_test)[0] == r.history[-1]["test_loss"]
    # and equals a run stopped at that step, bit for bit
    ref = train(task, "backprop", budget=f"steps={good}", **{**kw, "eval_points": None})  # no more points than steps
    assert ref.status == "ok"
    for (k, a), (_, b) in zip(r.model.state_dict().items(), ref.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_peak_memory_counts_the_decorrelation():
    plain = measure_peak_memory(TASK, "backprop")
    decor = measure_peak_memory(TASK, "backprop", decorrelation=DECORRELATION_DEFAULTS)
    # at least R (64² + 64² floats) more
    assert decor >= plain + 4 * (64 * 64 + 64 * 64)


def test_compare_cli_with_dbp(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["compare", "--task", TASK, "--methods", "backprop,dbp", "--budget", "steps=4", "--seeds", "1"]
    assert main([*argv, "--out", str(out), "--no-progress", "--eval-points", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["backprop", "dbp"]
    dbp = results["methods"]["dbp"]
    assert dbp["name"] == "backprop" and dbp["order"] == 1 and dbp["decorrelation"]["rule"] == "cov-identity"
    assert results["methods"]["backprop"]["decorrelation"] is None
    assert dbp["peak_memory_bytes"] > results["methods"]["backprop"]["peak_memory_bytes"]
    assert "| dbp | 1 |" in (out / "report.md").read_text()
    assert main(["compare", "--methods", "dxp", "--out", str(tmp_path / "bad")]) == 2
    assert "dbp" in capsys.readouterr().err


def test_every_method_name_the_cli_accepts_is_a_make_estimator_name():
    from unigrad.registry import ESTIMATORS
    from unigrad.train.methods import method_names

    assert set(method_names()) == set(ESTIMATORS) | {"dbp", "dnp", "dinp", "danp"}
    for name, base in {"dbp": "backprop", "dnp": "np", "dinp": "inp", "danp": "anp"}.items():
        spec = parse_method(name)
        est = unigrad.make_estimator(name, seed=3)
        assert isinstance(est, Decorrelated) and est.name == name and est.base.name == base == spec.name
        assert est.decorrelation == spec.decorrelation == DECORRELATION_DEFAULTS  # the command line's defaults
        assert est.order == est.base.order and est.seed == 3
    est = unigrad.make_estimator("danp", probes=2, decor_lr=1e-4, decor_conv=0)
    assert est.base.probes == 2 and est.decorrelation["lr"] == 1e-4 and est.decorrelation["conv"] is False
    assert est.decorrelation == parse_method("danp:probes=2:decor_lr=1e-4:decor_conv=0").decorrelation


def test_make_estimator_variant_errors_are_one_line():
    with pytest.raises(UnigradError, match=r"danp is anp on a decorrelated model: .*probez.*decor_lr"):
        unigrad.make_estimator("danp", probez=2)
    with pytest.raises(UnigradError, match="decorrelation lr must be a finite number > 0"):
        unigrad.make_estimator("danp", decor_lr=-1.0)
    with pytest.raises(UnigradError, match="rule"):
        unigrad.make_estimator("dbp", decor_rule="whiten")
    with pytest.raises(UnigradError, match=r"valid.*danp"):
        unigrad.make_estimator("danpp")
    est = unigrad.make_estimator("danp")
    task = get_task(TASK)
    x, y = task.data().x_train[:8], task.data().y_train[:8]
    with pytest.raises(UnigradError, match=r"prepare\(model\)"):  # nothing silently trains an undecorrelated model
        est.estimate(task.build_model(0), unigrad.supervised(task.loss_fn, x, y))
    with pytest.raises(UnigradError, match="brings its own decorrelation"):
        train(task, "danp", budget="steps=1", decorrelation=DECORRELATION_DEFAULTS)
    lean = Decorrelated(unigrad.make_estimator("mezo", write_grad=False))  # the wrapped estimator's options count
    assert lean.name == "mezo+decorrelation" and lean.write_grad is False and lean.probes == lean.base.probes
    with pytest.raises(UnigradError, match="write_grad=false"):
        train(task, lean, budget="steps=1")


@pytest.mark.parametrize("name", ["danp", "dbp", "spsa:decorrelate=1:probes=2"])
def test_make_estimator_variant_in_a_python_loop_equals_train_bitwise(name):
    """The loop of Decorrelated's docstring ends where train(task, name) and the command line's run end. spsa's
    batched probes record no statistics: Decorrelated's estimate runs the extra forward the trainer runs."""
    task, seed, steps, batch = get_task(TASK), 0, 7, 64
    spec = parse_method(name)

    def make() -> Decorrelated:  # with the command line's estimator options (compare.DEFAULTS), as parse_method
        if ":" not in name:
            return unigrad.make_estimator(name, seed=seed, **spec.options)
        return Decorrelated(unigrad.make_estimator(spec.name, seed=seed, **spec.options), **spec.decorrelation)

    if ":" not in name:
        by_name = train(task, name, lr=spec.lr, estimator_options=spec.options, budget=f"steps={steps}", seed=seed)
    else:
        by_name = train(task, make(), lr=spec.lr, budget=f"steps={steps}", seed=seed)
    as_cli = train(
        task,
        spec.name,
        lr=spec.lr,
        estimator_options=spec.options,
        budget=f"steps={steps}",
        seed=seed,
        decorrelation=spec.decorrelation,
    )
    est = make()
    model = est.prepare(task.build_model(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    model.train()
    data = task.data()
    perm = torch.randperm(data.x_train.shape[0], generator=generator(seed, 0, _DATA_TAG))
    fe = 0.0
    for step in range(steps):
        rows = perm[step * batch : (step + 1) * batch]
        optimizer.zero_grad(set_to_none=True)
        e = est.estimate(model, unigrad.supervised(task.loss_fn, data.x_train[rows], data.y_train[rows]))
        optimizer.step()
        est.update(model)
        fe += e.cost.forward_equivalents
    assert by_name.forward_equivalents == as_cli.forward_equivalents == fe
    assert [h["test_loss"] for h in by_name.history] == [h["test_loss"] for h in as_cli.history]
    for ref in (by_name.model, as_cli.model):
        mine, theirs = model.state_dict(), ref.state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert est.state_dict() == by_name.estimator.state_dict()


@pytest.mark.parametrize("text", ["spsa", "danp", "spsa:decorrelate=1:probes=2"])
def test_method_spec_builds_the_command_lines_method_in_python(text):
    """``unigrad.method_spec`` gives the command line's method (its per-method defaults included) to Python."""
    spec = unigrad.method_spec(text)
    assert spec == parse_method(text)
    est = spec.build_estimator(seed=3)
    assert est.options()["seed"] == 3 and {k: est.options()[k] for k in spec.options} == spec.options
    assert isinstance(est, Decorrelated) == (spec.decorrelation is not None)
    kw = {"budget": "steps=4", "seed": 3, "optimizer": spec.optimizer, "lr": spec.lr}
    ours = train(TASK, est, **kw)
    cli = train(TASK, spec.name, estimator_options=spec.options, decorrelation=spec.decorrelation, **kw)
    assert all(torch.equal(a, b) for a, b in zip(ours.model.state_dict().values(), cli.model.state_dict().values()))
    opt = spec.build_optimizer(torch.nn.Linear(2, 2).parameters())
    assert type(opt).__name__.lower() == spec.optimizer and opt.param_groups[0]["lr"] == spec.lr
