"""Configuration files: reading, validation with one-line errors, and command-line precedence."""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unigrad import cli
from unigrad import config as config_module
from unigrad.config import COMMAND_KEYS, COMMANDS, given_options, load_config, merge, validate_config
from unigrad.core.errors import UnigradError

EXAMPLE = """\
task = "digits-mlp"
batch-size = 32
no_memory = true
budget = "epochs=3"

[train]
method = "spsa:probes=4:sigma=1e-3"
optimizer = "sgd"
lr = 1e-3
epochs = 5
seed = 1

[compare]
methods = ["backprop", "spsa:probes=4", "mezo:lr=3e-3"]
budget = "steps=100"
seeds = [0, 5, 7]
device = "cpu"
dtype = "float64"
threads = 2
eval_points = 4
out = "runs/x"
no_progress = true
"""


def _write(tmp_path, text: str, name: str = "config.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(data, command: str = "train") -> str:
    with pytest.raises(UnigradError) as info:
        validate_config(data, command, source="config.toml")
    message = str(info.value)
    assert len(message.splitlines()) == 1
    return message


# -- valid files ---------------------------------------------------------------------------------


def test_train_file_round_trip(tmp_path):
    path = _write(tmp_path, EXAMPLE)
    assert load_config(path, "train") == {
        "task": "digits-mlp",
        "batch_size": 32,
        "no_memory": True,
        "method": "spsa:probes=4:sigma=1e-3",
        "optimizer": "sgd",
        "lr": 1e-3,
        "epochs": 5.0,  # replaces the top level's budget
        "seed": 1,
    }


def test_compare_file_round_trip(tmp_path):
    path = _write(tmp_path, EXAMPLE)
    assert load_config(str(path), "compare") == {
        "task": "digits-mlp",
        "batch_size": 32,
        "no_memory": True,
        "budget": "steps=100",
        "methods": ["backprop", "spsa:probes=4", "mezo:lr=3e-3"],
        "seeds": [0, 5, 7],
        "device": "cpu",
        "dtype": "float64",
        "threads": 2,
        "eval_points": 4,
        "out": "runs/x",
        "no_progress": True,
    }


def test_empty_file_sets_nothing(tmp_path):
    assert load_config(_write(tmp_path, ""), "train") == {}
    assert load_config(_write(tmp_path, "[compare]\n"), "train") == {}


def test_values_are_normalized():
    got = validate_config({"lr": 1, "budget": " steps = 10"}, "train")
    assert got == {"lr": 1.0, "budget": "steps=10"} and isinstance(got["lr"], float)


def test_the_table_overrides_the_top_level():
    data = {"task": "digits-mlp", "batch_size": 8, "train": {"batch_size": 16}, "compare": {"task": "mnist1d-mlp"}}
    assert validate_config(data, "train") == {"task": "digits-mlp", "batch_size": 16}
    assert validate_config(data, "compare") == {"task": "mnist1d-mlp", "batch_size": 8}
    # epochs and budget are one setting: the table's replaces both of the top level's
    both = {"epochs": 2, "train": {"budget": "steps=9"}}
    assert validate_config(both, "train") == {"budget": "steps=9"}
    assert validate_config({"budget": "steps=9", "train": {"epochs": 2}}, "train") == {"epochs": 2.0}


def test_other_commands_table_is_not_read():
    data = {"train": {"method": "backprop"}, "compare": {"methods": "nope", "colour": 1}}
    assert validate_config(data, "train") == {"method": "backprop"}


def test_seeds_and_methods_forms():
    assert validate_config({"seeds": 3}, "compare") == {"seeds": 3}
    assert validate_config({"seeds": "0,5,7"}, "compare") == {"seeds": [0, 5, 7]}
    assert validate_config({"seeds": "2"}, "compare") == {"seeds": 2}
    assert validate_config({"methods": "backprop, spsa:probes=4,"}, "compare") == {
        "methods": ["backprop", "spsa:probes=4"]
    }


def test_diagnostics_forms():
    assert validate_config({"diagnostics": ["alignment", "norms"]}, "train") == {"diagnostics": "alignment,norms"}
    assert validate_config({"diagnostics": "sharpness, trace", "diagnostics_every": 5}, "compare") == {
        "diagnostics": "sharpness,trace",
        "diagnostics_every": 5,
    }


def test_keys_mirror_the_command_line():
    parser = cli.build_parser()
    for command in COMMANDS:
        dests = {a.dest for a in _subparser(parser, command)._actions}
        assert set(COMMAND_KEYS[command]) <= dests, set(COMMAND_KEYS[command]) - dests


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a.choices, dict) and command in a.choices)
    return action.choices[command]


