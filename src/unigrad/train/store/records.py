"""The records of the experiment store: run keys, the rows of ``runs`` and ``groups``, evaluation points.

Pure data and checks, no database: :func:`run_key` hashes a run's configuration (:func:`canonical_json`),
:class:`RunRecord` and :class:`GroupRecord` are decoded rows, and the point helpers turn a trainer's
``history`` entry into a row of ``points`` (refusing a malformed one) and back. The figures of a task's extra
evaluation sets (``<name>_loss``, ``<name>_accuracy``, e.g. the text tasks' ``transfer_accuracy``) are checked
but have no column in ``points``: only the run's stored result keeps them, in its ``final`` point.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from unigrad.core.errors import UnigradError
from unigrad.core.io import jsonable

STATUSES = ("running", "ok", "diverged", "failed")
FINISHED = ("ok", "diverged", "failed")

# the columns of ``points`` after run_id and step, in the order of the trainer's history
POINT_COLUMNS = ("epoch", "forward_equivalents", "seconds", "train_loss", "test_loss", "test_accuracy")
_REQUIRED = ("epoch", "forward_equivalents", "seconds")
EXTRA_SUFFIXES = ("_loss", "_accuracy")
"""How the point fields of a task's extra evaluation sets end (checked, not stored in ``points``)."""
CSV_COLUMNS = ("run_id", "key", "task", "method", "seed", "status", "step", *POINT_COLUMNS)


# ------------------------------------------------------------------------------------------------ JSON and keys


def _canonical(obj: Any) -> Any:
    """The form hashed by :func:`run_key`: integral floats as ints, mappings with string keys."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return int(obj) if obj.is_integer() else obj
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    return _canonical(jsonable(obj))


def canonical_json(config: Mapping[str, Any]) -> str:
    """The canonical JSON of ``config`` that :func:`run_key` hashes (sorted keys, no whitespace)."""
    if not isinstance(config, Mapping):
        raise UnigradError(f"a run configuration must be a mapping, got {type(config).__name__}")
    return json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"), allow_nan=False)


def run_key(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of :func:`canonical_json` of ``config``: the same configuration gives the same key."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def run_config(
    *,
    task: str,
    method: Mapping[str, Any],
    budget: str,
    batch_size: int,
    seed: int,
    device: str,
    dtype: str,
    eval_points: int,
) -> dict[str, Any]:
    """The configuration that defines one training run, flat, as :meth:`Store.start_run` expects it.

    ``method`` is :meth:`unigrad.train.methods.MethodSpec.to_dict` (label, name, order, optimizer,
    lr, options, decorrelation); its label becomes ``method`` and its estimator name ``name``.
    ``budget``, ``device`` and ``dtype`` are the strings the comparison writes (``"epochs=12"``,
    ``"cpu"``, ``"float32"``).
    """
    return {
        "task": str(task),
        "method": str(method.get("label") or method["name"]),
        "name": str(method["name"]),
        "order": method.get("order"),
        "optimizer": method["optimizer"],
        "lr": method["lr"],
        "options": dict(method.get("options") or {}),
        "decorrelation": method.get("decorrelation"),
        "budget": str(budget),
        "batch_size": batch_size,
        "seed": seed,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "eval_points": eval_points,
    }


# ------------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs``, JSON columns decoded; ``result`` is ``None`` while the run is running."""

    id: int
    key: str
    kind: str
    task: str | None
    method: str | None
    seed: int | None
    status: str
    config: dict[str, Any]
    environment: dict[str, Any]
    result: dict[str, Any] | None
    created: float
    updated: float

    @property
    def finished(self) -> bool:
        """Whether the run has ended (``ok``, ``diverged`` or ``failed``)."""
        return self.status in FINISHED

    @property
    def message(self) -> str:
        """The result's message (why a run diverged or failed); empty while running."""
        return str((self.result or {}).get("message") or "")

    def to_dict(self) -> dict[str, Any]:
        """The record as plain data (JSON-ready), fields in the order of the ``runs`` columns."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class GroupRecord:
    """One row of ``groups`` with its run ids in order."""

    id: int
    name: str
    kind: str
    config: dict[str, Any]
    environment: dict[str, Any]
    created: float
    run_ids: list[int] = field(default_factory=list)


def run_record(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        id=row[0],
        key=row[1],
        kind=row[2],
        task=row[3],
        method=row[4],
        seed=row[5],
        status=row[6],
        config=json.loads(row[7]),
        environment=json.loads(row[8]),
        result=json.loads(row[9]) if row[9] is not None else None,
        created=row[10],
        updated=row[11],
    )


# ------------------------------------------------------------------------------------------------ points


def _number(run_id: int, step: Any, name: str, value: Any, *, required: bool) -> float | None:
    if value is None:
        if required:
            raise UnigradError(f"point at step {step} of run {run_id} has no {name}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)  # NumPy and 0-d tensor values
        except (TypeError, ValueError):
            raise UnigradError(
                f"point at step {step} of run {run_id}: {name} must be a number, got {value!r}"
            ) from None
    value = float(value)
    if math.isfinite(value):
        return value
    if required:
        raise UnigradError(f"point at step {step} of run {run_id}: {name} must be finite, got {value}")
    return None


def point_row(run_id: int, point: Mapping[str, Any]) -> tuple[Any, ...]:
    """``(run_id, step, epoch, ...)`` for ``points``; a one-line error for a malformed point. Fields of extra
    evaluation sets (names ending in :data:`EXTRA_SUFFIXES`) must be numbers or ``None`` but are not in the row."""
    if not isinstance(point, Mapping):
        raise UnigradError(f"a point of run {run_id} must be a mapping, got {type(point).__name__}")
    others = set(point) - {"step", *POINT_COLUMNS}
    extra = sorted(k for k in others if isinstance(k, str) and k.endswith(EXTRA_SUFFIXES))
    unknown = sorted(map(str, others - set(extra)))
    if unknown:
        raise UnigradError(
            f"point of run {run_id} has unknown fields {', '.join(unknown)}; "
            f"known: step, {', '.join(POINT_COLUMNS)}, <name>_loss, <name>_accuracy"
        )
    step = point.get("step")
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UnigradError(f"point of run {run_id} needs an integer step >= 0, got {step!r}")
    for name in extra:
        _number(run_id, step, name, point[name], required=False)
    values = [_number(run_id, step, c, point.get(c), required=c in _REQUIRED) for c in POINT_COLUMNS]
    return (run_id, step, *values)


def point_dict(row: Sequence[Any]) -> dict[str, Any]:
    """``(step, epoch, ...)`` → a history-style dict, keys in the trainer's order."""
    d = dict(zip(("step", *POINT_COLUMNS), row))
    return {
        "epoch": d["epoch"],
        "step": d["step"],
        **{c: d[c] for c in POINT_COLUMNS if c != "epoch"},
    }
