"""Bad input to the command line: fuzzed argument lists, output-folder faults, divergence, corrupted files.

The contract of :func:`unigrad.cli.main`: it returns 0 (success), 1 (a run diverged) or 2 (a user
error); with 2, stderr is exactly one line ``error: ...`` and never a traceback. A write that fails
(full disk, read-only folder) leaves earlier results byte for byte as they were.

The fuzzed commands that parse train for real, but one step each: ``unigrad.train.compare.train``
is wrapped to force the budget ``steps=1`` (every other argument is passed through), and the plots
are not drawn. Everything is written under a temporary folder, which is also the working directory.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from unigrad import cli
from unigrad.train import compare as compare_module
from unigrad.train import report as report_module
from unigrad.train.checkpoint import MAGIC, load_checkpoint
from unigrad.train.store import Store

REAL_TRAIN = compare_module.train
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _call(argv: list[str]) -> tuple[Any, str, str]:
    """``cli.main(argv)`` with stdout and stderr captured; torch's thread count is restored afterwards."""
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def _check_contract(argv: list[str], code: Any, err: str) -> None:
    event(f"{argv[0] if argv else '(none)'}: exit {code}")  # tallied by --hypothesis-show-statistics
    assert type(code) is int and code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        assert err.endswith("\n") and len(err.splitlines()) == 1, (argv, err)
        assert err.startswith("error: "), (argv, err)


def _one_line_error(code: Any, err: str) -> str:
    """The message of a one-line ``error: ...`` with exit status 2."""
    assert code == 2, err
    assert "Traceback" not in err and err.endswith("\n") and len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    return err.strip()


def _one_step_train(*args: Any, budget: Any = None, **kwargs: Any) -> Any:
    # one step has room for one evaluation point: more are refused (tested in tests/train/test_trainer.py)
    if type(kwargs.get("eval_points")) is int and kwargs["eval_points"] > 1:
        kwargs["eval_points"] = 1
    return REAL_TRAIN(*args, budget="steps=1", **kwargs)


