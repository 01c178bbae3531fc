"""The experiment store: schema, keys, transactions, concurrent readers, bad files, CSV export and ``unigrad runs``."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from unigrad import UnigradError
from unigrad.cli import Parser
from unigrad.cli.runs import add_runs_parser, run_runs
from unigrad.train.store import (
    APPLICATION_ID,
    CSV_COLUMNS,
    SCHEMA_VERSION,
    Store,
    default_store_path,
    run_config,
    run_key,
)

ENV = {"python": "3.11", "torch": "2.x", "device": "cpu"}


def _config(method: str = "backprop", seed: int = 0, **extra) -> dict:
    return {
        "task": "digits-mlp",
        "method": method,
        "name": method.split(":")[0],
        "order": 1,
        "optimizer": "adam",
        "lr": 3e-3,
        "options": {},
        "decorrelation": None,
        "budget": "steps=4",
        "batch_size": 64,
        "seed": seed,
        "device": "cpu",
        "dtype": "float32",
        "eval_points": 2,
        **extra,
    }


def _history(n: int = 3, acc0: float = 0.1) -> list[dict]:
    """Points shaped like the trainer's history: no train loss at step 0."""
    return [
        {
            "epoch": i * 0.25,
            "step": 2 * i,
            "forward_equivalents": 128.0 * i,
            "seconds": 0.01 * i,
            "train_loss": None if i == 0 else 2.0 / i,
            "test_loss": 2.3 - 0.1 * i,
            "test_accuracy": acc0 + 0.1 * i,
        }
        for i in range(n)
    ]


def _result(history: list[dict], status: str = "ok", **extra) -> dict:
    return {
        "method": "backprop",
        "seed": 0,
        "status": status,
        "message": "",
        "steps": history[-1]["step"],
        "forward_equivalents": history[-1]["forward_equivalents"],
        "train_seconds": history[-1]["seconds"],
        "last_good_step": history[-1]["step"],
        "decorrelation": None,
        "final": history[-1],
        "history": history,
        **extra,
    }


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and not isinstance(e.value, sqlite3.Error) and e.value.__cause__ is None
    return msg


# ------------------------------------------------------------------------------------------------ schema


