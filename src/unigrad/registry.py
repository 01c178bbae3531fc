"""Names → estimators: the one place that knows every method of the house, above ``core/`` and the orders.

:data:`ESTIMATORS` maps each name to ``"module:Class"`` and nothing more: a class's ``name``, ``order`` and
``description`` attributes are the only source of those. Classes are imported on first use, so importing
``unigrad`` does not import every estimator, and one broken optional dependency (the peers need ``cma``,
``nevergrad``, ``evotorch``) does not take the registry down: :func:`available` lists such a method as
unavailable, with the reason.

:data:`VARIANTS` are the decorrelated methods (``dbp``, ``dnp``, ``dinp``, ``danp``): a registered estimator
trained on a decorrelated model. ``make_estimator("danp")`` returns a
:class:`~unigrad.nn.decorrelation.Decorrelated` estimator, which carries the decorrelation options and
prepares and updates the model (see ``docs/estimators.md``).
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
from unigrad.nn.decorrelation import DECORRELATION_DEFAULTS, Decorrelated

# name: module:Class. The class attributes name, order and description are the only source of each;
# the classes are imported on first use (see the module docstring).
ESTIMATORS: dict[str, str] = {
    "rge": "unigrad.zeroth.rge:RGE",
    "spsa": "unigrad.zeroth.spsa:SPSA",
    "cge": "unigrad.zeroth.cge:CGE",
    "es": "unigrad.zeroth.es:ES",
    "mezo": "unigrad.zeroth.mezo:MeZO",
    "sparse-mezo": "unigrad.zeroth.sparse_mezo:SparseMeZO",
    "hizoo": "unigrad.zeroth.hizoo:HiZOO",
    "lozo": "unigrad.zeroth.lozo:LOZO",
    "subzero": "unigrad.zeroth.subzero:SubZero",
    "fzoo": "unigrad.zeroth.fzoo:FZOO",
    "eggroll": "unigrad.zeroth.eggroll:EGGROLL",
    "mezo-svrg": "unigrad.zeroth.mezo_svrg:MeZOSVRG",
    "np": "unigrad.zeroth.np:NP",
    "anp": "unigrad.zeroth.anp:ANP",
    "inp": "unigrad.zeroth.inp:INP",
    "wp": "unigrad.zeroth.wp:WP",
    "mgd": "unigrad.zeroth.mgd:MGD",
    "np-time": "unigrad.bio.rules.np_time:NPTime",
    "miconi": "unigrad.bio.rules.miconi:Miconi",
    "exploratory-hebb": "unigrad.bio.rules.exploratory_hebb:ExploratoryHebb",
    "nrl": "unigrad.bio.rules.nrl:NRL",
    "oua": "unigrad.bio.rules.oua:OUA",
    "cma": "unigrad.peers.cma:CMA",
    "sep-cma": "unigrad.peers.cma:SepCMA",
    "nevergrad": "unigrad.peers.nevergrad:Nevergrad",
    "pgpe": "unigrad.peers.evotorch:PGPE",
    "snes": "unigrad.peers.evotorch:SNES",
    "cem": "unigrad.peers.evotorch:CEM",
    "xnes": "unigrad.peers.evotorch:XNES",
    "backprop": "unigrad.first.backprop:Backprop",
    "reinforce": "unigrad.bio.rules.reinforce:Reinforce",
    "forward-gradient": "unigrad.first.forward_gradient:ForwardGradient",
    "activity-forward-gradient": "unigrad.first.activity_forward_gradient:ActivityForwardGradient",
    "feedback-alignment": "unigrad.first.feedback_alignment:FeedbackAlignment",
    "dfa": "unigrad.first.dfa:DFA",
    "newton": "unigrad.second.newton:Newton",
    "lbfgs": "unigrad.second.lbfgs:LBFGS",
    "hessian-free": "unigrad.second.hessian_free:HessianFree",
    "natural-gradient": "unigrad.second.natural_gradient:NaturalGradient",
    "diag-hessian": "unigrad.second.diag_hessian:DiagHessian",
    "kfac": "unigrad.second.kfac:KFAC",
    "cubic-newton": "unigrad.higher.cubic_newton:CubicNewton",
}


# variant name: (registered estimator, one-line description); options of the decorrelation: DECORRELATION_DEFAULTS
VARIANTS: dict[str, tuple[str, str]] = {
    "dbp": ("backprop", "decorrelated backprop: backprop on a model with decorrelation layers R·x (arXiv 2405.02385)"),
    "dnp": ("np", "decorrelated node perturbation: np on a model with decorrelation layers R·x (arXiv 2310.00965)"),
    "danp": ("anp", "decorrelated activity-based node perturbation: anp on a model with decorrelation layers R·x"),
    "dinp": ("inp", "decorrelated iterative node perturbation: inp on a model with decorrelation layers R·x"),
}
# make_estimator options of a variant that set its decorrelation: key -> option of Decorrelated
DECOR_KEYS = {f"decor_{key}": key for key in DECORRELATION_DEFAULTS}


@dataclass(frozen=True)
class Entry:
    """One method as ``unigrad list`` shows it: name, derivative order and one-line description, read from its
    class (or, for a variant, its estimator's class). When the class cannot be imported here (an optional
    package is missing), ``order`` is None, ``description`` is empty and ``error`` says why."""

    name: str
    order: int | None
    description: str
    error: str = ""


def _entry(name: str, cls_name: str, description: str | None = None) -> Entry:
    try:
        cls = estimator_class(cls_name)
    except Exception as e:  # one broken optional dependency must not take the listing down
        return Entry(name, None, "", f"{type(e).__name__}: {e}")
    return Entry(name, cls.order, cls.description if description is None else description)


def _by_order(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: (e.order is None, e.order or 0, e.name))


def available() -> list[Entry]:
    """Every registered estimator (by order, then name; the unavailable ones last): see :class:`Entry`."""
    return _by_order([_entry(name, name) for name in ESTIMATORS])


def available_variants() -> list[Entry]:
    """The decorrelated variants (:data:`VARIANTS`), with their estimator's order: see :class:`Entry`."""
    return _by_order([_entry(name, base, text) for name, (base, text) in VARIANTS.items()])