@contextlib.contextmanager
def _sandbox(root: Path) -> Iterator[pytest.MonkeyPatch]:
    """Work in ``root``: it is the working directory and holds the default store; one-step training, no plots."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("UNIGRAD_STORE", str(root / "default-store" / "unigrad.sqlite"))
        mp.setattr(compare_module, "train", _one_step_train)
        mp.setattr(report_module, "write_plots", lambda folder, results: [])
        yield mp


# ------------------------------------------------------------------------------------------------ the grammar

TEXT = "<text>"  # stands for a random string
_text = st.text(max_size=10)

TASKS = ["digits-mlp"] * 6 + ["mnist1d-mlp", "imagenet", "", "DIGITS-MLP", "digits_mlp", " digits-mlp", TEXT]
VALID_METHODS = ["backprop", "spsa:probes=2", "rge:probes=2:sigma=1e-3", "dbp", "es:probes=2", "mezo:probes=2:lr=1e-4"]
BAD_METHODS = [
    "spsa:probes=0",
    "spsa:sigma=-1",
    "nope",
    "spsa:probes",
    ":",
    "spsa:probes=1:probes=2",
    "spsa:probes=nan",
    "spsa:probes=" + "9" * 20,
    "spsa:probes=9223372036854775807",  # fits 64 bits, but no tensor of that size can be made
    "",
    " ",
    "spsa:seed=1",
    "backprop:lr=-1",
    "backprop:lr=inf",
    "backprop:optimizer=lion",
    "backprop:decorrelate=2",
    "spsa:decor_lr=1",
    "spsa:sigma=1e999",
    "SPSA",
    "spsa:probes=2:",
    "spsa::probes=2",
    "spsa:=2",
    "spsa:foo=1",
    "es:noise_source=zzz",
    "dbp:decor_sample=" + "9" * 20,
    "backprop,spsa",
    TEXT,
]
METHODS = VALID_METHODS * 2 + BAD_METHODS
OPTIMIZERS = ["sgd", "adam", "adamw", "rmsprop", "lion", "", "ADAM", TEXT]
NUMBERS = ["1e-3", "0.5", "0", "-1", "nan", "-nan", "inf", "-inf", "1e309", "1e-400", "x", "", "1_0", "١", "9" * 30]
NUMBERS += ["0x10", " 2 ", "1e300", TEXT]
INTS = ["1", "2", "3", "0", "-1", "1.5", "nan", "", "x", "9" * 25, "9223372036854775808", "٣", "1e3", " 2", TEXT]
THREADS = ["1", "2", "0", "-1", "x", "", "9" * 25, "2147483648", "1.0", TEXT]
BUDGETS = ["steps=1"] * 4 + ["epochs=0.01", "forwards=1e3", "seconds=0.5", "epochs=0", "steps=1.5", "foo=1"]
BUDGETS += ["epochs=nan", "steps=-1", "steps", "=", "", "steps=1e400", "seconds=inf", "epochs=1e-400", "5", TEXT]
SEEDS = ["1", "2", "0,5", "0", "-1", "1,1", ",", "1.5", "nan", "", "9" * 25, "0," + "9" * 20, "١", "0,,1", TEXT]
SEEDS += ["1000001"]
DEVICES = ["cpu", "cpu", "cuda", "cuda:0", "tpu", "", "cpu:0", "cuda:-1", "cuda:" + "9" * 20, "meta", TEXT]
DTYPES = ["float32", "float64", "bfloat16", "float16", "int8", "", "torch.float32", "Float32", TEXT]
FLAGS = ["--no-progress", "--no-memory", "--no-store", "--rerun"]
JUNK = ["--bogus", "-x", "--", "--no", "-", "--task=", "--lr=", "--batch", "list", "-h=1", TEXT]


def _draw(draw: Any, choices: list[str]) -> str:
    value = draw(st.sampled_from(choices))
    return draw(_text) if value == TEXT else value


def _method_list(draw: Any) -> str:
    specs = [_draw(draw, METHODS) for _ in range(draw(st.integers(1, 3)))]
    return draw(st.sampled_from([",", ", ", ",,"])).join(specs)


def _option_values(command: str, files: dict[str, Any]) -> dict[str, Any]:
    """Option → function ``draw -> value`` for the options of ``command``."""
    values: dict[str, Any] = {
        "--task": lambda d: _draw(d, TASKS),
        "--budget": lambda d: _draw(d, BUDGETS),
        "--batch-size": lambda d: _draw(d, INTS),
        "--device": lambda d: _draw(d, DEVICES),
        "--dtype": lambda d: _draw(d, DTYPES),
        "--threads": lambda d: _draw(d, THREADS),
        "--eval-points": lambda d: _draw(d, INTS),
        "--config": lambda d: d(st.sampled_from(files["configs"])),
        "--store": lambda d: d(st.sampled_from(files["stores"])),
    }
    if command == "train":
        values |= {
            "--method": lambda d: _draw(d, METHODS),
            "--optimizer": lambda d: _draw(d, OPTIMIZERS),
            "--lr": lambda d: _draw(d, NUMBERS),
            "--epochs": lambda d: _draw(d, NUMBERS),
            "--seed": lambda d: _draw(d, INTS),
        }
    else:
        values |= {"--methods": _method_list, "--seeds": lambda d: _draw(d, SEEDS)}
    return values


def _piece(draw: Any, values: dict[str, Any]) -> list[str]:
    """One piece of an argument list: an option with a value (``--x v``, ``--x=v``, or a missing value),
    a flag, or junk."""
    kind = draw(st.sampled_from(["option"] * 6 + ["flag", "junk"]))
    if kind == "flag":
        return [draw(st.sampled_from(FLAGS))]
    if kind == "junk":
        return [_draw(draw, JUNK)]
    option = draw(st.sampled_from(sorted(values)))
    value = values[option](draw)
    form = draw(st.sampled_from(["separate"] * 4 + ["equals", "missing"]))
    if form == "missing":
        return [option]
    return [f"{option}={value}"] if form == "equals" else [option, value]


@st.composite
def run_argv(draw: Any, files: dict[str, Any]) -> list[str]:
    """``train`` or ``compare`` with valid and invalid pieces; ``--out`` last (a fresh folder or a bad path)."""
    command = draw(st.sampled_from(["train", "compare"]))
    argv = [command]
    skeleton = draw(st.sampled_from([True, True, False]))
    if skeleton:  # a valid command, then a piece or two that may spoil it
        argv += ["--task", "digits-mlp", "--budget", "steps=1", "--store", str(files["store"])]
        if command == "train":
            argv += ["--method", draw(st.sampled_from(VALID_METHODS))]
        else:
            argv += [
                "--methods",
                ",".join(draw(st.lists(st.sampled_from(VALID_METHODS), min_size=1, max_size=2, unique=True))),
            ]
            argv += ["--seeds", draw(st.sampled_from(["1", "2", "0,3"]))]
    else:
        argv += ["--task", "digits-mlp", "--seeds" if command == "compare" else "--seed", "1"]
    values = _option_values(command, files)
    for _ in range(draw(st.integers(0, 2) if skeleton else st.integers(0, 5))):
        argv += _piece(draw, values)
    out = draw(st.sampled_from(["fresh"] * 6 + ["file", "under-file", "empty"]))
    files["count"] += 1
    target = {
        "fresh": str(files["root"] / "out" / f"run-{files['count']}"),
        "file": str(files["file"]),
        "under-file": str(files["file"] / "sub"),
        "empty": "",
    }[out]
    return [*argv, "--out", target]


REFS = ["999999", "1", "2", "0", "-1", "abcd", "zz", "9" * 25, "²", "٣", "", " ", "ffff", "0" * 70, "grp", TEXT]
RUNS_SUBCOMMANDS = ["list", "show", "compare", "export", "groups"] * 3 + ["", "nope", "LIST", TEXT]


@st.composite
def runs_argv(draw: Any, files: dict[str, Any]) -> list[str]:
    sub = _draw(draw, RUNS_SUBCOMMANDS)
    argv = ["runs"] + ([sub] if sub or draw(st.booleans()) else [])
    refs = [_draw(draw, REFS) for _ in range(draw(st.integers(0, 3)))]
    if sub == "show":
        argv += refs[:1] if refs or draw(st.booleans()) else ["1"]
    elif sub in ("compare", "export"):
        argv += refs
        if draw(st.booleans()):
            argv += ["--group", draw(st.sampled_from(["grp", "nope", "", "1"]))]
        if sub == "export" and draw(st.integers(0, 5)):
            argv += ["--csv", draw(st.sampled_from(files["csv"]))]
        if sub == "export" and draw(st.booleans()):
            argv.append("--force")
    elif sub == "list":
        for option, choices in (("--task", TASKS), ("--method", METHODS), ("--status", ["ok", "running", "done"])):
            if draw(st.booleans()):
                argv += [option, _draw(draw, choices)]
    for _ in range(draw(st.integers(0, 1))):
        argv.append(_draw(draw, JUNK))
    if draw(st.integers(0, 7)):
        argv += ["--store", draw(st.sampled_from(files["runs_stores"]))]
    return argv


TOP = ["list", "train", "compare", "runs", "", "frobnicate", "-h", "--help", "TRAIN", "--version", "-", "--", TEXT]


@st.composite
def top_argv(draw: Any) -> list[str]:
    """Any first word, then a few tokens from every pool."""
    tokens = [_draw(draw, TOP)] if draw(st.integers(0, 9)) else []
    pools = [JUNK, FLAGS, ["--task", "--lr", "--methods", "--out", "--help"], TASKS, NUMBERS, BAD_METHODS, REFS]
    for _ in range(draw(st.integers(0, 4))):
        tokens.append(_draw(draw, draw(st.sampled_from(pools))))
    return tokens


# ------------------------------------------------------------------------------------------------ fixtures


def _write_garbage(path: Path) -> Path:
    path.write_bytes(b"\xde\xad\xbe\xef garbage, not a database\n" * 200)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Paths the fuzzed commands point at: stores, config files, CSV targets, a regular file."""
    root = tmp_path_factory.mktemp("bad-input")
    (root / "out").mkdir()
    file = root / "a-file"
    file.write_text("a regular file\n")
    configs = {
        "missing": root / "missing.toml",
        "garbage": _write_garbage(root / "garbage.toml"),
        "syntax": root / "syntax.toml",
        "bad-value": root / "bad-value.toml",
        "huge-seed": root / "huge-seed.toml",
        "nul-out": root / "nul-out.toml",
        "valid": root / "valid.toml",
    }
    configs["syntax"].write_text("task = \n[train\n")
    configs["bad-value"].write_text("batch_size = 0\n")
    configs["huge-seed"].write_text(
        "[train]\nseed = 99999999999999999999\n[compare]\nseeds = [0, 99999999999999999999]\n"
    )
    configs["nul-out"].write_text('task = "digits-mlp"\nout = "a\\u0000b"\n')
    configs["valid"].write_text(
        'task = "digits-mlp"\nbudget = "steps=1"\nno_memory = true\n[compare]\nmethods = ["backprop"]\nseeds = 1\n'
    )
    store = root / "fuzz.sqlite"
    empty_store = root / "empty.sqlite"
    Store(empty_store).close()
    filled = root / "filled.sqlite"
    with _sandbox(root):  # two stored runs in a group named grp
        argv = ["compare", "--task", "digits-mlp", "--methods", "backprop,spsa:probes=2", "--seeds", "1"]
        argv += ["--budget", "steps=1", "--no-memory", "--store", str(filled), "--out", str(root / "grp")]
        code, _, err = _call(argv)
        assert code == 0, err
    garbage_store = _write_garbage(root / "garbage.sqlite")
    stores = [str(store)] * 4 + [str(garbage_store), str(root), str(file / "s.sqlite"), "", str(empty_store)]
    return {
        "root": root,
        "file": file,
        "store": store,
        "count": 0,
        "configs": [str(p) for p in configs.values()] + [str(root), ""],
        "stores": stores,
        "runs_stores": [str(filled)] * 3
        + [str(empty_store)] * 2
        + [str(root / "none.sqlite"), str(garbage_store), str(root), ""],
        "csv": [
            "-",
            str(root / "points.csv"),
            str(file / "x.csv"),
            str(root),
            "",
            ".",
            "/proc/unigrad-points.csv",
            str(root / "missing" / "x.csv"),  # a folder that does not exist
            str(filled),  # the store itself
        ],
    }


