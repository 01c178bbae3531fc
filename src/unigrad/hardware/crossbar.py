"""Simulated analog crossbar layers: programming and read noise, mismatch, drift, converters, imperfect updates.

An :class:`AnalogLinear` layer stands for a resistive crossbar holding a weight matrix as conductances (a
differential pair per weight, so weights are signed and live in ``[−w_max, w_max]``). The learner's view is the
layer's ``weight`` parameter: the values it *asked* the device to hold. The device holds something else:

programming (:meth:`AnalogLinear.program`, used to deploy weights)
    ``G = clip(W + σ_p·w_max·z, −w_max, w_max)`` per cell, ``z ~ N(0, 1)``; one write per cell.
updates (when ``weight`` changed since the last pass, e.g. after an optimizer step)
    the requested change ``Δ = W − W_prev`` lands as ``Δ·(1 + a·sign Δ)·(1 + σ_u·z)`` (``a``: the asymmetry
    between potentiation and depression; ``σ_u``: the relative update noise), then ``G`` is clipped to
    ``[−w_max, w_max]``; one write per changed cell. The learner does not see where ``G`` landed.
mismatch (device-to-device variation)
    every cell has a fixed gain ``1 + σ_m·z`` drawn once when the device is made: the array computes with
    ``gain ⊙ G``. A digital twin without that gain is the "idealized model" backprop would train.
drift
    a cell written at time ``t_w`` reads ``G·(1 + (t − t_w)/t₀)^(−ν)`` at time ``t`` (power-law conductance
    relaxation, as in phase-change memory); ``t`` is the device clock, advanced by :meth:`tick`.
reads (every forward pass)
    each use of a cell adds fresh read noise ``σ_r·w_max·z``; the inputs go through a DAC (``dac_bits``, full
    scale ``input_range``: clipped and rounded to ``2^(bits−1) − 1`` levels per sign), the column sums plus the
    (digital, exact) bias plus the device's node noise ``ξ`` go through an ADC (``adc_bits``, ``output_range``)::

        h = ADC( DAC(x)·(gain ⊙ drift(G) + σ_r·w_max·Z)ᵀ + b + ξ )

A device may offer a *dither port* (:meth:`CrossbarMLP.dither_port`): inside it, changes of the weights act on
each pass as exact transient offsets (a separate perturbation input, one DAC conversion per dithered cell) and are
never written — how multiplexed gradient descent perturbs a device without programming it.

Node noise ``ξ`` is the device's own (e.g. a stochastic magnetic tunnel junction per output,
:mod:`unigrad.noise`): any :class:`~unigrad.noise.base.NoiseProcess`, run as one time series per output unit in
which every sample the layer processes is one time step (samples of a batch in order, then the next batch), so a
temporally correlated process (the junction's telegraph offset) keeps its correlation across samples and passes.
The series is made in keyed blocks of :data:`NODE_BLOCK` steps (``trial`` = block index, ``stream`` = layer); a
correlated process restarts from its stationary distribution at each block boundary. All of the
device's randomness is keyed by ``(seed, layer, read counter)`` (replayable, never the global RNG) and lives in a
private cell state that is not a parameter, buffer or ``state_dict`` entry: a learner holding the module sees
only the weights it asked for and the outputs (and, through layer hooks, the layer's input and output — the
activities an in-situ rule such as ANP may read). :meth:`AnalogLinear.device_state` saves the cell state for
checkpoints.

:class:`DeviceActivation` is a quantized, non-differentiable activation (``relu`` or ``hardtanh`` followed by
rounding to ``bits``). :class:`CrossbarMLP` builds a multi-layer device and counts its operations
(:class:`~unigrad.hardware.energy.OpCounts`); :meth:`CrossbarMLP.digital_twin` gives the idealized
``nn.Sequential`` backprop trains.

Options (:class:`CrossbarConfig`; all noise levels relative to ``w_max``, 0 means ideal):
    w_max: weight range (> 0). program_noise σ_p, read_noise σ_r, mismatch σ_m, update_noise σ_u (≥ 0).
    update_asymmetry a in ``[0, 1)``. drift ν (≥ 0) and drift_t0 t₀ (> 0). dac_bits, adc_bits (None: exact, or
    2–32). input_range, output_range (> 0): converter full scales.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.options import check_int, check_optional, is_int
from unigrad.core.rng import generator
from unigrad.hardware.energy import OpCounts
from unigrad.noise.base import NoiseProcess

_MISMATCH, _PROGRAM, _UPDATE, _READ = 0x4A1, 0x4A2, 0x4A3, 0x4A4
NODE_BLOCK = 4096
"""Node noise is generated as one time series per output, ``NODE_BLOCK`` samples per keyed block."""
ACTIVATIONS = ("relu", "hardtanh")


@dataclass(frozen=True)
class CrossbarConfig:
    """Non-idealities of a crossbar (module docs); the defaults describe an ideal device."""

    w_max: float = 1.0
    program_noise: float = 0.0
    read_noise: float = 0.0
    mismatch: float = 0.0
    drift: float = 0.0
    drift_t0: float = 1.0
    dac_bits: int | None = None
    adc_bits: int | None = None
    input_range: float = 1.0
    output_range: float = 8.0
    update_asymmetry: float = 0.0
    update_noise: float = 0.0

    def __post_init__(self) -> None:
        for name in ("w_max", "drift_t0", "input_range", "output_range"):
            check_positive(name, getattr(self, name))
        for name in ("program_noise", "read_noise", "mismatch", "drift", "update_noise"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise UnigradError(f"crossbar option {name} must be a finite number >= 0, got {value!r}")
        if not 0 <= self.update_asymmetry < 1:
            raise UnigradError(f"crossbar option update_asymmetry must be in [0, 1), got {self.update_asymmetry!r}")
        for name in ("dac_bits", "adc_bits"):
            bits = getattr(self, name)
            what = "None (exact) or an integer in 2..32"
            check_optional(check_int, name, bits, low=2, high=32, what=what, subject=f"crossbar option {name}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def quantize(x: Tensor, bits: int | None, full_scale: float) -> Tensor:
    """Clip ``x`` to ``[−full_scale, full_scale]`` and round to ``2^(bits−1) − 1`` levels per sign (0 exact)."""
    x = x.clamp(-full_scale, full_scale)
    if bits is None:
        return x
    step = full_scale / (2 ** (bits - 1) - 1)
    return torch.round(x / step) * step


def _normal(shape: tuple[int, ...], *key: int, dtype: torch.dtype) -> Tensor:
    return torch.randn(shape, generator=generator(*key), dtype=torch.float64).to(dtype)


class _Cells:
    """The physical state of one array: conductances, fixed gains, write times, the last requested weights."""

    def __init__(self, weight: Tensor, gain: Tensor) -> None:
        self.g = weight.detach().clone()
        self.gain = gain
        self.written_at = torch.zeros_like(self.g)
        self.requested = weight.detach().clone()

    def state(self) -> dict[str, Tensor]:
        return {"g": self.g, "gain": self.gain, "written_at": self.written_at, "requested": self.requested}


class AnalogLinear(nn.Linear):
    """A linear layer computed by a simulated crossbar (module docs)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        config: CrossbarConfig,
        index: int = 0,
        seed: int = 0,
        node_noise: NoiseProcess | None = None,
        input_range: float | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(in_features, out_features, bias=True, dtype=dtype)
        if input_range is not None:
            check_positive("input_range", input_range)
        self.input_range = float(input_range if input_range is not None else config.input_range)
        if node_noise is not None and not isinstance(node_noise, NoiseProcess):
            raise UnigradError(f"node_noise must be a unigrad.noise process or None, got {type(node_noise).__name__}")
        self.config, self.index, self.seed, self.node_noise = config, int(index), int(seed), node_noise
        g = generator(_MISMATCH, self.seed, self.index)
        gain = 1.0 + config.mismatch * torch.randn(self.weight.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            self.weight.clamp_(-config.w_max, config.w_max)
        self._cells = _Cells(self.weight, gain.to(dtype))
        self._reads = 0
        self._writes = 0
        self._clock = 0.0
        self._time = 0  # samples the node noise has advanced through
        self.transient = False  # set by CrossbarMLP.dither_port()
        self._block: tuple[int, Tensor] | None = None
        self.counts = OpCounts()

    def reset_parameters(self) -> None:
        """Zero weights and bias (no global RNG); :meth:`program` writes real values."""
        with torch.no_grad():
            self.weight.zero_()
            if self.bias is not None:
                self.bias.zero_()

    # -- programming -------------------------------------------------------------------------------
    @torch.no_grad()
    def program(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """Write ``weight`` into every cell (programming noise), and set the requested weights to it."""
        if weight.shape != self.weight.shape:
            raise UnigradError(f"program: weight of shape {tuple(weight.shape)} for a {tuple(self.weight.shape)} array")
        cfg, cells = self.config, self._cells
        self.weight.copy_(weight.clamp(-cfg.w_max, cfg.w_max))
        if bias is not None:
            self.bias.copy_(bias)
        z = _normal(tuple(self.weight.shape), _PROGRAM, self.seed, self.index, self._writes, dtype=self.weight.dtype)
        cells.g = (self.weight + cfg.program_noise * cfg.w_max * z).clamp(-cfg.w_max, cfg.w_max)
        cells.written_at.fill_(self._clock)
        cells.requested = self.weight.detach().clone()
        self._writes += 1
        self.counts.writes += self.weight.numel()

    @torch.no_grad()
    def _sync(self) -> None:
        """Apply the change the learner made to ``weight`` since the last pass, as the device would."""
        cfg, cells = self.config, self._cells
        delta = self.weight.detach() - cells.requested
        changed = delta != 0
        n = int(changed.sum())
        if n == 0:
            return
        z = _normal(tuple(delta.shape), _UPDATE, self.seed, self.index, self._writes, dtype=delta.dtype)
        landed = delta * (1.0 + cfg.update_asymmetry * torch.sign(delta)) * (1.0 + cfg.update_noise * z)
        cells.g = torch.where(changed, (cells.g + landed).clamp(-cfg.w_max, cfg.w_max), cells.g)
        cells.written_at = torch.where(changed, torch.full_like(cells.written_at, self._clock), cells.written_at)
        cells.requested = self.weight.detach().clone()
        self._writes += 1
        self.counts.writes += n

    def tick(self, dt: float) -> None:
        """Advance the device clock by ``dt`` (drift acts on the time since each cell's last write)."""
        if not (math.isfinite(dt) and dt >= 0):
            raise UnigradError(f"tick: dt must be a finite number >= 0, got {dt!r}")
        self._clock += float(dt)

    # -- reading -----------------------------------------------------------------------------------
    def effective_weight(self) -> Tensor:
        """What the array multiplies by, without read noise (for tests and reports, not for learners)."""
        cfg, cells = self.config, self._cells
        g = cells.g
        if cfg.drift > 0:
            g = g * (1.0 + (self._clock - cells.written_at) / cfg.drift_t0) ** (-cfg.drift)
        return cells.gain * g

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        dither = None
        if self.transient:  # a dither port: the change since the last write acts on this pass only, exactly
            dither = self.weight.detach() - self._cells.requested
        else:
            self._sync()
        with torch.no_grad():
            xq = quantize(x.detach(), cfg.dac_bits, self.input_range)
            w = self.effective_weight()
            if dither is not None:
                w = w + dither
                self.counts.dac += int((dither != 0).sum())
            read = self._reads
            if cfg.read_noise > 0:
                w = w + cfg.read_noise * cfg.w_max * _normal(
                    tuple(w.shape), _READ, self.seed, self.index, read, dtype=w.dtype
                )
            h = xq @ w.T + self.bias.detach()
            if self.node_noise is not None:
                h = h + self._node_noise(h.reshape(-1, self.out_features).shape[0], h.dtype).reshape(h.shape)
            out = quantize(h, cfg.adc_bits, cfg.output_range)
        rows = x.numel() // self.in_features
        self._reads += 1
        self.counts += OpCounts(
            analog_macs=rows * self.in_features * self.out_features,
            reads=rows * self.out_features,
            adc=rows * self.out_features,
            dac=rows * self.in_features,
            mvms=rows,
        )
        return out

    def _node_noise(self, rows: int, dtype: torch.dtype) -> Tensor:
        """The node noise of the next ``rows`` time steps (one per sample, in order), from keyed blocks."""
        assert self.node_noise is not None
        chunks, t, end = [], self._time, self._time + rows
        while t < end:
            block, offset = divmod(t, NODE_BLOCK)
            if self._block is None or self._block[0] != block:
                seq = self.node_noise.sequence(
                    NODE_BLOCK, (self.out_features,), seed=self.seed, trial=block, stream=self.index, dtype=dtype
                )
                self._block = (block, seq)
            take = min(end - t, NODE_BLOCK - offset)
            chunks.append(self._block[1][offset : offset + take])
            t += take
        self._time = t
        return torch.cat(chunks)

    # -- checkpoints -------------------------------------------------------------------------------
    def device_state(self) -> dict[str, Any]:
        """The physical state (cells, counters, clock): what a device keeps across a restart."""
        return {
            "cells": {k: v.clone() for k, v in self._cells.state().items()},
            "reads": self._reads,
            "writes": self._writes,
            "clock": self._clock,
            "time": self._time,
            "counts": self.counts.to_dict(),
        }

    def load_device_state(self, state: dict[str, Any]) -> None:
        cells = state["cells"]
        self._cells.g, self._cells.gain = cells["g"].clone(), cells["gain"].clone()
        self._cells.written_at, self._cells.requested = cells["written_at"].clone(), cells["requested"].clone()
        self._reads, self._writes, self._clock = int(state["reads"]), int(state["writes"]), float(state["clock"])
        self._time = int(state["time"])
        self.counts = OpCounts(**state["counts"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, index={self.index}, node_noise={self.node_noise!r}"


class DeviceActivation(nn.Module):
    """A quantized activation in the array's periphery: ``quantize(φ(x), bits, full_scale)``, no gradient."""

    def __init__(self, kind: str = "relu", bits: int | None = None, full_scale: float = 1.0) -> None:
        super().__init__()
        check_choice("activation", kind, ACTIVATIONS)
        check_positive("full_scale", full_scale)
        check_optional(
            check_int, "bits", bits, low=2, high=32, what="None or an integer in 2..32", subject="activation bits"
        )
        self.kind, self.bits, self.full_scale = kind, bits, float(full_scale)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            y = torch.relu(x) if self.kind == "relu" else x.clamp(-1.0, 1.0)
            return quantize(y, self.bits, self.full_scale)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, bits={self.bits}, full_scale={self.full_scale}"


class CrossbarMLP(nn.Module):
    """A multi-layer perceptron on crossbars: ``AnalogLinear`` layers with ``DeviceActivation`` between them.

    ``sizes``: layer widths, input first (images are flattened). ``activation``, ``activation_bits`` and
    ``activation_range`` configure the hidden activations; the DAC of a hidden layer spans ``activation_range``
    (the first layer's spans ``config.input_range``). ``node_noise``: the device's own noise on every
    layer's output (None: none). The initial weights are keyed by ``seed`` (the same as
    :meth:`digital_twin`'s). ``counts`` sums the layers' operation counts.
    """

    def __init__(
        self,
        sizes: list[int] | tuple[int, ...],
        config: CrossbarConfig | None = None,
        *,
        activation: str = "relu",
        activation_bits: int | None = None,
        activation_range: float = 4.0,
        node_noise: NoiseProcess | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if len(sizes) < 2 or any(not is_int(s) or s < 1 for s in sizes):
            raise UnigradError(f"sizes must be at least two positive integers (input first), got {list(sizes)!r}")
        self.sizes, self.config = list(sizes), config or CrossbarConfig()
        self.activation, self.activation_bits, self.activation_range = activation, activation_bits, activation_range
        twin = self.digital_twin(seed=seed, dtype=dtype)
        layers: list[nn.Module] = []
        linears = [m for m in twin if isinstance(m, nn.Linear)]
        for i, lin in enumerate(linears):
            analog = AnalogLinear(
                lin.in_features,
                lin.out_features,
                config=self.config,
                index=i,
                seed=seed,
                node_noise=node_noise,
                input_range=None if i == 0 else activation_range,  # a hidden layer's DAC spans the activation
                dtype=dtype,
            )
            analog.program(lin.weight.detach(), lin.bias.detach())
            analog.counts = OpCounts()  # making the device is not part of any method's cost
            layers.append(analog)
            if i < len(linears) - 1:
                layers.append(DeviceActivation(activation, activation_bits, activation_range))
        self.layers = nn.ModuleList(layers)

    def analog_layers(self) -> list[AnalogLinear]:
        return [m for m in self.modules() if isinstance(m, AnalogLinear)]

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            x = layer(x)
        return x

    def digital_twin(self, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
        """The idealized model of this device: ``nn.Linear`` layers and exact activations clipped to the
        activation's range (a known specification of the device, like its sizes), keyed initial weights."""
        g = generator(0x4A0, seed)
        mods: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True)):
            lin = skip_init(nn.Linear, n_in, n_out, dtype=dtype)
            with torch.no_grad():
                bound = 1.0 / math.sqrt(n_in)
                lin.weight.copy_((torch.rand(n_out, n_in, generator=g, dtype=torch.float64) * 2 - 1) * bound)
                lin.bias.zero_()
            mods.append(lin)
            if i < len(self.sizes) - 2:  # the activation's known range, as the device's periphery clips it
                low = 0.0 if self.activation == "relu" else -1.0
                mods.append(nn.Hardtanh(low, min(self.activation_range, 1.0 if low < 0 else self.activation_range)))
        return nn.Sequential(nn.Flatten(), *mods)

    def deploy(self, twin: nn.Module) -> None:
        """Program the weights of a trained twin (same sizes) into the device, one write per cell."""
        linears = [m for m in twin.modules() if isinstance(m, nn.Linear)]
        analog = self.analog_layers()
        if [(m.in_features, m.out_features) for m in linears] != [(m.in_features, m.out_features) for m in analog]:
            raise UnigradError("deploy: the model's Linear layers do not match the device's layer sizes")
        for src, dst in zip(linears, analog, strict=True):
            dst.program(src.weight.detach().to(dst.weight.dtype), src.bias.detach().to(dst.bias.dtype))

    def tick(self, dt: float) -> None:
        for layer in self.analog_layers():
            layer.tick(dt)

    @contextlib.contextmanager
    def dither_port(self) -> Iterator[None]:
        """Within this block a change of the weights is a transient dither: added exactly to the cells' values on
        every pass (one DAC conversion per dithered cell and pass), never written. Changes made before the block
        are written on entering it; leaving the block with weights that still differ from the written ones writes
        them on the next pass, as usual."""
        layers = self.analog_layers()
        for layer in layers:
            layer._sync()  # changes made before the block (an optimizer step) are written first
            layer.transient = True
        try:
            yield
        finally:
            for layer in layers:
                layer.transient = False

    @property
    def counts(self) -> OpCounts:
        total = OpCounts()
        for layer in self.analog_layers():
            total += layer.counts
        return total

    def reset_counts(self) -> None:
        for layer in self.analog_layers():
            layer.counts = OpCounts()

    def device_state(self) -> list[dict[str, Any]]:
        return [layer.device_state() for layer in self.analog_layers()]

    def load_device_state(self, state: list[dict[str, Any]]) -> None:
        for layer, s in zip(self.analog_layers(), state, strict=True):
            layer.load_device_state(s)
