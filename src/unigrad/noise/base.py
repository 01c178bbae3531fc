"""The :class:`NoiseProcess` interface: keyed, regenerable noise sequences for noisy networks.

A noise process turns a key ``(seed, trial, stream)`` into a sequence ``ξ_0, …, ξ_{T−1}`` of tensors of one
shape: :meth:`NoiseProcess.sequence` returns them stacked, ``(steps, *shape)``. The same key always gives the
same sequence bit for bit (on the same device type), so a noisy trial can be replayed without storing its
noise, and nothing here ever reads or advances the global RNG.

Keys
    ``seed`` names the run, ``trial`` the trial (a network's counter of noisy runs), ``stream`` the noise
    source within a trial (two populations, or noise on units and on synapses, use different streams).
    Every class carries its own integer :attr:`NoiseProcess.tag`, which is the first part of the key of
    its ``torch.Generator`` (``unigrad.core.rng.generator(tag, seed, trial, stream)``): two different
    processes given the same ``(seed, trial, stream)`` draw from unrelated streams. The raw draws are always
    made in float32 on the requested device; the process's arithmetic (scaling, the OU recursion) runs in
    float64 when ``dtype=torch.float64`` was asked for and in float32 otherwise, and the result is cast to
    ``dtype``. So the same key gives the same noise at every dtype, up to rounding.

``accessible``
    Says whether a learning rule may read the realised noise values. ``accessible=True``: the noise is a
    probe the learner itself injects and can remember, as in node perturbation, which correlates the
    reward with ``ε`` directly (``ΔW ∝ δR·ε·xᵀ/σ²``). ``accessible=False``: the noise is intrinsic to the
    network (channel noise, stochastic release, device noise) and a rule may only see its effect on
    activity, for example as the deviation of a unit's activity from its running average (Miconi 2017),
    or from the difference between two noisy runs (activity-based node perturbation). The flag never
    changes the samples; models that record the noise they add carry the flag along, and rules that need
    the noise refuse to read it when it is ``False``.

Additive and multiplicative noise
    :attr:`NoiseProcess.multiplicative` is ``False`` for noise added to a state (Gaussian, OU, Rademacher,
    sparse kicks, Poisson variability) and ``True`` for masks meant to multiply weights or activity
    (stochastic release). :attr:`NoiseProcess.mean` and :attr:`NoiseProcess.variance` give the stationary
    moments of one entry, e.g. ``σ²`` for a node-perturbation rule's normalisation.

Processes are stateless: the options are all there is (no ``state_dict``), and :attr:`NoiseProcess.spec`
writes them back as a ``make_noise`` spec such as ``"ou:sigma=0.1:tau=50"``.

Writing a process
    A process file holds only its definition: its class attributes, its option checks, its moments and
    :meth:`NoiseProcess._sample`, which turns a :class:`Draw` (the key's generator and the request) into
    samples. Zero-mean additive noise scaled by ``sigma`` subclasses :class:`CenteredNoise`, which supplies
    ``sigma``, ``accessible`` and the moments.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from unigrad.core import options as core_options
from unigrad.core.errors import UnigradError
from unigrad.core.options import check_int, is_int
from unigrad.core.rng import generator

_TAGS: dict[int, str] = {}


def reserve_tag(tag: int, owner: str) -> int:
    """Claim generator-key tag ``tag`` for ``owner``; a tag claimed by another owner raises ``TypeError``."""
    other = _TAGS.setdefault(tag, owner)
    if other != owner:
        raise TypeError(f"noise tag {tag:#x} of {owner} is already used by {other}")
    return tag


def check_number(name: str, value: Any) -> float:
    """``value`` as a float, after checking it is a real number (not a bool, not NaN or infinite)."""
    return core_options.check_number(name, value)


def check_positive_finite(name: str, value: Any) -> float:
    """``value`` as a float, after checking it is a finite number > 0."""
    v = check_number(name, value)
    if not v > 0:
        raise UnigradError(f"option {name} must be a number > 0, got {value!r}")
    return v


def check_probability(name: str, value: Any) -> float:
    """``value`` as a float, after checking it lies in (0, 1]."""
    v = check_number(name, value)
    if not 0 < v <= 1:
        raise UnigradError(f"option {name} must be a probability in (0, 1], got {value!r}")
    return v


def check_key(name: str, value: Any) -> int:
    """``value`` after checking it is an integer >= 0 (a part of a noise key)."""
    return check_int(name, value, subject=name)


def checked_key(seed: Any, trial: Any, stream: Any) -> tuple[int, int, int]:
    """The key ``(seed, trial, stream)`` after checking each part is an integer >= 0."""
    return check_key("seed", seed), check_key("trial", trial), check_key("stream", stream)


def check_accessible(value: Any) -> bool:
    if not isinstance(value, bool):
        raise UnigradError(f"option accessible must be True or False, got {value!r}")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_flag(noise: str, key: str, value: str) -> bool:
    """Flag ``key`` of noise ``noise`` from its spec text: ``true``, ``1``, ``yes``, ``on`` or their opposites."""
    if value.lower() not in _TRUE + _FALSE:
        raise UnigradError(f"option {key} of noise {noise} must be true or false, got {value!r}")
    return value.lower() in _TRUE


def _format(value: Any) -> str:
    """An option value as a spec writes it: ``true``/``false``, a string as is, ``50`` rather than ``50.0``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value
    return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


