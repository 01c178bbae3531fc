"""1-D reaching with a delayed reward (``reaching``): move a point to a cued target, judged only at the end.

A cue shows the target position; after a delay a go signal opens the movement period, during which the network's
output is a velocity that moves a point starting at 0. Only the final position counts: the loss and the reward are
functions of ``p_T − target`` alone, delivered once at the end of the trial — the delayed-reward setting of
reward-modulated learning (Miconi 2017, eLife 6:e20899, arm control; the 1-D reaching task of García Fernández, Ahmad
& van Gerven, arXiv:2503.23972).

Timeline (defaults at ``dt = 20`` ms)::

    | cue | delay | movement |
     200   200     400 ms        →  T = 40 steps

Inputs ``(T, B, 2)``: channel 0 holds the target position during the cue period (0 elsewhere, so it must be
remembered through the delay); channel 1 is the go signal, 1.0 during the movement period.

Position: the point moves only during the movement period (outputs before the go signal are ignored), integrating
the output ``v_t`` (channel 0) as a velocity in units of "target range per movement period":

    p_t = p_{t−1} + (dt / movement)·v_t  for t in the movement period,   p = 0 before it,

so ``p_T`` is the mean output over the movement period, and a constant output equal to the target lands on it.
:meth:`position` returns the whole ``(T, B)`` path.

Targets are uniform on ``target_range = (lo, hi)``. ``batch.targets`` holds the target *position* at the last step
(the only scored step: ``mask`` is 1 there only), zero elsewhere. ``loss = (p_T − target)²``;
``reward = −|p_T − target|``; ``score`` = mean ``|p_T − target| / (hi − lo)`` (lower is better). ``chance`` is the
score of staying at 0, ``E|target| / (hi − lo)`` in closed form (0.25 for the default ``(−1, 1)``).

Options:
    dt: duration of one step (ms). Every duration must be a whole number of steps.
    cue: duration of the target cue (≥ one step).
    delay: duration between the cue and the go signal (≥ 0).
    movement: duration of the movement period (≥ one step).
    target_range: ``(lo, hi)`` with ``lo < hi``: the targets' uniform distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from unigrad.bio.tasks.base import TemporalTask, TrialBatch, check_number, steps_of
from unigrad.core.errors import UnigradError


class Reaching(TemporalTask):
    """Integrate the output as a velocity; only the final position's error counts (module docs)."""

    name = "reaching"
    description = "1-D reaching to a cued target; reward only from the final position (delayed reward)"
    tag = 0xB1004
    _options = ("dt", "cue", "delay", "movement", "target_range")

    def __init__(
        self,
        *,
        dt: float = 20.0,
        cue: float = 200.0,
        delay: float = 200.0,
        movement: float = 400.0,
        target_range: Sequence[float] = (-1.0, 1.0),
    ) -> None:
        self.dt = check_number("dt", dt, low=0.0, strict=True)
        self.cue, self.delay, self.movement = cue, delay, movement
        if isinstance(target_range, str) or not isinstance(target_range, Sequence) or len(target_range) != 2:
            raise UnigradError(f"option target_range must be a pair (lo, hi), got {target_range!r}")
        lo, hi = (check_number("target_range", v) for v in target_range)
        if not lo < hi:
            raise UnigradError(f"option target_range must have lo < hi, got {target_range!r}")
        self.target_range = (lo, hi)
        c = steps_of("cue", cue, self.dt)
        d = steps_of("delay", delay, self.dt, allow_zero=True)
        m = steps_of("movement", movement, self.dt)
        self.cue_steps = range(0, c)
        self.moving = range(c + d, c + d + m)
        self.steps = self.moving.stop
        self.n_in, self.n_out = 2, 1
        self.chance = _mean_abs_uniform(lo, hi) / (hi - lo)

    def _sample(self, batch: int, gen: torch.Generator, seed: int) -> TrialBatch:
        lo, hi = self.target_range
        goal = lo + (hi - lo) * torch.rand(batch, generator=gen)
        inputs = torch.zeros(self.steps, batch, 2)
        inputs[self.cue_steps.start : self.cue_steps.stop, :, 0] = goal
        inputs[self.moving.start : self.moving.stop, :, 1] = 1.0
        mask = torch.zeros(self.steps, batch)
        mask[-1] = 1.0
        targets = torch.zeros(self.steps, batch, 1)
        targets[-1, :, 0] = goal
        return TrialBatch(inputs, targets, mask)

    def position(self, outputs: Tensor, batch: TrialBatch) -> Tensor:
        """``(T, B)`` positions ``p_t``: the velocity output integrated over the movement period."""
        self.check_outputs(outputs, batch)
        moving = torch.zeros(self.steps, 1, dtype=outputs.dtype, device=outputs.device)
        moving[self.moving.start : self.moving.stop] = 1.0
        return torch.cumsum(outputs[..., 0] * moving, dim=0) / len(self.moving)

    def error(self, outputs: Tensor, batch: TrialBatch) -> Tensor:
        """``(B,)`` signed final error ``p_T − target``."""
        return self.position(outputs, batch)[-1] - batch.targets[-1, :, 0].to(outputs.dtype)

    def loss(self, outputs: Tensor, batch: TrialBatch) -> Tensor:
        """``(B,)`` squared final error ``(p_T − target)²``."""
        return self.error(outputs, batch).square()

    def reward(self, outputs: Tensor, batch: TrialBatch) -> Tensor:
        """``(B,)`` ``−|p_T − target|``, delivered at the end of the trial."""
        return -self.error(outputs, batch).abs()

    def score(self, outputs: Tensor, batch: TrialBatch) -> float:
        """Mean ``|p_T − target|`` over the range ``hi − lo`` (chance: staying at 0)."""
        lo, hi = self.target_range
        return float(self.error(outputs, batch).detach().abs().mean()) / (hi - lo)


def _mean_abs_uniform(lo: float, hi: float) -> float:
    """``E|X|`` for ``X ~ U(lo, hi)``."""
    if lo >= 0:
        return (lo + hi) / 2
    if hi <= 0:
        return -(lo + hi) / 2
    return (lo * lo + hi * hi) / (2 * (hi - lo))