# ------------------------------------------------------------------------------------------------ 1. fuzzing


@settings(FUZZ, max_examples=140)
@given(data=st.data())
def test_fuzzed_train_and_compare_exit_0_1_or_one_line_error(files: dict[str, Any], data: st.DataObject) -> None:
    argv = data.draw(run_argv(files))
    with _sandbox(files["root"]):
        code, _, err = _call(argv)
    _check_contract(argv, code, err)
    if code in (0, 1):  # a run folder was written
        folder = Path(argv[-1])  # run_argv ends with --out FOLDER
        assert (folder / "results.json").is_file() and (folder / "report.md").is_file(), (argv, err)
        results = json.loads((folder / "results.json").read_text())
        diverged = [r for m in results["methods"].values() for r in m["runs"] if r["status"] == "diverged"]
        assert bool(diverged) == (code == 1), (argv, err)
    if code == 1:
        assert all(line.startswith("diverged: ") for line in err.splitlines()), (argv, err)
    assert not list(Path(files["root"]).glob("runs")), "a run folder landed in the working directory"


@settings(FUZZ, max_examples=110)
@given(data=st.data())
def test_fuzzed_runs_commands_exit_0_or_one_line_error(files: dict[str, Any], data: st.DataObject) -> None:
    argv = data.draw(runs_argv(files))
    with _sandbox(files["root"]):
        code, _, err = _call(argv)
    _check_contract(argv, code, err)
    assert code != 1, (argv, err)
    if code == 0 and argv[1:2] == ["export"] and argv[argv.index("--csv") + 1] != "-":
        assert Path(argv[argv.index("--csv") + 1]).is_file()
    assert not (Path(files["root"]) / "missing").exists(), argv
    filled = files["runs_stores"][0]
    if filled in argv:  # the runs commands only read
        with Store(filled, create=False) as db:
            assert len(db.runs()) == 2 and [g.name for g in db.groups()] == ["grp"]


