"""User-facing errors.

Every error a user can cause by bad input is a :class:`UnigradError` (a ``ValueError``) with a
one-line, actionable message. The CLI prints ``error: <message>`` and exits with status 2 for these,
never a traceback.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping


class UnigradError(ValueError):
    """Bad input from the user: unknown names, impossible options, missing data."""


class NonFiniteLossError(UnigradError, FloatingPointError):
    """A loss became NaN or infinite; training stopped and the last good state was kept."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UnigradError:
    """Error for an unknown ``kind`` called ``name``, listing the valid names."""
    return UnigradError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")


def check_positive(option: str, value: float, *, integer: bool = False) -> None:
    """Raise if ``value`` is not > 0 and finite (and an integer, when asked; a real number, not a bool, otherwise)."""
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise UnigradError(f"option {option} must be an integer >= 1, got {value!r}")
    if not integer and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
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
