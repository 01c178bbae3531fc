"""make_noise: parsing specs, round trips, and one-line errors for bad names, options and values."""

import pytest

from tests.noise._processes import IDS, PROCESSES
from unigrad.core.errors import UnigradError
from unigrad.noise import (
    NOISES,
    NoiseProcess,
    OrnsteinUhlenbeck,
    SparseKicks,
    StochasticRelease,
    make_noise,
)


def test_parses_options() -> None:
    ou = make_noise("ou:sigma=0.1:tau=50")
    assert isinstance(ou, OrnsteinUhlenbeck)
    assert (ou.sigma, ou.tau, ou.accessible) == (0.1, 50.0, True)
    kicks = make_noise(" sparse-kicks : p = 3e-3 : sigma=1 : accessible=false ")
    assert isinstance(kicks, SparseKicks)
    assert (kicks.p, kicks.sigma, kicks.accessible) == (0.003, 1.0, False)
    assert make_noise("release:p=1:accessible=1") == StochasticRelease(1.0)


@pytest.mark.parametrize("proc", PROCESSES, ids=IDS)
def test_spec_round_trips(proc: NoiseProcess) -> None:
    assert make_noise(proc.spec) == proc
    hidden = type(proc)(**proc.option_values(), accessible=False)
    assert make_noise(hidden.spec) == hidden and hidden.spec.endswith(":accessible=false")
    assert make_noise(proc) is proc


def test_every_registered_example_parses(tmp_path, monkeypatch) -> None:
    import numpy as np

    monkeypatch.chdir(tmp_path)  # the replay example reads trace.npy from the working folder
    np.save("trace.npy", np.sin(np.arange(100.0)))
    for name, cls in NOISES.items():
        proc = make_noise(cls.example)
        assert type(proc) is cls and proc.name == name


def one_line_error(spec: object) -> str:
    with pytest.raises(UnigradError) as info:
        make_noise(spec)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_unknown_name_lists_valid_ones() -> None:
    msg = one_line_error("pink:sigma=1")
    assert "'pink'" in msg
    for name in NOISES:
        assert name in msg


def test_unknown_option_lists_valid_ones() -> None:
    msg = one_line_error("ou:sigma=0.1:tau=5:theta=2")
    assert "theta" in msg and "sigma" in msg and "tau" in msg and "accessible" in msg


@pytest.mark.parametrize(
    "spec, words",
    [
        ("ou:sigma=0.1", ["tau", "ou:sigma"]),  # missing option, with an example
        ("ou:sigma:tau=5", ["key=value"]),
        ("ou:sigma=0.1:tau=5:sigma=0.2", ["twice"]),
        ("gaussian:sigma=abc", ["number"]),
        ("gaussian:sigma=0", ["sigma", "> 0"]),
        ("gaussian:sigma=-1", ["sigma"]),
        ("gaussian:sigma=inf", ["sigma", "finite"]),
        ("rademacher:sigma=nan", ["sigma"]),
        ("ou:sigma=1:tau=0", ["tau", "> 0"]),
        ("ou:sigma=1:tau=-3", ["tau"]),
        ("sparse-kicks:p=0:sigma=1", ["p", "(0, 1]"]),
        ("sparse-kicks:p=1.5:sigma=1", ["p", "(0, 1]"]),
        ("release:p=-0.1", ["p", "(0, 1]"]),
        ("poisson:sigma=1:rate=0", ["rate"]),
        ("gaussian:sigma=1:accessible=maybe", ["accessible"]),
        ("", ["unknown noise"]),
    ],
)
def test_bad_specs(spec: str, words: list[str]) -> None:
    msg = one_line_error(spec)
    for w in words:
        assert w in msg, (spec, msg)


def test_constructor_checks_types() -> None:
    with pytest.raises(UnigradError):
        OrnsteinUhlenbeck(True, 5.0)  # a bool is not a number
    with pytest.raises(UnigradError):
        StochasticRelease(0.5, accessible=1)  # type: ignore[arg-type]
    one_line_error(3)
