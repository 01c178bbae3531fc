"""Name → estimator class. One line per method in :data:`ESTIMATORS`.

Classes are imported lazily, so ``unigrad list`` is fast and one broken optional dependency does
not take the whole registry down.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any

from unigrad.core.errors import UnigradError, check_finite_options, unknown_name
from unigrad.core.estimator import Estimator

# name: (module:Class, order, one-line description)
ESTIMATORS: dict[str, tuple[str, int, str]] = {
    "rge": (
        "unigrad.zeroth.rge:RGE",
        0,
        "random gradient estimate: one-point, forward or central differences, q probes",
    ),
    "spsa": ("unigrad.zeroth.spsa:SPSA", 0, "simultaneous perturbation (Rademacher two-point RGE), Spall 1992"),
    "cge": ("unigrad.zeroth.cge:CGE", 0, "coordinate-wise finite differences, optionally on a random block"),
    "es": ("unigrad.zeroth.es:ES", 0, "OpenAI evolution strategies: antithetic pairs, fitness shaping"),
    "mezo": ("unigrad.zeroth.mezo:MeZO", 0, "in-place SPSA with seed replay: memory of inference"),
    "np": ("unigrad.zeroth.np:NP", 0, "node perturbation: noise on Linear/Conv2d outputs, δL·ε·xᵀ/σ² per layer"),
    "anp": ("unigrad.zeroth.anp:ANP", 0, "activity-based NP: c·δL·δh/‖δh‖²·xᵀ from measured activity changes"),
    "inp": ("unigrad.zeroth.inp:INP", 0, "iterative node perturbation: noise on one layer per pass, δL·ε·xᵀ/σ²"),
    "wp": ("unigrad.zeroth.wp:WP", 0, "weight perturbation: Gaussian ξ on all weights, (δL/σ²)ξ"),
    "mgd": (
        "unigrad.zeroth.mgd:MGD",
        0,
        "multiplexed gradient descent: per-parameter dithers (random sign, Walsh, sinusoid) correlated with ΔC",
    ),
    "np-time": (
        "unigrad.bio.rules.np_time:NPTime",
        0,
        "node perturbation in time on a rate RNN: δL·ξ_t·α·preᵀ/σ² summed over steps (or ANP's δx/‖δx‖²)",
    ),
    "miconi": (
        "unigrad.bio.rules.miconi:Miconi",
        0,
        "Miconi 2017: e_ij = Σ_t (r_j(t−1)·(x_i(t) − x̄_i))³, ΔW = η·e·(R − R̄_condition), noise never read",
    ),
    "exploratory-hebb": (
        "unigrad.bio.rules.exploratory_hebb:ExploratoryHebb",
        0,
        "exploratory Hebb: e ← γe + (x − x̄ or ξ)·rᵀ, ΔW = η·(R − R̄)·e (Legenstein et al. 2010)",
    ),
    "nrl": (
        "unigrad.bio.rules.nrl:NRL",
        0,
        "noise-based reward-modulated learning: (log π̃ − log π)·ε/‖ε‖²·xᵀ traces × RPE (arXiv 2503.23972)",
    ),
    "oua": (
        "unigrad.bio.rules.oua:OUA",
        0,
        "Ornstein–Uhlenbeck adaptation: OU noise around the mean, reinforced by the reward-prediction error",
    ),
    "cma": ("unigrad.peers.cma:CMA", 0, "pycma CMA-ES (full covariance) on all parameters; peer, needs .[peers]"),
    "sep-cma": (
        "unigrad.peers.cma:SepCMA",
        0,
        "pycma sep-CMA-ES (diagonal covariance, linear in d) on all parameters; peer, needs .[peers]",
    ),
    "nevergrad": (
        "unigrad.peers.nevergrad:Nevergrad",
        0,
        "any nevergrad optimizer (NGOpt by default) on all parameters; peer, needs .[peers]",
    ),
    "pgpe": (
        "unigrad.peers.evotorch:PGPE",
        0,
        "EvoTorch PGPE (Sehnke et al. 2010), symmetric sampling, Adam on the centre; peer, needs .[peers]",
    ),
    "snes": (
        "unigrad.peers.evotorch:SNES",
        0,
        "EvoTorch separable NES (Schaul et al. 2011), diagonal Gaussian; peer, needs .[peers]",
    ),
    "cem": (
        "unigrad.peers.evotorch:CEM",
        0,
        "EvoTorch cross-entropy method (Rubinstein 1999), refit to the elite; peer, needs .[peers]",
    ),
    "xnes": (
        "unigrad.peers.evotorch:XNES",
        0,
        "EvoTorch exponential NES (Glasmachers et al. 2010), full covariance; peer, needs .[peers]",
    ),
    "backprop": ("unigrad.first.backprop:Backprop", 1, "reverse-mode autodiff gradient"),
    "reinforce": (
        "unigrad.bio.rules.reinforce:Reinforce",
        1,
        "REINFORCE policy gradient −Σ∇log π(a|s)(G_t − b), running-mean baseline (Williams 1992)",
    ),
    "forward-gradient": ("unigrad.first.forward_gradient:ForwardGradient", 1, "(∇f·v)v from JVPs, q tangents"),
    "activity-forward-gradient": (
        "unigrad.first.activity_forward_gradient:ActivityForwardGradient",
        1,
        "forward gradient with tangents on Linear/Conv2d outputs: d·v·xᵀ per layer",
    ),
    "feedback-alignment": (
        "unigrad.first.feedback_alignment:FeedbackAlignment",
        1,
        "backprop with fixed random feedback matrices B_l in place of W_lᵀ (Lillicrap et al. 2016)",
    ),
    "dfa": (
        "unigrad.first.dfa:DFA",
        1,
        "direct feedback alignment: hidden layers get the output error through fixed random B_l",
    ),
    "newton": (
        "unigrad.second.newton:Newton",
        2,
        "exact-Hessian Newton step, damped (Levenberg–Marquardt) or in a trust region",
    ),
    "lbfgs": (
        "unigrad.second.lbfgs:LBFGS",
        2,
        "limited-memory BFGS direction (two-loop recursion) with a strong-Wolfe line search",
    ),
    "hessian-free": (
        "unigrad.second.hessian_free:HessianFree",
        2,
        "Hessian-free (truncated CG on the damped Gauss-Newton or Hessian system), Martens 2010",
    ),
    "natural-gradient": (
        "unigrad.second.natural_gradient:NaturalGradient",
        2,
        "natural gradient (F + λI)⁻¹g by CG on Fisher products: true (=GGN), empirical or sampled",
    ),
    "diag-hessian": (
        "unigrad.second.diag_hessian:DiagHessian",
        2,
        "gradient preconditioned by a Hutchinson estimate of the Hessian diagonal (Sophia, AdaHessian)",
    ),
    "kfac": (
        "unigrad.second.kfac:KFAC",
        2,
        "K-FAC: Kronecker-factored natural gradient for Linear and Conv2d layers",
    ),
    "cubic-newton": (
        "unigrad.higher.cubic_newton:CubicNewton",
        3,
        "adaptive cubic-regularized Newton (ARC) step on a Lanczos subspace; escapes saddles",
    ),
}


@dataclass(frozen=True)
class Entry:
    name: str
    order: int
    description: str


def available() -> list[Entry]:
    """Every registered estimator: name, derivative order, one-line description (by order, name)."""
    return sorted((Entry(n, o, d) for n, (_, o, d) in ESTIMATORS.items()), key=lambda e: (e.order, e.name))


def estimator_class(name: str) -> type[Estimator]:
    """The class registered under ``name``."""
    if name not in ESTIMATORS:
        raise unknown_name("method", name, ESTIMATORS)
    module, cls = ESTIMATORS[name][0].split(":")
    return getattr(importlib.import_module(module), cls)


_PLAIN_TYPES = {"int": int, "float": float, "str": str, "bool": bool}

# what sets an option that takes only a Python object, for the error that refuses it in a method spec
SET_BY = {"exchange": "the distributed launcher builds it (unigrad train --distributed)"}


def _split_union(text: str) -> list[str]:
    """The top-level members of a ``X | Y[Z | W]`` annotation string."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return [*parts, text[start:].strip()]


