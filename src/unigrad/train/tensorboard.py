"""TensorBoard event files of training runs: a view of their evaluation points and configuration.

The experiment store (:mod:`unigrad.train.store`) and ``results.json`` hold the results; this module writes a
copy that ``tensorboard --logdir DIR`` shows. ``compare(..., tensorboard=DIR)`` (and ``unigrad train|compare
--tensorboard DIR``) gives every run its own event folder, ``DIR/<method label>/seed-<N>`` (:func:`run_folder`),
so the methods of a comparison appear side by side.

* **Scalars** (:func:`point_scalars`), at every evaluation point, with ``global_step`` the optimizer step count:
  ``loss/train``, ``loss/test``, ``accuracy/test`` (and ``loss/<name>``, ``accuracy/<name>`` of a task's extra
  evaluation sets), ``progress/epoch``, ``progress/forward_equivalents``, ``progress/seconds`` (training wall
  time) and, with an exchange, ``progress/bytes``. TensorBoard's x-axis is the step (or the wall clock), never
  another scalar, so every loss and accuracy is logged a second time under ``vs_forwards/`` with the
  forward-pass equivalents (rounded to an integer) as its step: the step axis of those cards reads as
  forward-pass equivalents. A value that is ``None`` (the initial point's training loss, a non-finite loss) is
  left out. TensorBoard keeps scalars as float32; the store and ``results.json`` hold the exact values.
* **Configuration**, once per run at step 0: the JSON of the method's label, the run's settings (task, estimator
  and its options, optimizer and its options, learning rate, budget, batch size, seed, device, dtype, evaluation
  points, decorrelation, the parameters chosen, diagnostics) and the environment, as the text ``configuration``;
  and the same settings, flattened (``estimator_options.probes``), as the run's hyperparameters in the HParams
  dashboard (a session start record per run folder; the dashboard finds the metrics among the run's scalars).
* **One folder, one run**: a run that starts, or resumes from a checkpoint, replaces the event files of its
  folder (``events.out.tfevents.*``, nothing else) with a new one that holds its configuration and its whole
  history so far, then goes on adding to it. The writer is opened with ``purge_step=0``, so a TensorBoard that
  had already read the old files drops what it read from them too. A resumed run thus shows every point once
  (the points a killed run logged after its last checkpoint included), and the latest run of a method and seed
  replaces an earlier one logged to the same ``DIR`` (use a ``DIR`` per comparison to keep both).
* **Stored runs**: a run that the store already has finished is not trained again; its stored points and
  configuration are written to its folder all the same (:func:`write_run`), so the view of a comparison is
  complete. The store keeps the points' step, epoch, forward-pass equivalents, seconds and the training and test
  losses and accuracy, so a stored run shows no extra evaluation sets.
* **Cost**: the writes happen at the evaluation points, outside the timed steps, so the training wall time does
  not count them, and they read the points only: a run logged to TensorBoard ends bitwise where the same run
  without it does.

TensorBoard is an optional dependency (``pip install 'unigrad[tensorboard]'``); asking for it without the
package installed is refused before anything trains (:func:`require_tensorboard`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unigrad.core.errors import UnigradError
from unigrad.core.io import make_folder, to_json
from unigrad.train.loop import Hook, Point, TrainingLoop

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

INSTALL = "pip install 'unigrad[tensorboard]'"
PROGRESS = ("epoch", "forward_equivalents", "seconds", "bytes")
"""Point fields logged under ``progress/``; the others (``<set>_loss``, ``<set>_accuracy``) as ``<kind>/<set>``."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+,-]")
_MAX_NAME = 100


def require_tensorboard() -> type[SummaryWriter]:
    """``torch.utils.tensorboard.SummaryWriter``; a one-line :class:`UnigradError` when the ``tensorboard``
    package is not installed."""
    try:
        import tensorboard  # noqa: F401  (torch's writer needs it; checked first for a clear message)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UnigradError(f"TensorBoard logging needs the tensorboard package; {INSTALL}") from None
    return SummaryWriter


def check_logdir(path: str | Path) -> Path:
    """The TensorBoard folder ``path``, created if missing (as ``--out`` is), after checking that the package is
    installed; a one-line error for an empty path, a file in the way or a folder that cannot be made."""
    require_tensorboard()
    text = str(path)
    if text == "" or "\x00" in text:
        raise UnigradError(f"the TensorBoard folder must be a non-empty path without NUL characters, got {text!r}")
    return make_folder(Path(path), "TensorBoard folder")


