"""Hardware in the loop: the :class:`Device` protocol, simulated crossbars and energy accounting.

* :mod:`unigrad.hardware.device` — :class:`Device`, what a substrate offers a learner;
* :mod:`unigrad.hardware.crossbar` — :class:`CrossbarMLP` / :class:`AnalogLinear`: programming and read noise,
  mismatch, drift, DAC/ADC precision, quantized activations, asymmetric updates, the device's own node noise;
* :mod:`unigrad.hardware.energy` — :class:`OpCounts` and :class:`EnergyModel` (per-operation energies).
"""

from unigrad.hardware.crossbar import AnalogLinear, CrossbarConfig, CrossbarMLP, DeviceActivation
from unigrad.hardware.device import Device
from unigrad.hardware.energy import EnergyModel, LatencyModel, OpCounts

__all__ = [
    "AnalogLinear",
    "CrossbarConfig",
    "CrossbarMLP",
    "Device",
    "DeviceActivation",
    "EnergyModel",
    "LatencyModel",
    "OpCounts",
]
