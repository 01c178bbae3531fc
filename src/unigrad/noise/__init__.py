"""Noise processes for noisy networks: keyed, regenerable sequences ``(steps, *shape)``.

=================  =============================  ==========================================================
name               class                          one entry, one step
=================  =============================  ==========================================================
``gaussian``       :class:`WhiteGaussian`         ``N(0, σ²)``, independent across steps
``ou``             :class:`OrnsteinUhlenbeck`     ``N(0, σ²)``, autocorrelation ``e^{−k·dt/τ}`` at lag ``k``
``rademacher``     :class:`Rademacher`            ``±σ``
``sparse-kicks``   :class:`SparseKicks`           with probability ``p`` uniform in ``[−σ, σ]``, else 0
``release``        :class:`StochasticRelease`     Bernoulli(p) release mask (0/1), multiplicative
``poisson``        :class:`PoissonVariability`    ``σ·(N − λ)/√λ``, ``N ~ Poisson(λ = rate·dt)``
``smtj``           :class:`StochasticMTJ`         ``c + a·s_t + N(0, σ²)``, ``s_t = ±1`` flips w.p. ``p`` per step
``replay``         :class:`RecordedNoise`         sum of ``n`` windows of a recorded trace at keyed random starts
=================  =============================  ==========================================================

:func:`poisson_counts` draws rate-dependent spike counts for a tensor of rates. Every process takes
``accessible`` (whether a learning rule may read the noise; see :mod:`unigrad.noise.base`), and
:func:`make_noise` builds one from a spec such as ``"ou:sigma=0.1:tau=50"`` or
``"sparse-kicks:p=0.003:sigma=1:accessible=false"``.
"""

from __future__ import annotations

from unigrad.core.errors import UnigradError, unknown_name
from unigrad.noise.base import NoiseProcess, parse_flag
from unigrad.noise.gaussian import WhiteGaussian
from unigrad.noise.ou import OrnsteinUhlenbeck
from unigrad.noise.poisson import PoissonVariability, poisson_counts
from unigrad.noise.rademacher import Rademacher
from unigrad.noise.recorded import RecordedNoise
from unigrad.noise.release import StochasticRelease
from unigrad.noise.sparse_kicks import SparseKicks
from unigrad.noise.telegraph import StochasticMTJ

NOISES: dict[str, type[NoiseProcess]] = {
    cls.name: cls
    for cls in (
        WhiteGaussian,
        OrnsteinUhlenbeck,
        Rademacher,
        SparseKicks,
        StochasticRelease,
        PoissonVariability,
        StochasticMTJ,
        RecordedNoise,
    )
}
"""Name → noise process class."""


def make_noise(spec: str | NoiseProcess) -> NoiseProcess:
    """A noise process from ``"name:key=value:..."`` (e.g. ``"ou:sigma=0.1:tau=50"``); a process passes through.

    Every option of the process is required; ``accessible`` (``true``/``false``, ``1``/``0``) defaults to the
    process's own default (true for the probes a learner injects, false for device noise: ``smtj``, ``replay``).
    Unknown names or options, missing or repeated options and bad values raise
    :class:`~unigrad.core.errors.UnigradError` with a one-line message listing what is valid.
    """
    if isinstance(spec, NoiseProcess):
        return spec
    if not isinstance(spec, str):
        raise UnigradError(f"a noise spec must be a string like 'ou:sigma=0.1:tau=50', got {type(spec).__name__}")
    name, *parts = spec.strip().split(":")
    name = name.strip()
    if name not in NOISES:
        raise unknown_name("noise", name, NOISES)
    cls = NOISES[name]
    valid = (*cls.options, "accessible")
    given: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise UnigradError(f"malformed noise spec {spec!r}: {part!r} is not key=value (e.g. {cls.example})")
        if key not in valid:
            raise UnigradError(f"unknown option {key!r} of noise {name}; valid options: {', '.join(valid)}")
        if key in given:
            raise UnigradError(f"malformed noise spec {spec!r}: option {key} given twice")
        given[key] = value
    missing = [k for k in cls.options if k not in given]
    if missing:
        raise UnigradError(f"noise {name} needs option {', '.join(missing)} (e.g. {cls.example})")
    kwargs: dict[str, object] = {}
    parse = getattr(cls, "parse_option", None)
    for key, value in given.items():
        if parse is not None:
            kwargs[key] = parse(key, value)
        elif key == "accessible":
            kwargs[key] = parse_flag(name, key, value)
        else:
            try:
                kwargs[key] = float(value)
            except ValueError:
                raise UnigradError(f"option {key} of noise {name} must be a number, got {value!r}") from None
    return cls(**kwargs)


__all__ = [
    "NOISES",
    "NoiseProcess",
    "OrnsteinUhlenbeck",
    "PoissonVariability",
    "Rademacher",
    "RecordedNoise",
    "SparseKicks",
    "StochasticMTJ",
    "StochasticRelease",
    "WhiteGaussian",
    "make_noise",
    "poisson_counts",
]
