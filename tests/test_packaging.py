"""What the package declares: its description, extras and typing marker."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_package_description_opens_with_what_unigrad_is_not_with_make_run():
    readme = ROOT / PYPROJECT["project"]["readme"]
    lines = [line for line in readme.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0].startswith("Every way of training a network"), lines[0]
    assert "make run" not in readme.read_text()
    assert "torch==2.13.0" in readme.read_text()  # the pin, and how to install that torch first


def test_torch_is_pinned_exactly_and_the_optional_tools_are_extras():
    assert "torch==2.13.0" in PYPROJECT["project"]["dependencies"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"dev", "peers", "finetune", "tensorboard", "lightning"} <= set(extras)
    assert not any(
        d.startswith(("tensorboard", "pytorch-lightning", "transformers")) for d in PYPROJECT["project"]["dependencies"]
    )


def test_every_extra_is_in_the_lock():
    lock = (ROOT / "requirements.lock").read_text()
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        for requirement in extra:
            name = requirement.split(">")[0].split("=")[0].split("<")[0].strip().lower()
            assert f"\n{name}==" in lock, name


def test_the_package_ships_its_typing_marker():
    assert (ROOT / "src" / "unigrad" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["unigrad"]
