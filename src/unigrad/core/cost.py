"""Honest cost accounting.

A :class:`Cost` counts the work an estimator did, in *samples*: a forward pass of a batch of 256 is
256 forwards. Forward-pass equivalents (FE) put different kinds of work on one scale so methods can
be compared at equal budget::

    FE = forwards + 2·backwards + 1·jvps + 4·hvps

The weights are the usual arithmetic ratios of reverse- and forward-mode differentiation
(Griewank & Walther, *Evaluating Derivatives*, 2008, §4): a backward pass costs about two forward
passes; a JVP *tangent* propagation costs about one forward pass on top of the primal pass (which
is counted separately in ``forwards``); a Hessian-vector product by forward-over-reverse costs
about four. They are these nominal ratios, not timings of the machine at hand.
``bytes`` counts bytes communicated between processes and is reported next to FE, not inside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Self


class Counts:
    """A dataclass of counters that add field by field: ``a + b`` is a new one, ``a += b`` adds in place."""

    def __add__(self, other: Self) -> Self:
        return type(self)(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __iadd__(self, other: Self) -> Self:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


@dataclass
class Cost(Counts):
    """Work done, counted in samples. Add costs with ``+`` or ``+=``."""

    forwards: int = 0
    backwards: int = 0
    jvps: int = 0
    hvps: int = 0
    bytes: int = 0

    WEIGHTS: ClassVar[dict[str, float]] = {"forwards": 1.0, "backwards": 2.0, "jvps": 1.0, "hvps": 4.0}

    @property
    def forward_equivalents(self) -> float:
        """Forwards plus the other work converted to forward passes (see module docstring)."""
        return sum(getattr(self, k) * w for k, w in self.WEIGHTS.items())

    def to_dict(self) -> dict[str, float]:
        d: dict[str, float] = dict(asdict(self))
        d["forward_equivalents"] = self.forward_equivalents
        return d
