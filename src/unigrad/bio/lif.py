"""Leaky integrate-and-fire (LIF) spiking network, trainable by BPTT with a surrogate gradient.

Membrane potentials ``v``, spikes ``s ∈ {0, 1}``, ``v_0 = 0``, ``s_0 = 0``, ``β = exp(−dt/τ_mem)``::

    v_{t+1} = β v_t + (1 − β)(W_in u_t + W_rec s_t + b) + ξ_t − θ s_t      (reset="subtract")
    v_{t+1} = β v_t (1 − s_t) + (1 − β)(W_in u_t + W_rec s_t + b) + ξ_t    (reset="zero")
    s_{t+1} = H(v_{t+1} − θ)                                               (H(0) = 1: a spike on reaching θ)

The ``(1 − β)`` factor makes the drive a current in units of the potential: a constant drive ``I``
from ``v = 0`` gives ``v_n = I (1 − β^n)`` (exact: the discretisation is the exact solution of
``τ dv/dt = −v + I`` for a drive held over each step), so a neuron with ``I > θ`` first fires at
``n* = ⌈ln(1 − θ/I) / ln β⌉`` and, with ``reset="zero"``, every ``n*`` steps after that. ``ξ_t`` is
noise on the potential (the ``noise`` argument plus the intrinsic noise), added unscaled.

Readout: a leaky integration of the output projection of the spikes, ``β_out = exp(−dt/τ_out)``,
``o_0 = 0``::

    o_{t+1} = β_out o_t + (1 − β_out)(W_out s_{t+1} + b_out),     y_t = o_{t+1}     t = 0 … T−1

The Heaviside ``H`` has the fast-sigmoid surrogate derivative (Zenke & Ganguli, "SuperSpike:
supervised learning in multilayer spiking neural networks", Neural Computation 30(6), 2018; Neftci,
Mostafa & Zenke, "Surrogate gradient learning in spiking neural networks", IEEE Signal Processing
Magazine 36(6), 2019)::

    ∂s/∂v ≈ 1 / (1 + k |v − θ|)²          (k = surrogate_slope)

so the ``backprop`` estimator on the unrolled network is BPTT with surrogate gradients. By default
the reset term is detached from the graph (``detach_reset=True``), which Zenke & Vogels ("The
remarkable robustness of surrogate gradient learning for instilling complex function in spiking
neural networks", Neural Computation 33(4), 2021) found to train better.

Options:
    n_in, n_rec, n_out: input, recurrent and output sizes.
    tau_mem: membrane time constant (same unit as ``dt``), > 0.
    tau_out: readout time constant, > 0.
    dt: integration step, > 0.
    threshold: the firing threshold θ, > 0.
    surrogate_slope: k of the surrogate derivative, > 0 (larger: closer to the true, zero-almost-everywhere
        derivative).
    reset: ``"subtract"`` (v − θ after a spike, keeps the excess) or ``"zero"`` (back to 0).
    detach_reset: whether the reset carries no gradient.
    gain: recurrent initial weights W_rec ~ N(0, gain²/n_rec), ≥ 0.
    seed: keys the initial weights (local ``torch.Generator``) and the intrinsic noise.
    intrinsic: a noise process (``unigrad.noise``) drawn per call as
        ``intrinsic.sequence(T, (B, n_rec), seed=seed, trial=trial, stream=0, dt=dt)`` (added to the
        potentials), after which the trial counter advances by one.
    dtype: the parameters' floating-point type.

Initialisation (one generator keyed by ``(seed, 0x11F)``, float64 draws in this order, then cast):
W_rec ~ N(0, gain²/n_rec), W_in ~ N(0, 1/n_in), W_out ~ N(0, 1/n_rec), biases 0. Weights live in the
plain ``nn.Linear`` modules ``inp`` (with ``b``), ``rec`` (no bias) and ``out``.

Cost per call: one input product for all steps, T recurrent products, one output product.

For learning rules: ``alpha = 1 − β`` is the factor through which ``W_in``, ``W_rec`` and ``b`` enter
``v_{t+1}``; a :class:`SpikeTrajectory` names the potentials ``x`` and the spikes ``r`` (as the rate network's
trajectory does) and gives the readout's input traces (``readout_inputs``, ``readout_bias_inputs``), so
:class:`unigrad.bio.rules.np_time.NPTime` (NP and ANP in time) trains a spiking network without a surrogate.

State: the trial counter ``trial`` (buffer ``trial_counter``, saved by ``state_dict``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unigrad.bio.rate_rnn import NoisyNetwork, check_dtype, check_sizes
from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.rng import generator

if TYPE_CHECKING:
    from unigrad.noise.base import NoiseProcess

RESETS = ("subtract", "zero")
_INIT_TAG = 0x11F


class SurrogateSpike(torch.autograd.Function):
    """``H(x)`` (1 where ``x ≥ 0``) forward; ``1/(1 + k|x|)²`` times the incoming gradient backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, slope: float) -> Tensor:
        return (x >= 0).to(x.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, float], output: Tensor) -> None:
        x, slope = inputs
        ctx.save_for_backward(x)
        ctx.slope = slope

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad / (1.0 + ctx.slope * x.abs()).square(), None


def spike(x: Tensor, slope: float = 10.0) -> Tensor:
    """Heaviside step of ``x = v − θ`` with the fast-sigmoid surrogate derivative ``1/(1 + slope·|x|)²``."""
    return SurrogateSpike.apply(x, slope)


