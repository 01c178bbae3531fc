"""``unigrad bench``: tasks × methods × seeds at equal budgets, against third-party black-box optimizers.

:mod:`~unigrad.bench.suite` lists the tasks (budgets, metrics, default methods),
:mod:`~unigrad.bench.problems` builds the problems that are not registered tasks,
:mod:`~unigrad.bench.run` runs the suite and :mod:`~unigrad.bench.report` writes the report and plots.
See ``docs/peers.md``.
"""

from unigrad.bench.run import bench
from unigrad.bench.suite import PEERS, TASKS, BenchTask, get_bench_task

__all__ = ["PEERS", "TASKS", "BenchTask", "bench", "get_bench_task"]