@dataclass(frozen=True)
class Draw:
    """One request ``(steps, *shape)`` of a key: its generator ``g``, ``dt``, and where the arithmetic runs.

    The raw draws (:meth:`normal`, :meth:`uniform`, :meth:`bits`) are float32 (``int64`` for bits) on
    ``device``, of size ``(steps, *shape)``, in the order a process makes them; the process's arithmetic runs in
    ``work`` (float64 when float64 was asked for, else float32).
    """

    steps: int
    shape: tuple[int, ...]
    g: torch.Generator
    dt: float
    work: torch.dtype
    device: torch.device

    @property
    def size(self) -> tuple[int, ...]:
        """``(steps, *shape)``."""
        return (self.steps, *self.shape)

    def normal(self) -> Tensor:
        """I.i.d. standard normal draws of :attr:`size`."""
        return torch.randn(self.size, generator=self.g, device=self.device)

    def uniform(self) -> Tensor:
        """I.i.d. uniform draws on ``[0, 1)`` of :attr:`size`."""
        return torch.rand(self.size, generator=self.g, device=self.device)

    def bits(self) -> Tensor:
        """Fair coin flips (0 or 1, ``int64``) of :attr:`size`."""
        return torch.randint(0, 2, self.size, generator=self.g, device=self.device)


