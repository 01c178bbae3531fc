"""Configuration files (TOML) for ``unigrad train`` and ``unigrad compare``.

A file holds the options of the command line, under the same names (``batch_size`` or
``batch-size``, ``no_progress``, ...). Keys at the top level apply to every command run with the
file; a table ``[train]`` or ``[compare]`` holds the keys of that command and overrides the top
level. Example::

    # experiment.toml: unigrad train --config experiment.toml
    #                  unigrad compare --config experiment.toml
    task = "digits-mlp"
    batch_size = 32
    dtype = "float32"
    no_memory = true

    [train]
    method = "spsa:probes=16:sigma=1e-3"
    optimizer = "adam"
    lr = 1e-3
    epochs = 5          # or: budget = "steps=500" (not both)
    seed = 1

    [compare]
    methods = ["backprop", "spsa:probes=16", "mezo:lr=3e-3"]   # or one string "backprop,spsa:probes=16"
    budget = "forwards=1e7"
    seeds = [0, 5, 7]   # or a count: seeds = 3 (seeds 0, 1, 2)
    out = "runs/digits-forwards"

Keys (:data:`COMMAND_KEYS`):

=================  =======  ==================================================================
key                command  value
=================  =======  ==================================================================
task               both     a task name (``unigrad list``) or ``"module.path:function"``, a function of
                            yours that returns a :class:`~unigrad.data.tasks.Task`
budget             both     ``"KIND=N"``, KIND one of epochs, steps, forwards, seconds
batch_size         both     an integer >= 1
device             both     ``"cpu"``, ``"cuda"`` or ``"cuda:N"``
dtype              both     ``"float32"``, ``"float64"``, ``"bfloat16"`` or ``"float16"``
threads            both     an integer >= 1
eval_points        both     an integer >= 1
out                both     the run folder, a non-empty string (relative to the working directory, as on
                            the command line)
no_progress        both     true or false
no_memory          both     true or false
store              both     the experiment store, a non-empty path string
no_store           both     true or false
rerun              both     true or false
diagnostics        both     diagnostic names (:mod:`unigrad.dynamics.diagnostics`), a list or one
                            comma-separated string, e.g. ``["alignment", "sharpness"]``
diagnostics_every  both     an integer >= 1: measure the diagnostics every K steps
tensorboard        both     a folder for TensorBoard event files, a non-empty path string
                            (:mod:`unigrad.train.tensorboard`; needs the tensorboard package)
mlflow             both     an MLflow store, a folder or ``"sqlite:///FILE.db"``, a non-empty string
                            (:mod:`unigrad.train.mlflow`; needs the mlflow extra)
method             train    one method spec, e.g. ``"spsa:probes=16:sigma=1e-3"``
optimizer          train    ``"sgd"``, ``"adam"``, ``"adamw"`` or ``"rmsprop"``
lr                 train    a finite number > 0
epochs             train    a finite number > 0 (the same as ``budget = "epochs=N"``)
seed               train    an integer >= 0
methods            compare  a list of method specs, or one comma-separated string
seeds              compare  a count >= 1, or a non-empty list of distinct integers >= 0
=================  =======  ==================================================================

Rules:

* Values are checked when the file is read, with the checks of the command line: a task must
  exist, a method spec is parsed (:func:`unigrad.train.methods.parse_method`, which builds the
  estimator once), a budget is parsed (:meth:`unigrad.train.trainer.Budget.parse`), numbers
  must be in range. Types are strict: ``batch_size = 64.0`` or ``lr = "1e-3"`` are errors.
* Checks that join several options or the machine (a batch size beyond the task's training set, more
  evaluation points than the budget's steps, a plan beyond any machine, more threads than the machine
  can run) are made when the command starts, before anything is written, as for the command line.
* A top-level key the command does not take (``method`` for ``compare``, ``seeds`` for
  ``train``) is an error: it belongs in that command's table. Unknown keys are errors. The table
  of the other command is not read.
* ``epochs`` and ``budget`` are one setting: a file may not give both at one level, and the one
  given in ``[train]`` replaces either given at the top level.
* **Command-line flags win** (:func:`merge`): a flag the user typed replaces the file's value,
  even when it equals the flag's default (``--batch-size 64`` beats ``batch_size = 32``); a flag
  left out does not. :func:`given_options` finds the flags typed by parsing the arguments again
  with every default suppressed (options are spelled in full: ``--batch 32`` is refused). ``--epochs`` or
  ``--budget`` on the command line replaces both ``epochs`` and ``budget`` of the file. The file's
  ``lr`` and ``optimizer`` are dropped when a ``--method`` typed on the command line sets that key
  in its spec (``--method spsa:lr=1e-3``). A switch (``--no-progress``) can only turn on what the
  file leaves off.

Every error is one line naming the file, the table and the key, e.g.
``experiment.toml: [compare] batch_size: must be an integer >= 1, got 0``, raised as
:class:`~unigrad.core.errors.UnigradError` (the command line prints it and exits with status 2).
"""