# -- bad input: one line naming the key ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "command", "expected"),
    [
        ({"train": {"lrr": 1}}, "train", "config.toml: [train] unknown key 'lrr' (did you mean 'lr'?); valid keys: "),
        ({"colour": 1}, "compare", "config.toml: unknown key 'colour'; valid keys: batch_size, budget"),
        ({"trian": {}}, "train", "unknown key 'trian' (did you mean '[train]'?)"),
        ({"compare": {"lr": 1e-3}}, "compare", "[compare] unknown key 'lr'"),
        ({"compare": {"batch_size": "64"}}, "compare", "[compare] batch_size: must be an integer >= 1, got '64'"),
        ({"batch_size": 64.0}, "train", "config.toml: batch_size: must be an integer >= 1, got 64.0"),
        ({"batch_size": 0}, "train", "batch_size: must be an integer >= 1, got 0"),
        ({"threads": True}, "train", "threads: must be an integer >= 1, got True"),
        ({"train": {"lr": -1}}, "train", "config.toml: [train] lr: must be a finite number > 0, got -1"),
        ({"train": {"lr": "1e-3"}}, "train", "[train] lr: must be a finite number > 0, got '1e-3'"),
        ({"train": {"lr": math.inf}}, "train", "[train] lr: must be a finite number > 0, got inf"),
        ({"train": {"epochs": math.nan}}, "train", "[train] epochs: must be a finite number > 0, got nan"),
        ({"train": {"seed": -1}}, "train", "[train] seed: must be an integer >= 0, got -1"),
        ({"task": "imagenet"}, "train", "config.toml: task: unknown task 'imagenet'; valid tasks: digits-mlp"),
        ({"train": {"method": "nope"}}, "train", "[train] method: unknown method 'nope'; valid methods: "),
        ({"train": {"method": "spsa:probes=-2"}}, "train", "[train] method: option probes must be an integer >= 1"),
        ({"train": {"method": "spsa:probes"}}, "train", "[train] method: malformed method spec 'spsa:probes'"),
        ({"compare": {"methods": ["backprop", "nope"]}}, "compare", "[compare] methods: unknown method 'nope'"),
        ({"compare": {"methods": "backprop,backprop"}}, "compare", "[compare] methods: methods given twice"),
        ({"compare": {"methods": []}}, "compare", "[compare] methods: must name at least one method, got []"),
        ({"compare": {"methods": ["backprop", 3]}}, "compare", "[compare] methods: must be a list of method spec"),
        ({"train": {"optimizer": "lion"}}, "train", "[train] optimizer: unknown optimizer 'lion'; valid optimizers"),
        ({"budget": "epochs"}, "compare", "config.toml: budget: malformed budget 'epochs'; write KIND=N"),
        ({"budget": "minutes=3"}, "compare", "budget: budget kind must be one of epochs, steps"),
        ({"budget": "steps=2.5"}, "compare", "budget: budget steps must be a whole number, got 2.5"),
        ({"budget": 5}, "compare", 'budget: must be a string KIND=N, e.g. "epochs=5", got 5'),
        ({"train": {"epochs": 1, "budget": "steps=3"}}, "train", "[train] epochs and budget: give one of them"),
        ({"compare": {"seeds": [1, 1]}}, "compare", "[compare] seeds: must be a count >= 1 or a non-empty list"),
        ({"compare": {"seeds": 0}}, "compare", "[compare] seeds: must be a count >= 1"),
        ({"compare": {"seeds": [0, -1]}}, "compare", "got [0, -1]"),
        ({"compare": {"seeds": [0, True]}}, "compare", "got [0, True]"),
        ({"compare": {"seeds": "a,b"}}, "compare", "[compare] seeds: must be a count >= 1"),
        ({"compare": {"seeds": []}}, "compare", "[compare] seeds: must be a count >= 1"),
        ({"dtype": "int8"}, "train", "config.toml: dtype: unknown dtype 'int8'; valid dtypes: bfloat16"),
        ({"device": "tpu"}, "train", "config.toml: device: must be cpu, cuda or cuda:N, got 'tpu'"),
        ({"out": ""}, "train", "out: must be a non-empty path string, got ''"),
        ({"no_progress": "yes"}, "train", "no_progress: must be true or false, got 'yes'"),
        ({"seeds": 3}, "train", "config.toml: seeds: not an option of train (only compare takes it; move it under"),
        ({"method": "backprop"}, "compare", "method: not an option of compare (only train takes it"),
        ({"train": 3}, "train", "config.toml: train must be a table ([train]), got 3"),
        ({"batch-size": 1, "batch_size": 2}, "train", "key batch_size given twice (as 'batch-size' and 'batch_size')"),
        ({"train": {"lr": None}}, "train", "[train] lr: must be a finite number > 0, got None"),
        ({1: 2}, "train", "config.toml: keys must be strings, got 1"),
        ({"diagnostics": "alignmnt"}, "train", "diagnostics: unknown diagnostic 'alignmnt'; valid diagnostics"),
        ({"diagnostics_every": 0}, "compare", "diagnostics_every: must be an integer >= 1"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(data, command, expected):
    assert expected in _error(data, command)


def test_the_first_bad_key_in_file_order_is_reported():
    assert "threads:" in _error({"threads": 0, "batch_size": 0})
    assert "batch_size:" in _error({"batch_size": 0, "threads": 0})


def test_a_hyphenated_key_is_named_as_written():
    assert "config.toml: eval-points: must be an integer >= 1, got 0" in _error({"eval-points": 0})


def test_a_control_character_cannot_break_the_line():
    assert "\\n" in _error({"task": "a\nb"}) and "\\u2028" in _error({"x\u2028y": 1})


def test_unknown_command():
    with pytest.raises(UnigradError, match="configuration files are for train and compare, not 'list'"):
        validate_config({}, "list")


def test_toml_syntax_error_names_line_and_column(tmp_path):
    path = _write(tmp_path, 'task = "digits-mlp"\nlr = \n')
    with pytest.raises(UnigradError) as info:
        load_config(path, "train")
    assert str(info.value) == f"{path}: not valid TOML (line 2, column 6): Invalid value"


def test_duplicate_toml_key_and_binary_file(tmp_path):
    with pytest.raises(UnigradError, match=r"not valid TOML \(line 2, column \d+\)"):
        load_config(_write(tmp_path, "a = 1\na = 2\n"), "train")
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(UnigradError, match="not valid TOML: not UTF-8 text"):
        load_config(path, "train")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UnigradError) as info:
        load_config(tmp_path / "nope.toml", "train")
    assert str(info.value) == f"config file not found: {tmp_path / 'nope.toml'}"
    with pytest.raises(UnigradError, match="is a directory"):
        load_config(tmp_path, "train")


def test_the_file_name_leads_the_message(tmp_path):
    path = _write(tmp_path, "[compare]\nlr = -1\n", "exp.toml")
    with pytest.raises(UnigradError) as info:
        load_config(path, "compare")
    assert str(info.value).startswith(f"{path}: [compare] unknown key 'lr'")


# -- the command line wins -------------------------------------------------------------------------


def _resolve(tmp_path, text: str, argv: list[str]) -> argparse.Namespace:
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    config = load_config(_write(tmp_path, text), args.command)
    return merge(args, config, given_options(parser, argv))


def test_a_typed_flag_beats_the_file_even_at_its_default(tmp_path):
    args = _resolve(tmp_path, "batch_size = 32\nthreads = 3\n", ["train", "--batch-size", "64"])
    assert (args.batch_size, args.threads) == (64, 3)
    with pytest.raises(cli.UsageError, match="unrecognized arguments: --batch 64"):  # no abbreviations
        _resolve(tmp_path, "batch_size = 32\n", ["train", "--batch", "64"])


def test_an_untyped_flag_takes_the_file(tmp_path):
    args = _resolve(tmp_path, EXAMPLE, ["compare"])
    assert args.methods == ["backprop", "spsa:probes=4", "mezo:lr=3e-3"]
    assert (args.seeds, args.budget, args.batch_size, args.no_progress) == ([0, 5, 7], "steps=100", 32, True)
    args = _resolve(tmp_path, EXAMPLE, ["compare", "--seeds", "2", "--task", "mnist1d-mlp"])
    assert (args.seeds, args.task, args.budget) == ("2", "mnist1d-mlp", "steps=100")


def test_epochs_and_budget_are_one_setting(tmp_path):
    args = _resolve(tmp_path, "[train]\nepochs = 5\n", ["train", "--budget", "steps=3"])
    assert (args.epochs, args.budget) == (None, "steps=3")
    args = _resolve(tmp_path, '[train]\nbudget = "steps=3"\n', ["train", "--epochs", "2"])
    assert (args.epochs, args.budget) == (2.0, None)
    args = _resolve(tmp_path, '[train]\nbudget = "steps=3"\n', ["train"])
    assert (args.epochs, args.budget) == (None, "steps=3")
    args = _resolve(tmp_path, "[train]\nepochs = 5\n", ["train"])
    assert (args.epochs, args.budget) == (5.0, None)


def test_a_typed_method_setting_lr_drops_the_files_lr(tmp_path):
    text = '[train]\nmethod = "backprop"\nlr = 1e-2\noptimizer = "sgd"\n'
    args = _resolve(tmp_path, text, ["train", "--method", "spsa:lr=1e-4"])
    assert (args.method, args.lr, args.optimizer) == ("spsa:lr=1e-4", None, "sgd")
    args = _resolve(tmp_path, text, ["train", "--method", "spsa:probes=4"])
    assert (args.lr, args.optimizer) == (1e-2, "sgd")
    args = _resolve(tmp_path, text, ["train", "--method", "spsa:lr=1e-4", "--lr", "5e-3"])
    assert args.lr == 5e-3


def test_switches_turn_on(tmp_path):
    args = _resolve(tmp_path, "no_progress = false\n", ["train", "--no-progress"])
    assert args.no_progress is True
    assert _resolve(tmp_path, "no_memory = true\n", ["train"]).no_memory is True


def test_given_options_restores_the_parsers_defaults():
    parser = cli.build_parser()
    before = parser.parse_args(["compare"])
    assert given_options(parser, ["compare", "--no-memory", "--methods", "backprop"]) == {
        "command",
        "no_memory",
        "methods",
    }
    assert given_options(parser, ["train"]) == {"command"}
    assert parser.parse_args(["compare"]) == before


def test_merge_does_not_change_its_input():
    args = argparse.Namespace(task="a", batch_size=64)
    out = merge(args, {"task": "b", "batch_size": 8}, {"batch_size"})
    assert (args.task, out.task, out.batch_size) == ("a", "b", 64)


def test_a_merged_namespace_runs_compare(tmp_path, capsys):
    text = (
        'task = "digits-mlp"\nbudget = "steps=2"\neval_points = 2\nno_memory = true\nno_progress = true\n'
        f'[compare]\nmethods = ["backprop", "rge:probes=2"]\nseeds = [0, 3]\nout = "{tmp_path / "run"}"\n'
    )
    argv = ["compare", "--seeds", "1"]
    args = _resolve(tmp_path, text, argv)
    assert cli.cmd_compare(args, argv) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["seeds"] == [0] and set(results["methods"]) == {"backprop", "rge"}
    assert results["config"]["budget"] == "steps=2"


# -- properties ------------------------------------------------------------------------------------

_KEYS = sorted({*COMMAND_KEYS["train"], *COMMAND_KEYS["compare"]})
_METHOD_NAMES = ["backprop", "spsa", "rge", "es", "mezo", "forward-gradient", "dbp", "nope", ""]
_OPTION_KEYS = ["probes", "sigma", "lr", "optimizer", "decorrelate", "decor_lr", "seed", "block", "colour"]
_text = st.text(max_size=12)
_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    _text,
    st.sampled_from(["digits-mlp", "cpu", "cuda:0", "float64", "adam", "epochs=2", "steps=0", "0,1", "backprop"]),
)
_spec = st.builds(
    lambda name, parts: ":".join([name, *parts]),
    st.sampled_from(_METHOD_NAMES),
    st.lists(
        st.builds(
            lambda k, v: f"{k}={v}",
            st.sampled_from(_OPTION_KEYS),
            st.sampled_from(["0", "1", "-1", "2", "1e-3", "nan", "inf", "x", "true", "none", "1e9"]),
        ),
        max_size=3,
    ),
)
_values = st.one_of(_scalars, _spec, st.lists(st.one_of(_scalars, _spec), max_size=3))
_level = st.dictionaries(
    st.one_of(st.sampled_from([*_KEYS, "batch-size", "no-memory"]), _text), st.one_of(_values, st.none()), max_size=5
)
_document = st.builds(
    lambda top, tables: {**top, **tables},
    _level,
    st.dictionaries(st.sampled_from(COMMANDS), st.one_of(_level, _scalars), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_document, command=st.sampled_from(COMMANDS))
def test_validation_either_succeeds_or_raises_one_line(data, command):
    try:
        result = validate_config(data, command, source="c.toml")
    except UnigradError as e:
        message = str(e)
        assert len(message.splitlines()) == 1 and message.startswith("c.toml: ")
        assert "validation error" not in message and "pydantic" not in message
    else:
        assert set(result) <= set(COMMAND_KEYS[command])


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        escaped = "".join(f"\\u{ord(c):04x}" if c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F else c for c in value)
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


_valid_train = st.fixed_dictionaries(
    {},
    optional={
        "task": st.sampled_from(["digits-mlp", "mnist1d-mlp"]),
        "batch_size": st.integers(1, 10**6),
        "threads": st.integers(1, 64),
        "lr": st.floats(min_value=1e-9, max_value=1e3),
        "seed": st.integers(0, 2**40),
        "method": st.sampled_from(["backprop", "spsa:probes=4", "es:sigma=0.1:lr=1e-3", "dbp"]),
        "dtype": st.sampled_from(["float32", "float64"]),
        # any path but one with a NUL character, which a path cannot hold and the loader rightly refuses
        "out": st.text(st.characters(blacklist_characters="\x00"), min_size=1, max_size=10),
        "no_progress": st.booleans(),
    },
)


@settings(max_examples=60, deadline=None)
@given(values=_valid_train, in_table=st.booleans())
def test_a_valid_file_round_trips(tmp_path_factory, values, in_table):
    lines = [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    text = "\n".join((["[train]"] if in_table else []) + lines) + "\n"
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(text, encoding="utf-8")
    assert load_config(path, "train") == values


@settings(max_examples=100, deadline=None)
@given(
    config=st.dictionaries(st.sampled_from(["task", "batch_size", "threads", "out"]), st.integers(1, 9), max_size=4),
    typed=st.sets(st.sampled_from(["task", "batch_size", "threads", "out"])),
)
def test_merge_keeps_typed_options_and_takes_the_rest_from_the_file(config, typed):
    args = argparse.Namespace(task="cli", batch_size="cli", threads="cli", out="cli")
    out = merge(args, config, typed)
    for key in vars(args):
        assert getattr(out, key) == (config[key] if key in config and key not in typed else "cli")


def test_the_docstring_example_is_valid(tmp_path):
    doc = config_module.__doc__
    example = textwrap.dedent(doc[doc.index("Example::") + len("Example::") : doc.index("Keys (")])
    path = _write(tmp_path, example)
    assert load_config(path, "train")["epochs"] == 5.0
    assert load_config(path, "compare")["seeds"] == [0, 5, 7]


def test_store_keys_and_nul_paths(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('store = "runs/x.sqlite"\nrerun = true\n[compare]\nno_store = false\n')
    assert load_config(path, "compare") == {"store": "runs/x.sqlite", "rerun": True, "no_store": False}
    path.write_text('[train]\nstore = "a\\u0000b"\n')
    with pytest.raises(UnigradError, match=r"\[train\] store: must not contain a NUL character") as e:
        load_config(path, "train")
    assert "\n" not in str(e.value)
