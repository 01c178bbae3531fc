"""User-facing errors.

Every error a user can cause by bad input is a :class:`UnigradError` (a ``ValueError``) with a
one-line, actionable message. The CLI prints ``error: <message>`` and exits with status 2 for these,
never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class UnigradError(ValueError):
    """Bad input from the user: unknown names, impossible options, missing data."""


class NonFiniteLossError(UnigradError, FloatingPointError):
    """A loss became NaN or infinite; training stopped and the last good state was kept."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UnigradError:
    """Error for an unknown ``kind`` called ``name``, listing the valid names."""
    return UnigradError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")


_MOVED = ("check_choice", "check_finite_options", "check_positive")


def __getattr__(name: str) -> object:
    """The option checkers, which live in :mod:`unigrad.core.options`, still importable from here."""
    if name in _MOVED:
        from unigrad.core import options

        return getattr(options, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