from __future__ import annotations

import argparse
import difflib
import re
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from unigrad.core.errors import UnigradError
from unigrad.core.options import one_line

COMMANDS = ("train", "compare")

_PosInt = Annotated[int, Field(strict=True, ge=1)]
_NonNegInt = Annotated[int, Field(strict=True, ge=0)]
_PosFloat = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]


def _delegate(check: Callable[[], Any]) -> Any:
    """Run a check of the library; its :class:`UnigradError` becomes the field's message."""
    try:
        return check()
    except UnigradError as e:
        raise ValueError(str(e)) from None
    except Exception as e:  # a check that fails in another way still gives a one-line message
        raise ValueError(f"rejected ({type(e).__name__}: {e})") from None


class _Options(BaseModel):
    """Keys shared by ``train`` and ``compare``; every field is optional (absent = not set)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    task: str | None = None
    budget: str | None = None
    batch_size: _PosInt | None = None
    device: str | None = None
    dtype: str | None = None
    threads: _PosInt | None = None
    eval_points: _PosInt | None = None
    out: Annotated[str, Field(min_length=1)] | None = None
    no_progress: bool | None = None
    no_memory: bool | None = None
    store: Annotated[str, Field(min_length=1)] | None = None
    no_store: bool | None = None
    rerun: bool | None = None
    diagnostics: str | list[str] | None = None
    diagnostics_every: _PosInt | None = None
    tensorboard: Annotated[str, Field(min_length=1)] | None = None
    mlflow: Annotated[str, Field(min_length=1)] | None = None

    @field_validator("diagnostics")
    @classmethod
    def _diagnostics(cls, value: str | list[str]) -> str:
        from unigrad.dynamics.diagnostics import check_diagnostics

        return ",".join(_delegate(lambda: check_diagnostics(value)))

    @field_validator("out", "store", "tensorboard", "mlflow")
    @classmethod
    def _path(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError(f"must not contain a NUL character, got {_show(value)}")
        return value

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        def check() -> str:
            from unigrad.data.tasks import get_task

            task = get_task(value)
            return value if task.source is not None else task.name  # a task of yours stays its import path

        return _delegate(check)

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: str) -> str:
        from unigrad.train.trainer import Budget

        return _delegate(lambda: str(Budget.parse(value)))

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
            raise ValueError(f"must be cpu, cuda or cuda:N, got {_show(value)}")
        return value

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        from unigrad.train.trainer import resolve_dtype

        _delegate(lambda: resolve_dtype(value))
        return value


class TrainConfig(_Options):
    """The keys of ``unigrad train``."""

    method: str | None = None
    optimizer: str | None = None
    lr: _PosFloat | None = None
    epochs: _PosFloat | None = None
    seed: _NonNegInt | None = None

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        from unigrad.train.methods import parse_method

        _delegate(lambda: parse_method(value))
        return value

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, value: str) -> str:
        from unigrad.core.errors import unknown_name
        from unigrad.train.trainer import OPTIMIZERS

        if value not in OPTIMIZERS:
            raise ValueError(str(unknown_name("optimizer", value, OPTIMIZERS)))
        return value


class CompareConfig(_Options):
    """The keys of ``unigrad compare``."""

    methods: str | list[str] | None = None
    seeds: int | list[int] | str | None = None

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: str | list[str]) -> list[str]:
        from unigrad.train.methods import parse_methods

        specs = [s.strip() for s in (value.split(",") if isinstance(value, str) else value) if s.strip()]
        if not specs:
            raise ValueError(f"must name at least one method, got {_show(value)}")
        _delegate(lambda: parse_methods(specs))
        return specs

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: int | list[int] | str) -> int | list[int]:
        from unigrad.train.methods import parse_seeds

        if isinstance(value, str):  # the command line's form: "3" or "0,5,7"
            text = value.strip()
            try:
                value = [int(s) for s in text.split(",") if s.strip()] if "," in text else int(text)
            except ValueError:
                raise ValueError(f"must be {_ALLOWED['seeds']}, got {_show(text)}") from None
        try:
            parse_seeds(value)
        except UnigradError:
            raise ValueError(f"must be {_ALLOWED['seeds']}, got {_show(value)}") from None
        return value


MODELS: dict[str, type[_Options]] = {"train": TrainConfig, "compare": CompareConfig}
COMMAND_KEYS: dict[str, tuple[str, ...]] = {name: tuple(sorted(m.model_fields)) for name, m in MODELS.items()}

# what a key takes, for the messages of type and range errors
_ALLOWED = {
    "task": "a task name (see unigrad list) or module.path:function",
    "budget": 'a string KIND=N, e.g. "epochs=5"',
    "batch_size": "an integer >= 1",
    "device": "cpu, cuda or cuda:N",
    "dtype": 'a dtype name, e.g. "float32"',
    "threads": "an integer >= 1",
    "eval_points": "an integer >= 1",
    "out": "a non-empty path string",
    "no_progress": "true or false",
    "no_memory": "true or false",
    "store": "a non-empty path string",
    "no_store": "true or false",
    "rerun": "true or false",
    "diagnostics": 'a list of diagnostic names or one comma-separated string, e.g. "alignment,norms"',
    "diagnostics_every": "an integer >= 1",
    "tensorboard": "a non-empty path string",
    "mlflow": "a non-empty path or sqlite:/// URI string",
    "method": 'a method spec string, e.g. "spsa:probes=16"',
    "optimizer": 'an optimizer name, e.g. "adam"',
    "lr": "a finite number > 0",
    "epochs": "a finite number > 0",
    "seed": "an integer >= 0",
    "methods": "a list of method spec strings or one comma-separated string",
    "seeds": "a count >= 1 or a non-empty list of distinct integers >= 0",
}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _error(source: str, table: str | None, message: str) -> UnigradError:
    """``SOURCE: [TABLE] message`` (no table at the top level) as a one-line error."""
    return UnigradError(one_line(f"{source}: [{table}] {message}" if table else f"{source}: {message}"))


def _unknown_key(source: str, table: str | None, key: str, valid: Sequence[str]) -> UnigradError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return _error(source, table, f"unknown key {_show(key)}{hint}; valid keys: {', '.join(valid)}")


def _normalize(source: str, table: str | None, data: Mapping[Any, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Keys with ``-`` spelled ``_``; returns the values and each key's spelling in the file."""
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise _error(source, table, f"keys must be strings, got {_show(key)}")
        name = key.replace("-", "_")
        if name in values:
            raise _error(source, table, f"key {name} given twice (as {spelled[name]!r} and {key!r})")
        if value is None:
            allowed = _ALLOWED.get(name)
            if allowed is not None:
                raise _error(source, table, f"{key}: must be {allowed}, got None")
        values[name] = value
        spelled[name] = key
    return values, spelled


