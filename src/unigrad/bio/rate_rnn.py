"""Continuous-time rate RNN, Euler-discretised.

The network integrates

    τ dx/dt = −x + W_rec φ(x) + W_in u + b

(Song, Yang & Wang, "Training excitatory-inhibitory recurrent neural networks for cognitive tasks: a
simple and flexible framework", PLoS Comput Biol 12(2), 2016; Miconi, "Biologically plausible learning
in recurrent neural networks reproduces neural dynamics observed during cognitive tasks", eLife 6, 2017)
with the Euler step ``α = dt/τ``, rates ``r = φ(x)`` and ``x_0 = 0``::

    x_{t+1} = (1 − α) x_t + α (W_rec r_t + W_in u_t + b) + ξ_t
    y_t     = W_out r_{t+1} + b_out                       t = 0 … T−1

``ξ_t`` is noise on the units, added after the leak (so ``x_{t+1}`` with noise minus ``x_{t+1}``
without is exactly ``ξ_t`` for the first step, and the noise then propagates through the dynamics).
It is the sum of the ``noise`` argument and the network's own *intrinsic* noise, if any.

Options:
    n_in, n_rec, n_out: input, recurrent and output sizes.
    tau: the units' time constant τ (same unit as ``dt``); must be > 0.
    dt: the integration step; ``0 < dt ≤ tau`` (α ≤ 1, so the Euler step never overshoots the leak).
    activation: φ, ``"tanh"`` or ``"relu"``.
    gain: recurrent initial weights W_rec ~ N(0, gain²/n_rec) (gain > 1: chaotic regime, Sompolinsky,
        Crisanti & Sommers 1988).
    seed: keys the initial weights (a local ``torch.Generator``, never the global RNG) and the
        intrinsic noise.
    intrinsic: a noise process (``unigrad.noise``) the network makes itself. Each call of :meth:`run`
        (and :meth:`forward`) that uses it draws ``intrinsic.sequence(T, (B, n_rec), seed=seed,
        trial=trial, stream=0, dt=dt)`` and then advances the trial counter by one, so the noise of a
        trial regenerates bit for bit from ``(seed, trial)`` and differs across trials.
    dtype: the parameters' floating-point type.

Initialisation (one generator keyed by ``(seed, 0x4A7E)``, drawn in float64 in this order, then cast):
W_rec ~ N(0, gain²/n_rec), W_in ~ N(0, 1/n_in), W_out ~ N(0, 1/n_rec), biases 0. The weights live in
three plain ``nn.Linear`` modules (``inp`` with the bias ``b``, ``rec`` without bias, ``out``), used
only through their forward, so every estimator, hook and the linear fast path of the perturbation
estimators apply.

Cost per call: one input product for all steps (``inp`` on the whole ``(T, B, n_in)`` sequence), T
recurrent products, one output product on all rates.

State: the trial counter ``trial`` (an int; stored as the int64 buffer ``trial_counter`` so
``state_dict`` saves and restores it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.options import check_int, check_seed
from unigrad.core.rng import generator

if TYPE_CHECKING:
    from unigrad.noise.base import NoiseProcess

ACTIVATIONS = ("tanh", "relu")
_INIT_TAG = 0x4A7E


@dataclass
class Trajectory:
    """Everything a learning rule may need from one run of a :class:`RateRNN`.

    Attributes:
        inputs: ``(T, B, n_in)`` the inputs ``u``.
        x: ``(T+1, B, n_rec)`` unit states ``x_0 … x_T``.
        r: ``(T+1, B, n_rec)`` rates ``φ(x_0) … φ(x_T)``.
        outputs: ``(T, B, n_out)`` readouts ``y_0 … y_{T−1}``.
        noise: ``(T, B, n_rec)`` the ξ that was added (passed plus intrinsic), or None if none was.
        noise_accessible: False when the noise contains intrinsic noise of a process whose
            ``accessible`` is False: a learning rule must then not read ``noise``.
    """

    inputs: Tensor
    x: Tensor
    r: Tensor
    outputs: Tensor
    noise: Tensor | None
    noise_accessible: bool = True

    @property
    def readout_inputs(self) -> Tensor:
        """``(T, B, n_rec)``: what ``W_out`` multiplies to give ``y_t``, the rates ``r_1 … r_T``."""
        return self.r[1:]

    @property
    def readout_bias_inputs(self) -> Tensor:
        """``(T, 1, 1)``: ``∂y_t/∂b_out``, 1 at every step."""
        return self.r.new_ones(self.r.shape[0] - 1, 1, 1)


def check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        check_positive(name, value, integer=True)


def check_sequence(inputs: Tensor, noise: Tensor | None, n_in: int, n_rec: int) -> None:
    """Raise unless ``inputs`` is ``(T, B, n_in)`` and ``noise`` (if any) is ``(T, B, n_rec)``."""
    if not isinstance(inputs, Tensor) or inputs.dim() != 3 or inputs.shape[2] != n_in:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise UnigradError(f"inputs must be a (T, B, n_in={n_in}) tensor (time first), got {shape}")
    if inputs.shape[0] < 1:
        raise UnigradError("inputs must have at least one time step")
    if noise is not None and tuple(noise.shape) != (inputs.shape[0], inputs.shape[1], n_rec):
        raise UnigradError(
            f"noise must be (T, B, n_rec) = {(inputs.shape[0], inputs.shape[1], n_rec)}, got {tuple(noise.shape)}"
        )


def check_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UnigradError(f"option dtype must be a floating-point torch.dtype, got {dtype!r}")


def linear(n_in: int, n_out: int, bias: bool, dtype: torch.dtype) -> nn.Linear:
    return skip_init(nn.Linear, n_in, n_out, bias=bias, dtype=dtype)


def fill(lin: nn.Linear, g: torch.Generator, std: float) -> None:
    w = torch.randn(lin.weight.shape, generator=g, dtype=torch.float64) * std
    lin.weight.copy_(w.to(lin.weight.dtype))
    if lin.bias is not None:
        lin.bias.zero_()


class NoisyNetwork(nn.Module):
    """Base of the bio networks: a seed, an optional intrinsic noise process and the trial counter."""

    seed: int
    dt: float
    gain: float
    intrinsic: NoiseProcess | None
    live_buffers = ("trial_counter",)
    """Buffers every evaluation advances, even within one estimator step (each trial draws new intrinsic
    noise): see :mod:`unigrad.core.step_state`."""

    def _init_noise(self, seed: int, intrinsic: NoiseProcess | None) -> None:
        check_seed("seed", seed)
        if intrinsic is not None and not callable(getattr(intrinsic, "sequence", None)):
            raise UnigradError("option intrinsic must be a noise process (unigrad.noise) with a sequence() method")
        self.seed, self.intrinsic = seed, intrinsic
        self.register_buffer("trial_counter", torch.zeros((), dtype=torch.int64))

    def _init_layers(self, n_in: int, n_rec: int, n_out: int, dtype: torch.dtype, g: torch.Generator) -> None:
        """The layers ``inp`` (``W_in``, ``b``), ``rec`` (``W_rec``) and ``out`` (``W_out``, ``b_out``), registered in
        this order; the weights drawn from ``g`` in the order ``W_rec ~ N(0, gain²/n_rec)``, ``W_in ~ N(0, 1/n_in)``,
        ``W_out ~ N(0, 1/n_rec)``, the biases zero."""
        self.n_in, self.n_rec, self.n_out = n_in, n_rec, n_out
        self.inp = linear(n_in, n_rec, True, dtype)
        self.rec = linear(n_rec, n_rec, False, dtype)
        self.out = linear(n_rec, n_out, True, dtype)
        with torch.no_grad():
            fill(self.rec, g, self.gain / n_rec**0.5)
            fill(self.inp, g, 1.0 / n_in**0.5)
            fill(self.out, g, 1.0 / n_rec**0.5)

    @property
    def trial(self) -> int:
        """The next trial whose intrinsic noise a run will draw."""
        return int(self.trial_counter)

    @trial.setter
    def trial(self, value: int) -> None:
        check_int("trial", value, subject="trial")
        self.trial_counter.fill_(value)

    def forward(self, inputs: Tensor, noise: Tensor | None = None) -> Tensor:
        """Readouts ``(T, B, n_out)`` for inputs ``(T, B, n_in)``: ``run(inputs, noise).outputs``."""
        return self.run(inputs, noise).outputs

    def run(self, inputs: Tensor, noise: Tensor | None = None) -> Any:
        """Simulate the network over ``inputs`` ``(T, B, n_in)``; ``noise`` is ``(T, B, n_rec)`` or None."""
        raise NotImplementedError

    def _input_drive(self, inputs: Tensor, noise: Tensor | None, scale: float) -> tuple[Tensor, Tensor | None, bool]:
        """The drive of every step, ``scale·(W_in u_t + b) + ξ_t``, computed for all steps in one product.

        Checks ``inputs`` and ``noise``; ``ξ`` is ``noise`` plus the intrinsic noise of the current trial
        (:meth:`_total_noise`). Returns the drive ``(T, B, n_rec)``, ``ξ`` (or None) and whether a learning rule
        may read ``ξ``.
        """
        check_sequence(inputs, noise, self.n_in, self.n_rec)
        xi, accessible = self._total_noise(noise, inputs, self.n_rec)
        pre = self.inp(inputs) * scale
        if xi is not None:
            pre = pre + xi
        return pre, xi, accessible

    def _total_noise(self, noise: Tensor | None, inputs: Tensor, n: int) -> tuple[Tensor | None, bool]:
        """``noise`` plus the intrinsic noise of the current trial (which then advances), and whether a
        learning rule may read the sum."""
        if self.intrinsic is None:
            return noise, True
        steps, batch = inputs.shape[0], inputs.shape[1]
        drawn = self.intrinsic.sequence(
            steps,
            (batch, n),
            seed=self.seed,
            trial=self.trial,
            stream=0,
            dt=self.dt,
            dtype=inputs.dtype,
            device=inputs.device,
        )
        with torch.no_grad():
            self.trial_counter.add_(1)
        total = drawn if noise is None else noise + drawn
        return total, bool(getattr(self.intrinsic, "accessible", True))


class RateRNN(NoisyNetwork):
    """Continuous-time rate RNN (see the module docstring for the equations and options)."""

    def __init__(
        self,
        n_in: int,
        n_rec: int,
        n_out: int,
        *,
        tau: float = 100.0,
        dt: float = 20.0,
        activation: str = "tanh",
        gain: float = 1.5,
        seed: int = 0,
        intrinsic: NoiseProcess | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        check_sizes(n_in=n_in, n_rec=n_rec, n_out=n_out)
        check_positive("tau", tau)
        check_positive("dt", dt)
        if dt > tau:
            raise UnigradError(f"option dt must be <= tau (the Euler step α = dt/tau ≤ 1), got dt={dt}, tau={tau}")
        check_choice("activation", activation, ACTIVATIONS)
        if not gain >= 0:
            raise UnigradError(f"option gain must be a number >= 0, got {gain!r}")
        check_dtype(dtype)
        self._init_noise(seed, intrinsic)
        self.tau, self.dt, self.alpha = float(tau), float(dt), float(dt) / float(tau)
        self.activation, self.gain = activation, float(gain)
        self._init_layers(n_in, n_rec, n_out, dtype, generator(seed, _INIT_TAG))

    def extra_repr(self) -> str:
        return (
            f"n_in={self.n_in}, n_rec={self.n_rec}, n_out={self.n_out}, tau={self.tau}, dt={self.dt}, "
            f"activation={self.activation!r}, gain={self.gain}, seed={self.seed}, intrinsic={self.intrinsic!r}"
        )

    def phi(self, x: Tensor) -> Tensor:
        """The activation φ."""
        return torch.tanh(x) if self.activation == "tanh" else torch.relu(x)

    def run(self, inputs: Tensor, noise: Tensor | None = None) -> Trajectory:
        """Integrate the network over ``inputs`` ``(T, B, n_in)``; ``noise`` is ``(T, B, n_rec)`` or None."""
        a = self.alpha
        pre, xi, accessible = self._input_drive(inputs, noise, a)  # α (W_in u_t + b) + ξ_t
        x = inputs.new_zeros(inputs.shape[1], self.n_rec)
        r = self.phi(x)
        xs, rs = [x], [r]
        for t in range(inputs.shape[0]):
            x = torch.add(pre[t], x, alpha=1.0 - a) + a * self.rec(r)
            r = self.phi(x)
            xs.append(x)
            rs.append(r)
        rates = torch.stack(rs)
        outputs = self.out(rates[1:])
        return Trajectory(inputs, torch.stack(xs), rates, outputs, xi, accessible)
