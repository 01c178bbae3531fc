"""The :class:`Store`: runs, their evaluation points, groups of runs, and the CSV export.

Every method is one transaction of :class:`~unigrad.train.store.connection.StoreFile` (writes ``BEGIN
IMMEDIATE``, reads of several queries one snapshot); the rows are the records of
:mod:`unigrad.train.store.records`. The schema and the guarantees are in the docs of :mod:`unigrad.train.store`.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from unigrad.core.errors import UnigradError
from unigrad.core.io import TargetExistsError, atomic_write, to_json
from unigrad.train.store.connection import StoreFile, check_file_path
from unigrad.train.store.records import (
    CSV_COLUMNS,
    FINISHED,
    POINT_COLUMNS,
    STATUSES,
    GroupRecord,
    RunRecord,
    point_dict,
    point_row,
    run_key,
    run_record,
)

_RUN_FIELDS = "id, key, kind, task, method, seed, status, config, environment, result, created, updated"
_GROUP_FIELDS = "id, name, kind, config, environment, created"


def groups_hint(names: Sequence[str], shown: int = 10) -> str:
    """``its groups are 'a', 'b' (see unigrad runs groups)`` (the first ``shown``), or ``it has no groups``."""
    if not names:
        return "it has no groups"
    listed = ", ".join(repr(n) for n in names[:shown])
    if len(names) > shown:
        listed += f" and {len(names) - shown} more"
    return f"its groups are {listed} (see unigrad runs groups)"


class Store(StoreFile):
    """The experiment store at ``path`` (docs of :mod:`unigrad.train.store`); a context manager that closes on exit.

    Opening (``create``, ``timeout``) and the checks made first are those of
    :class:`~unigrad.train.store.connection.StoreFile`; the methods here read and write runs, points and groups.
    """

    # -- runs

    def _run_row(self, conn: sqlite3.Connection, run_id: int) -> RunRecord:
        row = conn.execute(f"SELECT {_RUN_FIELDS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise UnigradError(f"no run {run_id} in the experiment store {self.path}; see unigrad runs list")
        return run_record(row)

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
                return run_record(row)
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
            c.execute(sql, point_row(run_id, point))
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
            return run_record(rows[0])

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
            return [run_record(r) for r in self._db.execute(sql, args).fetchall()]

    def points(self, run_id: int) -> list[dict[str, Any]]:
        """The evaluation points of a run by step, as dicts like the trainer's ``history`` (``None`` for NULL)."""
        with self._errors():
            self._run_row(self._db, run_id)
            rows = self._db.execute(
                f"SELECT step, {', '.join(POINT_COLUMNS)} FROM points WHERE run_id = ? ORDER BY step", (run_id,)
            ).fetchall()
        return [point_dict(r) for r in rows]

    def latest_points(self, run_ids: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
        """The last evaluation point (largest step) of each run that has one, by run id."""
        sql = (
            f"SELECT p.run_id, p.step, {', '.join('p.' + c for c in POINT_COLUMNS)} FROM points p "
            "JOIN (SELECT run_id, MAX(step) AS s FROM points GROUP BY run_id) m ON p.run_id = m.run_id AND p.step = m.s"
        )
        with self._errors():
            rows = self._db.execute(sql).fetchall()
        wanted = None if run_ids is None else set(run_ids)
        return {r[0]: point_dict(r[1:]) for r in rows if wanted is None or r[0] in wanted}

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
