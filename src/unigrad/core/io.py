"""Files written whole or not at all, and strict JSON.

One home for the two things every writer of results, reports, checkpoints, exports and caches needs:

* :func:`atomic_path` / :func:`atomic_write`: the new content goes to a temporary file beside the
  target, then is renamed over it (``os.replace``), so a reader or a crash sees the earlier file or
  the new one, never a partial file. A failure (full disk, read-only or vanished folder) removes the
  temporary file, leaves an earlier file byte for byte as it was, and raises a one-line
  :class:`~unigrad.core.errors.UnigradError` that names the file and says whether an earlier version
  is kept. Options choose how durable the write is (``fsync`` of the file, of the folder), whether
  an existing file may be replaced (``overwrite=False`` links instead of renaming, and refuses an
  existing file with :class:`TargetExistsError`), and how the temporary file is named.
* :func:`finite_json` / :func:`jsonable` / :func:`to_json` / :func:`write_json`: strict JSON (no
  ``NaN`` tokens) of results that hold non-finite floats, tensors, NumPy values and paths.

The writers and their options (each keeps its own durability and naming):

===========================================  =====  ============  ==============  ============
file                                         fsync  fsync folder  temporary name  make parents
===========================================  =====  ============  ==============  ============
results.json, report.md, plots (run folder)  no     no            ``<name>.tmp``  no
checkpoints (``train/checkpoint.py``)        yes    yes           unique          yes
CSV export (``train/store/runs.py``)         yes    no            unique          no
MNIST-1D cache (``data/mnist1d.py``)         no     no            unique          yes
===========================================  =====  ============  ==============  ============

The CSV export alone passes ``overwrite=False`` (unless ``--force``).

It lives in ``core/`` because every floor writes files: ``data/`` (the MNIST-1D cache) as well as
``train/`` (results, reports, plots, checkpoints, the store's CSV export) and ``suite/``, and a lower
floor never imports a higher one. It imports only the standard library and :mod:`unigrad.core.errors`
(tensors and NumPy values are recognised by duck typing).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict, Unpack

from unigrad.core.errors import UnigradError

# a file system without hard links says one of these; there the no-overwrite check and the rename are two steps
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS)


class AtomicOptions(TypedDict, total=False):
    """The keyword options of :func:`atomic_path`, which :func:`atomic_write` and :func:`write_json` pass on."""

    overwrite: bool
    fsync: bool
    fsync_folder: bool
    unique: bool
    make_parents: bool
    what: str | None


class TargetExistsError(UnigradError):
    """:func:`atomic_path` with ``overwrite=False`` found the target already there; nothing was written."""


# ------------------------------------------------------------------------------------------------ atomic writes


def _temporary_name(path: Path, *, unique: bool = True) -> Path:
    """The temporary file beside ``path``: ``.<name>.<pid>-<random>.tmp``, or ``<name>.tmp`` (not ``unique``)."""
    if unique:
        return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    return path.with_name(path.name + ".tmp")


def _failure_message(path: Path, error: OSError, what: str | None = None) -> str:
    """The one-line message for a failed write of ``path``, saying whether an earlier file is kept.

    ``cannot write <path>: <reason>; the earlier <name> there is kept`` (or ``no <name> was
    written``); with ``what`` (e.g. ``"checkpoint"``): ``cannot write <what> <path>: <reason>; the
    previous <what> is kept`` (or ``no <what> was written``).
    """
    reason = error.strerror or error
    there = path.is_file()
    if what is None:
        kept = f"the earlier {path.name} there is kept" if there else f"no {path.name} was written"
        return f"cannot write {path}: {reason}; {kept}"
    kept = f"the previous {what} is kept" if there else f"no {what} was written"
    return f"cannot write {what} {path}: {reason}; {kept}"


@contextmanager
def atomic_path(
    path: str | Path,
    *,
    overwrite: bool = True,
    fsync: bool = True,
    fsync_folder: bool = False,
    unique: bool = True,
    make_parents: bool = False,
    what: str | None = None,
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends, the file written there becomes ``path``.

    The block writes the temporary file by any means (``Path.write_text``, ``Figure.savefig``,
    ``open(tmp, "wb")``); only a completed block publishes it. Options:

    * ``overwrite``: rename over an existing ``path``; otherwise hard-link the file to ``path``, which
      fails if ``path`` exists (even if it appeared meanwhile) with :class:`TargetExistsError`. On a
      file system without hard links the check and the rename are two steps.
    * ``fsync``: flush the file's data to the disk before the rename; ``fsync_folder``: flush the
      folder after it (best effort: not every file system allows it), so the rename itself survives
      a power cut.
    * ``unique``: the temporary file gets a new name (``.<name>.<pid>-<random>.tmp``, created
      exclusively: no other file is touched, concurrent writers do not meet). Otherwise it is
      ``<name>.tmp``, reused (truncated) by the next write: for folders the program owns.
    * ``make_parents``: create the missing folders above ``path`` first.
    * ``what``: the noun of the error message (:func:`_failure_message`).

    An ``OSError`` anywhere becomes a one-line :class:`UnigradError` (:func:`_failure_message`);
    any other exception propagates unchanged. Either way the temporary file is removed and an
    earlier ``path`` is left as it was.
    """
    path = Path(path)
    tmp = _temporary_name(path, unique=unique)
    published = False
    try:
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        if unique:  # reserve the name; the block then writes into this empty file of ours
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
        yield tmp
        if fsync:
            _fsync_file(tmp)
        if overwrite:
            os.replace(tmp, path)
            published = True
        else:
            _link_new(tmp, path)
        if fsync_folder:
            _fsync_folder(path.parent)
    except OSError as e:
        raise UnigradError(_failure_message(path, e, what)) from None
    finally:
        if not published:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str, **options: Unpack[AtomicOptions]) -> None:
    """Write ``data`` (bytes, or text as UTF-8 exactly as given: no newline translation) to ``path`` atomically.

    ``options`` are :func:`atomic_path`'s.
    """
    with atomic_path(path, **options) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8", newline="")
        else:
            tmp.write_bytes(data)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """``fsync`` ``folder`` where the platform allows it (some file systems do not; the rename is atomic anyway)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _link_new(tmp: Path, path: Path) -> None:
    """Publish ``tmp`` as ``path`` only if ``path`` does not exist (:class:`TargetExistsError` otherwise)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise TargetExistsError(f"{path} exists") from None
    except OSError as e:
        if e.errno not in _NO_LINKS:
            raise
        if path.exists() or path.is_symlink():
            raise TargetExistsError(f"{path} exists") from None
        os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ JSON