def estimator_class(name: str) -> type[Estimator]:
    """The class registered under ``name``."""
    if name not in ESTIMATORS:
        raise unknown_name("method", name, ESTIMATORS)
    module, cls = ESTIMATORS[name].split(":")
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

    ``name`` is a registered estimator (:data:`ESTIMATORS`) or a decorrelated variant (:data:`VARIANTS`),
    every name ``unigrad train --method`` accepts. Options whose constructor annotation is a simple type
    (``int``, ``float``, ``bool``, ``str``, or one of them ``| None``) are type-checked first, so a wrong type
    is named with the option, the type it needs and the value given; a NaN or infinite float option is
    refused (:func:`~unigrad.core.errors.check_finite_options`); the constructor then checks the ranges. The
    valid options listed in the error are :func:`value_options`; the object-valued ones
    (:func:`object_options`, such as ``exchange``) are accepted from Python but not listed.

    A variant (``make_estimator("danp", probes=4, decor_lr=1e-4)``) takes its estimator's options and the
    decorrelation options of the method specs (:data:`DECOR_KEYS`: ``decor_rule``, ``decor_lr``,
    ``decor_sample``, ``decor_compensate``, ``decor_conv``; unset ones are :data:`DECORRELATION_DEFAULTS`,
    as on the command line) and returns a :class:`~unigrad.nn.decorrelation.Decorrelated` estimator: its
    :meth:`~unigrad.nn.decorrelation.Decorrelated.prepare` decorrelates the model before the optimizer is
    made, and its :meth:`~unigrad.nn.decorrelation.Decorrelated.update` runs after every optimizer step.

    Unset options take the constructor's defaults (the method as published, e.g. spsa with one probe). The
    command line's per-method defaults (optimizer, learning rate, and options such as spsa's 16 probes, tuned on
    ``mnist1d-mlp``) are ``unigrad.method_spec(name)``: its ``build_estimator(seed)`` and
    ``build_optimizer(params)`` give exactly the method ``unigrad train --method name`` runs.
    """
    if name in VARIANTS:
        return _make_variant(name, options)
    if name not in ESTIMATORS:
        raise unknown_name("method", name, [*ESTIMATORS, *VARIANTS])
    cls = estimator_class(name)
    check_option_types(name, cls, options)
    check_finite_options(name, options)
    try:
        return cls(**options)
    except TypeError as e:  # unexpected keyword
        raise UnigradError(f"bad options for {name}: {e}; valid options: {', '.join(value_options(name))}") from None


def _make_variant(name: str, options: dict[str, Any]) -> Decorrelated:
    """The decorrelated variant ``name``: its estimator built from the other options, decorrelation from ``decor_*``."""
    base = VARIANTS[name][0]
    decor = {DECOR_KEYS[k]: options.pop(k) for k in list(options) if k in DECOR_KEYS}
    for key in ("compensate", "conv"):  # 1 and 0 as on the command line (decor_conv=0)
        if type(decor.get(key)) is int and decor[key] in (0, 1):
            decor[key] = bool(decor[key])
    try:
        estimator = make_estimator(base, **options)
    except UnigradError as e:
        raise UnigradError(f"{name} is {base} on a decorrelated model: {e}; and {', '.join(DECOR_KEYS)}") from None
    return Decorrelated(estimator, name=name, **{**DECORRELATION_DEFAULTS, **decor})


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
