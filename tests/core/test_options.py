"""The option checkers: what each accepts, what it refuses, and the exact one-line messages."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from unigrad.core import errors, options
from unigrad.core.errors import UnigradError
from unigrad.core.options import (
    check_choice,
    check_finite_options,
    check_fraction,
    check_int,
    check_number,
    check_optional,
    check_positive,
    check_seed,
    one_line,
)


def _refused(message: str):
    return pytest.raises(UnigradError, match="^" + re.escape(message) + "$")


@pytest.mark.parametrize("value", [0, 1, 2**70])
def test_check_int_accepts_ints_from_low(value):
    assert check_int("n", value) == value


@pytest.mark.parametrize("value", [-1, True, False, 1.0, "1", None, math.nan, math.inf, np.int64(1)])
def test_check_int_refuses_non_ints_and_values_below_low(value):
    with _refused(f"option n must be an integer >= 0, got {value!r}"):
        check_int("n", value)


def test_check_int_bounds_and_words():
    assert check_int("bits", 32, low=2, high=32) == 32
    with _refused("option bits must be an integer in 2..32, got 33"):
        check_int("bits", 33, low=2, high=32)
    with _refused("option bits must be an integer in 2..32, got 1"):
        check_int("bits", 1, low=2, high=32)
    with _refused("option k must be an integer >= 0 (0: never), got -1"):
        check_int("k", -1, what="an integer >= 0 (0: never)")
    with _refused("trial must be an integer >= 0, got -1"):
        check_int("trial", -1, subject="trial")


def test_check_seed():
    assert check_seed("seed", 0) == 0
    for bad in (-1, True, 1.5, "0", None):
        with _refused(f"option seed must be an integer >= 0, got {bad!r}"):
            check_seed("seed", bad)


@pytest.mark.parametrize("value", [1, 0.5, 1e300, np.float64(2.0)])
def test_check_number_accepts_finite_numbers_in_range(value):
    result = check_number("sigma", value, low=0, low_inclusive=False)
    assert result == float(value) and type(result) is float


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, -math.inf, True, "1", None, [1.0], np.int64(1)])
def test_check_number_refuses_with_the_range_in_the_message(value):
    with _refused(f"option sigma must be a finite number > 0, got {value!r}"):
        check_number("sigma", value, low=0, low_inclusive=False)


def test_check_number_without_bounds():
    assert check_number("x", -3) == -3.0
    with _refused("option x must be a finite number, got nan"):
        check_number("x", math.nan)
    with _refused("option x must be a finite number, got inf"):
        check_number("x", math.inf)
    # finite=False and no bounds: any int or float passes, NaN and infinities too
    assert math.isnan(check_number("x", math.nan, finite=False))
    assert check_number("x", math.inf, finite=False) == math.inf
    with _refused("option x must be a number, got True"):
        check_number("x", True, finite=False)


def test_check_number_describes_each_bound():
    with _refused("option x must be a finite number >= 0, got -1"):
        check_number("x", -1, low=0)
    with _refused("option x must be a finite number < 0.25, got 0.25"):
        check_number("x", 0.25, high=0.25, high_inclusive=False)
    with _refused("option x must be a number in (0, 1], got 0"):
        check_number("x", 0, low=0, high=1, low_inclusive=False)
    with _refused("option x must be a number in [0, 1], got nan"):
        check_number("x", math.nan, low=0, high=1)
    with _refused("option x must be a number >= 1, got -inf"):
        check_number("x", -math.inf, low=1, finite=False)
    assert check_number("x", math.inf, low=1, finite=False) == math.inf


def test_check_fraction():
    assert check_fraction("beta", 0) == 0.0
    assert check_fraction("beta", 0.999) == 0.999
    for bad in (1, 1.0, -0.1, math.nan, math.inf, True, "0.5", None):
        with _refused(f"option beta must be a number in [0, 1), got {bad!r}"):
            check_fraction("beta", bad)
    assert check_fraction("r", 1, low_inclusive=False, high_inclusive=True) == 1.0
    with _refused("option r must be a number in (0, 1], got 0"):
        check_fraction("r", 0, low_inclusive=False, high_inclusive=True)
    with _refused("option eta2 must be in [0.1, 1), got 0.05"):
        check_fraction("eta2", 0.05, low=0.1, what="in [0.1, 1)")


def test_check_optional():
    assert check_optional(check_number, "budget", None, low=0) is None
    assert check_optional(check_number, "budget", 2, low=0) == 2.0
    with _refused("option budget must be a finite number >= 0, got -2"):
        check_optional(check_number, "budget", -2, low=0)


@pytest.mark.parametrize("value", [1, 0.5, np.float32(0.5), np.int64(3)])
def test_check_positive_accepts_real_numbers(value):
    check_positive("lr", value)


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, True, "1", None])
def test_check_positive_refuses(value):
    with _refused(f"option lr must be a finite number > 0, got {value!r}"):
        check_positive("lr", value)


@pytest.mark.parametrize("value", [0, -1, 1.0, True, np.int64(2), "3"])
def test_check_positive_integer_refuses(value):
    with _refused(f"option probes must be an integer >= 1, got {value!r}"):
        check_positive("probes", value, integer=True)


def test_check_choice_and_finite_options():
    check_choice("fisher", "true", ("true", "empirical"))
    with _refused("option fisher must be one of true, empirical; got 'x'"):
        check_choice("fisher", "x", ("true", "empirical"))
    check_finite_options("spsa", {"sigma": 1.0, "probes": 2, "name": "x"})
    with _refused("option sigma of spsa must be a finite number, got nan"):
        check_finite_options("spsa", {"sigma": math.nan})


def test_one_line_escapes_line_breaks():
    assert one_line("a\nb\r\nc\u2028d") == "a\\nb\\r\\nc\\u2028d"
    assert one_line("plain text") == "plain text"


def test_the_checkers_are_still_importable_from_errors():
    assert errors.check_positive is options.check_positive
    assert errors.check_choice is options.check_choice
    assert errors.check_finite_options is options.check_finite_options
    with pytest.raises(AttributeError):
        errors.no_such_checker  # noqa: B018
