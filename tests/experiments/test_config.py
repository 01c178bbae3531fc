"""The declared configuration of an experiment: shared and own options, full and quick defaults, and the runner
built from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from unigrad import UnigradError
from unigrad.experiments import EXPERIMENTS, _common, runner
from unigrad.experiments._common import Settings


@dataclass(frozen=True)
class _Config(_common.Config):
    size: int | None = None
    label: str = "x"

    NAME = "toy"
    FULL: ClassVar[Settings] = {"size": 100, "budget": 1000}
    QUICK: ClassVar[Settings] = {"size": 4, "budget": 10}
    QUICK_SEEDS = 2


def test_settings_take_the_mode_defaults_then_the_given_options() -> None:
    assert _Config().settings() == {"size": 100, "budget": 1000, "label": "x", "seeds": 3, "progress": None}
    quick = _Config(quick=True, seeds=5).settings()
    assert quick == {"size": 4, "budget": 10, "label": "x", "seeds": 2, "progress": None}
    assert _Config(quick=True, seeds=1, size=7).settings()["size"] == 7  # a given option wins over quick
    assert _Config(quick=True, seeds=1).settings()["seeds"] == 1


def test_an_experiment_that_takes_no_seeds_gets_none() -> None:
    from unigrad.experiments.convergence_orders import Config

    settings = Config(quick=True).settings()
    assert "seeds" not in settings and settings["iterations"] == 300 and settings["kappa"] == 50.0
    assert Config(kappa=2.0).settings()["kappa"] == 2.0


def test_unknown_options_are_refused_in_one_line_naming_the_valid_ones() -> None:
    with pytest.raises(UnigradError, match=r"unknown toy options: width; valid: label, progress, quick, seeds, size"):
        _Config.of({"width": 3})


def test_the_runner_passes_the_resolved_settings_and_returns_the_report(tmp_path) -> None:
    seen: dict[str, Any] = {}

    def run(out: Any, **settings: Any) -> None:
        seen.update(settings)
        (out / "report.md").write_text("# toy\n")

    text = _common.runner(_Config, run)(tmp_path, quick=True, size=5)
    assert text == "# toy\n" and seen == {"size": 5, "budget": 10, "label": "x", "seeds": 2, "progress": None}


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_runner_refuses_an_unknown_option(name: str, tmp_path) -> None:
    with pytest.raises(UnigradError, match=r"unknown .* options: no_such_option; valid: .*seeds"):
        runner(name)(tmp_path / "never", no_such_option=1)
    assert not (tmp_path / "never").exists()
