"""The experiment store: every training run, its configuration and its evaluation points in one SQLite file.

``Store("runs/unigrad.sqlite")`` (the default, :func:`default_store_path`, overridable with the
environment variable ``UNIGRAD_STORE``) is an embedded database written with the standard library's
:mod:`sqlite3`; nothing runs besides the process that opens it.

Schema (version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``; the file is marked as a
unigrad store by ``PRAGMA application_id`` = :data:`APPLICATION_ID`)::

    runs(id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, kind TEXT NOT NULL, task TEXT, method TEXT,
         seed INTEGER, status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'diverged', 'failed')),
         config TEXT NOT NULL, environment TEXT NOT NULL, result TEXT, created REAL NOT NULL, updated REAL NOT NULL)
    points(run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE, step INTEGER NOT NULL,
           epoch REAL NOT NULL, forward_equivalents REAL NOT NULL, seconds REAL NOT NULL,
           train_loss REAL, test_loss REAL, test_accuracy REAL, PRIMARY KEY (run_id, step))
    groups(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, kind TEXT NOT NULL, config TEXT NOT NULL,
           environment TEXT NOT NULL, created REAL NOT NULL)
    group_runs(group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
               run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
               position INTEGER NOT NULL, PRIMARY KEY (group_id, run_id))

* **runs**: one row per training run. ``task``, ``method`` (the method's label, e.g. ``dbp`` or
  ``spsa:probes=4``) and ``seed`` are copied out of the configuration for listing; ``config``,
  ``environment`` and ``result`` are JSON. ``result`` is ``NULL`` while the run is ``running`` and
  holds :meth:`unigrad.train.RunResult.to_dict` without its ``history`` once it is finished (the
  history lives in ``points``). ``created``/``updated`` are Unix times (seconds).
* **points**: the evaluation points of a run (the trainer's ``history``), one row per step.
* **groups** and **group_runs**: a named set of runs, in order — one ``unigrad compare`` invocation
  (its ``results.json`` configuration and environment, and the runs it trained or reused), so that
  ``unigrad runs compare <group>`` shows that comparison again. Deleting a group keeps its runs;
  deleting a run removes its points and its group memberships.

**Run key** (:func:`run_key`): the SHA-256 of the canonical JSON (sorted keys, no whitespace,
floats with an integral value written as integers so that ``1`` and ``1.0`` agree) of the
configuration that defines a run: task, method label and estimator name, estimator options,
optimizer, learning rate, budget, batch size, seed, dtype, device, evaluation points and
decorrelation (:func:`run_config` builds it). The same configuration gives the same key, so a
caller can skip runs already ``ok`` and resume ``running`` ones (:meth:`Store.start_run` returns
the existing record).

**Guarantees**

* Every write (:meth:`~Store.start_run`, :meth:`~Store.add_points`, :meth:`~Store.finish_run`,
  :meth:`~Store.reset`, :meth:`~Store.delete`, the group methods) is one transaction, begun with
  ``BEGIN IMMEDIATE`` (the write lock is taken up front, so two writers queue instead of failing)
  and rolled back on any error: a failure half way, e.g. a bad point in the middle of a batch, leaves
  the database as it was.
* The journal is in WAL mode: readers in other processes (or other :class:`Store` objects) never
  wait for a writer and see the last committed state; one writer at a time, a second waits up to
  ``timeout`` seconds.
* ``PRAGMA foreign_keys=ON``: points and memberships cannot outlive their run.
* A finished run (``ok``, ``diverged``, ``failed``) takes no new points and no second finish;
  :meth:`~Store.reset` makes it ``running`` again, without points or result, to run it anew.
* JSON is strict (no ``NaN``): a non-finite float in a configuration, environment or result is
  stored as ``null``, as in ``results.json``; in ``points`` the loss and accuracy columns store it as
  ``NULL`` (read back as ``None``), while a non-finite step, epoch, forward-pass count or time is
  refused.
* An existing file is checked before anything is written to it (``PRAGMA integrity_check`` on a
  read-only connection, :meth:`Store._check_file`): a corrupt database, a file that is not an SQLite
  database or not a unigrad store, or a store written by a newer unigrad (a larger ``user_version``)
  is refused and left byte for byte as it was, with no ``-wal``/``-shm`` file added beside it.
* Those, and a folder that cannot be written, raise a one-line :class:`~unigrad.UnigradError` that
  says what to do, never an ``sqlite3`` traceback. WAL needs its ``-wal``/``-shm`` files beside the
  database, so even reading needs a writable folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from unigrad.core.errors import UnigradError
from unigrad.core.io import TargetExistsError, atomic_write, jsonable, to_json

SCHEMA_VERSION = 1
APPLICATION_ID = 0x756E6967  # "unig"
STATUSES = ("running", "ok", "diverged", "failed")
FINISHED = ("ok", "diverged", "failed")
ENV_VAR = "UNIGRAD_STORE"
DEFAULT_PATH = Path("runs") / "unigrad.sqlite"
FULL_CHECK_BYTES = 64 * 2**20  # stores up to this size get PRAGMA integrity_check when opened, larger ones quick_check

# the columns of ``points`` after run_id and step, in the order of the trainer's history
POINT_COLUMNS = ("epoch", "forward_equivalents", "seconds", "train_loss", "test_loss", "test_accuracy")
_REQUIRED = ("epoch", "forward_equivalents", "seconds")
CSV_COLUMNS = ("run_id", "key", "task", "method", "seed", "status", "step", *POINT_COLUMNS)

_SCHEMA = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    task TEXT,
    method TEXT,
    seed INTEGER,
    status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'diverged', 'failed')),
    config TEXT NOT NULL,
    environment TEXT NOT NULL,
    result TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX runs_task_method ON runs(task, method);
CREATE INDEX runs_status ON runs(status);
CREATE TABLE points (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    epoch REAL NOT NULL,
    forward_equivalents REAL NOT NULL,
    seconds REAL NOT NULL,
    train_loss REAL,
    test_loss REAL,
    test_accuracy REAL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE groups (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    environment TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE group_runs (
    group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    PRIMARY KEY (group_id, run_id)
);
CREATE INDEX group_runs_run ON group_runs(run_id);
"""

