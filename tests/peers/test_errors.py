"""Bad input and misuse of the peer adapters fail with one-line, actionable errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unigrad
from unigrad.peers._adapter import needs

LIBRARY = {"cma": "cma", "sep-cma": "cma", "nevergrad": "nevergrad", "pgpe": "evotorch", "snes": "evotorch"}
LIBRARY |= {"cem": "evotorch", "xnes": "evotorch"}


def make(name, **options):
    pytest.importorskip(LIBRARY[name])
    return unigrad.make_estimator(name, **options)


def problem(d_in=8, d_out=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, d_in, generator=g)
    y = torch.randn(16, d_out, generator=g)
    return nn.Linear(d_in, d_out), unigrad.supervised(F.mse_loss, x, y)


@pytest.mark.parametrize(("name", "limit"), [("cma", 2000), ("xnes", 1000), ("sep-cma", None), ("snes", None)])
def test_max_dim_defaults(name, limit):
    assert make(name).max_dim == limit


@pytest.mark.parametrize("name", ["cma", "xnes", "sep-cma", "nevergrad", "pgpe"])
def test_max_dim_exceeded_names_the_dimension_and_the_limit(name):
    model, objective = problem()  # 27 parameters
    est = make(name, max_dim=20)
    with pytest.raises(unigrad.UnigradError, match=r"27 parameters exceed max_dim=20.*sep-cma, snes or pgpe"):
        est.estimate(model, objective)
    assert all(p.grad is None for p in model.parameters())


def test_full_cma_refuses_a_large_network_by_default():
    model, objective = problem(64, 40)  # 2,600 parameters
    with pytest.raises(unigrad.UnigradError, match="2600 parameters exceed max_dim=2000"):
        make("cma").estimate(model, objective)


@pytest.mark.parametrize("name", ["cma", "nevergrad", "snes", "pgpe"])
@pytest.mark.parametrize(("optimizer", "lr"), [("adam", 1e-3), ("sgd", 0.5)])
def test_parameters_moved_by_another_optimizer_are_refused(name, optimizer, lr):
    model, objective = problem()
    est = make(name)
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(model.parameters(), lr=lr)
    opt.zero_grad()
    est.estimate(model, objective)
    opt.step()
    opt.zero_grad()
    with pytest.raises(unigrad.UnigradError, match=rf"peer {name}: .*moved away.*--optimizer sgd --lr 1"):
        est.estimate(model, objective)


def test_a_different_model_is_refused():
    model, objective = problem()
    est = make("sep-cma")
    est.estimate(model, objective)
    other, other_objective = problem(8, 2)
    with pytest.raises(unigrad.UnigradError, match="moved away"):
        est.estimate(other, other_objective)


def test_unknown_nevergrad_algorithm_lists_valid_ones():
    with pytest.raises(unigrad.UnigradError, match=r"unknown nevergrad algorithm 'NoSuchOpt'.*NGOpt, CMA.*\d+ in"):
        make("nevergrad", algorithm="NoSuchOpt")


def test_a_nevergrad_failure_names_the_algorithm_and_suggests_another():
    model, objective = problem()
    est = make("nevergrad", algorithm="TwoPointsDE", popsize=4)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    est.estimate(model, objective)
    opt.step()

    def broken():
        raise TypeError("unsupported operand")

    est._peer.ask = broken
    before = [p.detach().clone() for p in model.parameters()]
    match = r"nevergrad algorithm TwoPointsDE failed \(TypeError: unsupported operand\).*algorithm=CMA, OnePlusOne"
    with pytest.raises(unigrad.UnigradError, match=match):
        est.estimate(model, objective)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("cma", {"sigma0": 0.0}, "sigma0"),
        ("cma", {"sigma0": float("nan")}, "sigma0"),
        ("sep-cma", {"popsize": 1}, "popsize"),
        ("cma", {"max_dim": 0}, "max_dim"),
        ("nevergrad", {"budget": 0}, "budget"),
        ("nevergrad", {"popsize": 2.5}, "popsize"),
        ("pgpe", {"popsize": 15}, "even"),
        ("pgpe", {"optimizer": "lbfgs"}, "optimizer"),
        ("pgpe", {"center_lr": -1.0}, "center_lr"),
        ("snes", {"stdev_lr": float("inf")}, "stdev_lr"),
        ("cem", {"elite_ratio": 0.0}, "elite_ratio"),
        ("cem", {"popsize": 4, "elite_ratio": 0.25}, "elite"),
        ("xnes", {"seed": -1}, "seed"),
    ],
)
def test_bad_options_are_refused_at_construction(name, options, message):
    with pytest.raises(unigrad.UnigradError, match=message):
        make(name, **options)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(unigrad.UnigradError, match=r"valid options: sigma0, popsize, max_dim, seed"):
        make("cma", sigma=0.1)


def test_missing_library_says_how_to_install():
    with pytest.raises(unigrad.UnigradError, match=r"peer cma needs pycma: pip install -e \.\[peers\]"):
        needs("cma", "unigrad_no_such_module", "pycma")
