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

**Rooms**: :mod:`~unigrad.train.store.records` (run keys, the records, points checked),
:mod:`~unigrad.train.store.connection` (the file: checks, schema, transactions, errors) and
:mod:`~unigrad.train.store.runs` (the :class:`Store` and its queries, groups and CSV export).
"""

from __future__ import annotations

from unigrad.core.io import to_json
from unigrad.train.store.connection import (
    APPLICATION_ID,
    DEFAULT_PATH,
    ENV_VAR,
    FULL_CHECK_BYTES,
    SCHEMA_VERSION,
    check_file_path,
    default_store_path,
)
from unigrad.train.store.records import (
    CSV_COLUMNS,
    FINISHED,
    POINT_COLUMNS,
    STATUSES,
    GroupRecord,
    RunRecord,
    canonical_json,
    run_config,
    run_key,
)
from unigrad.train.store.runs import Store, groups_hint

__all__ = [
    "APPLICATION_ID",
    "CSV_COLUMNS",
    "DEFAULT_PATH",
    "ENV_VAR",
    "FINISHED",
    "FULL_CHECK_BYTES",
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
