"""``unigrad list``: the estimators by derivative order, the decorrelated variants and the tasks."""

from __future__ import annotations

import argparse
from typing import Any

ORDER_NAMES = {
    0: "order 0: function values only (zeroth order)",
    1: "order 1: gradients, JVPs (first order)",
    2: "order 2: curvature (second order)",
    3: "order 3: third-order models",
}


def add_list_parser(sub: Any) -> None:
    """Add ``list`` to the ``sub`` parsers of the main parser."""
    sub.add_parser("list", help="estimators by derivative order, and tasks")


def cmd_list(args: argparse.Namespace) -> int:
    """``unigrad list``: print the estimators by order, the variants and the tasks; 0."""
    from unigrad.data.tasks import available_tasks
    from unigrad.registry import available, available_variants

    entries, variants = available(), available_variants()
    width = max(len(e.name) for e in [*entries, *variants]) + 2
    print("Estimators, by derivative order:")
    for order in sorted({e.order for e in entries if e.order is not None}):
        print(f"\n  {ORDER_NAMES.get(order, f'order {order}')}")
        for e in (e for e in entries if e.order == order):
            print(f"    {e.name:<{width}}{e.description}")
    missing = [e for e in entries if e.order is None]
    if missing:  # an estimator whose module fails to import (an optional package missing) is listed with why
        print("\n  unavailable here")
        for e in missing:
            print(f"    {e.name:<{width}}[unavailable: {e.error}]")
    print("\nDecorrelated variants (an estimator on a model with decorrelation layers):")
    for e in variants:
        print(f"    {e.name:<{width}}{e.description}" if e.order is not None else f"    {e.name:<{width}}[unavailable]")
    tasks = available_tasks()
    width = max(len(t.name) for t in tasks) + 2
    print("\nTasks:")
    for task in tasks:
        print(f"    {task.name:<{width}}{task.description}")
    print(f"    {'module:function':<{width}}your own: a function that returns a Task (examples/custom_task.py)")
    return 0


__all__ = ["ORDER_NAMES", "add_list_parser", "cmd_list"]
