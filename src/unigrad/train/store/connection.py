"""The experiment store's file: opening it, checking it, its schema, transactions and one-line errors.

:class:`StoreFile` is the connection under :class:`unigrad.train.store.Store`: it refuses a damaged,
foreign or newer database before anything is written to it (:meth:`StoreFile._check_file`), creates the
schema in a new file, turns every ``sqlite3`` error into a one-line :class:`~unigrad.UnigradError`, and
runs each write as one ``BEGIN IMMEDIATE`` transaction (module docs of :mod:`unigrad.train.store`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Self

from unigrad.core.errors import UnigradError

SCHEMA_VERSION = 1
APPLICATION_ID = 0x756E6967  # "unig"
ENV_VAR = "UNIGRAD_STORE"
DEFAULT_PATH = Path("runs") / "unigrad.sqlite"
FULL_CHECK_BYTES = 64 * 2**20  # stores up to this size get PRAGMA integrity_check when opened, larger ones quick_check

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


class StoreFile:
    """An open experiment store file, checked, with its schema; :class:`~unigrad.train.store.Store` reads and writes it.

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
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        """One transaction begun by ``begin``: ``COMMIT`` on success, ``ROLLBACK`` on any error."""
        conn = self._db
        with self._errors():
            conn.execute(begin)
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already (e.g. a full disk)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction, ``BEGIN IMMEDIATE``: the write lock is taken up front, so writers queue."""
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        """One read transaction: the queries inside see one snapshot, whatever other processes commit meanwhile."""
        return self._transaction("BEGIN")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def schema_version(self) -> int:
        """``PRAGMA user_version`` of the open store."""
        with self._errors():
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])