def test_schema_is_created_in_wal_mode_with_a_version(tmp_path):
    path = tmp_path / "a" / "b" / "store.sqlite"
    with Store(path) as store:
        assert path.exists() and store.schema_version == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"runs", "points", "groups", "group_runs"} <= tables
        cols = [r[1] for r in conn.execute("PRAGMA table_info(points)")]
        assert cols == [
            "run_id",
            "step",
            "epoch",
            "forward_equivalents",
            "seconds",
            "train_loss",
            "test_loss",
            "test_accuracy",
        ]
        with pytest.raises(sqlite3.IntegrityError):  # the status CHECK
            conn.execute(
                "INSERT INTO runs (key, kind, status, config, environment, created, updated) "
                "VALUES ('k', 'train', 'bogus', '{}', '{}', 0, 0)"
            )
    finally:
        conn.close()
    # reopening an existing store keeps it; foreign keys are on for the store's own connection
    with Store(path) as store:
        assert store._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_newer_schema_and_foreign_databases_are_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(UnigradError, match="schema version 99, newer than this unigrad understands") as e:
        Store(path)
    _one_line(e)

    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE photos (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(UnigradError, match="an SQLite database but not a unigrad experiment store") as e:
        Store(other)
    _one_line(e)
    conn = sqlite3.connect(other)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["photos"]  # left untouched
    conn.close()


def test_default_store_path_and_env_override(monkeypatch, tmp_path):
    monkeypatch.delenv("UNIGRAD_STORE", raising=False)
    assert default_store_path() == Path("runs") / "unigrad.sqlite"
    monkeypatch.setenv("UNIGRAD_STORE", str(tmp_path / "x.sqlite"))
    assert default_store_path() == tmp_path / "x.sqlite"
    with Store() as store:
        assert store.path == tmp_path / "x.sqlite" and store.path.exists()


# ------------------------------------------------------------------------------------------------ keys


def test_run_key_is_canonical():
    a = _config()
    b = dict(reversed(list(a.items())))  # same content, other order
    assert run_key(a) == run_key(b)
    assert len(run_key(a)) == 64 and all(c in "0123456789abcdef" for c in run_key(a))
    assert run_key(a) != run_key(_config(seed=1))
    assert run_key(a) != run_key(_config(lr=1e-3))
    assert run_key(a) != run_key(_config(options={"probes": 4}))
    # 1 and 1.0 are the same value; a bool is not a number here
    assert run_key(_config(batch_size=64.0)) == run_key(a)
    assert run_key({"x": 1}) != run_key({"x": True})
    # non-finite floats give strict JSON (as null), not an error
    assert run_key({"x": float("nan")}) == run_key({"x": None})
    with pytest.raises(UnigradError, match="must be a mapping"):
        run_key(["task"])  # type: ignore[arg-type]


def test_run_config_flattens_a_method_spec():
    from unigrad.train.methods import parse_method

    spec = parse_method("dbp")
    c = run_config(
        task="digits-mlp",
        method=spec.to_dict(),
        budget="epochs=1",
        batch_size=64,
        seed=2,
        device="cpu",
        dtype="torch.float32",
        eval_points=20,
    )
    assert c["method"] == "dbp" and c["name"] == "backprop" and c["dtype"] == "float32" and c["seed"] == 2
    assert c["decorrelation"]["rule"] == "cov-identity"
    assert run_key(c) != run_key({**c, "decorrelation": None})


# ------------------------------------------------------------------------------------------------ runs and points


def test_start_points_finish_round_trip(tmp_path):
    history = _history(4)
    history[2]["train_loss"] = float("nan")  # a non-finite metric round-trips as None
    with Store(tmp_path / "s.sqlite") as store:
        run = store.start_run(_config(), ENV)
        assert (run.status, run.result, run.task, run.method, run.seed, run.kind) == (
            "running",
            None,
            "digits-mlp",
            "backprop",
            0,
            "train",
        )
        assert run.key == run_key(_config()) and run.config == _config() and run.environment == ENV
        assert store.add_points(run.id, history[:2]) == 2
        assert store.points(run.id) == history[:2]
        done = store.finish_run(run.id, "ok", _result(history, peak_memory_bytes=1234, odd=float("inf")))
        assert done.status == "ok" and done.finished and done.updated >= run.created
        assert "history" not in done.result and done.result["odd"] is None
        assert done.result["final"] == history[-1] and done.result["peak_memory_bytes"] == 1234
        points = store.points(run.id)
        assert points[2]["train_loss"] is None
        history[2]["train_loss"] = None
        assert points == history
        assert list(points[0]) == list(history[0])  # the trainer's key order
        # lookups by id, digit string, key and key prefix
        for ref in (run.id, str(run.id), run.key, run.key[:8]):
            assert store.get(ref) == done
        with pytest.raises(UnigradError, match="no run 99"):
            store.get(99)
        with pytest.raises(UnigradError, match="neither a run id nor a run key"):
            store.get("zz")
        assert store.latest_points()[run.id] == history[-1]
        raw = store._db.execute("SELECT result FROM runs WHERE id = ?", (run.id,)).fetchone()[0]
        json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_start_run_on_an_existing_key_returns_it(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        first = store.start_run(_config(), ENV)
        again = store.start_run(dict(reversed(list(_config().items()))), {"other": "env"})
        assert again == first
        store.finish_run(first.id, "ok", _result(_history()))
        assert store.start_run(_config(), ENV).status == "ok"  # the caller skips it
        second = store.start_run(_config(seed=1), ENV)
        assert second.id != first.id
        assert [r.id for r in store.runs()] == [first.id, second.id]
        assert [r.id for r in store.runs(status="running")] == [second.id]
        assert [r.id for r in store.runs(task="digits-mlp", method="backprop", status="ok")] == [first.id]
        assert store.runs(method="spsa") == []
        with pytest.raises(UnigradError, match="status must be one of"):
            store.runs(status="done")
        # reset: running again, no points, no result
        fresh = store.reset(first.id, environment={"new": 1})
        assert (fresh.status, fresh.result, fresh.environment) == ("running", None, {"new": 1})
        assert store.points(first.id) == []


def test_points_upsert_by_step_and_are_validated(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        run = store.start_run(_config(), ENV)
        store.add_points(run.id, _history(2))
        store.add_points(run.id, [{**_history(2)[1], "test_accuracy": 0.9}])
        assert [p["test_accuracy"] for p in store.points(run.id)] == [0.1, 0.9]
        bad = [
            ({"epoch": 0, "forward_equivalents": 0, "seconds": 0}, "needs an integer step"),
            ({"step": -1, "epoch": 0, "forward_equivalents": 0, "seconds": 0}, "needs an integer step"),
            ({"step": 1, "forward_equivalents": 0, "seconds": 0}, "has no epoch"),
            ({"step": 1, "epoch": math.inf, "forward_equivalents": 0, "seconds": 0}, "epoch must be finite"),
            ({"step": 1, "epoch": 0, "forward_equivalents": 0, "seconds": "x"}, "seconds must be a number"),
            ({"step": 1, "epoch": 0, "forward_equivalents": 0, "seconds": 0, "acc": 1}, "unknown fields acc"),
        ]
        for point, match in bad:
            with pytest.raises(UnigradError, match=match) as e:
                store.add_points(run.id, [point])
            _one_line(e)
        with pytest.raises(UnigradError, match="no run 7"):
            store.add_points(7, _history(1))


def test_points_of_extra_evaluation_sets_are_checked_not_stored(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        run = store.start_run(_config(), ENV)
        point = {**_history(1)[0], "transfer_loss": 0.5, "transfer_accuracy": 0.75}
        store.add_points(run.id, [point])
        assert store.points(run.id) == _history(1)
        with pytest.raises(UnigradError, match="transfer_accuracy must be a number") as e:
            store.add_points(run.id, [{**point, "transfer_accuracy": "x"}])
        _one_line(e)


def test_a_failing_write_leaves_the_store_as_it_was(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        run = store.start_run(_config(), ENV)
        store.add_points(run.id, _history(2))
        before = (store.get(run.id), store.points(run.id))

        # a bad point after two good ones: none of the three is stored
        batch = [*_history(5)[2:4], {"step": 9, "epoch": 1.0}]
        with pytest.raises(UnigradError, match="has no forward_equivalents"):
            store.add_points(run.id, batch)
        assert (store.get(run.id), store.points(run.id)) == before

        # an exception raised by the caller's iterable between inserts
        def points():
            yield from _history(5)[2:4]
            raise RuntimeError("producer failed")

        with pytest.raises(RuntimeError, match="producer failed"):
            store.add_points(run.id, points())
        assert (store.get(run.id), store.points(run.id)) == before

        # finish_run with a bad history point: still running, no result, no new points
        with pytest.raises(UnigradError, match="needs an integer step"):
            result = _result(_history(4))
            result["history"].append({"step": None})
            store.finish_run(run.id, "ok", result)
        assert (store.get(run.id), store.points(run.id)) == before
        # and the store still takes writes
        store.finish_run(run.id, "diverged", _result(_history(3), status="diverged", message="lr too high"))
        assert store.get(run.id).message == "lr too high"


def test_finished_runs_refuse_new_points_and_a_second_finish(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        run = store.start_run(_config(), ENV)
        with pytest.raises(UnigradError, match="status must be one of ok, diverged, failed"):
            store.finish_run(run.id, "running", {})
        store.finish_run(run.id, "failed", {"message": "out of memory"})
        assert store.get(run.id).result == {"message": "out of memory"}
        with pytest.raises(UnigradError, match=r"is finished \(failed\); reset it"):
            store.add_points(run.id, _history(1))
        with pytest.raises(UnigradError, match="already finished"):
            store.finish_run(run.id, "ok", _result(_history()))


def test_delete_cascades_to_points_and_groups(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        a = store.start_run(_config(), ENV)
        b = store.start_run(_config(seed=1), ENV)
        store.add_points(a.id, _history(3))
        store.create_group("cmp", {"task": "digits-mlp"}, ENV)
        store.add_to_group("cmp", [a.id, b.id])
        store.delete(a.id)
        assert [r.id for r in store.runs()] == [b.id]
        assert store._db.execute("SELECT count(*) FROM points").fetchone()[0] == 0
        assert store.group("cmp").run_ids == [b.id]
        with pytest.raises(UnigradError, match=f"no run {a.id}"):
            store.delete(a.id)


def test_groups_keep_their_runs_in_order(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        ids = [store.start_run(_config(seed=s), ENV).id for s in range(3)]
        g = store.create_group("compare-digits-mlp-1", {"budget": "steps=4"}, ENV)
        assert (g.name, g.kind, g.config, g.run_ids) == ("compare-digits-mlp-1", "compare", {"budget": "steps=4"}, [])
        assert store.create_group("compare-digits-mlp-1").id == g.id  # get-or-create
        store.add_to_group(g.id, [ids[2], ids[0]])
        assert store.add_to_group("compare-digits-mlp-1", [ids[0], ids[1]]).run_ids == [ids[2], ids[0], ids[1]]
        with pytest.raises(UnigradError, match="no run 42"):
            store.add_to_group(g.id, [42])
        assert store.group(g.id).run_ids == [ids[2], ids[0], ids[1]]  # the failed append changed nothing
        assert [x.name for x in store.groups()] == ["compare-digits-mlp-1"]
        with pytest.raises(UnigradError, match="group name"):
            store.create_group("12")
        store.delete_group("compare-digits-mlp-1")
        assert store.groups() == [] and len(store.runs()) == 3
        with pytest.raises(UnigradError, match="no group"):
            store.group("compare-digits-mlp-1")


# ------------------------------------------------------------------------------------------------ concurrency


def test_a_reader_sees_committed_data_while_a_writer_is_busy(tmp_path):
    path = tmp_path / "s.sqlite"
    writer, reader = Store(path), Store(path, create=False, timeout=0.1)
    try:
        run = writer.start_run(_config(), ENV)
        assert reader.get(run.id).status == "running"  # a committed start is visible at once
        writer.add_points(run.id, _history(1))
        seen: list[int] = []

        def points():
            yield _history(3)[1]
            # the writer holds its write transaction open here: the reader is not blocked
            # (timeout 0.1 s) and sees the last committed state only
            seen.append(len(reader.points(run.id)))
            yield _history(3)[2]

        writer.add_points(run.id, points())
        assert seen == [1]
        assert reader.points(run.id) == _history(3)
        writer.finish_run(run.id, "ok", _result(_history(3)))
        assert reader.get(run.id).status == "ok"
    finally:
        writer.close()
        reader.close()


_CHILD = """
import sys
from unigrad.train.store import Store
store = Store(sys.argv[1])
run = store.get(1)
def points():
    yield {"step": 10, "epoch": 1.0, "forward_equivalents": 1.0, "seconds": 1.0}
    print("writing", flush=True)
    sys.stdin.readline()
    yield {"step": 11, "epoch": 1.1, "forward_equivalents": 1.1, "seconds": 1.1}
store.add_points(run.id, points())
print("done", flush=True)
"""


def test_a_reader_in_this_process_while_another_process_writes(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        run = store.start_run(_config(), ENV)
        store.add_points(run.id, _history(1))
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout.readline().strip() == "writing"
            with Store(path, create=False, timeout=0.1) as reader:  # not blocked by the open write
                assert [p["step"] for p in reader.points(run.id)] == [0]
                assert [p["step"] for p in store.points(run.id)] == [0]
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "done"
            assert child.wait(timeout=60) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert [p["step"] for p in store.points(run.id)] == [0, 10, 11]


# ------------------------------------------------------------------------------------------------ bad files


def test_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"\xde\xad\xbe\xef not sqlite " * 500)
    with pytest.raises(UnigradError, match=r"is not an SQLite database.*move it away or use another path") as e:
        Store(path)
    _one_line(e)
    assert path.read_bytes().startswith(b"\xde\xad\xbe\xef")  # left as it was


def test_a_corrupt_database(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        for seed in range(10):
            run = store.start_run(_config(seed=seed), {"note": "x" * 500})
            store.add_points(run.id, _history(40))
    size = path.stat().st_size
    assert size > 3 * 4096 and not (tmp_path / "s.sqlite-wal").exists()  # checkpointed on close
    with path.open("r+b") as f:  # keep the header page, scramble the rest
        f.seek(4096)
        f.write(bytes((i * 7 + 13) % 256 for i in range(size - 4096)))
    with pytest.raises(UnigradError, match=r"is corrupt .*restore it from a backup") as e:
        with Store(path) as store:
            for run in store.runs():
                store.points(run.id)
    _one_line(e)


def _two_runs(path: Path) -> int:
    """A store with two runs of 40 points each (several pages); its page size."""
    with Store(path) as store:
        for seed in range(2):
            run = store.start_run(_config(seed=seed), {"note": "x" * 500})
            store.add_points(run.id, _history(40))
    conn = sqlite3.connect(path)
    try:
        pages = {name: page for name, page in conn.execute("SELECT name, rootpage FROM sqlite_master WHERE rootpage")}
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    assert pages["runs"] == 2 and not Path(f"{path}-wal").exists()  # the runs table: page 2, at page_size * 1
    return page_size


def _damage_page_header(path: Path, page: int, header: bytes, page_size: int = 4096) -> None:
    """Overwrite the start of ``page`` (1-based: page k starts at page_size * (k - 1)), past the file header."""
    with path.open("r+b") as f:
        f.seek(page_size * (page - 1))
        f.write(header)


_EMPTY_LEAF = bytes([0x0D, 0, 0, 0, 0, 0x10, 0, 0])  # a valid header of an empty table leaf page (4 KiB pages)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("page", "header"),
    [
        (2, _EMPTY_LEAF),  # the runs page looks empty: its rows vanish, their index entries stay
        (3, b"\xff\x00\x13\x37" * 4),  # an invalid page type in an index page
        (6, _EMPTY_LEAF),  # the points table's root page looks empty
        (7, bytes(8)),  # page type 0
    ],
    ids=["runs-page-emptied", "index-page-invalid", "points-root-emptied", "page-type-zero"],
)
def test_damaged_page_headers_are_found_before_anything_is_written(tmp_path, page, header):
    path = tmp_path / "s.sqlite"
    assert _two_runs(path) == 4096
    _damage_page_header(path, page, header)
    damaged = _sha256(path)
    for create in (True, False):
        with pytest.raises(UnigradError, match=r"the experiment store .*s\.sqlite is corrupt .*restore it") as e:
            with Store(path, create=create) as store:  # before the fix the write went through
                store.start_run(_config(seed=7), ENV)
        _one_line(e)
    assert _sha256(path) == damaged  # byte for byte as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]  # no -wal, -shm or -journal beside it


def test_a_damaged_store_with_a_wal_left_by_a_killed_writer_is_not_checkpointed(tmp_path):
    path = tmp_path / "s.sqlite"
    _two_runs(path)
    conn = sqlite3.connect(path, isolation_level=None)  # a writer whose commit is only in the -wal
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("UPDATE runs SET updated = 1")
    saved = {name: (tmp_path / name).read_bytes() for name in ("s.sqlite", "s.sqlite-wal")}
    conn.close()  # checkpoints and removes the -wal: put back the files as a killed process leaves them
    for name, data in saved.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "s.sqlite-shm").unlink(missing_ok=True)
    _damage_page_header(path, 3, bytes(8))
    damaged, wal = _sha256(path), _sha256(tmp_path / "s.sqlite-wal")
    with pytest.raises(UnigradError, match="is corrupt"):
        Store(path)
    assert _sha256(path) == damaged and _sha256(tmp_path / "s.sqlite-wal") == wal


def test_foreign_newer_and_empty_databases_are_refused_unchanged(tmp_path):
    newer = tmp_path / "newer.sqlite"
    Store(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA journal_mode=DELETE")  # as a newer unigrad might leave it
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE photos (id INTEGER)")
    conn.commit()
    conn.close()
    empty = tmp_path / "empty.sqlite"
    conn = sqlite3.connect(empty)
    conn.execute("VACUUM")  # a valid SQLite file without tables
    conn.close()
    assert empty.stat().st_size > 0
    cases = [(newer, True, "newer than this unigrad"), (other, True, "not a unigrad experiment store")]
    cases += [(empty, False, "an empty SQLite database, not a unigrad experiment store")]
    for path, create, message in cases:
        before = _sha256(path)
        with pytest.raises(UnigradError, match=message) as e:
            Store(path, create=create)
        _one_line(e)
        assert _sha256(path) == before, path  # no switch to WAL, no schema: the header bytes stay
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite", "newer.sqlite", "other.sqlite"]
    with Store(empty) as store:  # a command that records runs sets up an empty database
        assert store.schema_version == SCHEMA_VERSION


def test_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user can write to read-only folders (root)")
        with pytest.raises(UnigradError, match=r"cannot write the experiment store .*writable location") as e:
            Store(folder / "s.sqlite")
        _one_line(e)
        with pytest.raises(UnigradError, match="cannot create the folder of the experiment store") as e:
            Store(folder / "sub" / "s.sqlite")
        _one_line(e)
    finally:
        folder.chmod(0o755)


def test_unwritable_locations_even_for_root(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnigradError, match="cannot create the folder of the experiment store") as e:
        Store(tmp_path / "file" / "s.sqlite")  # a parent that is a file
    _one_line(e)
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    with pytest.raises(UnigradError, match=r"cannot write the experiment store .*writable location") as e:
        Store("/proc/unigrad-store.sqlite")  # no one may create files in /proc
    _one_line(e)


def test_read_only_use_refuses_a_missing_store_and_a_folder(tmp_path):
    with pytest.raises(UnigradError, match=r"no experiment store at .*--store or \$UNIGRAD_STORE"):
        Store(tmp_path / "none.sqlite", create=False)
    assert not (tmp_path / "none.sqlite").exists()
    with pytest.raises(UnigradError, match="is a folder"):
        Store(tmp_path)
    store = Store(tmp_path / "s.sqlite")
    store.close()
    store.close()
    with pytest.raises(UnigradError, match="is closed"):
        store.runs()


# ------------------------------------------------------------------------------------------------ CSV


def test_export_csv(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        a = store.start_run(_config(), ENV)
        store.finish_run(a.id, "ok", _result(_history(3)))
        b = store.start_run(_config("spsa:probes=4", seed=1), ENV)
        store.add_points(b.id, _history(2, acc0=0.2))
        store.start_run(_config(seed=5), ENV)  # no points: no rows
        with pytest.raises(UnigradError, match=r"the folder .*out does not exist; create it first") as e:
            store.export_csv(tmp_path / "out" / "all.csv")
        _one_line(e)
        assert not (tmp_path / "out").exists()  # a file path does not create folders
        (tmp_path / "out").mkdir()
        assert store.export_csv(tmp_path / "out" / "all.csv") == 5
        rows = list(csv.DictReader((tmp_path / "out" / "all.csv").open(newline="")))
        assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 5
        assert [(r["run_id"], r["method"], r["seed"], r["status"], r["step"]) for r in rows] == [
            (str(a.id), "backprop", "0", "ok", "0"),
            (str(a.id), "backprop", "0", "ok", "2"),
            (str(a.id), "backprop", "0", "ok", "4"),
            (str(b.id), "spsa:probes=4", "1", "running", "0"),
            (str(b.id), "spsa:probes=4", "1", "running", "2"),
        ]
        assert rows[0]["train_loss"] == "" and rows[0]["task"] == "digits-mlp" and rows[0]["key"] == a.key
        assert float(rows[4]["test_accuracy"]) == _history(2, acc0=0.2)[1]["test_accuracy"]  # exact
        buffer = io.StringIO()
        assert store.export_csv(buffer, [b.id]) == 2
        assert buffer.getvalue().splitlines()[0] == ",".join(CSV_COLUMNS)
        with pytest.raises(UnigradError, match="no run 99"):
            store.export_csv(tmp_path / "x.csv", [99])
        assert not (tmp_path / "x.csv").exists()
        first = (tmp_path / "out" / "all.csv").read_bytes()
        with pytest.raises(UnigradError, match=r"all\.csv exists; pass --force to replace it"):
            store.export_csv(tmp_path / "out" / "all.csv", [b.id])
        assert (tmp_path / "out" / "all.csv").read_bytes() == first
        assert store.export_csv(tmp_path / "out" / "all.csv", [b.id], overwrite=True) == 2
        assert len((tmp_path / "out" / "all.csv").read_text().splitlines()) == 3
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["all.csv"]  # no temporary file left
        for own in ("s.sqlite", "s.sqlite-wal"):  # never over the store's own files, even with overwrite
            with pytest.raises(UnigradError, match="is the experiment store's own file"):
                store.export_csv(tmp_path / own, overwrite=True)


def test_export_csv_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import errno

    with Store(tmp_path / "s.sqlite") as store:
        run = store.start_run(_config(), ENV)
        store.add_points(run.id, _history(2))
        target = tmp_path / "points.csv"
        target.write_text("earlier\n")

        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        with monkeypatch.context() as mp:
            mp.setattr(os, "fsync", full)
            with pytest.raises(UnigradError, match=r"No space left on device; the earlier points\.csv there is kept"):
                store.export_csv(target, overwrite=True)
        assert target.read_text() == "earlier\n"

        def no_links(src, dst):
            raise PermissionError(errno.EPERM, "Operation not permitted")

        with monkeypatch.context() as mp:  # a file system without hard links: check, then rename
            mp.setattr(os, "link", no_links)
            with pytest.raises(UnigradError, match="exists; pass --force"):
                store.export_csv(target)
            assert target.read_text() == "earlier\n"
            assert store.export_csv(tmp_path / "new.csv") == 2
        assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".csv" or ".tmp" in p.name) == [
            "new.csv",
            "points.csv",
        ]


# ------------------------------------------------------------------------------------------------ unigrad runs


def _runs(*argv: str) -> int:
    parser = Parser(prog="unigrad")
    sub = parser.add_subparsers(dest="command")
    add_runs_parser(sub)
    args = parser.parse_args(["runs", *argv])
    assert args.command == "runs"
    return run_runs(args)


@pytest.fixture
def filled(tmp_path) -> Path:
    """A store with a group of three finished runs (two backprop seeds, one spsa) and one running run."""
    path = tmp_path / "store.sqlite"
    with Store(path) as store:
        g = store.create_group("compare-digits-mlp-x", {"task": "digits-mlp"}, ENV)
        ids = []
        for method, seed, acc0 in (("backprop", 0, 0.5), ("backprop", 1, 0.6), ("spsa:probes=4", 0, 0.1)):
            run = store.start_run(_config(method, seed), ENV)
            store.finish_run(run.id, "ok", _result(_history(3, acc0), peak_memory_bytes=2048))
            ids.append(run.id)
        store.add_to_group(g.id, ids)
        running = store.start_run(_config("es", 0), ENV)
        store.add_points(running.id, _history(2, 0.3))
    return path


def test_runs_list(filled, capsys):
    assert _runs("list", "--store", str(filled)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "task", "method", "seed", "status", "steps", "test", "acc", "updated"]
    assert len(lines) == 5
    assert lines[1].split()[:7] == ["1", "digits-mlp", "backprop", "0", "ok", "4", "0.7000"]
    assert lines[4].split()[:7] == ["4", "digits-mlp", "es", "0", "running", "2", "0.4000"]
    assert _runs("list", "--store", str(filled), "--status", "running", "--task", "digits-mlp") == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert _runs("list", "--store", str(filled), "--method", "nope") == 0
    assert "no runs match" in capsys.readouterr().out


def test_runs_show(filled, capsys):
    assert _runs("show", "2", "--store", str(filled)) == 0
    out = capsys.readouterr().out
    assert out.startswith("run 2 (train): digits-mlp backprop seed 1, ok")
    assert '"lr": 0.003' in out and '"python": "3.11"' in out and '"peak_memory_bytes": 2048' in out
    assert "| step | epoch |" in out and "| 4 | 0.500 |" in out
    with Store(filled) as store:
        key = store.get(4).key
    assert _runs("show", key[:10], "--store", str(filled)) == 0
    assert "(none: the run is running)" in capsys.readouterr().out


def test_runs_compare_ids_and_group(filled, capsys):
    assert _runs("compare", "compare-digits-mlp-x", "--store", str(filled)) == 0
    by_name = capsys.readouterr().out
    assert _runs("compare", "--group", "compare-digits-mlp-x", "--store", str(filled)) == 0
    assert capsys.readouterr().out == by_name
    assert by_name.startswith("# group compare-digits-mlp-x")
    assert "Task: digits-mlp. Budget: steps=4 per run, batch size 64, cpu float32." in by_name
    assert "| method | order | optimizer | test accuracy |" in by_name
    backprop = next(x for x in by_name.splitlines() if x.startswith("| backprop |"))
    assert "0.750 ± 0.071" in backprop and "2 KiB" in backprop
    assert "| spsa:probes=4 |" in by_name
    assert _runs("compare", "1", "4", "--store", str(filled)) == 0
    out = capsys.readouterr().out
    assert out.startswith("# runs 1, 4") and "| es |" in out and "Still running" in out and "runs 4" in out


def test_runs_export(filled, tmp_path, capsys):
    target = tmp_path / "points.csv"
    assert _runs("export", "--csv", str(target), "--store", str(filled)) == 0
    assert f"wrote 11 rows to {target}" in capsys.readouterr().out
    assert _runs("export", "--csv", "-", "3", "--store", str(filled)) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["method"] for r in rows} == {"spsa:probes=4"} and len(rows) == 3
    assert _runs("export", "--csv", "-", "--group", "compare-digits-mlp-x", "--store", str(filled)) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 9


def test_runs_groups_and_errors(filled, tmp_path, capsys):
    assert _runs("groups", "--store", str(filled)) == 0
    assert "compare-digits-mlp-x  compare  1,2,3" in capsys.readouterr().out
    with pytest.raises(UnigradError, match="no experiment store"):
        _runs("list", "--store", str(tmp_path / "missing.sqlite"))
    with pytest.raises(UnigradError, match="runs needs a sub-command"):
        _runs()
    with pytest.raises(UnigradError, match="no run 99"):
        _runs("show", "99", "--store", str(filled))
    with pytest.raises(UnigradError, match="give run ids or a group"):
        _runs("compare", "--store", str(filled))
    with pytest.raises(UnigradError, match="either run ids or --group"):
        _runs("compare", "1", "--group", "compare-digits-mlp-x", "--store", str(filled))
    from unigrad.cli import UsageError

    with pytest.raises(UsageError, match="invalid choice"):
        _runs("list", "--status", "done")


def test_runs_compare_names_the_groups_when_a_group_is_unknown(filled, tmp_path, capsys):
    store = ["--store", str(filled)]
    known = r"its groups are 'compare-digits-mlp-x' \(see unigrad runs groups\)$"
    for argv in (["compare", "nosuchgroup"], ["compare", "abcd"], ["export", "--csv", "-", "nosuchgroup"]):
        with pytest.raises(
            UnigradError,
            match=r"no group '(nosuchgroup|abcd)' in the experiment store .*store\.sqlite, "
            r"nor a run with that id or key; " + known,
        ) as e:  # before: "neither a run id nor ..."
            _runs(*argv, *store)
        _one_line(e)
    with pytest.raises(UnigradError, match=r"no group 'nosuchgroup' in the experiment store .*; " + known):
        _runs("compare", "--group", "nosuchgroup", *store)
    assert _runs("compare", " 1 ", *store) == 0  # an id with spaces is still a run
    assert capsys.readouterr().out.startswith("# runs 1")
    empty = tmp_path / "empty.sqlite"
    Store(empty).close()
    with pytest.raises(UnigradError, match=r"no group 'nosuchgroup' .*; it has no groups$"):
        _runs("compare", "nosuchgroup", "--store", str(empty))
    with pytest.raises(UnigradError, match=r"no group 'g' .*; it has no groups$"):
        _runs("compare", "--group", "g", "--store", str(empty))


def test_a_real_training_run_round_trips(tmp_path, capsys):
    import torch

    from unigrad.train import train
    from unigrad.train.methods import parse_method
    from unigrad.train.rundir import environment

    spec = parse_method("backprop")
    config = run_config(
        task="digits-mlp",
        method=spec.to_dict(),
        budget="steps=3",
        batch_size=32,
        seed=0,
        device="cpu",
        dtype="float32",
        eval_points=3,
    )
    with Store(tmp_path / "s.sqlite") as store:
        run = store.start_run(config, environment(torch.device("cpu")))
        r = train("digits-mlp", spec.name, lr=spec.lr, budget="steps=3", batch_size=32, seed=0, eval_points=3)
        done = store.finish_run(run.id, r.status, r.to_dict())
        assert store.points(run.id) == r.history
        assert done.result["steps"] == 3 and done.result["final"] == r.final
        assert store.start_run(config, {}).status == "ok"
    assert _runs("compare", str(run.id), "--store", str(tmp_path / "s.sqlite")) == 0
    assert "| backprop | 1 | adam 0.003 |" in capsys.readouterr().out
