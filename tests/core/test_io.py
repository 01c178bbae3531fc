"""unigrad.core.io: files written whole or not at all, and strict JSON."""

from __future__ import annotations

import errno
import json
import math
import os
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from unigrad.core.errors import UnigradError
from unigrad.core.io import TargetExistsError, atomic_path, atomic_write, finite_json, jsonable, to_json, write_json


def _fail(monkeypatch: pytest.MonkeyPatch, name: str, code: int) -> None:
    """Make ``os.<name>`` fail with ``code`` (tests run as root, so chmod would stop nothing)."""

    def failing(*args: Any, **kw: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, name, failing)


# ------------------------------------------------------------------------------------------------ atomic writes


def test_writes_bytes_and_text_exactly(tmp_path: Path) -> None:
    atomic_write(tmp_path / "b.bin", b"\x00\xffab")
    atomic_write(tmp_path / "t.csv", "a,b\r\nx,\u00e9\n")  # no newline translation, UTF-8
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xffab"
    assert (tmp_path / "t.csv").read_bytes() == "a,b\r\nx,\u00e9\n".encode()
    atomic_write(tmp_path / "b.bin", b"new")
    assert (tmp_path / "b.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "t.csv"]


@pytest.mark.parametrize(("function", "code"), [("fsync", errno.ENOSPC), ("replace", errno.EROFS)])
def test_a_failed_write_keeps_the_earlier_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, function: str, code: int
) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(b"earlier")
    _fail(monkeypatch, function, code)
    with pytest.raises(UnigradError) as info:
        atomic_write(path, "new")
    assert str(info.value) == f"cannot write {path}: {os.strerror(code)}; the earlier results.json there is kept"
    with pytest.raises(UnigradError, match=f"cannot write {tmp_path / 'new.json'}: .*; no new.json was written$"):
        atomic_write(tmp_path / "new.json", "new")
    with pytest.raises(UnigradError, match=r"^cannot write checkpoint .*c\.pt: .*; no checkpoint was written$"):
        atomic_write(tmp_path / "c.pt", b"new", what="checkpoint")
    monkeypatch.undo()
    assert path.read_bytes() == b"earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


def test_the_message_names_the_kind_of_file_that_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.pt"
    path.write_bytes(b"earlier")
    _fail(monkeypatch, "replace", errno.EROFS)
    with pytest.raises(UnigradError) as info:
        atomic_write(path, b"new", what="checkpoint")
    assert str(info.value) == f"cannot write checkpoint {path}: Read-only file system; the previous checkpoint is kept"


def test_an_error_in_the_block_propagates_and_removes_the_temporary(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    path.write_bytes(b"earlier")
    for unique in (True, False):
        with pytest.raises(KeyError), atomic_path(path, unique=unique) as tmp:
            tmp.write_bytes(b"half")
            raise KeyError("not a file system error")
        with pytest.raises(UnigradError, match=r"No space left on device; the earlier plot\.png there is kept"):
            with atomic_path(path, unique=unique):
                raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_bytes() == b"earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_no_overwrite_refuses_an_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.csv"
    atomic_write(path, "first", overwrite=False)
    assert path.read_text() == "first"
    with pytest.raises(TargetExistsError, match=f"^{path} exists$"):
        atomic_write(path, "second", overwrite=False)
    _fail(monkeypatch, "link", errno.EPERM)  # a file system without hard links: check, then rename
    with pytest.raises(TargetExistsError):
        atomic_write(path, "second", overwrite=False)
    atomic_write(tmp_path / "y.csv", "new", overwrite=False)
    monkeypatch.undo()
    assert path.read_text() == "first" and (tmp_path / "y.csv").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv", "y.csv"]


def test_temporary_names(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    (tmp_path / "report.md.tmp").write_text("someone else's\n")
    with atomic_path(path) as tmp:  # unique: a new hidden name, created exclusively
        assert tmp.parent == tmp_path and tmp.name.startswith(".report.md.") and tmp.name.endswith(".tmp")
        assert tmp.read_bytes() == b""
        tmp.write_text("one")
    assert (tmp_path / "report.md.tmp").read_text() == "someone else's\n"
    with atomic_path(path, unique=False) as tmp:  # fixed: <name>.tmp, a stale one is reused
        assert tmp == tmp_path / "report.md.tmp"
        tmp.write_text("two")
    assert path.read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_fsync_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[bool] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))  # True: the folder
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "a", b"x", fsync=False)
    assert synced == []
    atomic_write(tmp_path / "a", b"x")
    assert synced == [False]
    synced.clear()
    atomic_write(tmp_path / "a", b"x", fsync_folder=True)
    assert synced == [False, True]


def test_make_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.pt"
    with pytest.raises(UnigradError, match=r"No such file or directory; no c\.pt was written"):
        atomic_write(path, b"x")
    assert not (tmp_path / "a").exists()  # nothing is created unless asked
    atomic_write(path, b"x", make_parents=True)
    assert path.read_bytes() == b"x"
    with pytest.raises(UnigradError, match=r"^cannot write checkpoint .*: File exists; no checkpoint was written$"):
        atomic_write(path / "under-a-file.pt", b"x", make_parents=True, what="checkpoint")


# ------------------------------------------------------------------------------------------------ JSON


def test_finite_json_replaces_non_finite_floats() -> None:
    nan, inf = math.nan, math.inf
    obj = {"a": nan, "b": [inf, -inf, 1.5], "c": (1, (2, nan)), 3: {"d": None, "e": True, "f": "s"}}
    expected = {"a": None, "b": [None, None, 1.5], "c": [1, [2, None]], "3": {"d": None, "e": True, "f": "s"}}
    assert finite_json(obj) == expected
    assert finite_json(types.MappingProxyType({(1, 2): nan})) == {"(1, 2)": None}
    assert finite_json(np.float64("nan")) is None and finite_json(np.float64(0.25)) == 0.25


def test_to_json_of_tensors_numpy_paths_and_other_objects() -> None:
    obj = {
        "tensor": torch.tensor([1.0, float("nan")]),
        "scalar": torch.tensor(float("inf")),
        "ints": torch.tensor([1, 2]),
        "f32": np.float32("nan"),
        "f32b": np.float32(0.5),
        "i64": np.int64(7),
        "bool": np.bool_(True),
        "array": np.array([[1.0, np.inf]]),
        "path": Path("/tmp/a b"),
        "dtype": torch.float32,
        "set": {1},
    }
    text = to_json(obj)
    assert text == (
        '{"tensor":[1.0,null],"scalar":null,"ints":[1,2],"f32":null,"f32b":0.5,"i64":7,"bool":true,'
        '"array":[[1.0,null]],"path":"/tmp/a b","dtype":"torch.float32","set":"{1}"}'
    )
    assert "NaN" not in text and "Infinity" not in text
    assert jsonable(Path("x")) == "x" and jsonable(np.int64(3)) == 3


def test_to_json_layouts(tmp_path: Path) -> None:
    obj = {"b": 1, "a": [1, 2.5]}
    assert to_json(obj) == '{"b":1,"a":[1,2.5]}'
    assert to_json(obj, sort_keys=True) == '{"a":[1,2.5],"b":1}'
    assert to_json(obj, indent=1) == json.dumps(obj, indent=1)
    write_json(tmp_path / "r.json", {"x": float("nan")})
    assert (tmp_path / "r.json").read_text() == '{\n "x": null\n}\n'
