"""Test-suite settings: pytest runs two worker processes on two cores, so each uses one torch thread
unless ``OMP_NUM_THREADS`` asks for more (the suite is checked with 1 and with 2 threads, see
docs/reproducibility.md); the experiment store of CLI runs goes to a temporary folder (never the
working copy's ``runs/``)."""

import os
import tempfile

import pytest
import torch
from hypothesis import settings

# Property tests draw their examples from a seed fixed per test, not from the clock, and keep no example
# database: every machine and every fresh clone runs the same examples, so a verdict does not depend on
# the day. `pytest --hypothesis-profile=explore` searches new examples instead (random seed, no database).
settings.register_profile("unigrad", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile("unigrad")

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["UNIGRAD_STORE"] = os.path.join(tempfile.mkdtemp(prefix="unigrad-test-store-"), "unigrad.sqlite")
THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _suite_threads() -> None:
    """Every test starts with the suite's thread count: the CLI, run in-process by some tests, sets its own
    (``--threads``, default 1), which would otherwise leak into the tests after it."""
    torch.set_num_threads(THREADS)


@pytest.fixture
def one_thread() -> None:
    """One torch thread for a test, whatever the suite's count (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    modules of many tiny ops, where intra-op threads only spin on a busy machine, and runs compared bitwise with
    one-thread worker processes. Autouse fixtures run first, so this follows :func:`_suite_threads`, which resets
    the count for the next test."""
    torch.set_num_threads(1)