@dataclass
class SpikeTrajectory:
    """Everything a learning rule may need from one run of a :class:`LIFNetwork`.

    Attributes:
        inputs: ``(T, B, n_in)`` the inputs ``u``.
        v: ``(T+1, B, n_rec)`` potentials ``v_0 … v_T`` (before their own reset, which acts on the next step).
        spikes: ``(T+1, B, n_rec)`` spikes ``s_0 … s_T`` (0/1; ``s_0 = 0``).
        outputs: ``(T, B, n_out)`` readouts ``y_0 … y_{T−1}``.
        noise: ``(T, B, n_rec)`` the ξ added to the potentials (passed plus intrinsic), or None.
        noise_accessible: False when ``noise`` contains intrinsic noise a learning rule must not read.
    """

    inputs: Tensor
    v: Tensor
    spikes: Tensor
    outputs: Tensor
    noise: Tensor | None
    noise_accessible: bool = True
    beta_out: float = 0.0

    @property
    def x(self) -> Tensor:
        """The perturbed state, ``v`` (the name node-perturbation rules share with the rate network's ``x``)."""
        return self.v

    @property
    def r(self) -> Tensor:
        """The presynaptic signal of the recurrent weights, ``spikes`` (the rate network's ``r``)."""
        return self.spikes

    @property
    def readout_inputs(self) -> Tensor:
        """``(T, B, n_rec)``: ``∂y_t/∂W_out`` row by row, ``(1 − β_out) Σ_{k≤t} β_out^{t−k} s_{k+1}``."""
        acc = torch.zeros_like(self.spikes[0])
        rows = []
        for t in range(1, self.spikes.shape[0]):
            acc = self.beta_out * acc + (1.0 - self.beta_out) * self.spikes[t]
            rows.append(acc)
        return torch.stack(rows)

    @property
    def readout_bias_inputs(self) -> Tensor:
        """``(T, 1, 1)``: ``∂y_t/∂b_out = 1 − β_out^{t+1}`` (the bias charges the leaky readout from 0)."""
        steps = torch.arange(1, self.spikes.shape[0], dtype=self.spikes.dtype, device=self.spikes.device)
        return (1.0 - self.beta_out**steps).reshape(-1, 1, 1)


class LIFNetwork(NoisyNetwork):
    """Recurrent LIF network with a leaky readout (see the module docstring)."""

    def __init__(
        self,
        n_in: int,
        n_rec: int,
        n_out: int,
        *,
        tau_mem: float = 20.0,
        tau_out: float = 20.0,
        dt: float = 1.0,
        threshold: float = 1.0,
        surrogate_slope: float = 10.0,
        reset: str = "subtract",
        detach_reset: bool = True,
        gain: float = 1.0,
        seed: int = 0,
        intrinsic: NoiseProcess | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        check_sizes(n_in=n_in, n_rec=n_rec, n_out=n_out)
        for option, value in (
            ("tau_mem", tau_mem),
            ("tau_out", tau_out),
            ("dt", dt),
            ("threshold", threshold),
            ("surrogate_slope", surrogate_slope),
        ):
            check_positive(option, value)
        check_choice("reset", reset, RESETS)
        if not gain >= 0:
            raise UnigradError(f"option gain must be a number >= 0, got {gain!r}")
        check_dtype(dtype)
        self._init_noise(seed, intrinsic)
        self.tau_mem, self.tau_out, self.dt = float(tau_mem), float(tau_out), float(dt)
        self.threshold, self.surrogate_slope = float(threshold), float(surrogate_slope)
        self.reset, self.detach_reset, self.gain = reset, bool(detach_reset), float(gain)
        self.beta = math.exp(-self.dt / self.tau_mem)
        self.beta_out = math.exp(-self.dt / self.tau_out)
        self.alpha = 1.0 - self.beta  # the factor through which W_in, W_rec and b enter v_{t+1}
        self._init_layers(n_in, n_rec, n_out, dtype, generator(seed, _INIT_TAG))

    def extra_repr(self) -> str:
        return (
            f"n_in={self.n_in}, n_rec={self.n_rec}, n_out={self.n_out}, tau_mem={self.tau_mem}, "
            f"tau_out={self.tau_out}, dt={self.dt}, threshold={self.threshold}, "
            f"surrogate_slope={self.surrogate_slope}, reset={self.reset!r}, seed={self.seed}, "
            f"intrinsic={self.intrinsic!r}"
        )

    def run(self, inputs: Tensor, noise: Tensor | None = None) -> SpikeTrajectory:
        """Simulate the network over ``inputs`` ``(T, B, n_in)``; ``noise`` is ``(T, B, n_rec)`` or None."""
        beta, theta, k = self.beta, self.threshold, self.surrogate_slope
        pre, xi, accessible = self._input_drive(inputs, noise, 1.0 - beta)  # (1 − β)(W_in u_t + b) + ξ_t
        v = inputs.new_zeros(inputs.shape[1], self.n_rec)
        s = torch.zeros_like(v)
        vs, ss = [v], [s]
        for t in range(inputs.shape[0]):
            r = s.detach() if self.detach_reset else s
            drive = pre[t] + (1.0 - beta) * self.rec(s)
            if self.reset == "subtract":
                v = beta * v + drive - theta * r
            else:
                v = beta * v * (1.0 - r) + drive
            s = spike(v - theta, k)
            vs.append(v)
            ss.append(s)
        spikes = torch.stack(ss)
        z = self.out(spikes[1:]) * (1.0 - self.beta_out)
        o = torch.zeros_like(z[0])
        outs = []
        for t in range(z.shape[0]):
            o = self.beta_out * o + z[t]
            outs.append(o)
        return SpikeTrajectory(inputs, torch.stack(vs), spikes, torch.stack(outs), xi, accessible, self.beta_out)
