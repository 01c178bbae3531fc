"""Property-based fuzzing of what a user can type or call: generated method specs with every estimator's
options, generated TOML configuration files, and generated misuse of the Python API.

Contract checked for every example:

- the command line (``unigrad.cli.main`` in-process) exits 0 or 1 with a result, or 2 with exactly one
  ``error: ...`` line on stderr; never a traceback;
- no file or folder appears anywhere except under ``--out`` and the store (the sandbox folder, which is
  also the working directory, and the filesystem root are compared before and after);
- the Python API either works or raises :class:`unigrad.UnigradError` with a one-line message; never
  another exception type.

Valid commands train for one step (``tests/test_bad_input.py``'s sandbox). The examples are the same on
every run (the suite's derandomized hypothesis profile); ``--hypothesis-profile=explore`` draws new ones.
"""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import unigrad
from tests.test_bad_input import FUZZ, _call, _check_contract, _sandbox
from unigrad.registry import ESTIMATORS, estimator_class

# the estimators a one-step digits-mlp run can afford with any option (cge: one forward per coordinate, 4,810;
# the rules of unigrad.bio and newton/cma/xnes refuse this model in one line, which the fuzzing also checks)
FUZZED_METHODS = sorted(ESTIMATORS)
SLOW = {"cge": "block=4", "nevergrad": "algorithm=DiagonalCMA"}

VALUE_POOL = ["0", "1", "2", "3", "-1", "0.5", "1e-3", "1e-12", "nan", "inf", "-inf", "1e309", "1e-400", "abc", ""]
VALUE_POOL += ["true", "false", "None", "9" * 25, "2.5", "gaussian", "rademacher", "table", "auto", "1,2", "=", "x=y"]


def _options(name: str) -> list[str]:
    try:
        params = inspect.signature(estimator_class(name).__init__).parameters
    except Exception:  # an optional package missing: fuzz the name alone
        return []
    return [p for p in params if p not in ("self", "args", "kwargs")]


@st.composite
def method_spec(draw: Any) -> str:
    name = draw(st.sampled_from([*FUZZED_METHODS, "nope", "SPSA"]))
    parts = [name]
    if name in SLOW:
        parts.append(SLOW[name])
    options = [*_options(name), "bogus", "lr", "optimizer"]
    for _ in range(draw(st.integers(0, 3))):
        value = draw(st.one_of(st.sampled_from(VALUE_POOL), st.text(max_size=5)))
        parts.append(f"{draw(st.sampled_from(options))}={value}")
    return ":".join(parts)


def _tree(root: Path) -> set[str]:
    found = set()
    for folder, dirs, names in os.walk(root):
        found.update(os.path.join(folder, n) for n in (*dirs, *names))
    return found


def _assert_nothing_written_outside(root: Path, before: set[str], top: set[str], allowed: list[Path]) -> None:
    new = _tree(root) - before
    stray = [p for p in new if not any(p == str(a) or p.startswith(str(a) + os.sep) for a in allowed)]
    stray = [p for p in stray if not any(str(a) + suffix == p for a in allowed for suffix in ("-wal", "-shm"))]
    assert not stray, stray
    assert set(os.listdir("/")) <= top, set(os.listdir("/")) - top


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fuzz")
    return {"root": root, "count": 0, "top": set(os.listdir("/"))}


def _run_and_check(sandbox: dict[str, Any], argv: list[str], extra_allowed: tuple[Path, ...] = ()) -> tuple[int, str]:
    root: Path = sandbox["root"]
    sandbox["count"] += 1
    out = root / "out" / f"run-{sandbox['count']}"
    store = root / "store.sqlite"
    argv = [*argv, "--out", str(out)]
    before = _tree(root)
    with _sandbox(root):
        code, _, err = _call(argv)
    _check_contract(argv, code, err)
    # --out's folder (made with its parents), the store, its checkpoints folder and the default store's folder
    allowed = [out, root / "out", store, root / "checkpoints", root / "default-store", *extra_allowed]
    _assert_nothing_written_outside(root, before, sandbox["top"], allowed)
    if code == 0:
        assert (out / "results.json").is_file(), argv
    return code, err


@settings(FUZZ, max_examples=150)
@given(spec=method_spec(), optimizer=st.sampled_from(["", "sgd", "adam"]))
def test_generated_method_specs_train_or_fail_in_one_line(sandbox: dict[str, Any], spec: str, optimizer: str) -> None:
    argv = ["train", "--task", "digits-mlp", "--budget", "steps=1", "--method", spec, "--no-memory"]
    argv += ["--store", str(sandbox["root"] / "store.sqlite")]
    if optimizer:
        argv += ["--optimizer", optimizer]
    _run_and_check(sandbox, argv)


# ------------------------------------------------------------------------------------ TOML configurations

