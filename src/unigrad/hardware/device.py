"""The :class:`Device` protocol: what a physical substrate offers a learner.

A device is an ``nn.Module`` so that every estimator and optimizer of unigrad runs on it unchanged:

* its trainable parameters are the values the learner *asks* the device to hold; an optimizer step changes
  them, and the device applies the change on its next pass as its physics allows (imperfect, counted writes);
* calling it runs a forward pass on the substrate and returns the outputs; a device that exposes its
  activities does so as the inputs and outputs of its ``nn.Linear`` layers, where layer hooks (the taps of
  activity-based node perturbation) read them;
* the cost is whatever objective the learner evaluates on those outputs (a scalar or per-sample losses);
* ``counts`` reports the operations done (:class:`~unigrad.hardware.energy.OpCounts`), ``tick`` advances the
  device's clock, ``deploy`` programs the weights of a trained model, and ``device_state`` /
  ``load_device_state`` save and restore the physical state for checkpoints.

The learner never receives the device's noise: no method returns it, and nothing the learner can read
(parameters, buffers, ``state_dict``) holds it. :class:`~unigrad.hardware.crossbar.CrossbarMLP` is the simulated
implementation; a real chip is plugged in by writing a module with the same methods around its driver.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from unigrad.hardware.energy import OpCounts


@runtime_checkable
class Device(Protocol):
    """The methods a device provides (module docs)."""

    def __call__(self, x: Tensor) -> Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def deploy(self, model: nn.Module) -> None: ...

    def tick(self, dt: float) -> None: ...

    @property
    def counts(self) -> OpCounts: ...

    def reset_counts(self) -> None: ...

    def device_state(self) -> Any: ...

    def load_device_state(self, state: Any) -> None: ...