def _takes_plain_value(annotation: Any) -> bool:
    """Whether an annotation admits a number, a string or a boolean (a value a method spec can give)."""
    if annotation is inspect.Parameter.empty or annotation is Any or annotation == "Any":
        return True
    if isinstance(annotation, str):
        return any(part in _PLAIN_TYPES for part in _split_union(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_plain_value(a) for a in typing.get_args(annotation))
    return annotation in _PLAIN_TYPES.values()


def _parameters(name: str) -> list[inspect.Parameter]:
    cls = estimator_class(name)
    return [
        p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def value_options(name: str) -> list[str]:
    """The constructor options of estimator ``name`` that take a value (a number, a string, a boolean or
    None), in signature order: those a method spec or a configuration file can set (and ``seed``, which
    the run sets). Options that take only a Python object are left out (see :func:`object_options`)."""
    return [p.name for p in _parameters(name) if _takes_plain_value(p.annotation)]


def object_options(name: str) -> dict[str, str]:
    """The constructor options of estimator ``name`` that take only a Python object, with their annotation
    (``{"exchange": "ProbeExchange | None"}`` for the probe-parallel estimators). The library sets them
    (the distributed launcher hands ``exchange`` over); no method spec can give one."""
    return {p.name: str(p.annotation) for p in _parameters(name) if not _takes_plain_value(p.annotation)}


def make_estimator(name: str, **options: Any) -> Estimator:
    """Build the estimator called ``name`` with ``options`` (invalid options raise :class:`UnigradError`).

    Options whose constructor annotation is a simple type (``int``, ``float``, ``bool``, ``str``, or one
    of them ``| None``) are type-checked first, so a wrong type is named with the option, the type it
    needs and the value given; a NaN or infinite float option is refused
    (:func:`~unigrad.core.errors.check_finite_options`); the constructor then checks the ranges. The valid
    options listed in the error are :func:`value_options`; the object-valued ones (:func:`object_options`,
    such as ``exchange``) are accepted from Python but not listed.
    """
    cls = estimator_class(name)
    check_option_types(name, cls, options)
    check_finite_options(name, options)
    try:
        return cls(**options)
    except TypeError as e:  # unexpected keyword
        raise UnigradError(f"bad options for {name}: {e}; valid options: {', '.join(value_options(name))}") from None


# what each simple annotation accepts (ints count as floats; a bool option also takes 1 and 0, as typed on the
# command line), and how the error names it
_SIMPLE: dict[type, tuple[str, typing.Callable[[Any], bool]]] = {
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    bool: ("true or false", lambda v: isinstance(v, bool) or (type(v) is int and v in (0, 1))),
    str: ("a string", lambda v: isinstance(v, str)),
}


def check_option_types(name: str, cls: type, options: dict[str, Any]) -> None:
    """Raise :class:`UnigradError` for an option of a simple annotated type given a value of another type.

    Options with other annotations (objects, callables, unions with classes) and unknown names are left
    to the constructor.
    """
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that cannot be resolved: nothing to check against
        return
    for key, value in options.items():
        hint = hints.get(key)
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        members = typing.get_args(hint) if union else (hint,)
        optional = type(None) in members
        members = tuple(m for m in members if m is not type(None))
        if not members or not all(m in _SIMPLE for m in members):
            continue
        if (value is None and optional) or any(_SIMPLE[m][1](value) for m in members):
            continue
        expected = " or ".join(_SIMPLE[m][0] for m in members) + (" or none" if optional else "")
        raise UnigradError(f"option {key} of {name} must be {expected}, got {value!r} ({type(value).__name__})")
