"""The closed forms of Werfel, Xie & Seung (2005) that :mod:`unigrad.experiments.werfel` measures against.

For a linear student ``y = W x`` learning a teacher online, with ``D = W − W*``, each method's update ``g``
satisfies ``E‖g‖² = K‖D‖²``, so the mean error contracts by ``1 − 2η + Kη²`` per step (see that module).
"""

from __future__ import annotations

import math

from unigrad.core.errors import UnigradError

METHODS = ("gd", "np", "wp")
TOLERANCE = 0.25
"""A measured figure agrees with theory when it is within this relative distance of it."""


def theory_k(method: str, m: int, n: int) -> float:
    """``K`` in ``E‖g‖² = K‖D‖²``: N + 2 (GD), (M + 2)(N + 2) (NP), (MN + 2)(N + 2) (WP)."""
    if method == "gd":
        return float(n + 2)
    if method == "np":
        return float((m + 2) * (n + 2))
    if method == "wp":
        return float((m * n + 2) * (n + 2))
    raise UnigradError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def theory_rate(method: str, m: int, n: int, eta: float) -> float:
    """The mean error's contraction per step, ``1 − 2η + Kη²``."""
    return 1.0 - 2.0 * eta + theory_k(method, m, n) * eta * eta


def theory_time(method: str, m: int, n: int, eta: float, factor: float) -> float:
    """Steps for the mean error to fall by ``factor``: ``ln F / (−ln(1 − 2η + Kη²))`` (inf if it does not)."""
    r = theory_rate(method, m, n, eta)
    return math.log(factor) / -math.log(r) if 0.0 < r < 1.0 else math.inf


def optimal_eta(method: str, m: int, n: int) -> float:
    """The learning rate that maximises the mean error's decay, ``1/K``."""
    return 1.0 / theory_k(method, m, n)


def within(measured: float | None, theory: float) -> bool:
    """Whether ``measured`` exists and lies within :data:`TOLERANCE` of ``theory`` (relative)."""
    return measured is not None and abs(measured - theory) <= TOLERANCE * abs(theory)