def _validate_level(source: str, table: str | None, command: str, data: Mapping[Any, Any]) -> dict[str, Any]:
    """Validate the keys of one level (top level or one command table); the keys set, normalized."""
    model = MODELS[command]
    values, spelled = _normalize(source, table, data)
    if "epochs" in values and "budget" in values:
        raise _error(source, table, "epochs and budget: give one of them, not both")
    try:
        validated = model.model_validate(values)
    except ValidationError as e:
        raise _first_error(source, table, command, e, values, spelled) from None
    return validated.model_dump(exclude_unset=True)


def _first_error(
    source: str,
    table: str | None,
    command: str,
    error: ValidationError,
    values: Mapping[str, Any],
    spelled: Mapping[str, str],
) -> UnigradError:
    """The error of the first bad key in file order, as one line."""
    by_key: dict[str, dict[str, Any]] = {}
    for e in error.errors():
        key = str(e["loc"][0]) if e["loc"] else ""
        by_key.setdefault(key, e)
    key = next((k for k in values if k in by_key), next(iter(by_key), ""))
    e = by_key.get(key)
    if e is None:  # not expected: pydantic reported no key
        return _error(source, table, "invalid configuration")
    name = spelled.get(key, key)
    if e["type"] == "extra_forbidden":
        return _unknown_key(source, table, name, COMMAND_KEYS[command])
    if e["type"] == "value_error":
        message = str(e.get("ctx", {}).get("error", e["msg"]))
    else:
        message = f"must be {_ALLOWED.get(key, 'valid')}, got {_show(values.get(key))}"
    return _error(source, table, f"{name}: {message}")


