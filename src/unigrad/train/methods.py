"""What to run: method specs (``spsa:probes=16:lr=1e-3``), the per-method defaults, and seeds.

:func:`parse_method` turns a spec into a :class:`MethodSpec` (estimator name and options, optimizer,
learning rate, decorrelation); :func:`parse_methods` a comma-separated list of them, :func:`parse_seeds`
a count or a list of seeds. The comparison runner (:mod:`unigrad.train.compare`), the command line,
the configuration files (:mod:`unigrad.config`) and the benchmark suite (:mod:`unigrad.suite`) all read
their methods here.

This module lives in ``train/``, not at the package top: a spec is checked against what the training
loop accepts (its optimizers, its decorrelation options, a model with trainable parameters:
:mod:`unigrad.train.trainer`), so it depends on ``train/`` as the runner does. The rooms that use it
(``suite/``, ``distributed/``, the command line) already sit above ``train/`` and may import it; it
imports only the trainer, the registry and ``core/``, never the runner.

Method specs read ``name[:key=value]...``; ``lr`` and ``optimizer`` go to the optimizer, every
other key to the estimator. Unset keys come from :data:`DEFAULTS`, a table of hyper-parameters
chosen so each method learns on ``mnist1d-mlp`` at batch size 64. The sweep behind it (Adam, seed 0,
20 epochs, test accuracy; chance is 0.10)::

    backprop                      lr 1e-3: 0.586   3e-3: 0.624   1e-2: 0.647
    forward-gradient q=8          lr 3e-4: 0.192   1e-3: 0.241   3e-3: 0.294   1e-2: 0.175 (loss unstable)
    forward-gradient lr 3e-3      q=16: 0.294
    spsa  q=16 σ=1e-3             lr 3e-4: 0.196   1e-3: 0.277   3e-3: 0.304   1e-2: 0.251 (loss unstable)
    spsa  lr 3e-3 σ=1e-3          q=8: 0.300   q=32: 0.344 (twice the time of q=16)
    es    q=16 σ=0.02 (ranks)     lr 1e-3: 0.258   3e-3: 0.296   1e-2: 0.250   3e-2: 0.231 (loss unstable)
    es    q=16 lr 3e-3            σ=0.005: 0.306   σ=0.05: 0.309
    mezo  σ=1e-3 lr 3e-3          q=8: 0.301   q=16: 0.310 (twice the time);  q=16 lr 1e-3: 0.268
    cge   block=256, 3 epochs     lr 3e-3: 0.257   1e-2: 0.312

Decorrelated variants (:data:`VARIANTS`): ``dbp`` is backprop and ``dnp`` node perturbation on the
decorrelated model (``danp``/``dinp`` likewise for ``anp``/``inp``; :data:`unigrad.registry.VARIANTS`), with
the decorrelation options of :data:`DECORRELATION_DEFAULTS` (see :func:`unigrad.train.train`). Any
method becomes decorrelated with the spec keys ``decorrelate=1`` and optionally ``decor_lr``,
``decor_rule``, ``decor_sample``, ``decor_compensate``, ``decor_conv`` (e.g.
``spsa:decorrelate=1:decor_lr=1e-4``); ``nn.Conv2d`` layers are decorrelated patch-wise unless
``decor_conv=0``;
the report's method column shows the variant name, with the order of the underlying estimator.

Which parameters train: the keys ``train=`` and ``freeze=`` take globs over the model's parameter names separated
by ``|`` (a comma separates methods), or a named set (``head``: the linear probe; ``no-embeddings``; ``linear``), e.g.
``backprop:train=head``, ``mezo:freeze=*embeddings*``, ``spsa:train=encoder.encoder.layer.5.*|head.*``
(:class:`~unigrad.train.build.ParameterChoice`; quote the spec in a shell). The training loop applies them,
not the estimator; a method that chooses is labelled with its choice (``backprop:train=head``) and records it
(``parameters`` in :meth:`MethodSpec.to_dict`), one that does not keeps the record it always had.
The update statistics use at most 1,024 rows per layer (``sample``): every row of a batch of an
MLP (batch sizes up to 1,024), a keyed subsample of the ``batch × positions`` patches of a
convolution (for ``fashion-cnn`` the second convolution has 12,544 patches per batch of 64).
The default decorrelation rate is 1e-3, not the 1e-4 used with DANP in recurrent networks: on
``digits-mlp`` (3 epochs, batch 64, seeds 0 and 1) the mean ``|offdiag(C)|`` of the first layer's
``x̂`` goes from 0.44 to 0.32 at 1e-4 but to 0.10 at 1e-3, with dbp's test accuracy unchanged
(0.919/0.922 at 1e-4, 0.919/0.931 at 1e-3; plain backprop 0.919/0.917); 1e-2 decorrelates further
(0.03) but ``R`` grows far from ``I`` and dnp loses accuracy (0.59/0.48 against 0.64/0.53 at 1e-3).

Backprop keeps 3e-3 rather than the marginally better 1e-2, which is less safe on the larger tasks.

The estimators whose coefficients are not rank-shaped (forward-gradient, rge, spsa, cge, mezo) use
lr 1e-3, not MNIST-1D's best 3e-3 (or 1e-2 for cge): on Fashion-MNIST (``fashion-mlp``, 3 epochs,
3 seeds, ``docs/benchmarks.md``) Adam at 3e-3 made them peak within the first epoch and then
degrade (final test accuracy 0.58–0.68), while at 1e-3 they kept learning (0.74–0.76). Adam
normalises each coordinate, so a noisy estimate takes full-size steps; the smaller rate is the
safer default across tasks. ``es`` keeps 3e-3: its centered ranks bound the coefficients and it
was stable at 3e-3 on both tasks. The default comparison on MNIST-1D
(:data:`unigrad.train.compare.DEFAULT_METHODS`) sets lr 3e-3 explicitly in its method specs: at 1e-3 its
zeroth-order methods end 6–8 points lower after 12 epochs (spsa 0.222 vs 0.280).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from unigrad.core.errors import UnigradError, unknown_name
from unigrad.core.estimator import Estimator
from unigrad.core.options import parse_value
from unigrad.data.tasks import Task
from unigrad.nn.decorrelation import DECORRELATION_DEFAULTS, Decorrelated, check_decorrelation
from unigrad.registry import (
    DECOR_KEYS,
    ESTIMATORS,
    SET_BY,
    estimator_class,
    make_estimator,
    object_options,
    value_options,
)
from unigrad.registry import VARIANTS as REGISTERED_VARIANTS
from unigrad.train.build import ParameterChoice, check_trainable
from unigrad.train.plan import OPTIMIZERS, make_optimizer

MAX_INT = 2**63 - 1  # seeds and integer method options must fit in 64 bits (torch sizes, SQLite INTEGER)
MAX_SEED_COUNT = 10**6  # a count of seeds is materialized as a list
PARAMETER_KEYS = ("train", "freeze")  # method-spec keys of the training loop: which parameters train

# method: (optimizer, lr, estimator options); the sweep behind these values is in the module docstring.
DEFAULTS: dict[str, tuple[str, float, dict[str, Any]]] = {
    "backprop": ("adam", 3e-3, {}),
    "forward-gradient": ("adam", 1e-3, {"probes": 8}),
    "activity-forward-gradient": ("adam", 1e-3, {"probes": 1}),
    "rge": ("adam", 1e-3, {"probes": 16, "sigma": 1e-3}),
    "spsa": ("adam", 1e-3, {"probes": 16, "sigma": 1e-3}),
    "cge": ("adam", 1e-3, {"block": 256}),
    "es": ("adam", 3e-3, {"probes": 16, "sigma": 0.02}),
    "eggroll": ("adam", 3e-3, {"probes": 16, "sigma": 0.02}),
    "mezo": ("adam", 1e-3, {"probes": 8, "sigma": 1e-3}),
    "sparse-mezo": ("adam", 1e-3, {"probes": 8, "sigma": 1e-3}),
    "hizoo": ("adam", 1e-3, {"probes": 8, "sigma": 1e-3}),
    "lozo": ("adam", 1e-3, {"probes": 8, "sigma": 1e-3}),
    "subzero": ("adam", 1e-3, {"probes": 8, "sigma": 1e-3}),
    "mezo-svrg": ("adam", 1e-3, {"probes": 8, "sigma": 1e-3}),
    "fzoo": ("sgd", 1e-2, {"probes": 8, "sigma": 1e-3}),  # a normalised step: its length is the learning rate
    "np": ("adam", 1e-3, {"probes": 4, "sigma": 1e-3}),
    "anp": ("adam", 1e-3, {"probes": 4, "sigma": 1e-3}),
    "inp": ("adam", 1e-3, {"probes": 1, "sigma": 1e-3}),
    "wp": ("adam", 1e-3, {"probes": 16, "sigma": 1e-3}),
    "mgd": ("adam", 1e-3, {"window": 16, "sigma": 1e-3}),
    "oua": ("adam", 3e-3, {}),
    "feedback-alignment": ("adam", 1e-3, {}),
    "dfa": ("adam", 1e-3, {}),
    "newton": ("sgd", 1.0, {}),
    "lbfgs": ("sgd", 1.0, {}),
    "hessian-free": ("sgd", 1.0, {"max_cg": 10, "min_damping": 1.0}),
    "natural-gradient": ("sgd", 0.1, {"max_cg": 20}),
    "diag-hessian": ("sgd", 0.01, {}),
    "kfac": ("sgd", 0.05, {"damping": 1e-2, "inverse_interval": 2}),
    "cubic-newton": ("sgd", 1.0, {"krylov_dim": 20}),  # SGD with lr 1 takes the (trust-region) Newton step as it is
    # peers take their own step: SGD with lr 1 moves the parameters to the peer's new centre
    "cma": ("sgd", 1.0, {}),
    "sep-cma": ("sgd", 1.0, {}),
    "nevergrad": ("sgd", 1.0, {}),
    "pgpe": ("sgd", 1.0, {}),
    "snes": ("sgd", 1.0, {}),
    "cem": ("sgd", 1.0, {}),
    "xnes": ("sgd", 1.0, {}),
}
FALLBACK = ("adam", 1e-3, {})

# variant name: (estimator, decorrelation options): the registry's variants, with DECORRELATION_DEFAULTS
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    name: (base, DECORRELATION_DEFAULTS) for name, (base, _) in REGISTERED_VARIANTS.items()
}


def variants() -> dict[str, tuple[str, dict[str, Any]]]:
    """The decorrelated variants: :data:`VARIANTS`."""
    return dict(VARIANTS)


def method_names() -> list[str]:
    """Every name a method spec may start with: the registered estimators and the variants."""
    return [*ESTIMATORS, *variants()]


@dataclass
class MethodSpec:
    """One method of a comparison: estimator name and options, optimizer and learning rate."""

    name: str
    optimizer: str
    lr: float
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    decorrelation: dict[str, Any] | None = None
    parameters: ParameterChoice | None = None

    def __post_init__(self) -> None:
        self.label = self.label or self.name

    @property
    def order(self) -> int:
        return estimator_class(self.name).order

    def build_estimator(self, seed: int = 0) -> Estimator:
        """The estimator of this method, its noise named by ``seed``: ``make_estimator(name, seed=seed, **options)``,
        wrapped in a :class:`~unigrad.nn.decorrelation.Decorrelated` named by the label when the method is
        decorrelated. With :meth:`build_optimizer`, this is the command line's method (its per-method defaults
        included) in a Python loop of one's own; ``train(task, spec.build_estimator(seed), optimizer=spec.optimizer,
        lr=spec.lr)`` is the command line's run."""
        estimator = make_estimator(self.name, seed=seed, **self.options)
        if self.decorrelation is None:
            return estimator
        return Decorrelated(estimator, name=self.label, **self.decorrelation)

    def build_optimizer(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        """The ``torch.optim`` optimizer of this method over ``params`` at its learning rate."""
        return make_optimizer(self.optimizer, params, self.lr)

    def run_options(self) -> dict[str, Any]:
        """The keywords of :func:`~unigrad.train.train` (and of
        :func:`~unigrad.train.peak_memory.measure_peak_memory`) this method sets: optimizer, learning rate,
        estimator options, decorrelation and the choice of parameters."""
        return {
            "optimizer": self.optimizer,
            "lr": self.lr,
            "estimator_options": self.options,
            "decorrelation": self.decorrelation,
            **self.train_options(),
        }

    def train_options(self) -> dict[str, Any]:
        """The choice of parameters as keywords of :func:`~unigrad.train.train` (``train_only``, ``freeze``; none
        when every parameter trains)."""
        if self.parameters is None:
            return {}
        return {"train_only": self.parameters.train, "freeze": self.parameters.freeze}

    def to_dict(self) -> dict[str, Any]:
        out = {
            "label": self.label,
            "name": self.name,
            "order": self.order,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "options": self.options,
            "decorrelation": self.decorrelation,
        }
        if self.parameters is not None:  # methods that train every parameter keep the record (and store key) they had
            out["parameters"] = self.parameters.to_dict()
        return out


def check_available(name: str) -> None:
    """Raise :class:`UnigradError` if ``name`` is unknown or its class cannot be imported."""
    if name not in ESTIMATORS:
        raise unknown_name("method", name, method_names())
    try:
        estimator_class(name)
    except ImportError as e:
        raise UnigradError(f"method {name} is registered but not available here ({e})") from None


def parse_method(spec: str, *, optimizer: str | None = None, lr: float | None = None) -> MethodSpec:
    """``"spsa:probes=16:sigma=1e-3:lr=1e-4"`` → :class:`MethodSpec` with :data:`DEFAULTS` filled in.

    ``optimizer`` and ``lr`` (when given) override both the defaults and the spec. The estimator
    options are validated by building the estimator once. A variant name (``dbp``) or the key
    ``decorrelate=1`` gives a decorrelated method (module docstring).
    """
    name, *parts = spec.strip().split(":")
    name = name.strip()
    if not name:
        raise UnigradError(f"malformed method spec {spec!r}: it must start with a method name")
    known = variants()
    variant = name if name in known else None
    if variant is not None:
        name = known[variant][0]
    check_available(name)
    given: dict[str, Any] = {}
    choice: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise UnigradError(f"malformed method spec {spec!r}: {part!r} is not key=value")
        if key in given or key in choice:
            raise UnigradError(f"malformed method spec {spec!r}: option {key} given twice")
        if key in PARAMETER_KEYS:  # globs, kept as text (not read as numbers)
            choice[key] = value.strip()
            continue
        given[key] = parse_value(value.strip())
        if type(given[key]) is int and abs(given[key]) > MAX_INT:
            raise UnigradError(f"option {key} of {spec!r} is out of range: integers must fit in 64 bits")
    decor = _decorrelation(spec, variant, given)
    if decor is not None and variant is None:
        base = [v for v, (est, _) in known.items() if est == name]
        variant = base[0] if base else None
    default_opt, default_lr, default_options = DEFAULTS.get(variant or name, DEFAULTS.get(name, FALLBACK))
    opt = optimizer if optimizer is not None else given.pop("optimizer", default_opt)
    rate = lr if lr is not None else given.pop("lr", default_lr)
    given.pop("optimizer", None)
    given.pop("lr", None)
    if not isinstance(opt, str) or opt not in OPTIMIZERS:
        raise unknown_name("optimizer", str(opt), OPTIMIZERS)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0:
        raise UnigradError(f"option lr of {name} must be a finite number > 0, got {rate!r}")
    if "seed" in given:
        raise UnigradError(f"option seed of {name} is set by the run's seeds; remove it from the method spec")
    _check_option_names(spec, name, given)
    options = {**default_options, **given}
    check_trainable(make_estimator(name, **options), opt)  # validate now, not after an hour of other methods
    label = (variant or f"{name}+decorrelation") if decor is not None else name
    parameters = ParameterChoice.make(choice.get("train"), choice.get("freeze"))
    label += "".join(f":{key}={value}" for key, value in choice.items())
    return MethodSpec(name, opt, float(rate), options, label=label, decorrelation=decor, parameters=parameters)


def _check_option_names(spec: str, name: str, given: dict[str, Any]) -> None:
    """Refuse a key of a method spec that is no option of estimator ``name``, or one that takes only a Python
    object (``exchange``): a spec gives numbers, strings and booleans. The message lists the valid options."""
    valid = [k for k in value_options(name) if k != "seed"]
    objects = object_options(name)
    for key in given:
        if key in objects:
            how = SET_BY.get(key, "it is set from Python")
            raise UnigradError(
                f"option {key} of {name} takes a Python object ({objects[key]}), not a value a method spec can give: "
                f"{how}; valid options: {', '.join(valid)}"
            )
        if key not in valid:
            raise UnigradError(
                f"bad options for {name}: unknown option {key!r} in {spec!r}; valid options: {', '.join(valid)}"
            )


def _decorrelation(spec: str, variant: str | None, given: dict[str, Any]) -> dict[str, Any] | None:
    """Pop the decorrelation keys of a method spec; the decorrelation options, or ``None`` if off."""
    flag = given.pop("decorrelate", None)
    if flag is not None and (isinstance(flag, float) or flag not in (0, 1, True, False)):
        raise UnigradError(f"option decorrelate of {spec!r} must be 0 or 1 (or true/false), got {flag!r}")
    on = bool(flag) if flag is not None else variant is not None
    keys = {k: given.pop(k) for k in list(given) if k in DECOR_KEYS}
    if not on:
        if keys:
            raise UnigradError(f"option {next(iter(keys))} of {spec!r} needs decorrelate=1 (or a variant like dbp)")
        return None
    decor = {**DECORRELATION_DEFAULTS, **{DECOR_KEYS[k]: v for k, v in keys.items()}}
    for key in ("compensate", "conv"):
        if type(decor[key]) is int and decor[key] in (0, 1):
            decor[key] = bool(decor[key])  # decor_compensate=1, decor_conv=0
    return check_decorrelation(decor)


def check_parameter_choices(task: Task, specs: Sequence[MethodSpec]) -> None:
    """Refuse a method whose choice of parameters does not fit ``task``'s model (a glob that matches no parameter
    name, a choice that leaves none), checked on one model built from seed 0 before anything trains."""
    chosen = [spec.parameters for spec in specs if spec.parameters is not None]
    if chosen:
        model = task.build_model(0)
        for choice in chosen:
            choice.apply(task.build_model(0) if choice.lora else model)  # adapters change the model: a fresh one


def parse_methods(text: str | Sequence[str]) -> list[MethodSpec]:
    """A comma-separated list (or a sequence) of method specs; repeated names get their spec as label."""
    specs = [s for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not specs:
        raise UnigradError("no methods given; e.g. --methods backprop,spsa:probes=16")
    methods = [parse_method(s) for s in specs]
    names = [m.label for m in methods]
    for m, s in zip(methods, specs):
        if names.count(m.label) > 1:
            m.label = s.strip()
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise UnigradError(f"methods given twice: {', '.join(sorted({x for x in labels if labels.count(x) > 1}))}")
    return methods


def parse_seeds(seeds: int | str | Sequence[int]) -> list[int]:
    """``3`` → ``[0, 1, 2]``; ``"0,5,7"`` → ``[0, 5, 7]``.

    A count is at most :data:`MAX_SEED_COUNT`; seeds are integers from 0 to :data:`MAX_INT` (the store
    keeps them as 64-bit integers).
    """
    if isinstance(seeds, str):
        text = seeds.strip()
        try:
            seeds = int(text) if "," not in text else [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise UnigradError(f"seeds must be a count (3) or a list (0,5,7), got {text!r}") from None
    if isinstance(seeds, bool):
        raise UnigradError(f"seeds must be a count or a list of integers, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise UnigradError(f"the number of seeds must be >= 1, got {seeds}")
        if seeds > MAX_SEED_COUNT:
            raise UnigradError(f"the number of seeds must be <= {MAX_SEED_COUNT}, got {seeds}")
        return list(range(seeds))
    out = list(seeds)
    if not out or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in out):
        raise UnigradError(f"seeds must be integers >= 0, got {out!r}")
    if any(s > MAX_INT for s in out):
        raise UnigradError(f"seeds must be integers from 0 to {MAX_INT}, got {out!r}")
    if len(set(out)) != len(out):
        raise UnigradError(f"seeds repeat: {out}")
    return out


__all__ = [
    "DECORRELATION_DEFAULTS",
    "DEFAULTS",
    "FALLBACK",
    "MAX_INT",
    "MAX_SEED_COUNT",
    "PARAMETER_KEYS",
    "VARIANTS",
    "MethodSpec",
    "check_available",
    "check_parameter_choices",
    "method_names",
    "parse_method",
    "parse_methods",
    "parse_seeds",
    "variants",
]
