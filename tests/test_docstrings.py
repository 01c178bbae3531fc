"""Every registered estimator class documents itself where ``help()`` looks: its own class docstring names
every constructor argument in an ``Args:`` section and cites its method (a year in parentheses or an arXiv id)."""

import inspect
import re

import pytest

import unigrad
from unigrad.core.estimator import Estimator

NAMES = [e.name for e in unigrad.available()]
REFERENCE = re.compile(r"\((?:[^()]*?\D)?(?:19|20)\d{2}\)|arXiv")  # "(2017)", "(2nd ed., 2018)", "arXiv:1703.03864"


def docstring_problems(cls: type) -> list[str]:
    """What the class docstring of ``cls`` lacks, one phrase each (empty when it is complete)."""
    doc = cls.__dict__.get("__doc__")
    if not doc:
        owner = next((c for c in cls.__mro__[1:] if c.__dict__.get("__doc__")), None)
        inherited = f" (help() shows {owner.__name__}'s)" if owner is not None else ""
        return [f"no class docstring of its own{inherited}"]
    doc = inspect.cleandoc(doc)
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    problems = []
    if "\nArgs:\n" not in doc:
        problems.append(f"no 'Args:' section (it must list {', '.join(params)})")
    else:
        args = doc.split("\nArgs:\n", 1)[1]
        args = re.split(r"\n\S", args, maxsplit=1)[0]  # up to the next unindented line (References:, …)
        listed = set(re.findall(r"^ +(\w+):", args, re.M))
        missing = [p for p in params if p not in listed]
        if missing:
            problems.append(f"'Args:' does not list constructor argument(s) {', '.join(missing)}")
    if not REFERENCE.search(doc):
        problems.append("no reference (authors, title, venue and a year in parentheses, or an arXiv id)")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_estimator_class_documents_its_method(name):
    cls = unigrad.estimator_class(name)
    problems = docstring_problems(cls)
    assert not problems, f"{cls.__module__}.{cls.__qualname__} ({name}): " + "; ".join(problems)


def test_the_check_says_what_is_missing():
    class Undocumented(Estimator):
        def __init__(self, probes: int = 1, seed: int = 0) -> None:
            super().__init__(seed)

    class Partial(Estimator):
        """A method.

        Args:
            probes: how many.
        """

        def __init__(self, probes: int = 1, sigma: float = 1e-3, seed: int = 0) -> None:
            super().__init__(seed)

    assert docstring_problems(Undocumented) == ["no class docstring of its own (help() shows Estimator's)"]
    assert docstring_problems(Partial) == [
        "'Args:' does not list constructor argument(s) sigma, seed",
        "no reference (authors, title, venue and a year in parentheses, or an arXiv id)",
    ]
