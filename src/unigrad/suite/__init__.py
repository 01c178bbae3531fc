"""The benchmark suite behind ``unigrad bench`` (the package is ``suite``; the repository's ``benchmarks/`` folder holds
the scripts that measure the library itself): tasks × methods × seeds at equal budgets, against third-party
black-box optimizers.

:mod:`~unigrad.suite.tasks` lists the tasks (budgets, metrics, default methods),
:mod:`~unigrad.suite.problems` builds the problems that are not registered tasks,
:mod:`~unigrad.suite.run` runs the suite and :mod:`~unigrad.suite.report` writes the report and plots.
See ``docs/peers.md``.
"""

from unigrad.suite.run import bench
from unigrad.suite.tasks import PEERS, TASKS, BenchTask, get_bench_task

__all__ = ["PEERS", "TASKS", "BenchTask", "bench", "get_bench_task"]
