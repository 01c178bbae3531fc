"""The estimator contract, cost accounting, objectives and seeded noise."""

from typing import Any

from unigrad.core import rng
from unigrad.core.cost import Cost
from unigrad.core.errors import NonFiniteLossError, UnigradError
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, objective, supervised
from unigrad.core.rng import ProbeNoise, key_hash

__all__ = [
    "Cost",
    "Estimate",
    "Estimator",
    "NonFiniteLossError",
    "Objective",
    "ProbeNoise",
    "UnigradError",
    "key_hash",
    "objective",
    "supervised",
]


def __getattr__(name: str) -> Any:
    if name == "Noise":  # the old name of ProbeNoise, with a DeprecationWarning
        return getattr(rng, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