@settings(FUZZ, max_examples=50)
@given(argv=top_argv())
def test_fuzzed_top_level_words_exit_0_or_one_line_error(files: dict[str, Any], argv: list[str]) -> None:
    """Any first word and tokens; a command that would train gets a stub comparison (the test above trains)."""

    def fake_compare(*args: Any, **kw: Any) -> Any:
        return Path("."), {"methods": {}}

    with _sandbox(files["root"]) as mp:
        mp.setattr(compare_module, "compare", fake_compare)
        code, out, err = _call(argv)
    _check_contract(argv, code, err)
    if any(t in ("-h", "--help") for t in argv) and code == 0:
        assert "usage: unigrad" in out


def test_help_returns_0_instead_of_raising_systemexit(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert cli.main(["train", "-h"]) == 0
    assert "usage: unigrad train" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["train", "--seed", "9" * 25], "seeds must be integers from 0 to 9223372036854775807"),
        (["compare", "--seeds", "0," + "9" * 20], "seeds must be integers from 0 to"),
        (["compare", "--seeds", "9" * 25], "the number of seeds must be <= 1000000"),
        (["train", "--threads", "9" * 25], "--threads 9999999999999999999999999 is more threads than this machine"),
        (["train", "--method", "spsa:probes=" + "9" * 20], "option probes of 'spsa:probes=9999"),
        (["train", "--method", "spsa:probes=9223372036854775807"], "spsa runs at least 5.9e+20 forward samples a step"),
        (["train", "--out", ""], "the output folder must be a non-empty path"),
        (["train", "--optimizer", "sgd", "--lr", "1e300"], "lr 1e+300 of backprop is larger than the largest float32"),
        (["train", "--out", "a\x00b"], "arguments cannot contain NUL characters"),
        (["train", "--bogus\nline"], r"unrecognized arguments: --bogus\nline"),
        (["runs", "show", "9" * 25], "is not a run id: ids are ASCII digits"),
        (["runs", "show", "²"], "'²' is not a run id"),
        (["runs", "compare", "1", "9" * 20], "is not a run id"),
        (["runs", "export", "--csv", ""], "--csv needs a file path (or - for stdout), got ''"),
        (["runs", "export", "--csv", "/"], "--csv needs a file path"),
    ],
)
def test_inputs_that_used_to_break_the_one_line_contract(
    argv: list[str], match: str, files: dict[str, Any], tmp_path: Path
) -> None:
    """Each of these raised out of ``main`` (OverflowError, ValueError, TypeError, RuntimeError,
    NotADirectoryError) or, for the line break, printed a two-line error."""
    if argv[0] in ("train", "compare"):
        argv = [*argv[:1], "--task", "digits-mlp", "--budget", "steps=1", "--no-memory", *argv[1:]]
        argv += [] if "--out" in argv else ["--out", str(tmp_path / "o")]
        argv += ["--store", str(tmp_path / "s.sqlite")]
    else:
        argv += ["--store", files["runs_stores"][0]]
    with _sandbox(tmp_path):
        code, _, err = _call(argv)
    assert match in _one_line_error(code, err)


