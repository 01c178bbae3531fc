"""Perceptual decision (``perceptual-decision``): integrate noisy evidence of a sign, then report it.

A random-dots-like motion discrimination in the form used to train recurrent networks (Britten, Shadlen, Newsome &
Movshon 1992, J. Neurosci. 12:4745 for the psychophysics; Mante, Sussillo, Shenoy & Newsome 2013, Nature 503:78 and
Song, Yang & Wang 2016, PLoS Comput. Biol. 12:e1004792 for the network task design). Each trial has a direction
``s = ±1`` and a coherence ``c`` (drawn uniformly from ``coherences``); the evidence at every stimulus step is

    u_t = c·s + σ·ε_t,     ε_t ~ N(0, 1) i.i.d. (drawn with the trial, keyed by (seed, step))

so one step says little and the answer improves with integration.

Timeline (defaults at ``dt = 20`` ms)::

    | fixation | stimulus | delay | response |
      100 ms      800 ms     0 ms    200 ms      →  T = 55 steps

Inputs ``(T, B, n_in)``: channel 0 is the evidence during the stimulus period and 0 elsewhere; with ``go_cue=True``
channel 1 is 1.0 during the response window. The per-step noise does not scale with ``dt``: a finer ``dt`` gives
more steps and so more evidence; to keep the evidence of a trial fixed when going from ``dt₀`` to ``dt``, scale
``sigma`` by ``√(dt₀/dt)`` (the ideal observer's ``c·√n/σ`` then stays the same).

Output ``(T, B, 1)``, a single ±1 readout: the target is ``s`` in the response window (``labels`` = 1 for
``s = +1``, 0 for ``s = −1``; signs are fair coin flips). Scored (``mask``) only in the response window. ``loss``:
masked MSE to ``s``. ``score``: accuracy of the sign of the mean response-window output (chance 0.5). ``reward``: see
:class:`~unigrad.bio.tasks.base.ChoiceTask`.

The best possible accuracy is that of the ideal observer, which sums the evidence of the ``n`` stimulus steps:
``Φ(c·√n/σ)`` at coherence ``c``, averaged over the coherences (:meth:`ideal_accuracy`) — below 1, because the
evidence itself is noisy.

Options:
    dt: duration of one step (ms). Every duration must be a whole number of steps.
    fixation: duration before the stimulus (≥ 0).
    stimulus: duration of the evidence (≥ one step).
    delay: duration between the stimulus and the response window (≥ 0).
    response: duration of the response window (≥ one step).
    coherences: the coherence levels (≥ 0), one drawn uniformly per trial. Default: Britten et al.'s 3.2 % to 51.2 %.
    sigma: standard deviation of the per-step evidence noise (≥ 0).
    go_cue: add the response-window cue channel.
    reward: ``"mse"``, ``"abs"`` or ``"correct"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from unigrad.bio.tasks.base import ChoiceTask, TrialBatch, check_number, steps_of
from unigrad.core.errors import UnigradError


class PerceptualDecision(ChoiceTask):
    """Report the sign of noisy evidence after the stimulus ends (module docs)."""

    name = "perceptual-decision"
    description = "integrate noisy evidence c·s + σε, report the sign s (random-dots-like)"
    tag = 0xB1003
    _options = (
        "dt",
        "fixation",
        "stimulus",
        "delay",
        "response",
        "coherences",
        "sigma",
        "go_cue",
        "reward",
    )

    def __init__(
        self,
        *,
        dt: float = 20.0,
        fixation: float = 100.0,
        stimulus: float = 800.0,
        delay: float = 0.0,
        response: float = 200.0,
        coherences: Sequence[float] = (0.032, 0.064, 0.128, 0.256, 0.512),
        sigma: float = 1.0,
        go_cue: bool = False,
        reward: str = "mse",
    ) -> None:
        self.dt = check_number("dt", dt, low=0.0, strict=True)
        self.fixation, self.stimulus, self.delay, self.response = fixation, stimulus, delay, response
        if isinstance(coherences, int | float) and not isinstance(coherences, bool):
            coherences = (coherences,)
        if isinstance(coherences, str) or not isinstance(coherences, Sequence) or len(coherences) == 0:
            raise UnigradError(f"option coherences must be a non-empty list of numbers >= 0, got {coherences!r}")
        self.coherences = tuple(check_number("coherences", c, low=0.0) for c in coherences)
        self.sigma = check_number("sigma", sigma, low=0.0)
        self.go_cue = bool(go_cue)
        self._set_reward(reward)
        f = steps_of("fixation", fixation, self.dt, allow_zero=True)
        s = steps_of("stimulus", stimulus, self.dt)
        d = steps_of("delay", delay, self.dt, allow_zero=True)
        r = steps_of("response", response, self.dt)
        self.evidence = range(f, f + s)
        self.window = range(f + s + d, f + s + d + r)
        self.steps = self.window.stop
        self.n_in = 2 if self.go_cue else 1
        self.n_out = 1

    def _sample(self, batch: int, gen: torch.Generator, seed: int) -> TrialBatch:
        labels = torch.randint(0, 2, (batch,), generator=gen)
        sign = labels.to(torch.float32) * 2 - 1
        levels = torch.tensor(self.coherences, dtype=torch.float32)
        coherence = levels[torch.randint(0, len(self.coherences), (batch,), generator=gen)]
        noise = torch.randn(len(self.evidence), batch, generator=gen)
        inputs = torch.zeros(self.steps, batch, self.n_in)
        inputs[self.evidence.start : self.evidence.stop, :, 0] = (coherence * sign)[None, :] + self.sigma * noise
        if self.go_cue:
            inputs[self.window.start : self.window.stop, :, 1] = 1.0
        mask = torch.zeros(self.steps, batch)
        mask[self.window.start : self.window.stop] = 1.0
        targets = mask[:, :, None] * sign[None, :, None]
        return TrialBatch(inputs, targets, mask, labels)

    def ideal_accuracy(self) -> float:
        """Expected accuracy of the ideal observer (the sign of the summed evidence): mean of ``Φ(c√n/σ)``."""
        n = len(self.evidence)
        if self.sigma == 0:
            return sum(1.0 if c > 0 else 0.5 for c in self.coherences) / len(self.coherences)
        phi = [0.5 * (1 + math.erf(c * math.sqrt(n) / self.sigma / math.sqrt(2))) for c in self.coherences]
        return sum(phi) / len(phi)
