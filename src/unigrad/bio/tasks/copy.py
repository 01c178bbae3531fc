"""Copy task (``copy``): reproduce a sequence after a delay.

The long-memory benchmark of Hochreiter & Schmidhuber (1997, Neural Computation 9:1735) in the form of Arjovsky,
Shah & Bengio (2016, "Unitary evolution recurrent neural networks", ICML): a sequence is shown, a blank delay
follows, then a cue asks for the sequence back, element by element. Here the elements are continuous scalars drawn
uniformly from [−1, 1] (rather than one-hot symbols), so the output is one linear channel trained with squared error.

Timeline (in steps; ``dt`` only names what one step stands for)::

    | sequence (K) | delay (D) | go (1) | recall (K) |      →  T = 2K + D + 1

Inputs ``(T, B, 2)``: channel 0 carries the K values during the sequence period (0 elsewhere); channel 1 is the go
cue, 1.0 at the single step before recall. Output ``(T, B, 1)``: in the recall window the target at step ``j`` is
the ``j``-th value of the sequence; scored (``mask``) only there.

``loss``: masked MSE. ``reward``: ``−loss``. ``score``: the normalised error ``RMSE / std(target)`` over every
scored step of the batch (population std of the batch's targets), lower is better; ``chance = 1``: predicting the
mean of the targets scores exactly 1, the zero output (the mean of the distribution) ≈ 1.

Options:
    length: K, the number of values to copy (≥ 1).
    delay: D, blank steps between the sequence and the go cue (≥ 0).
    dt: duration of one step (metadata for networks with time constants; the task is defined in steps).
"""

from __future__ import annotations

import torch
from torch import Tensor

from unigrad.bio.tasks.base import TemporalTask, TrialBatch, check_number, check_steps, nrmse


class Copy(TemporalTask):
    """Reproduce K values in [−1, 1] after a delay and a go cue (module docs)."""

    name = "copy"
    description = "copy a sequence of K values in [-1, 1] after a delay (Hochreiter & Schmidhuber 1997)"
    tag = 0xB1005
    chance = 1.0
    _options = ("length", "delay", "dt")

    def __init__(self, *, length: int = 5, delay: int = 10, dt: float = 1.0) -> None:
        self.length = check_steps("length", length)
        self.delay = check_steps("delay", delay, minimum=0)
        self.dt = check_number("dt", dt, low=0.0, strict=True)
        self.go = length + delay
        self.recall = range(self.go + 1, self.go + 1 + length)
        self.steps = self.recall.stop
        self.n_in, self.n_out = 2, 1

    def _sample(self, batch: int, gen: torch.Generator, seed: int) -> TrialBatch:
        values = torch.rand(self.length, batch, generator=gen) * 2 - 1
        inputs = torch.zeros(self.steps, batch, 2)
        inputs[: self.length, :, 0] = values
        inputs[self.go, :, 1] = 1.0
        targets = torch.zeros(self.steps, batch, 1)
        targets[self.recall.start : self.recall.stop, :, 0] = values
        mask = torch.zeros(self.steps, batch)
        mask[self.recall.start : self.recall.stop] = 1.0
        return TrialBatch(inputs, targets, mask)

    def score(self, outputs: Tensor, batch: TrialBatch) -> float:
        """Normalised error ``RMSE / std(target)`` over the recall windows (chance 1)."""
        self.check_outputs(outputs, batch)
        return nrmse(outputs, batch)