class NoiseProcess(abc.ABC):
    """A noise process: ``(seed, trial, stream)`` → a ``(steps, *shape)`` sequence, regenerated exactly.

    Subclasses set :attr:`name` (the ``make_noise`` name), a unique :attr:`tag`, :attr:`options` (the
    constructor's option names, in order) and :attr:`example`, validate their options in ``__init__``,
    and implement :meth:`_sample`.
    """

    name: ClassVar[str]
    tag: ClassVar[int]
    """Distinct per class; the first part of every generator key, so processes never share raw draws."""
    options: ClassVar[tuple[str, ...]]
    """Constructor options besides ``accessible``, in order (all required)."""
    example: ClassVar[str]
    """A valid ``make_noise`` spec, quoted in error messages."""
    multiplicative: ClassVar[bool] = False
    """``True`` for masks that multiply weights or activity; ``False`` for noise added to a state."""
    writes_accessible: ClassVar[bool] = False
    """``True`` where ``accessible`` defaults to ``False``: :attr:`spec` then always writes it."""

    accessible: bool

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        tag = cls.__dict__.get("tag")
        if tag is not None:
            reserve_tag(tag, f"{cls.__module__}.{cls.__qualname__}")

    # -- moments ------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def mean(self) -> float:
        """Stationary mean of one entry."""

    @property
    @abc.abstractmethod
    def variance(self) -> float:
        """Stationary variance of one entry."""

    @property
    def std(self) -> float:
        """Stationary standard deviation of one entry."""
        return math.sqrt(self.variance)

    # -- sampling -----------------------------------------------------------------------------
    def sequence(
        self,
        steps: int,
        shape: tuple[int, ...] | torch.Size | int,
        *,
        seed: int,
        trial: int,
        stream: int = 0,
        dt: float = 1.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """``(steps, *shape)`` samples, regenerated bit for bit from ``(seed, trial, stream)``.

        The generator is ``unigrad.core.rng.generator(tag, seed, trial, stream)`` on ``device`` (never the
        global RNG). ``dt`` is the integration step, in the unit of the process's time constants (ms or any
        other); processes without one ignore it.
        """
        steps = check_key("steps", steps)
        shape = self._check_shape(shape)
        key = checked_key(seed, trial, stream)
        dt = check_positive_finite("dt", dt)
        self._check_dtype(dtype)
        dev = torch.device(device)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        if steps == 0 or math.prod(shape) == 0:
            return torch.zeros((steps, *shape), dtype=dtype, device=dev)
        g = generator(self.tag, *key, device=dev)
        return self._sample(Draw(steps, shape, g, dt, work, dev)).to(dtype)

    @abc.abstractmethod
    def _sample(self, draw: Draw) -> Tensor:
        """The ``(steps, *shape)`` samples from ``draw``: raw draws in float32, arithmetic in ``draw.work``."""

    def _check_dtype(self, dtype: torch.dtype) -> None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise UnigradError(f"noise {self.name} needs a floating-point dtype, got {dtype!r}")

    @staticmethod
    def _check_shape(shape: tuple[int, ...] | torch.Size | int) -> tuple[int, ...]:
        dims = (shape,) if isinstance(shape, int) else shape
        try:
            dims = tuple(dims)
        except TypeError:
            raise UnigradError(f"shape must be a tuple of integers >= 0, got {shape!r}") from None
        if any(not is_int(d) or d < 0 for d in dims):
            raise UnigradError(f"shape must be a tuple of integers >= 0, got {shape!r}")
        return dims

    # -- description --------------------------------------------------------------------------
    def option_values(self) -> dict[str, Any]:
        """The options (besides ``accessible``) and their values."""
        return {k: getattr(self, k) for k in self.options}

    @property
    def spec(self) -> str:
        """The ``make_noise`` spec of this process, e.g. ``"ou:sigma=0.1:tau=50"``."""
        parts = [self.name, *(f"{k}={_format(v)}" for k, v in self.option_values().items())]
        if self.writes_accessible or not self.accessible:
            parts.append(f"accessible={_format(self.accessible)}")
        return ":".join(parts)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.option_values().items())
        return f"{type(self).__name__}({opts}, accessible={self.accessible})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, NoiseProcess)
        return self.option_values() == other.option_values() and self.accessible == other.accessible

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.option_values().items()), self.accessible))


class CenteredNoise(NoiseProcess):
    """Zero-mean additive noise scaled by ``sigma``: mean 0, and variance σ² unless the process overrides it.

    The constructor checks ``sigma`` (> 0) and ``accessible``; a process with more options checks those too.
    """

    sigma: float

    def __init__(self, sigma: float, *, accessible: bool = True) -> None:
        self.sigma = check_positive_finite("sigma", sigma)
        self.accessible = check_accessible(accessible)

    @property
    def mean(self) -> float:
        return 0.0

    @property
    def variance(self) -> float:
        return self.sigma**2
