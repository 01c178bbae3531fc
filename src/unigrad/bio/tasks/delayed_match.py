"""Delayed match-to-sample (``dms``) and delayed non-match-to-sample (``dnms``).

The working-memory task of Miconi (2017, "Biologically plausible learning in recurrent neural networks reproduces
neural dynamics observed during cognitive tasks", eLife 6:e20899), after the primate DNMS task: two stimuli, each one
of two patterns, are shown one after the other with a delay between them; after a second delay the network answers
whether they were the same. Answering needs the first stimulus held in memory across the delay and compared with the
second (an XOR of the two stimuli: no single stimulus predicts the answer).

Timeline (durations in the units of ``dt``; the defaults, at ``dt = 20`` ms, are Miconi's 1000 ms trial)::

    | stimulus 1 | delay | stimulus 2 | gap | response |
      200 ms       200 ms   200 ms      200    200 ms      →  T = 50 steps

Inputs ``(T, B, n_in)``: pattern A turns channel 0 to 1.0, pattern B channel 1, during its stimulus period; all
inputs are 0 otherwise. With ``go_cue=True`` a third channel is 1.0 during the response window (Miconi's network has
no go signal and times its answer from the stimuli; the cue makes the task easier for small networks).

Output ``(T, B, 1)``: in the response window the target is ``+1`` when the answer is "yes" — the stimuli match (dms)
or differ (dnms) — and ``−1`` otherwise; ``labels`` is 1 for "yes", 0 for "no". The four stimulus pairs are equally
likely (first stimulus uniform, then match with probability 1/2), so the labels are balanced.

Scored (``mask``) only in the response window. ``loss``: masked MSE to the ±1 target. ``score``: accuracy of the sign
of the mean response-window output (chance 0.5; the zero output scores 0.5 exactly). ``reward``: see
:class:`~unigrad.bio.tasks.base.ChoiceTask` (``"abs"`` is Miconi's ``−mean |y − y*|`` over the window).

Options:
    dt: duration of one step (ms). Every duration must be a whole number of steps.
    stimulus: duration of each stimulus (≥ one step).
    delay: duration between the stimuli (≥ 0).
    gap: duration between the second stimulus and the response window (≥ 0).
    response: duration of the response window (≥ one step).
    go_cue: add the response-window cue channel.
    reward: ``"mse"``, ``"abs"`` or ``"correct"``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from unigrad.bio.tasks.base import ChoiceTask, TrialBatch, check_number, steps_of


class DelayedMatchToSample(ChoiceTask):
    """``dms``: answer +1 when the two stimuli match, −1 otherwise (module docs)."""

    name = "dms"
    description = "delayed match-to-sample: +1 if the two stimuli match (Miconi 2017 timing)"
    tag = 0xB1001
    nonmatch: ClassVar[bool] = False
    _options = ("dt", "stimulus", "delay", "gap", "response", "go_cue", "reward")

    def __init__(
        self,
        *,
        dt: float = 20.0,
        stimulus: float = 200.0,
        delay: float = 200.0,
        gap: float = 200.0,
        response: float = 200.0,
        go_cue: bool = False,
        reward: str = "mse",
    ) -> None:
        self.dt = check_number("dt", dt, low=0.0, strict=True)
        self.stimulus, self.delay, self.gap, self.response = stimulus, delay, gap, response
        self.go_cue = bool(go_cue)
        self._set_reward(reward)
        s = steps_of("stimulus", stimulus, self.dt)
        d = steps_of("delay", delay, self.dt, allow_zero=True)
        g = steps_of("gap", gap, self.dt, allow_zero=True)
        r = steps_of("response", response, self.dt)
        self.first = range(0, s)
        self.second = range(s + d, 2 * s + d)
        self.window = range(2 * s + d + g, 2 * s + d + g + r)
        self.steps = self.window.stop
        self.n_in = 3 if self.go_cue else 2
        self.n_out = 1

    def _sample(self, batch: int, gen: torch.Generator, seed: int) -> TrialBatch:
        first = torch.randint(0, 2, (batch,), generator=gen)
        match = torch.randint(0, 2, (batch,), generator=gen)
        second = torch.where(match == 1, first, 1 - first)
        trials = torch.arange(batch)
        inputs = torch.zeros(self.steps, batch, self.n_in)
        inputs[self.first.start : self.first.stop, trials, first] = 1.0
        inputs[self.second.start : self.second.stop, trials, second] = 1.0
        if self.go_cue:
            inputs[self.window.start : self.window.stop, :, 2] = 1.0
        labels = 1 - match if self.nonmatch else match
        mask = torch.zeros(self.steps, batch)
        mask[self.window.start : self.window.stop] = 1.0
        targets = mask[:, :, None] * (labels.to(torch.float32) * 2 - 1)[None, :, None]
        return TrialBatch(inputs, targets, mask, labels)


class DelayedNonMatchToSample(DelayedMatchToSample):
    """``dnms``: answer +1 when the two stimuli differ, −1 when they match (Miconi 2017's task)."""

    name = "dnms"
    description = "delayed non-match-to-sample: +1 if the two stimuli differ (Miconi 2017)"
    tag = 0xB1002
    nonmatch = True
