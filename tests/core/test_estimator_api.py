"""The Python API refuses bad input with one-line ``UnigradError``s, as the command line does: wrong option
types, bad states, swapped or non-callable arguments to ``estimate``."""

from __future__ import annotations

import inspect
import typing

import pytest
import torch
import torch.nn.functional as F

import unigrad
from tests.core.test_objective import tiny
from unigrad import UnigradError, make_estimator
from unigrad.registry import _SIMPLE, ESTIMATORS, estimator_class
from unigrad.second.newton import Newton
from unigrad.zeroth.es import ES
from unigrad.zeroth.spsa import SPSA

# -- option types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("spsa", {"sigma": "abc"}, "option sigma of spsa must be a number, got 'abc' (str)"),
        ("spsa", {"probes": "8"}, "option probes of spsa must be an integer, got '8' (str)"),
        ("spsa", {"probes": 2.5}, "option probes of spsa must be an integer, got 2.5 (float)"),
        ("es", {"sigma": [0.1]}, "option sigma of es must be a number, got [0.1] (list)"),
        ("es", {"sigma": True}, "option sigma of es must be a number, got True (bool)"),
        ("rge", {"scheme": 3}, "option scheme of rge must be a string, got 3 (int)"),
        ("rge", {"probe_batch": "4"}, "option probe_batch of rge must be an integer or none, got '4' (str)"),
        ("newton", {"trust_region": "yes"}, "option trust_region of newton must be true or false, got 'yes' (str)"),
        ("newton", {"radius": None}, "option radius of newton must be a number, got None (NoneType)"),
        ("lbfgs", {"reuse": 2}, "option reuse of lbfgs must be true or false, got 2 (int)"),
        ("diag-hessian", {"eps": True}, "option eps of diag-hessian must be a number or none, got True (bool)"),
    ],
)
def test_make_estimator_names_the_option_its_type_and_the_value(name: str, options: dict, message: str) -> None:
    with pytest.raises(UnigradError) as e:
        make_estimator(name, **options)
    assert str(e.value) == message


def _wrong_values(hint: object) -> list[object]:
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, type(int | None)) else (hint,)
    members = tuple(m for m in members if m is not type(None))
    if not members or not all(m in _SIMPLE for m in members):
        return []
    candidates = ["abc", 2.5, [1], {"a": 1}, b"x", 7]
    return [v for v in candidates if not any(_SIMPLE[m][1](v) for m in members)]


def _simple_options() -> list[tuple[str, str, object]]:
    cases = []
    for name in ESTIMATORS:
        try:
            cls = estimator_class(name)
        except ImportError:  # a peer whose optional package is not installed
            continue
        hints = typing.get_type_hints(cls.__init__)
        for option in inspect.signature(cls.__init__).parameters:
            cases += [(name, option, value) for value in _wrong_values(hints.get(option))]
    return cases


def test_every_simple_option_of_every_estimator_refuses_a_wrong_type_in_one_line() -> None:
    cases = _simple_options()
    assert len(cases) > 400  # every registered estimator's int, float, bool and str options
    for name, option, value in cases:
        with pytest.raises(UnigradError, match=f"^option {option} of {name} must be .*, got ") as e:
            make_estimator(name, **{option: value})
        assert "\n" not in str(e.value)


def test_valid_option_types_are_still_accepted() -> None:
    assert make_estimator("spsa", sigma=1, probes=2).sigma == 1  # an int where a number is needed
    assert make_estimator("lbfgs", reuse=1).reuse  # 1 and 0 for true and false, as typed on the command line
    assert make_estimator("rge", probe_batch=None).probe_batch is None
    assert make_estimator("diag-hessian", eps=None).eps == 1e-12  # none: the rule's default


@pytest.mark.parametrize("value", ["abc", [1e-3], None, True])
def test_constructors_called_directly_refuse_a_non_number(value: object) -> None:
    for cls, option in ((SPSA, "sigma"), (ES, "sigma"), (Newton, "radius")):
        with pytest.raises(
            UnigradError, match=f"^option {option} must be a finite number > 0, got {value!r}$".replace("[", r"\[")
        ):
            cls(**{option: value})


# -- load_state_dict ------------------------------------------------------------------------------------


def _constructible() -> list[str]:
    names = []
    for name in ESTIMATORS:
        try:
            estimator_class(name)
        except ImportError:  # a peer whose optional package is not installed
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("name", _constructible())
def test_every_estimator_refuses_an_empty_state_and_round_trips_its_own(name: str) -> None:
    est = make_estimator(name, seed=3)
    state = est.state_dict()
    assert state["name"] == name
    with pytest.raises(UnigradError, match=f"^{name} state: missing keys? .*'seed'.*; {name}'s state_dict"):
        est.load_state_dict({})
    fresh = make_estimator(name)
    fresh.load_state_dict(state)
    assert fresh.seed == 3
    older = {k: v for k, v in state.items() if k != "name"}  # states saved before they carried the name
    make_estimator(name).load_state_dict(older)