def test_config_values_that_used_to_raise_out_of_main(files: dict[str, Any], tmp_path: Path) -> None:
    """A config file can carry what a shell cannot: a seed beyond 64 bits, a NUL in ``out``."""
    configs = {Path(p).stem: p for p in files["configs"] if p}
    with _sandbox(tmp_path):
        code, _, err = _call(["train", "--config", configs["huge-seed"], "--out", str(tmp_path / "a")])
        assert "seeds must be integers from 0 to" in _one_line_error(code, err)
        code, _, err = _call(["compare", "--config", configs["nul-out"], "--methods", "backprop", "--no-store"])
        assert "out: must not contain a NUL character" in _one_line_error(code, err)


def test_export_into_a_path_under_a_file_is_one_line(files: dict[str, Any]) -> None:
    code, _, err = _call(["runs", "export", "--csv", str(files["file"] / "x.csv"), "--store", files["runs_stores"][0]])
    assert f"the folder {files['file']} is not a folder" in _one_line_error(code, err) and "x.csv" in err
    assert files["file"].read_text() == "a regular file\n"


def test_a_tiny_non_database_file_is_not_turned_into_a_store(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("x")
    code, _, err = _call(["runs", "list", "--store", str(path)])
    assert path.read_bytes() == b"x"
    assert "not a unigrad experiment store" in _one_line_error(code, err)
    path.write_bytes(b"")
    code, _, err = _call(["runs", "list", "--store", str(path)])
    assert path.read_bytes() == b""
    assert "empty file" in _one_line_error(code, err)


# -------------------------------------------------------------------------------------------- 2. output folder faults

TRAIN = ["train", "--task", "digits-mlp", "--method", "backprop", "--budget", "steps=3", "--eval-points", "2"]
QUIET = ["--no-progress", "--no-memory"]


def test_out_under_a_regular_file_and_out_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_text("keep me\n")
    code, _, err = _call([*TRAIN, *QUIET, "--no-store", "--out", str(file / "sub")])
    assert f"cannot create the output folder {file / 'sub'}: Not a directory" in _one_line_error(code, err)
    code, _, err = _call([*TRAIN, *QUIET, "--no-store", "--out", str(file)])
    assert f"output path {file} exists and is not a folder" in _one_line_error(code, err)
    assert file.read_text() == "keep me\n" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_store_and_csv_paths_in_a_missing_folder_create_no_folder(files: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    store = ["--store", str(missing / "x.sqlite")]
    commands = [[*TRAIN, *QUIET, *store, "--out", str(tmp_path / "o")]]
    commands += [
        ["compare", "--task", "digits-mlp", "--methods", "backprop", *QUIET, *store, "--out", str(tmp_path / "o")]
    ]
    commands += [["runs", "export", "--csv", str(missing / "x.csv"), "--store", files["runs_stores"][0]]]
    for argv in commands:
        code, _, err = _call(argv)
        assert f"the folder {missing} does not exist; create it first" in _one_line_error(code, err), argv
    code, _, err = _call(["runs", "list", *store])  # only reads: no store there, and nothing is made
    assert "no experiment store at" in _one_line_error(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # before, --store and --csv made nonexistent/dir
    with _sandbox(tmp_path) as mp:  # the default location ($UNIGRAD_STORE) is ours: its folder is made
        mp.setenv("UNIGRAD_STORE", str(tmp_path / "env" / "dir" / "x.sqlite"))
        code, _, err = _call([*TRAIN, *QUIET, "--out", str(tmp_path / "o")])
    assert code == 0, err
    assert (tmp_path / "env" / "dir" / "x.sqlite").is_file()


def test_export_keeps_an_existing_file_unless_force(files: dict[str, Any], tmp_path: Path) -> None:
    filled = Path(files["runs_stores"][0])
    target = tmp_path / "report.md"
    target.write_text("my report\n")
    (tmp_path / "report.md.tmp").write_text("mine too\n")  # the old fixed temporary name
    export = ["runs", "export", "--csv", str(target), "--store", str(filled)]
    code, _, err = _call(export)
    assert f"--csv {target} exists; pass --force to replace it" in _one_line_error(code, err)
    assert target.read_text() == "my report\n"
    code, out, err = _call([*export, "--force"])
    assert code == 0 and f"rows to {target}" in out, err
    assert target.read_text().startswith("run_id,key,task,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "report.md.tmp"]  # no temporary left
    assert (tmp_path / "report.md.tmp").read_text() == "mine too\n"
    before = filled.read_bytes()
    code, _, err = _call(["runs", "export", "--csv", str(filled), "--force", "--store", str(filled)])
    assert "is the experiment store's own file" in _one_line_error(code, err)
    assert filled.read_bytes() == before


def test_export_help_documents_force(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["runs", "export", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--force replace PATH if it exists" in text and "its folder must exist" in text


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _fail(error: int, text: str, when: Any) -> Any:
    def check(path: Any) -> None:
        if when(Path(path)):
            raise OSError(error, text, str(path))

    return check


FAULT_CASES = {
    # which function fails, for which file, and how
    "replace EROFS results.json": ("replace", "results.json", errno.EROFS, "Read-only file system"),
    "write ENOSPC results.json": ("write_text", "results.json.tmp", errno.ENOSPC, "No space left on device"),
    "write ENOSPC report.md": ("write_text", "report.md.tmp", errno.ENOSPC, "No space left on device"),
    "replace EROFS report.md": ("replace", "report.md", errno.EROFS, "Read-only file system"),
    "savefig ENOSPC plot": ("savefig", "accuracy_vs_forwards.png.tmp", errno.ENOSPC, "No space left on device"),
    "write EACCES any": ("write_text", "*", errno.EACCES, "Permission denied"),
}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as ``train`` writes it (seed 0), to be copied and written over."""
    folder = tmp_path_factory.mktemp("first") / "run"
    code, _, err = _call([*TRAIN, *QUIET, "--no-store", "--seed", "0", "--out", str(folder)])
    assert code == 0, err
    return folder


@pytest.mark.parametrize(
    ("case", "store"),
    [(case, False) for case in sorted(FAULT_CASES)]
    + [("replace EROFS results.json", True), ("write ENOSPC report.md", True)],
)
def test_a_failed_write_keeps_the_earlier_results(
    case: str, store: bool, first_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run folder written once; writing it again fails (simulated: tests run as root, so chmod stops nothing)."""
    import matplotlib.figure

    function, name, error, text = FAULT_CASES[case]
    folder = tmp_path / "run"
    shutil.copytree(first_run, folder)
    where = ["--store", str(tmp_path / "s.sqlite")] if store else ["--no-store"]
    before = _snapshot(folder)
    assert {"results.json", "report.md", "accuracy_vs_forwards.png"} <= set(before)

    def hit(path: Path) -> bool:
        return path.parent == folder and (name == "*" or path.name == name)

    failing = _fail(error, text, hit)
    if function == "replace":
        real_replace = os.replace

        def replace(src: Any, dst: Any, **kw: Any) -> None:
            failing(dst)
            real_replace(src, dst, **kw)

        monkeypatch.setattr(os, "replace", replace)
    elif function == "write_text":
        real_write = Path.write_text

        def write_text(self: Path, *args: Any, **kw: Any) -> int:
            failing(self)
            return real_write(self, *args, **kw)

        monkeypatch.setattr(Path, "write_text", write_text)
    else:
        real_savefig = matplotlib.figure.Figure.savefig

        def savefig(self: Any, fname: Any, *args: Any, **kw: Any) -> None:
            failing(fname)
            real_savefig(self, fname, *args, **kw)

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    code, _, err = _call([*TRAIN, *QUIET, *where, "--seed", "1", "--out", str(folder)])  # other numbers
    monkeypatch.undo()
    message = _one_line_error(code, err)
    failed = name.removesuffix(".tmp") if name != "*" else "results.json"
    assert f"cannot write {folder / failed}: {text}; the earlier {failed} there is kept" in message
    after = _snapshot(folder)
    assert not [n for n in after if n.endswith(".tmp")], sorted(after)
    assert after[failed] == before[failed]  # byte for byte
    if failed == "results.json":  # it is written before the report: nothing of the new run landed
        assert after == before
    else:
        assert json.loads(after["results.json"])["config"]["seeds"] == [1]  # the results are new, the report kept


# ------------------------------------------------------------------------------------------------ 3. divergence


def _finite(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and math.isfinite(value))


@pytest.mark.parametrize("lr", ["1e6", "1e30"])
def test_a_diverged_run_exits_1_and_keeps_the_last_good_state(
    lr: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "s.sqlite"
    argv = ["train", "--task", "digits-mlp", "--method", "backprop", "--optimizer", "sgd", "--lr", lr]
    argv += ["--budget", "steps=40", "--eval-points", "10", "--store", str(store), *QUIET]
    seen: list[tuple[Any, dict[str, Any]]] = []

    def train_and_read_checkpoint(*args: Any, **kw: Any) -> Any:
        result = REAL_TRAIN(*args, **kw)
        seen.append((result, load_checkpoint(kw["checkpoint"])))  # before compare deletes it
        return result

    monkeypatch.setattr(compare_module, "train", train_and_read_checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = _call([*argv, "--out", str(tmp_path / "a")])
    assert code == 1, err
    assert [w for w in caught if "legend" in str(w.message)] == []  # no empty legend on the plots
    assert len(err.splitlines()) == 1 and err.startswith("diverged: backprop (seed 0) diverged at step")
    run = json.loads((tmp_path / "a" / "results.json").read_text())["methods"]["backprop"]["runs"][0]
    assert run["status"] == "diverged" and run["final"]["step"] == run["last_good_step"]
    assert all(_finite(v) for p in run["history"] for v in p.values())
    assert run["final"]["test_loss"] is not None and math.isfinite(run["final"]["test_loss"])

    (result, state) = seen[0]
    assert state["finished"] and state["status"] == "diverged" and state["last_good_step"] == run["last_good_step"]
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert all(torch.equal(a, b) for a, b in zip(state["model"].values(), result.model.state_dict().values()))
    assert not list((tmp_path / "checkpoints").glob("*.pt"))  # deleted once stored
    with Store(store) as db:
        (rec,) = db.runs()
        assert rec.status == "diverged" and rec.result["final"] == run["final"]
        assert rec.result["last_good_step"] == run["last_good_step"]
        assert db.points(rec.id) == run["history"]

    code, out, err = _call([*argv, "--out", str(tmp_path / "b")])  # again: the stored run, not retrained
    assert code == 1 and "not retrained" in out and err.startswith("diverged: ")
    assert len(seen) == 1


# ------------------------------------------------------------------------------------------------ 4. corrupted files

COMPARE = ["compare", "--task", "digits-mlp", "--methods", "spsa:probes=2", "--budget", "steps=12", "--seeds", "1"]
COMPARE += ["--eval-points", "6", *QUIET]


def _interrupted_run(store: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Start a comparison and stop it (as Ctrl-C would) after its third evaluation point; the checkpoint."""

    def interrupted(*args: Any, on_record: Any = None, **kw: Any) -> Any:
        points = []

        def record(point: dict[str, Any]) -> None:
            on_record(point)
            points.append(point)
            if len(points) == 3:
                raise KeyboardInterrupt

        return REAL_TRAIN(*args, on_record=record, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(compare_module, "train", interrupted)
        code, _, err = _call([*COMPARE, "--store", str(store), "--out", str(out)])
    assert code == 130 and err == "interrupted\n"
    (ckpt,) = (store.parent / "checkpoints").glob("*.pt")
    assert not load_checkpoint(ckpt)["finished"]
    with Store(store) as db:
        assert [r.status for r in db.runs()] == ["running"]
    return ckpt


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "flipped byte":
        i = len(data) - 100
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "bad header":
        path.write_bytes(b"PK\x03\x04" + data[len(MAGIC) :])
    else:  # a valid header and checksum over a payload torch cannot read
        import hashlib

        payload = b"not a torch file"
        path.write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)


@pytest.mark.parametrize("how", ["flipped byte", "truncated", "empty", "bad header", "unreadable payload"])
def test_a_corrupted_checkpoint_is_one_line_naming_it_and_saying_what_to_do(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "s.sqlite"
    ckpt = _interrupted_run(store, tmp_path / "a", monkeypatch)
    _corrupt(ckpt, how)
    code, _, err = _call([*COMPARE, "--store", str(store), "--out", str(tmp_path / "b")])
    message = _one_line_error(code, err)
    assert str(ckpt) in message and "delete it" in message, message
    if how == "flipped byte":  # do what the message says: the run starts over and finishes
        ckpt.unlink()
        monkeypatch.setattr(report_module, "write_plots", lambda folder, results: [])
        code, _, err = _call([*COMPARE, "--store", str(store), "--out", str(tmp_path / "c")])
        assert code == 0, err
        with Store(store) as db:
            assert [(r.status, r.result["steps"]) for r in db.runs()] == [("ok", 12)]


@pytest.mark.parametrize("how", ["garbage", "scrambled pages", "truncated", "page headers"])
def test_a_corrupted_store_is_one_line(how: str, tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    with Store(store) as db:  # enough runs and points to fill several pages
        for seed in range(10):
            run = db.start_run({"task": "digits-mlp", "method": "backprop", "seed": seed}, {"note": "x" * 500})
            db.add_points(
                run.id, [{"step": s, "epoch": s / 10, "forward_equivalents": s, "seconds": s} for s in range(40)]
            )
    size = store.stat().st_size
    assert size > 3 * 4096 and not Path(f"{store}-wal").exists()
    if how == "garbage":
        _write_garbage(store)
    elif how == "scrambled pages":
        with store.open("r+b") as f:  # the header page stays, the rest is noise
            f.seek(4096)
            f.write(bytes((i * 7 + 13) % 256 for i in range(size - 4096)))
    elif how == "truncated":
        with store.open("r+b") as f:
            f.truncate(4096 + 100)
    else:  # the runs table's page (page 2, at page_size * 1) looks like an empty leaf: "no run 1" before
        with store.open("r+b") as f:
            f.seek(4096)
            f.write(bytes([0x0D, 0, 0, 0, 0, 0x10, 0, 0]))
    damaged = store.read_bytes()
    train = [*TRAIN, *QUIET, "--store", str(store), "--out", str(tmp_path / "x")]
    runs = [["runs", *words, "--store", str(store)] for words in (["list"], ["show", "1"], ["compare", "1", "2"])]
    runs += [["runs", "export", "--csv", str(tmp_path / "p.csv"), "--store", str(store)]]
    for command in (train, *runs):
        code, _, err = _call(command)
        message = _one_line_error(code, err)
        assert str(store) in message and ("corrupt" in message or "not an SQLite database" in message), message
    assert store.read_bytes() == damaged  # left as it was, for the user to restore or move away
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]  # no -wal/-shm, no run folder, no CSV
