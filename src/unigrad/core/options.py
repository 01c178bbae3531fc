"""Option validation: small checkers that raise :class:`~unigrad.core.errors.UnigradError` with one-line messages.

Each checker names the option and the allowed range, and quotes the refused value with ``repr``::

    option sigma must be a finite number > 0, got nan

The rules every checker shares:

- a ``bool`` is never a number (``True`` is not ``1`` here);
- NaN is refused wherever a bound is given (it compares false with every bound);
- ``finite=True`` refuses ±inf; a positive number with no upper bound still refuses ``+inf``;
- :func:`check_int` and :func:`check_number` take Python ``int`` (and ``float``, a NumPy ``float64`` among
  them) only, not NumPy integers; :func:`check_positive` takes any real number (``numbers.Real``).

``what`` overrides the description of the allowed values and ``subject`` the words before ``must be``
(``option <option>`` by default), so a message already known to users keeps its words.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from unigrad.core.errors import UnigradError

T = TypeVar("T")

_BREAKS = re.compile(r"[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with its line breaks escaped (``\\n``): a message that quotes user input stays one line."""
    return _BREAKS.sub(lambda m: repr(m.group())[1:-1], text)


def parse_value(text: str) -> Any:
    """An option's value as written in a method spec (``spsa:probes=16:sigma=1e-3``): ``true``/``false`` (any
    case) as a bool, ``none`` as ``None``, then an int, a float, or else the text itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def is_int(value: object) -> bool:
    """Whether ``value`` is a Python ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """Whether ``value`` is a Python ``int`` or ``float`` (NumPy ``float64`` included) and not a ``bool``."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _refuse(option: str, value: object, what: str, subject: str | None) -> UnigradError:
    return UnigradError(f"{subject if subject is not None else f'option {option}'} must be {what}, got {value!r}")


def _fmt(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def check_int(
    option: str,
    value: object,
    *,
    low: int = 0,
    high: int | None = None,
    what: str | None = None,
    subject: str | None = None,
) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) in ``low..high`` (both inclusive; no upper bound by default).

    The default message says ``an integer >= low`` or ``an integer in low..high``.
    """
    if not is_int(value) or value < low or (high is not None and value > high):
        if what is None:
            what = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
        raise _refuse(option, value, what, subject)
    return value  # type: ignore[return-value]


def check_seed(option: str, value: object, *, subject: str | None = None) -> int:
    """``value`` if it is a seed: an ``int`` (not a ``bool``) >= 0."""
    return check_int(option, value, low=0, subject=subject)


def _describe(low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool, finite: bool) -> str:
    if low is not None and high is not None:
        return f"a number in {'[' if low_inclusive else '('}{_fmt(low)}, {_fmt(high)}{']' if high_inclusive else ')'}"
    text = "a finite number" if finite else "a number"
    if low is not None:
        text += f" {'>=' if low_inclusive else '>'} {_fmt(low)}"
    if high is not None:
        text += f" {'<=' if high_inclusive else '<'} {_fmt(high)}"
    return text


def check_number(
    option: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    finite: bool = True,
    what: str | None = None,
    subject: str | None = None,
) -> float:
    """``float(value)`` if ``value`` is an ``int`` or ``float`` (not a ``bool``) within the bounds.

    ``low``/``high`` are optional bounds, each inclusive or not; ``finite`` refuses NaN and ±inf. With
    ``finite=False`` and no bounds, any ``int`` or ``float`` passes (NaN and infinities included). The default
    message says e.g. ``a finite number > 0`` or ``a number in [0, 1)``.
    """
    ok = is_number(value)
    if ok and finite:
        ok = math.isfinite(value)  # type: ignore[arg-type]
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low  # type: ignore[operator]
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high  # type: ignore[operator]
    if not ok:
        raise _refuse(option, value, what or _describe(low, high, low_inclusive, high_inclusive, finite), subject)
    return float(value)  # type: ignore[arg-type]


def check_fraction(
    option: str,
    value: object,
    *,
    low: float = 0.0,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
    what: str | None = None,
    subject: str | None = None,
) -> float:
    """``float(value)`` if it is a number between ``low`` and 1 (by default in ``[0, 1)``)."""
    return check_number(
        option,
        value,
        low=low,
        high=1.0,
        low_inclusive=low_inclusive,
        high_inclusive=high_inclusive,
        what=what,
        subject=subject,
    )


def check_optional(check: Callable[..., T], option: str, value: object, **bounds: Any) -> T | None:
    """``None`` if ``value`` is ``None``, else ``check(option, value, **bounds)``."""
    return None if value is None else check(option, value, **bounds)


def check_positive(option: str, value: float, *, integer: bool = False) -> None:
    """Raise if ``value`` is not > 0 and finite (and an integer, when asked; a real number, not a bool, otherwise)."""
    if integer and not is_int(value):
        raise UnigradError(f"option {option} must be an integer >= 1, got {value!r}")
    if not integer and not (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        raise UnigradError(f"option {option} must be a finite number > 0, got {value!r}")
    if not value > 0 or value == math.inf:  # the first also catches NaN
        allowed = "an integer >= 1" if integer else "a finite number > 0"
        raise UnigradError(f"option {option} must be {allowed}, got {value!r}")


def check_finite_options(owner: str, options: Mapping[str, object]) -> None:
    """Raise if a float among ``options`` is NaN or infinite (``owner`` names whose options they are).

    No option of an estimator means anything at infinity (an infinite σ, damping or tolerance), so
    the registry's ``make_estimator`` refuses them all here, whatever each constructor checks.
    """
    for key, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UnigradError(f"option {key} of {owner} must be a finite number, got {value!r}")


def check_choice(option: str, value: str, choices: Iterable[str]) -> None:
    """Raise if ``value`` is not one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise UnigradError(f"option {option} must be one of {', '.join(choices)}; got {value!r}")
