"""What every command of :mod:`unigrad.cli` shares: the parser class, whose errors are one line (:class:`UsageError`),
the option types, ``--threads``, the command line as recorded in ``results.json`` and one-line warnings."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from unigrad.core.errors import UnigradError
from unigrad.core.options import one_line


class UsageError(Exception):
    """A command line :class:`Parser` cannot read; :func:`unigrad.cli.main` prints it as one ``error:`` line."""


class Parser(argparse.ArgumentParser):
    """Errors as one line; every option spelled out in full (no prefix matching, which would read
    ``--seed 5`` as ``--seeds 5``). Sub-command parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` that reads an integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def positive_float(text: str) -> float:
    """An argparse ``type`` that reads a finite number ``> 0``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


THREADS_PER_CPU = 4
"""``--threads`` is refused above this many threads per logical CPU (see ``apply_threads``)."""
THREADS_LIMIT = f"at most {THREADS_PER_CPU} per logical CPU, a warning above the CPUs this process may use"


def cpus() -> tuple[int, int]:
    """The machine's logical CPUs and those this process may run on (its affinity mask, where the OS has one)."""
    total = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = total
    return total, max(1, min(usable, total))


def apply_threads(n: int) -> None:
    """Set torch's intra-op threads to ``n`` (``--threads``).

    More threads than CPUs never run at once: they only take turns on the cores, which slows the many small
    operations of these models down, and far too many cannot even be created (the BLAS or OpenMP runtime
    crashes). So ``n`` above :data:`THREADS_PER_CPU` per logical CPU is refused, and ``n`` above the CPUs
    this process may use gets a one-line warning on stderr.
    """
    import torch

    total, usable = cpus()
    cap = THREADS_PER_CPU * total
    if n > cap:
        raise UnigradError(
            f"--threads {n} is more threads than this machine can use: at most {cap} ({THREADS_PER_CPU} per logical "
            f"CPU, it has {total}); extra threads only take turns on the cores, so give at most {usable}"
        )
    if n > usable:
        print(
            f"warning: --threads {n} is more than the {usable} CPU{'s' * (usable != 1)} this process can use; "
            "the extra threads take turns on the cores and usually slow training down",
            file=sys.stderr,
        )
    torch.set_num_threads(n)


def command_line(argv: Sequence[str]) -> str:
    """The command as typed (``unigrad train ...``), for ``results.json`` and ``report.md``."""
    return "unigrad " + shlex.join(argv)


def show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Warnings as one line ``warning: ...`` on stderr (not Python's two lines with a file and a source line)."""
    print(f"warning: {one_line(str(message))}", file=sys.stderr)


__all__ = [
    "THREADS_LIMIT",
    "THREADS_PER_CPU",
    "Parser",
    "UsageError",
    "apply_threads",
    "command_line",
    "cpus",
    "int_at_least",
    "nonneg_int",
    "positive_float",
    "positive_int",
    "show_warning",
]
