"""The estimator contract, cost accounting, objectives and seeded noise."""

from unigrad.core.cost import Cost
from unigrad.core.errors import NonFiniteLossError, UnigradError
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, objective, supervised
from unigrad.core.rng import Noise, key_hash

__all__ = [
    "Cost",
    "Estimate",
    "Estimator",
    "Noise",
    "NonFiniteLossError",
    "Objective",
    "UnigradError",
    "key_hash",
    "objective",
    "supervised",
]