def validate_config(data: Mapping[Any, Any], command: str, *, source: str = "config") -> dict[str, Any]:
    """The options of ``command`` set by a parsed configuration document ``data``.

    ``data`` is what :func:`tomllib.load` returns: top-level keys shared by the commands, and
    optionally the tables ``train`` and ``compare``. Returns ``{dest: value}`` for the keys set,
    under the names of the command line's options (``args.batch_size``), the table's values over
    the top level's. Values come out normalized: ``lr`` and ``epochs`` as ``float``, ``budget`` as
    ``"kind=N"``, ``methods`` as a list of spec strings, ``seeds`` as a count or a list.
    ``source`` names the file in messages. Raises :class:`UnigradError` (one line) for anything wrong.
    """
    if command not in MODELS:
        raise UnigradError(f"configuration files are for {' and '.join(COMMANDS)}, not {_show(command)}")
    if not isinstance(data, Mapping):
        raise _error(source, None, f"a configuration must be a table of keys, got {_show(data)}")
    top: dict[Any, Any] = {}
    for key, value in data.items():
        if key in COMMANDS:
            if not isinstance(value, Mapping):
                raise _error(source, None, f"{key} must be a table ([{key}]), got {_show(value)}")
            continue
        top[key] = value
    everything = sorted(set().union(*COMMAND_KEYS.values()))
    shared, spelled = _normalize(source, None, top)
    for name in shared:
        if name in COMMAND_KEYS[command]:
            continue
        owners = [c for c in COMMANDS if name in COMMAND_KEYS[c]]
        if not owners:
            raise _unknown_key(source, None, spelled[name], [*everything, *(f"[{c}]" for c in COMMANDS)])
        only = f"only {', '.join(owners)} takes it; move it under [{owners[0]}]"
        raise _error(source, None, f"{spelled[name]}: not an option of {command} ({only})")
    merged = _validate_level(source, None, command, {spelled[k]: v for k, v in shared.items()})
    table = _validate_level(source, command, command, data.get(command, {}))
    if "epochs" in table or "budget" in table:
        merged.pop("epochs", None)
        merged.pop("budget", None)
    merged.update(table)
    return merged