def test_load_state_dict_names_missing_and_unexpected_keys_and_changes_nothing() -> None:
    est = make_estimator("lbfgs", seed=5)
    state = est.state_dict()
    del state["theta_prev"], state["y"]
    state["momentum"] = 1.0
    with pytest.raises(UnigradError) as e:
        est.load_state_dict({**state, "seed": 9})
    assert str(e.value) == (
        "lbfgs state: missing keys 'theta_prev', 'y'; unexpected key 'momentum'; "
        "lbfgs's state_dict() has the keys g_prev, s, seed, step, theta_prev, y"
    )
    assert est.seed == 5  # refused before anything was loaded


def test_a_state_of_another_estimator_is_refused() -> None:
    with pytest.raises(UnigradError, match=r"^this state belongs to the estimator spsa; it cannot be loaded into es$"):
        make_estimator("es").load_state_dict(make_estimator("spsa").state_dict())
    with pytest.raises(
        UnigradError, match=r"^this state belongs to the estimator lbfgs; it cannot be loaded into kfac$"
    ):
        make_estimator("kfac").load_state_dict(make_estimator("lbfgs").state_dict())


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ([("seed", 0)], "spsa: load_state_dict needs a dict from state_dict(), got list"),
        (None, "spsa: load_state_dict needs a dict from state_dict(), got NoneType"),
        ({"seed": "x", "step": 0}, "spsa state: seed and step must be integers, got 'x' and 0"),
    ],
)
def test_load_state_dict_refuses_garbage(state: object, message: str) -> None:
    with pytest.raises(UnigradError) as e:
        make_estimator("spsa").load_state_dict(state)  # type: ignore[arg-type]
    assert str(e.value) == message


# -- estimate(model, objective) arguments ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["spsa", "backprop", "lbfgs"])
def test_estimate_with_swapped_arguments_says_the_order(method: str) -> None:
    model, x, y = tiny()
    objective = unigrad.supervised(F.cross_entropy, x, y)
    for swapped in (objective, lambda m: F.cross_entropy(m(x), y, reduction="none")):
        with pytest.raises(UnigradError) as e:
            make_estimator(method).estimate(swapped, model)  # type: ignore[arg-type]
        assert str(e.value) == (
            "estimate got the objective first and the model second; the order is estimate(model, objective)"
        )


@pytest.mark.parametrize("objective", [3, "loss", None, torch.tensor([1.0])])
def test_estimate_refuses_an_objective_that_cannot_be_called(objective: object) -> None:
    model, _, _ = tiny()
    with pytest.raises(UnigradError, match=r"^estimate\(model, objective\) needs a callable objective\(model\)"):
        make_estimator("spsa").estimate(model, objective)  # type: ignore[arg-type]


def test_estimate_refuses_a_model_that_is_not_a_module() -> None:
    _, x, y = tiny()
    objective = unigrad.supervised(F.cross_entropy, x, y)
    with pytest.raises(UnigradError, match=r"^estimate\(model, objective\) needs an nn.Module as model, got list$"):
        make_estimator("spsa").estimate([torch.zeros(3)], objective)  # type: ignore[arg-type]


# -- .grad after a failed estimate -------------------------------------------------------------------------

NAN_OPTIONS = {"kfac": {"fisher": "empirical"}}


@pytest.mark.parametrize(
    "method", ["spsa", "mezo", "es", "np", "backprop", "forward-gradient", "lbfgs", "kfac", "newton"]
)
def test_grad_is_left_as_it_was_when_estimate_raises(method: str) -> None:
    model, x, _ = tiny()
    before = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, g in zip(model.parameters(), before):
        p.grad = g
    nan = lambda m: m(x).sum(dim=1) * float("nan")  # noqa: E731
    with pytest.raises(unigrad.NonFiniteLossError):
        make_estimator(method, **NAN_OPTIONS.get(method, {})).estimate(model, nan)
    for p, g in zip(model.parameters(), before):
        assert p.grad is g and bool((g == 7.0).all())  # the caller's tensors, unchanged
    model.zero_grad(set_to_none=True)
    with pytest.raises(UnigradError):  # any error: here a bad objective after the NaN one
        make_estimator(method, **NAN_OPTIONS.get(method, {})).estimate(model, lambda m: m(x).sum().item())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["spsa", "mezo", "backprop", "kfac"])
def test_a_successful_estimate_writes_the_same_grad_whether_or_not_grad_was_set(method: str) -> None:
    model, x, y = tiny()
    objective = unigrad.supervised(F.cross_entropy, x, y)
    make_estimator(method, seed=1).estimate(model, objective)
    fresh = [p.grad.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad.fill_(3.0)
    make_estimator(method, seed=1).estimate(model, objective)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), fresh))


def test_mezo_without_grad_leaves_the_callers_grad_alone() -> None:
    model, x, y = tiny()
    before = [torch.full_like(p, 5.0) for p in model.parameters()]
    for p, g in zip(model.parameters(), before):
        p.grad = g
    make_estimator("mezo", write_grad=False).estimate(model, unigrad.supervised(F.cross_entropy, x, y))
    assert all(p.grad is g and bool((g == 5.0).all()) for p, g in zip(model.parameters(), before))