def folder_name(label: str) -> str:
    """A method label as a folder name that is safe on every system: characters other than letters, digits and
    ``._=+,-`` become ``_`` (``spsa:probes=16`` → ``spsa_probes=16``). A label that had to change, or is longer
    than 100 characters, ends in ``-`` and 8 hex digits of its hash, so two labels never share a folder."""
    name = _UNSAFE.sub("_", label)
    if name.startswith("."):  # hidden, or "." and ".."
        name = "_" + name[1:]
    if name == label and 0 < len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(label.encode()).hexdigest()[:8]
    return f"{name[:_MAX_NAME]}-{digest}"


def run_folder(root: str | Path, label: str, seed: int) -> Path:
    """The event folder of the run of method ``label`` with ``seed``: ``root/<folder_name(label)>/seed-<seed>``."""
    return Path(root) / folder_name(label) / f"seed-{seed}"


def point_scalars(point: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """``(tag, value, step)`` of every scalar of an evaluation point (module docs), ``None`` values left out."""
    step = int(point["step"])
    fe = point.get("forward_equivalents")
    fe_step = round(fe) if isinstance(fe, int | float) and math.isfinite(fe) else None
    out: list[tuple[str, float, int]] = []
    for key, value in point.items():
        if key == "step" or value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if key in PROGRESS:
            out.append((f"progress/{key}", float(value), step))
            continue
        where, _, kind = key.rpartition("_")  # test_accuracy → accuracy/test, transfer_loss → loss/transfer
        tag = f"{kind}/{where}" if where else key
        out.append((tag, float(value), step))
        if fe_step is not None:
            out.append((f"vs_forwards/{tag}", float(value), fe_step))
    return out


def hyperparameters(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """``config`` flattened for the HParams dashboard: nested tables as ``outer.inner`` keys, numbers, booleans
    and strings as they are, anything else (``None``, lists) as its JSON text."""
    out: dict[str, bool | int | float | str] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                add(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
            out[prefix] = value
        else:
            out[prefix] = to_json(value, sort_keys=True)

    add("", {k: v for k, v in config.items() if k != "environment"})
    return out


def _write_header(writer: SummaryWriter, config: Mapping[str, Any]) -> None:
    """The run's configuration: its JSON as text and its settings as HParams (module docs)."""
    from tensorboard.plugins.hparams.summary_v2 import hparams_pb

    text = to_json(dict(config), indent=2, sort_keys=True)
    writer.add_text("configuration", "\n".join("    " + line for line in text.splitlines()), global_step=0)
    writer.file_writer.add_summary(hparams_pb(hyperparameters(config)), global_step=0)


def _write_points(writer: SummaryWriter, points: Iterable[Mapping[str, Any]]) -> None:
    for point in points:
        for tag, value, step in point_scalars(point):
            writer.add_scalar(tag, value, global_step=step)


def _open(folder: Path) -> SummaryWriter:
    """A writer of a fresh event file in ``folder``, the folder's earlier event files deleted, that tells a
    TensorBoard which read them to drop their events (``purge_step=0``; module docs)."""
    writer_class = require_tensorboard()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("events.out.tfevents.*"):
            if old.is_file():
                old.unlink()
    except OSError as e:
        raise UnigradError(f"cannot prepare the TensorBoard folder {folder}: {e.strerror or e}") from None
    return writer_class(log_dir=str(folder), purge_step=0)


def write_run(folder: str | Path, config: Mapping[str, Any], points: Iterable[Mapping[str, Any]]) -> None:
    """Write a finished run (configuration and evaluation points) to its event folder, replacing what the folder
    showed (module docs: stored runs)."""
    writer = _open(Path(folder))
    try:
        _write_header(writer, config)
        _write_points(writer, points)
    finally:
        writer.close()


class TensorBoard(Hook):
    """Log a training run to TensorBoard (module docs): on start, ``config`` and the points the run already has
    (a resumed run's history) into a fresh event file of ``folder``; every later evaluation point as it is made;
    the file is closed when the loop ends, however it ends.

    Args:
        folder: the run's event folder (:func:`run_folder`), created if missing.
        config: the run's configuration, logged once as JSON text and as HParams (a key ``environment`` is part
            of the text only).
    """

    def __init__(self, folder: str | Path, config: Mapping[str, Any]) -> None:
        self.folder, self.config = Path(folder), dict(config)
        self.writer: SummaryWriter | None = None

    def on_start(self, loop: TrainingLoop) -> None:
        self.writer = _open(self.folder)
        _write_header(self.writer, self.config)
        _write_points(self.writer, loop.history)

    def on_evaluate(self, loop: TrainingLoop, point: Point) -> None:
        if self.writer is not None:
            _write_points(self.writer, [point])

    def on_end(self, loop: TrainingLoop) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


__all__ = [
    "INSTALL",
    "PROGRESS",
    "TensorBoard",
    "check_logdir",
    "folder_name",
    "hyperparameters",
    "point_scalars",
    "require_tensorboard",
    "run_folder",
    "write_run",
]
