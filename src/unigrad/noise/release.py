"""Stochastic synaptic release: a Bernoulli(p) mask per synapse and step.

Definition (Faisal, Selen & Wolpert 2008, "Noise in the nervous system", Nat. Rev. Neurosci. 9:292;
release probabilities at central synapses are often well below 1)
    ``m_t ∈ {0, 1}`` with ``P(m_t = 1) = p``, independent across entries and steps; mean ``p``, variance
    ``p(1 − p)``. The mask is multiplicative: a synapse transmits on a step only where ``m_t = 1``, e.g.
    ``W_eff = W ⊙ m_t`` (shape the mask like the weight), or ``W ⊙ m_t / p`` to keep the expected weight
    unchanged (as dropout does). ``p = 1`` gives reliable transmission (all ones). Release failures are
    intrinsic, so a biological setting uses ``accessible=False``.

Options
    ``p``: release probability in (0, 1].
    ``accessible``: whether a learning rule may read the masks (see :mod:`unigrad.noise.base`).

Spec: ``release:p=0.5``. :meth:`StochasticRelease.sequence` returns masks of values 0 and 1 in ``dtype``
(any floating dtype, ``torch.bool``, or an integer dtype). Cost: one uniform draw per entry and step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unigrad.core.errors import UnigradError
from unigrad.noise.base import Draw, NoiseProcess, check_accessible, check_probability


class StochasticRelease(NoiseProcess):
    """Bernoulli(p) release masks (values 0/1), for multiplicative use on weights or activity."""

    name = "release"
    tag = 0x4E5A0005
    options = ("p",)
    example = "release:p=0.5"
    multiplicative = True

    def __init__(self, p: float, *, accessible: bool = True) -> None:
        self.p = check_probability("p", p)
        self.accessible = check_accessible(accessible)

    @property
    def mean(self) -> float:
        return self.p

    @property
    def variance(self) -> float:
        return self.p * (1 - self.p)

    def _check_dtype(self, dtype: torch.dtype) -> None:
        if not isinstance(dtype, torch.dtype) or dtype.is_complex:
            raise UnigradError(f"noise {self.name} needs a real or bool dtype, got {dtype!r}")

    def _sample(self, draw: Draw) -> Tensor:
        return draw.uniform() < self.p  # bool; cast by sequence()