def load_config(path: str | Path, command: str) -> dict[str, Any]:
    """Read the TOML file at ``path`` and validate the options of ``command`` (:func:`validate_config`).

    Raises :class:`UnigradError` with one line: ``config file not found: PATH``, ``PATH: not valid
    TOML (line L, column C): ...``, or the first bad key.
    """
    source = str(path)
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise UnigradError(one_line(f"config file not found: {source}")) from None
    except IsADirectoryError:
        raise UnigradError(one_line(f"config file {source} is a directory")) from None
    except OSError as e:
        raise UnigradError(one_line(f"cannot read config file {source}: {e.strerror or e}")) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _error(source, None, f"not valid TOML: not UTF-8 text (byte {e.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        match = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, flags=re.DOTALL)
        if match:
            what, line, column = match.groups()
            message = f"not valid TOML (line {line}, column {column}): {what}"
        else:
            message = f"not valid TOML: {message}"
        raise _error(source, None, message) from None
    return validate_config(data, command, source=source)


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations (``batch_size``, ``no_progress``, ...) of the options typed in ``argv``.

    ``argv`` is parsed again by ``parser`` (and its sub-parsers) with every default replaced by
    :data:`argparse.SUPPRESS`, so only what was typed lands in the namespace, whatever its value;
    the defaults are restored afterwards. ``argv`` must be one ``parser`` already accepted.
    """
    saved: list[tuple[argparse.Action, Any]] = []
    saved_defaults: list[tuple[argparse.ArgumentParser, dict[str, Any]]] = []

    def suppress(p: argparse.ArgumentParser) -> None:
        saved_defaults.append((p, dict(p._defaults)))
        p._defaults.clear()
        for action in p._actions:
            saved.append((action, action.default))
            action.default = argparse.SUPPRESS
            if isinstance(action.choices, Mapping):  # sub-parsers
                for sub in action.choices.values():
                    if isinstance(sub, argparse.ArgumentParser):
                        suppress(sub)

    try:
        suppress(parser)
        namespace = parser.parse_args(list(argv))
    finally:
        for action, default in saved:
            action.default = default
        for p, defaults in saved_defaults:
            p._defaults.update(defaults)
    return set(vars(namespace))


def _spec_sets(spec: Any, key: str) -> bool:
    """Whether method spec ``spec`` (``name:key=value:...``) sets ``key``."""
    if not isinstance(spec, str):
        return False
    return any(part.partition("=")[0].strip() == key for part in spec.split(":")[1:])


def merge(args: argparse.Namespace, config: Mapping[str, Any], given: Collection[str]) -> argparse.Namespace:
    """A copy of ``args`` with the values of ``config`` (:func:`load_config`) for the options not in ``given``.

    ``given`` holds the options the user typed (:func:`given_options`); those keep the command
    line's value. If ``epochs`` or ``budget`` was typed, the file's ``epochs`` and ``budget`` are
    both dropped; if the file sets one of them, the other is cleared. If a typed ``--method`` sets
    ``lr`` or ``optimizer`` in its spec, the file's ``lr`` or ``optimizer`` is dropped.
    """
    out = argparse.Namespace(**vars(args))
    values = dict(config)
    given = set(given)
    if given & {"epochs", "budget"}:
        values.pop("epochs", None)
        values.pop("budget", None)
    if "method" in given:
        for key in ("lr", "optimizer"):
            if key not in given and _spec_sets(getattr(args, "method", None), key):
                values.pop(key, None)
    for key, value in values.items():
        if key in given:
            continue
        setattr(out, key, value)
        if key == "epochs" and hasattr(out, "budget"):
            out.budget = None
        elif key == "budget" and hasattr(out, "epochs"):
            out.epochs = None
    return out


__all__ = [
    "COMMANDS",
    "COMMAND_KEYS",
    "CompareConfig",
    "TrainConfig",
    "given_options",
    "load_config",
    "merge",
    "validate_config",
]