def make_folder(path: Path, what: str) -> Path:
    """The folder ``path``, made with its parents when missing; a one-line :class:`UnigradError` naming it as
    ``what`` when a file is in the way or the folder cannot be made."""
    if path.exists() and not path.is_dir():
        raise UnigradError(f"{what} {path} exists and is not a folder; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnigradError(f"cannot create {what} {path}: {e.strerror or e}") from None
    return path


def finite_json(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` (strict JSON has no NaN), tuples as lists, mappings as dicts.

    Mapping keys become ``str(key)``. Other objects are left for :func:`jsonable`.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def jsonable(obj: Any) -> Any:
    """``json.dumps``'s fallback: tensors and NumPy arrays as lists, their scalars as numbers, the rest as ``str``.

    Tensors and NumPy values are recognised by their ``tolist``/``item`` methods (no torch import); their
    non-finite values become ``None`` too. A ``Path`` (or any other object) becomes its ``str``.
    """
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return finite_json(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return finite_json(obj.item())
    return str(obj)


def to_json(obj: Any, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """Strict JSON of ``obj`` (:func:`finite_json`, then :func:`jsonable` for other objects).

    Compact (no spaces) without ``indent``; with it, ``json.dumps``'s indented layout.
    """
    separators = (",", ":") if indent is None else None
    return json.dumps(
        finite_json(obj), indent=indent, separators=separators, sort_keys=sort_keys, allow_nan=False, default=jsonable
    )


def write_json(path: str | Path, obj: Any, **options: Unpack[AtomicOptions]) -> None:
    """Write ``obj`` to ``path`` as strict JSON indented by one space plus a final newline, atomically.

    ``options`` are :func:`atomic_write`'s.
    """
    atomic_write(path, to_json(obj, indent=1) + "\n", **options)


__all__ = [
    "AtomicOptions",
    "TargetExistsError",
    "atomic_path",
    "atomic_write",
    "finite_json",
    "jsonable",
    "to_json",
    "write_json",
]
