"""unigrad: every way of training a network on one footing, ordered by derivative information.

>>> est = unigrad.make_estimator("spsa", probes=8, sigma=1e-3, seed=0)
>>> optimizer.zero_grad()
>>> e = est.estimate(model, unigrad.supervised(F.cross_entropy, x, y))   # writes .grad
>>> optimizer.step()                                                     # any torch.optim
"""

from typing import Any

from unigrad.core import (
    Cost,
    Estimate,
    Estimator,
    NonFiniteLossError,
    Objective,
    ProbeNoise,
    UnigradError,
    objective,
    supervised,
)
from unigrad.nn.decorrelation import Decorrelated, decorrelate, update_decorrelation
from unigrad.registry import available, estimator_class, make_estimator

__version__ = "0.1.0"

__all__ = [
    "Cost",
    "Decorrelated",
    "Estimate",
    "Estimator",
    "NonFiniteLossError",
    "Objective",
    "ProbeNoise",
    "UnigradError",
    "available",
    "decorrelate",
    "estimator_class",
    "make_estimator",
    "method_spec",
    "objective",
    "supervised",
    "update_decorrelation",
]


def __getattr__(name: str) -> Any:
    # the command line's method specs live on the training floor, imported only when asked for
    if name == "Noise":  # the old name of ProbeNoise, with a DeprecationWarning
        from unigrad.core import rng

        return getattr(rng, name)
    if name == "method_spec":
        from unigrad.train.methods import parse_method

        return parse_method
    raise AttributeError(f"module 'unigrad' has no attribute {name!r}")