_KEYS = ["task", "budget", "batch_size", "device", "dtype", "threads", "eval_points", "out", "no_progress"]
_KEYS += ["no_memory", "store", "no_store", "rerun", "diagnostics", "diagnostics_every", "method", "optimizer"]
_KEYS += ["lr", "epochs", "seed", "methods", "seeds", "bogus", "Task"]
_TOML_VALUES = st.one_of(
    st.sampled_from(['"digits-mlp"', '"backprop"', '"spsa:probes=2"', '"steps=1"', '"epochs=0"', '"float32"']),
    st.sampled_from(['"cpu"', '"cuda"', "1", "0", "-1", "2.5", "nan", "inf", "true", "[]", "[0, 1]", '["backprop"]']),
    st.sampled_from(['"sgd"', '"x"', '""', "99999999999999999999", "1e-3", '"1e-3"', "{a = 1}", '"seconds=0.1"']),
    st.integers(-3, 3).map(str),
)


@st.composite
def toml_document(draw: Any) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        lines.append(f"{draw(st.sampled_from(_KEYS))} = {draw(_TOML_VALUES)}")
    for table in draw(st.lists(st.sampled_from(["train", "compare", "bogus", "train.x"]), max_size=2, unique=True)):
        lines.append(f"[{table}]")
        for _ in range(draw(st.integers(0, 3))):
            lines.append(f"{draw(st.sampled_from(_KEYS))} = {draw(_TOML_VALUES)}")
    if draw(st.integers(0, 9)) == 0:
        lines.append(draw(st.sampled_from(["[train", "= 1", "key = ", "a.b.c = 1", '"""'])))
    return "\n".join(lines) + "\n"


@settings(FUZZ, max_examples=100)
@given(doc=toml_document(), command=st.sampled_from(["train", "compare"]))
def test_generated_config_files_run_or_fail_in_one_line(sandbox: dict[str, Any], doc: str, command: str) -> None:
    sandbox["count"] += 1
    config = sandbox["root"] / f"config-{sandbox['count']}.toml"
    config.write_text(doc)
    argv = [command, "--config", str(config), "--budget", "steps=1", "--no-memory"]
    argv += ["--store", str(sandbox["root"] / "store.sqlite")]
    # a config's own out/store keys are overridden by the command line: nothing may land where they point
    _run_and_check(sandbox, argv)


# ------------------------------------------------------------------------------------ the Python API

_API_VALUES = st.one_of(
    st.sampled_from([0, 1, 2, -1, 0.5, 1e-3, math.nan, math.inf, -math.inf, 10**30, True, False, None]),
    st.sampled_from(["abc", "", "gaussian", "1e-3", [1, 2], {"a": 1}, (1,), object(), torch.tensor(1.0)]),
)


def _tiny() -> tuple[nn.Module, Any]:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(5, 3, generator=g), torch.randint(0, 2, (5,), generator=g)
    return model, unigrad.supervised(F.cross_entropy, x, y)


def _bad_objectives(x: torch.Tensor) -> dict[str, Any]:
    return {
        "float": lambda m: 1.0,
        "matrix": lambda m: m(x),
        "int-losses": lambda m: torch.ones(5, dtype=torch.int64),
        "list": lambda m: [1.0, 2.0],
        "none": lambda m: None,
        "nan": lambda m: m(x).sum(dim=1) * math.nan,
        "string": lambda m: "loss",
    }


def _is_one_line_user_error(e: BaseException) -> bool:
    return isinstance(e, unigrad.UnigradError) and "\n" not in str(e) and bool(str(e))


@settings(FUZZ, max_examples=400)
@given(
    name=st.sampled_from([*FUZZED_METHODS, "nope", ""]),
    options=st.dictionaries(st.sampled_from(["probes", "sigma", "seed", "lr", "bogus", "distribution"]), _API_VALUES),
    misuse=st.sampled_from(["none", "swapped", "bad-objective", "not-callable", "load-state", "model-is-none"]),
    objective_kind=st.sampled_from(sorted(_bad_objectives(torch.zeros(1)))),
)
def test_generated_api_misuse_raises_one_line_user_errors(
    name: str, options: dict[str, Any], misuse: str, objective_kind: str
) -> None:
    model, objective = _tiny()
    try:
        est = unigrad.make_estimator(name, **options)
    except Exception as e:
        assert _is_one_line_user_error(e), (name, options, repr(e))
        return
    before = [p.detach().clone() for p in model.parameters()]
    try:
        if misuse == "swapped":
            est.estimate(objective, model)  # type: ignore[arg-type]
        elif misuse == "bad-objective":
            est.estimate(model, _bad_objectives(objective.inputs)[objective_kind])
        elif misuse == "not-callable":
            est.estimate(model, 42)  # type: ignore[arg-type]
        elif misuse == "load-state":
            est.load_state_dict({})
        elif misuse == "model-is-none":
            est.estimate(None, objective)  # type: ignore[arg-type]
        else:
            est.estimate(model, objective)
    except Exception as e:
        assert _is_one_line_user_error(e), (name, options, misuse, objective_kind, repr(e))
    # whatever happened, the parameters are as they were and no .grad holds NaN
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None or not torch.isnan(p.grad).any() for p in model.parameters())
