"""The command line: list, train, compare, and one-line errors with exit status 2."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from unigrad import cli
from unigrad.cli import _parser as cli_parser


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_list_groups_estimators_by_order_and_shows_tasks(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.index("order 0") < out.index("spsa") < out.index("order 1") < out.index("backprop")
    assert "digits-mlp" in out and "mnist1d-mlp" in out


def test_list_survives_an_estimator_that_fails_to_import(capsys, monkeypatch):
    from unigrad import registry

    broken = dict(registry.ESTIMATORS)
    broken["ghost"] = "unigrad.zeroth.does_not_exist:Ghost"
    monkeypatch.setattr(registry, "ESTIMATORS", broken)
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "ghost" in x)
    assert "unavailable" in line and "ModuleNotFoundError" in line
    assert "spsa" in out and "danp" in out  # the rest of the listing is intact


def test_list_shows_the_decorrelated_variants_with_their_descriptions(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("dbp", "dnp", "dinp", "danp"):
        line = next(x for x in out.splitlines() if x.split()[:1] == [name])
        assert "decorrelat" in line


def test_compare_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--task", "digits-mlp", "--methods", "backprop,rge:probes=2", "--budget", "epochs=0.5"]
    code = cli.main([*argv, "--seeds", "2", "--eval-points", "4", "--out", str(out), "--no-progress", "--no-memory"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| backprop |" in printed and "| rge |" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"backprop", "rge"}
    assert results["config"]["command"].startswith("unigrad compare --task digits-mlp")
    assert "unigrad compare --task digits-mlp" in (out / "report.md").read_text()
    assert len(list(out.glob("*.png"))) == 3


def test_train_writes_a_run_folder(tmp_path, capsys):
    out = tmp_path / "t"
    argv = ["train", "--task", "digits-mlp", "--method", "spsa:probes=2", "--lr", "1e-3", "--epochs", "0.2"]
    assert cli.main([*argv, "--out", str(out), "--no-progress", "--no-memory"]) == 0
    results = json.loads((out / "results.json").read_text())
    (m,) = results["methods"].values()
    assert m["lr"] == 1e-3 and m["options"]["probes"] == 2 and m["runs"][0]["steps"] == 5


def test_divergence_exits_1_and_keeps_results(tmp_path, capsys):
    out = tmp_path / "nan"
    argv = ["train", "--task", "digits-mlp", "--method", "backprop", "--optimizer", "sgd", "--lr", "1e6"]
    assert cli.main([*argv, "--budget", "steps=40", "--out", str(out), "--no-progress", "--no-memory"]) == 1
    assert "diverged" in _err(capsys)
    run = json.loads((out / "results.json").read_text())["methods"]["backprop"]["runs"][0]
    assert run["status"] == "diverged" and run["final"]["test_loss"] is not None
    assert (out / "report.md").is_file()


BP = ["compare", "--task", "digits-mlp", "--methods", "backprop"]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["compare", "--task", "imagenet"], "unknown task 'imagenet'; valid tasks: digits-mlp"),
        (["compare", "--task", "digits-mlp", "--methods", "backprop,nope"], "unknown method 'nope'"),
        (["train", "--task", "digits-mlp", "--optimizer", "lion"], "unknown optimizer 'lion'"),
        (["compare", "--task", "digits-mlp", "--methods", "spsa:probes=-2"], "option probes"),
        (["compare", "--task", "digits-mlp", "--methods", "spsa:probes"], "malformed method spec"),
        ([*BP, "--budget", "epochs=0"], "budget epochs must be > 0"),
        ([*BP, "--budget", "forwards=-5"], "budget forwards must be > 0"),
        ([*BP, "--budget", "5"], "malformed budget"),
        ([*BP, "--seeds", "0"], "seeds"),
        (["train", "--task", "digits-mlp", "--lr", "-1"], "--lr"),
        (["train", "--task", "digits-mlp", "--epochs", "0"], "--epochs"),
        (["train", "--task", "digits-mlp", "--batch-size", "0"], "--batch-size"),
        (["train", "--task", "digits-mlp", "--dtype", "int8"], "unknown dtype"),
        (["train", "--task", "digits-mlp", "--device", "tpu"], "device"),
        (
            ["train", "--task", "digits-mlp", "--method", "spsa:sigma=inf"],
            "option sigma of spsa must be a finite number",
        ),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, match, capsys, tmp_path):
    if argv[0] == "compare" and "--methods" not in argv:
        argv = [*argv, "--methods", "backprop"]
    assert cli.main([*argv, "--out", str(tmp_path / "x")] if argv[0] != "frobnicate" else argv) == 2
    err = _err(capsys).strip()
    assert err.startswith("error: ") and "\n" not in err
    assert match in err


def test_missing_dataset_is_a_user_error(capsys, tmp_path, monkeypatch):
    from unigrad.data import tasks

    monkeypatch.setenv("UNIGRAD_FASHION_MNIST", str(tmp_path))
    monkeypatch.setattr(tasks, "_LOADED", {})
    out = tmp_path / "never"
    assert cli.main(["compare", "--task", "fashion-mlp", "--methods", "backprop", "--out", str(out)]) == 2
    assert "sudo apt-get install -y dataset-fashion-mnist" in _err(capsys)
    assert not out.exists()


def test_subprocess_unknown_method_exits_2_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "unigrad", "compare", "--methods", "backprop,warp-drive"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: unknown method 'warp-drive'")


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every parser of the command line with the words that reach it: (path, parser)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["compare", "--seed", "5", "--no-store"], "--seed"),  # was read as --seeds 5: seeds 0-4 ran
        (["train", "--epoch", "1", "--no-store"], "--epoch"),
        (["runs", "list", "--stor", "x.sqlite"], "--stor"),
    ],
)
def test_no_option_is_taken_by_a_prefix_of_its_name(argv: list[str], word: str, capsys):
    assert cli.main(argv) == 2
    err = _err(capsys)
    assert err.count("error:") == 1 and f"unrecognized arguments: {word}" in err, err


def test_every_parser_refuses_abbreviations():
    parsers = list(_parsers(cli.build_parser()))
    assert len(parsers) > 10 and all(not p.allow_abbrev for _, p in parsers), [
        path for path, p in parsers if p.allow_abbrev
    ]


@pytest.mark.parametrize("command", ["train", "compare"])
def test_mezo_without_grad_is_refused_before_training(command: str, tmp_path, capsys):
    # it used to exit 0 with the test accuracy at its initial value at every point
    flag = "--method" if command == "train" else "--methods"
    argv = [command, "--task", "digits-mlp", flag, "mezo:write_grad=false:lr=3e-2", "--budget", "steps=2"]
    assert cli.main([*argv, "--no-store", "--out", str(tmp_path / "run")]) == 2
    err = _err(capsys)
    assert err.count("error:") == 1 and "write_grad=false of mezo leaves .grad empty" in err, err
    assert "--optimizer replay-sgd" in err and "optimizer=replay-sgd" in err  # the message names the way to train it
    assert not (tmp_path / "run").exists()
    # with the optimizer that steps the compressed direction, it trains
    argv[4] += ":optimizer=replay-sgd"
    assert cli.main([*argv, "--no-store", "--no-progress", "--out", str(tmp_path / "ok")]) == 0


@pytest.mark.parametrize("method", ["spsa", "rge", "es", "mezo", "np"])
def test_object_valued_options_are_refused_in_a_method_spec(method: str, tmp_path, capsys):
    # exchange=1 used to reach the estimator and end in a 29-line traceback at the first step
    argv = ["train", "--task", "digits-mlp", "--method", f"{method}:exchange=1", "--budget", "steps=1", "--no-store"]
    assert cli.main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = _err(capsys)
    assert err.count("\n") == 1 and f"option exchange of {method} takes a Python object" in err, err
    assert "unigrad train --distributed" in err
    assert "exchange," not in err.split("valid options:")[1] and not err.rstrip().endswith("exchange")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "compare", "experiment", "bench"])
def test_thread_counts_beyond_the_machine_are_refused(command: str, tmp_path, capsys):
    # --threads 100000 used to crash the process in the threading runtime (no message, no exit status 2)
    argv = {"experiment": ["experiment", "werfel", "--quick"], "bench": ["bench", "--tasks", "sphere-10"]}
    out = tmp_path / "run"
    assert cli.main([*argv.get(command, [command]), "--threads", "100000", "--out", str(out)]) == 2
    err = _err(capsys)
    assert err.count("\n") == 1 and err.startswith("error: --threads 100000 is more threads than this machine"), err
    assert not out.exists()


def test_threads_above_the_cpus_warn_and_above_four_per_cpu_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli_parser, "cpus", lambda: (2, 2))  # a 2-CPU machine
    run = ["train", "--task", "digits-mlp", "--budget", "steps=1", "--no-store", "--no-memory", "--no-progress"]
    assert cli.main([*run, "--threads", "9", "--out", str(tmp_path / "a")]) == 2
    assert "at most 8 (4 per logical CPU, it has 2)" in _err(capsys) and not (tmp_path / "a").exists()
    assert cli.main([*run, "--threads", "3", "--out", str(tmp_path / "b")]) == 0
    warnings = [line for line in _err(capsys).splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: --threads 3 is more than the 2 CPUs this process can use; the extra threads take turns on the "
        "cores and usually slow training down"
    ]
    assert cli.main([*run, "--threads", "2", "--out", str(tmp_path / "c")]) == 0
    assert "warning" not in _err(capsys)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        # cut to the 1,437 training samples silently, while the report said 1e9
        (["--batch-size", "1000000000"], "batch size 1000000000 is larger than the training set of digits-mlp (1437"),
        # accepted without comment
        (["--eval-points", "1000000", "--budget", "steps=50"], "1000000 evaluation points are more than the 50 steps"),
        # ran until killed
        (["--budget", "epochs=1e12"], "budget epochs=1e+12 is 2.3e+13 steps"),
        (["--budget", "steps=1", "--methods", "spsa:probes=1000000000"], "spsa runs at least 6.4e+10 forward samples"),
    ],
)
def test_impossible_plans_are_refused_before_anything_is_written(options, match, tmp_path, capsys):
    store, out = tmp_path / "store.sqlite", tmp_path / "run"
    argv = ["compare", "--task", "digits-mlp", "--methods", "backprop", "--budget", "steps=5", *options]
    assert cli.main([*argv, "--store", str(store), "--out", str(out)]) == 2
    err = _err(capsys)
    assert err.count("\n") == 1 and err.startswith("error: ") and match in err, err
    assert not out.exists() and not store.exists()


def test_a_warning_is_one_line(tmp_path, capsys):
    # a forwards budget cannot know its steps in advance: backprop's 192 forward samples a step make 1000 six steps
    argv = ["train", "--task", "digits-mlp", "--budget", "forwards=1000", "--eval-points", "10", "--no-store"]
    assert cli.main([*argv, "--no-progress", "--no-memory", "--out", str(tmp_path / "run")]) == 0
    err = _err(capsys)
    assert err == (
        "warning: 10 evaluation points were asked for, but budget forwards=1000 allowed backprop (seed 0) only 6 "
        "steps: it was evaluated after every step\n"
    )


def test_version_and_typed_package(capsys):
    import importlib.resources

    import unigrad

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"unigrad {unigrad.__version__}"
    assert importlib.resources.files("unigrad").joinpath("py.typed").is_file()  # PEP 561: the hints are for users


def test_experiment_help_lists_one_experiment_per_line(capsys):
    from unigrad.experiments import EXPERIMENTS

    assert cli.main(["experiment", "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("experiments (NAME), one per line:")
    listed = [line.split()[0] for line in lines[start + 1 :] if line.strip()]
    assert listed == list(EXPERIMENTS)
