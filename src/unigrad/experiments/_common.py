"""The pieces every experiment shares: writing ``results.json`` and ``report.md``, and the figure backend.

``results.json`` is ``json.dumps(results, indent=1)`` plus a final newline (non-finite floats stay ``NaN`` and
``Infinity``, as the experiments have always written them); both files are written atomically with
:func:`unigrad.core.io.atomic_write`, so a run stopped while writing leaves the previous file whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unigrad.core.io import atomic_write


def write_results(out: Path, results: Any) -> None:
    """Write ``results`` to ``out/results.json`` (one-space indent, final newline)."""
    atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n")


def write_report(out: Path, text: str) -> str:
    """Write ``text`` to ``out/report.md`` and return it."""
    atomic_write(out / "report.md", text)
    return text


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (figures are only saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