_RUN_FIELDS = "id, key, kind, task, method, seed, status, config, environment, result, created, updated"
_GROUP_FIELDS = "id, name, kind, config, environment, created"


def default_store_path() -> Path:
    """``$UNIGRAD_STORE`` if set (and not empty), else ``runs/unigrad.sqlite`` relative to the current folder."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else DEFAULT_PATH


def check_file_path(path: str | Path, option: str, *, overwrite: bool = True) -> Path:
    """``path`` as a :class:`~pathlib.Path`, if it can name a file to write; else a one-line error.

    For a file path typed by the user (``option`` is how the error names it, e.g. ``--csv``): its
    folder must exist already (nothing creates folders the user did not ask for, such as ``/nonexistent``
    for a typo); it must not be a folder; unless ``overwrite``, it must not exist yet. Nothing is created.
    """
    if "\x00" in str(path):
        raise UnigradError(f"{option} {str(path)!r} contains a NUL character")
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise UnigradError(f"{option} {path}: the folder {folder} {state}; create it first or give another path")
    if path.is_dir():
        raise UnigradError(f"{option} {path} is a folder; give a file path")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise UnigradError(f"{option} {path} exists; pass --force to replace it")
    return path


def groups_hint(names: Sequence[str], shown: int = 10) -> str:
    """``its groups are 'a', 'b' (see unigrad runs groups)`` (the first ``shown``), or ``it has no groups``."""
    if not names:
        return "it has no groups"
    listed = ", ".join(repr(n) for n in names[:shown])
    if len(names) > shown:
        listed += f" and {len(names) - shown} more"
    return f"its groups are {listed} (see unigrad runs groups)"


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
        """The record as plain data (JSON-ready)."""
        return {
            "id": self.id,
            "key": self.key,
            "kind": self.kind,
            "task": self.task,
            "method": self.method,
            "seed": self.seed,
            "status": self.status,
            "config": self.config,
            "environment": self.environment,
            "result": self.result,
            "created": self.created,
            "updated": self.updated,
        }


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


def _run_record(row: Sequence[Any]) -> RunRecord:
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


def _point_row(run_id: int, point: Mapping[str, Any]) -> tuple[Any, ...]:
    """``(run_id, step, epoch, ...)`` for ``points``; a one-line error for a malformed point."""
    if not isinstance(point, Mapping):
        raise UnigradError(f"a point of run {run_id} must be a mapping, got {type(point).__name__}")
    unknown = sorted(set(point) - {"step", *POINT_COLUMNS})
    if unknown:
        raise UnigradError(
            f"point of run {run_id} has unknown fields {', '.join(map(str, unknown))}; "
            f"known: step, {', '.join(POINT_COLUMNS)}"
        )
    step = point.get("step")
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UnigradError(f"point of run {run_id} needs an integer step >= 0, got {step!r}")
    values = [_number(run_id, step, c, point.get(c), required=c in _REQUIRED) for c in POINT_COLUMNS]
    return (run_id, step, *values)


# ------------------------------------------------------------------------------------------------ the store


class Store:
    """The experiment store at ``path`` (module docs); a context manager that closes on exit.

    ``create=False`` refuses a path where no store exists yet (for commands that only read), and an
    empty SQLite database. With ``create=True`` a missing store is created, with its folder (the
    command line lets only the default location do that: a typed ``--store`` must be in an existing
    folder, :func:`check_file_path`). An existing file is checked before anything is written to it
    (module docs, Guarantees). ``timeout`` is how long a writer waits for another process's write to
    finish, in seconds.
    """

    def __init__(self, path: str | Path | None = None, *, create: bool = True, timeout: float = 30.0) -> None:
        if path is not None and "\x00" in str(path):
            raise UnigradError(f"the experiment store path {str(path)!r} contains a NUL character")
        self.path = Path(path) if path is not None else default_store_path()
        self._conn: sqlite3.Connection | None = None
        if self.path.exists() and self.path.is_dir():
            raise UnigradError(f"the experiment store {self.path} is a folder; give a file path with --store")
        if self.path.exists() and 0 < self.path.stat().st_size < 100:  # shorter than an SQLite header
            raise UnigradError(
                f"{self.path} is not a unigrad experiment store (not an SQLite database); "
                "give another path with --store"
            )
        if self.path.exists() and self.path.stat().st_size == 0 and not create:
            raise UnigradError(f"{self.path} is an empty file, not an experiment store; give another path with --store")
        if self.path.exists() and self.path.stat().st_size > 0:
            self._check_file(create=create, timeout=timeout)  # before any connection that may write to it
        if not self.path.exists():
            if not create:
                raise UnigradError(f"no experiment store at {self.path}; give its path with --store or ${ENV_VAR}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UnigradError(
                    f"cannot create the folder of the experiment store {self.path}: {e.strerror}; "
                    f"choose a writable location with --store or ${ENV_VAR}"
                ) from None
        try:
            # isolation_level=None: no implicit transactions; writes use BEGIN IMMEDIATE ... COMMIT (_write)
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except sqlite3.Error as e:
            raise self._error(e) from None
        try:
            with self._errors():
                self._open()
        except BaseException:
            self.close()
            raise

    # -- connection and errors

    def _check_file(self, *, create: bool, timeout: float) -> None:
        """Refuse a damaged, foreign or newer database before anything is written to it.

        The read-write connection of a store writes as soon as it is used: switching to WAL, creating
        the schema, a first run, or the checkpoint that closing it runs. So the file is checked first,
        on a read-only connection. With no ``-wal`` and no ``-journal`` file beside it (no other
        connection has it open, no write was cut short) that connection is ``immutable``: SQLite takes
        no lock and creates no ``-wal``/``-shm`` file, and a refused store is left byte for byte, with
        nothing added beside it. With a ``-wal`` (another process is using the store, or one was killed)
        it is read-only: it reads what was committed there and never checkpoints into the file (it may
        add the ``-shm`` index that any reader needs). A ``-journal`` (a rollback-mode write cut short)
        is rolled back first, as by any SQLite reader.

        ``PRAGMA integrity_check`` reads every page and checks every index against its table; that
        also finds a table page whose damaged header makes it look empty (its rows vanish, ``no run 1``,
        while their index entries stay), which ``quick_check`` passes. Both are O(size): measured on
        one core with a warm page cache, a 4 MiB store (1,000 runs of 40 points) takes 25 ms
        (``quick_check`` 12 ms), a 43 MiB one (10,000 runs) 0.44 s (0.13 s). Above
        :data:`FULL_CHECK_BYTES` the quicker check is used, about 3 ms per MiB.
        """
        where = f"--store or ${ENV_VAR}"
        wal, journal = Path(f"{self.path}-wal"), Path(f"{self.path}-journal")
        if journal.exists():
            uri = self.path.resolve().as_uri()
        else:
            uri = self.path.resolve().as_uri() + ("?mode=ro" if wal.exists() else "?mode=ro&immutable=1")
        check = "integrity_check" if self.path.stat().st_size <= FULL_CHECK_BYTES else "quick_check"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
        except sqlite3.Error as e:
            raise self._error(e) from None
        try:
            with self._errors():
                rows = conn.execute(f"PRAGMA {check}").fetchall()
                problems = [line for row in rows for line in str(row[0]).splitlines() if line.strip()]
                problems = [line for line in problems if not line.startswith("***")]  # "*** in database main ***"
                if problems != ["ok"]:
                    raise self._corrupt(problems[0] if problems else "no answer from the check")
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                app = conn.execute("PRAGMA application_id").fetchone()[0]
                tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        finally:
            conn.close()
        if version > SCHEMA_VERSION:
            raise UnigradError(
                f"the experiment store {self.path} has schema version {version}, newer than this unigrad "
                f"understands ({SCHEMA_VERSION}); upgrade unigrad or use another store with {where}"
            )
        if (version == SCHEMA_VERSION and app != APPLICATION_ID) or (version != SCHEMA_VERSION and (version or tables)):
            raise UnigradError(
                f"{self.path} is an SQLite database but not a unigrad experiment store; use another path with {where}"
            )
        if version == 0 and not create:  # an empty SQLite database: a command that only reads does not set it up
            raise UnigradError(
                f"{self.path} is an empty SQLite database, not a unigrad experiment store; give its path with {where}"
            )

    def _corrupt(self, detail: str) -> UnigradError:
        return UnigradError(
            f"the experiment store {self.path} is corrupt ({detail}); restore it from a backup, "
            f"or move it away to start a new one"
        )

    def _open(self) -> None:
        conn = self._db
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints in WAL mode; never corrupt
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            self._check_application_id()
            return
        if version > SCHEMA_VERSION:
            raise UnigradError(
                f"the experiment store {self.path} has schema version {version}, newer than this unigrad "
                f"understands ({SCHEMA_VERSION}); upgrade unigrad or use another store with --store"
            )
        with self._write() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]  # another process may have created it
            if version == SCHEMA_VERSION:
                self._check_application_id()
                return
            if version != 0 or c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise UnigradError(
                    f"{self.path} is an SQLite database but not a unigrad experiment store; "
                    f"use another path with --store or ${ENV_VAR}"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            c.execute(f"PRAGMA application_id={APPLICATION_ID}")
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _check_application_id(self) -> None:
        app = self._db.execute("PRAGMA application_id").fetchone()[0]
        if app != APPLICATION_ID:
            raise UnigradError(
                f"{self.path} is an SQLite database but not a unigrad experiment store; "
                f"use another path with --store or ${ENV_VAR}"
            )

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise UnigradError(f"the experiment store {self.path} is closed")
        return self._conn

    def _error(self, e: sqlite3.Error) -> UnigradError:
        """A one-line, actionable :class:`UnigradError` for an ``sqlite3`` error."""
        text = str(e).strip() or type(e).__name__
        low = text.lower()
        where = f"--store or ${ENV_VAR}"
        if "not a database" in low:
            return UnigradError(
                f"{self.path} is not an SQLite database, so not a unigrad experiment store; "
                f"move it away or use another path with {where}"
            )
        if "malformed" in low or "corrupt" in low:
            return self._corrupt(text)
        if "locked" in low or "busy" in low:
            return UnigradError(
                f"the experiment store {self.path} is busy: another process holds its write lock ({text}); "
                f"try again when it has finished"
            )
        if "readonly" in low or "read-only" in low or "unable to open" in low or "disk i/o" in low:
            return UnigradError(
                f"cannot write the experiment store {self.path} ({text}); "
                f"check the folder's permissions or choose a writable location with {where}"
            )
        if "disk is full" in low:
            return UnigradError(f"cannot write the experiment store {self.path}: the disk is full")
        return UnigradError(f"experiment store {self.path}: {text}")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise self._error(e) from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: ``BEGIN IMMEDIATE``, ``COMMIT`` on success, ``ROLLBACK`` on any error."""
        conn = self._db
        with self._errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already (e.g. a full disk)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: the queries inside see one snapshot, whatever other processes commit meanwhile."""
        conn = self._db
        with self._errors():
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @property
    def schema_version(self) -> int:
        """``PRAGMA user_version`` of the open store."""
        with self._errors():
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # -- runs

    def _run_row(self, conn: sqlite3.Connection, run_id: int) -> RunRecord:
        row = conn.execute(f"SELECT {_RUN_FIELDS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise UnigradError(f"no run {run_id} in the experiment store {self.path}; see unigrad runs list")
        return _run_record(row)

    def start_run(self, config: Mapping[str, Any], environment: Mapping[str, Any], kind: str = "train") -> RunRecord:
        """The run defined by ``config``: the existing record if its key is stored, else a new ``running`` one.

        The caller decides what to do with an existing record: skip it when ``ok``, resume it when
        ``running``, or :meth:`reset` it to run again. ``task``, ``method`` (a label; or a mapping
        with ``label``/``name``) and ``seed`` are read from ``config`` for listing (``NULL`` if absent).
        """
        key = run_key(config)
        if not isinstance(environment, Mapping):
            raise UnigradError(f"a run environment must be a mapping, got {type(environment).__name__}")
        task = config.get("task")
        method = config.get("method")
        if isinstance(method, Mapping):
            method = method.get("label") or method.get("name")
        seed = config.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            seed = None
        now = time.time()
        with self._write() as c:
            row = c.execute(f"SELECT {_RUN_FIELDS} FROM runs WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return _run_record(row)
            cur = c.execute(
                "INSERT INTO runs (key, kind, task, method, seed, status, config, environment, result, created,"
                " updated) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, NULL, ?, ?)",
                (
                    key,
                    str(kind),
                    None if task is None else str(task),
                    None if method is None else str(method),
                    seed,
                    to_json(config, sort_keys=True),
                    to_json(environment),
                    now,
                    now,
                ),
            )
            assert cur.lastrowid is not None
            return self._run_row(c, cur.lastrowid)

    def _insert_points(self, c: sqlite3.Connection, run_id: int, points: Iterable[Mapping[str, Any]]) -> int:
        n = 0
        cols = ", ".join(POINT_COLUMNS)
        updates = ", ".join(f"{col} = excluded.{col}" for col in POINT_COLUMNS)
        sql = (
            f"INSERT INTO points (run_id, step, {cols}) VALUES (?, ?, {', '.join('?' * len(POINT_COLUMNS))}) "
            f"ON CONFLICT (run_id, step) DO UPDATE SET {updates}"
        )
        for point in points:
            c.execute(sql, _point_row(run_id, point))
            n += 1
        return n

    def add_points(self, run_id: int, points: Iterable[Mapping[str, Any]]) -> int:
        """Record evaluation points of a running run (keys as in the trainer's ``history``); return how many.

        A point whose step is stored already replaces it. All points go in one transaction: a bad
        point (or an exception from the iterable) stores none of them.
        """
        with self._write() as c:
            run = self._run_row(c, run_id)
            if run.finished:
                raise UnigradError(f"run {run_id} is finished ({run.status}); reset it to record new points")
            n = self._insert_points(c, run_id, points)
            c.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time(), run_id))
            return n

    def finish_run(self, run_id: int, status: str, result: Mapping[str, Any]) -> RunRecord:
        """Mark a running run ``ok``, ``diverged`` or ``failed`` and store its result.

        ``result`` is typically :meth:`RunResult.to_dict`; a ``history`` list in it is stored as
        points (as by :meth:`add_points`, in the same transaction) and left out of the stored JSON.
        """
        if status not in FINISHED:
            raise UnigradError(f"a finished run's status must be one of {', '.join(FINISHED)}; got {status!r}")
        if not isinstance(result, Mapping):
            raise UnigradError(f"a run result must be a mapping, got {type(result).__name__}")
        stored = {k: v for k, v in result.items() if k != "history"}
        with self._write() as c:
            run = self._run_row(c, run_id)
            if run.finished:
                raise UnigradError(f"run {run_id} is already finished ({run.status}); reset it to run it again")
            history = result.get("history")
            if history is not None:
                self._insert_points(c, run_id, history)
            c.execute(
                "UPDATE runs SET status = ?, result = ?, updated = ? WHERE id = ?",
                (status, to_json(stored), time.time(), run_id),
            )
            return self._run_row(c, run_id)

    def reset(self, run_id: int, environment: Mapping[str, Any] | None = None) -> RunRecord:
        """Make a run ``running`` again with no points and no result (to run it anew); optionally a new environment."""
        with self._write() as c:
            self._run_row(c, run_id)
            c.execute("DELETE FROM points WHERE run_id = ?", (run_id,))
            c.execute(
                "UPDATE runs SET status = 'running', result = NULL, updated = ? WHERE id = ?", (time.time(), run_id)
            )
            if environment is not None:
                c.execute("UPDATE runs SET environment = ? WHERE id = ?", (to_json(environment), run_id))
            return self._run_row(c, run_id)

    def get(self, run: int | str) -> RunRecord:
        """The run with id ``run`` (an int or a string of digits) or key ``run`` (or a unique key prefix of >= 4)."""
        with self._errors():
            conn = self._db
            if isinstance(run, bool):
                raise UnigradError(f"a run is given by its id or key, got {run!r}")
            if isinstance(run, int):
                return self._run_row(conn, run)
            text = str(run).strip().lower()
            if text.isascii() and text.isdigit():
                if len(text) > 18:
                    raise UnigradError(f"{run!r} is not a run id (ids are small whole numbers; see unigrad runs list)")
                return self._run_row(conn, int(text))
            if len(text) < 4 or any(ch not in "0123456789abcdef" for ch in text):
                raise UnigradError(f"{run!r} is neither a run id nor a run key (or a prefix of >= 4 hex digits)")
            rows = conn.execute(
                f"SELECT {_RUN_FIELDS} FROM runs WHERE key >= ? AND key < ? ORDER BY id LIMIT 2",
                (text, text + "g"),
            ).fetchall()
            if not rows:
                raise UnigradError(f"no run with key {text} in the experiment store {self.path}")
            if len(rows) > 1:
                raise UnigradError(f"the key prefix {text} matches several runs; give more of the key or the id")
            return _run_record(rows[0])

    def runs(
        self,
        task: str | None = None,
        method: str | None = None,
        status: str | None = None,
        *,
        kind: str | None = None,
    ) -> list[RunRecord]:
        """The runs, oldest first, filtered by task, method label, status and kind when given."""
        if status is not None and status not in STATUSES:
            raise UnigradError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        where, args = [], []
        for col, value in (("task", task), ("method", method), ("status", status), ("kind", kind)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        sql = f"SELECT {_RUN_FIELDS} FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        with self._errors():
            return [_run_record(r) for r in self._db.execute(sql, args).fetchall()]

    def points(self, run_id: int) -> list[dict[str, Any]]:
        """The evaluation points of a run by step, as dicts like the trainer's ``history`` (``None`` for NULL)."""
        with self._errors():
            self._run_row(self._db, run_id)
            rows = self._db.execute(
                f"SELECT step, {', '.join(POINT_COLUMNS)} FROM points WHERE run_id = ? ORDER BY step", (run_id,)
            ).fetchall()
        return [_point_dict(r) for r in rows]

    def latest_points(self, run_ids: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
        """The last evaluation point (largest step) of each run that has one, by run id."""
        sql = (
            f"SELECT p.run_id, p.step, {', '.join('p.' + c for c in POINT_COLUMNS)} FROM points p "
            "JOIN (SELECT run_id, MAX(step) AS s FROM points GROUP BY run_id) m ON p.run_id = m.run_id AND p.step = m.s"
        )
        with self._errors():
            rows = self._db.execute(sql).fetchall()
        wanted = None if run_ids is None else set(run_ids)
        return {r[0]: _point_dict(r[1:]) for r in rows if wanted is None or r[0] in wanted}

    def delete(self, run_id: int) -> None:
        """Delete a run with its points and group memberships."""
        with self._write() as c:
            self._run_row(c, run_id)
            c.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    # -- groups

    def _group_row(self, conn: sqlite3.Connection, group: int | str) -> GroupRecord:
        if isinstance(group, int) and not isinstance(group, bool):
            row = conn.execute(f"SELECT {_GROUP_FIELDS} FROM groups WHERE id = ?", (group,)).fetchone()
        else:
            row = conn.execute(f"SELECT {_GROUP_FIELDS} FROM groups WHERE name = ?", (str(group),)).fetchone()
        if row is None:
            names = [r[0] for r in conn.execute("SELECT name FROM groups ORDER BY id")]
            raise UnigradError(f"no group {group!r} in the experiment store {self.path}; {groups_hint(names)}")
        ids = [
            r[0] for r in conn.execute("SELECT run_id FROM group_runs WHERE group_id = ? ORDER BY position", (row[0],))
        ]
        return GroupRecord(row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]), row[5], ids)

    def create_group(
        self,
        name: str,
        config: Mapping[str, Any] | None = None,
        environment: Mapping[str, Any] | None = None,
        kind: str = "compare",
    ) -> GroupRecord:
        """The group called ``name`` (e.g. a comparison's run folder name), created empty if it does not exist."""
        name = str(name).strip()
        if not name or name.isdigit():
            raise UnigradError(f"a group name must be non-empty and not a number, got {name!r}")
        with self._write() as c:
            if c.execute("SELECT 1 FROM groups WHERE name = ?", (name,)).fetchone() is None:
                c.execute(
                    "INSERT INTO groups (name, kind, config, environment, created) VALUES (?, ?, ?, ?, ?)",
                    (name, str(kind), to_json(config or {}), to_json(environment or {}), time.time()),
                )
            return self._group_row(c, name)

    def add_to_group(self, group: int | str, run_ids: Iterable[int]) -> GroupRecord:
        """Append runs to a group (by id or name), in order; runs already in it keep their place."""
        with self._write() as c:
            g = self._group_row(c, group)
            position = len(g.run_ids)
            for run_id in run_ids:
                self._run_row(c, run_id)
                cur = c.execute(
                    "INSERT OR IGNORE INTO group_runs (group_id, run_id, position) VALUES (?, ?, ?)",
                    (g.id, run_id, position),
                )
                position += cur.rowcount
            return self._group_row(c, g.id)

    def group(self, group: int | str) -> GroupRecord:
        """The group with id or name ``group``, with its run ids in order."""
        with self._errors():
            return self._group_row(self._db, group)

    def groups(self) -> list[GroupRecord]:
        """Every group, oldest first."""
        with self._read():
            ids = [r[0] for r in self._db.execute("SELECT id FROM groups ORDER BY id")]
            return [self._group_row(self._db, i) for i in ids]

    def delete_group(self, group: int | str) -> None:
        """Delete a group; its runs stay."""
        with self._write() as c:
            g = self._group_row(c, group)
            c.execute("DELETE FROM groups WHERE id = ?", (g.id,))

    # -- export

    def export_csv(
        self, file_or_path: str | Path | IO[str], run_ids: Iterable[int] | None = None, *, overwrite: bool = False
    ) -> int:
        """Write one CSV row per evaluation point (columns :data:`CSV_COLUMNS`); return the number of rows.

        ``run_ids`` (default: every run) picks and orders the runs. Empty cells are ``NULL``
        (no train loss at step 0, a non-finite value). A path is written whole or not at all: its
        folder must exist (it is not created), an existing file is refused unless ``overwrite``
        (``--force``), and the store's own files are refused always (:func:`check_file_path`).
        """
        path = None
        if isinstance(file_or_path, str | Path):
            path = check_file_path(file_or_path, "--csv", overwrite=overwrite)
            own = [Path(f"{self.path}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]
            if any(path.resolve() == p.resolve() or (p.exists() and path.exists() and path.samefile(p)) for p in own):
                raise UnigradError(f"--csv {path} is the experiment store's own file; give another path")
        with self._read():
            if run_ids is None:
                runs = self.runs()
            else:
                runs = [self._run_row(self._db, int(i)) for i in run_ids]
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            n = 0
            for run in runs:
                for p in self.points(run.id):
                    row = [run.id, run.key, run.task, run.method, run.seed, run.status, p["step"]]
                    row += [p[c] for c in POINT_COLUMNS]
                    writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
                    n += 1
        text = buffer.getvalue()
        if path is not None:
            try:  # whole or not at all; without overwrite, never over a file that appeared meanwhile
                atomic_write(path, text, overwrite=overwrite, fsync=True)
            except TargetExistsError:
                raise UnigradError(f"--csv {path} exists; pass --force to replace it") from None
        else:
            assert not isinstance(file_or_path, str | Path)
            file_or_path.write(text)
        return n


def _point_dict(row: Sequence[Any]) -> dict[str, Any]:
    """``(step, epoch, ...)`` → a history-style dict, keys in the trainer's order."""
    d = dict(zip(("step", *POINT_COLUMNS), row))
    return {
        "epoch": d["epoch"],
        "step": d["step"],
        **{c: d[c] for c in POINT_COLUMNS if c != "epoch"},
    }


__all__ = [
    "APPLICATION_ID",
    "CSV_COLUMNS",
    "ENV_VAR",
    "POINT_COLUMNS",
    "SCHEMA_VERSION",
    "STATUSES",
    "GroupRecord",
    "RunRecord",
    "Store",
    "canonical_json",
    "check_file_path",
    "default_store_path",
    "groups_hint",
    "run_config",
    "run_key",
    "to_json",
]
