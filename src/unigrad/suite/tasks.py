"""The tasks and default methods of ``unigrad bench``.

Every task has a default budget in forward-pass equivalents (FE, :class:`unigrad.core.cost.Cost`),
counted in the task's own unit of cost: a sample for the classification tasks (a forward pass of
a batch of 64 is 64 FE, a backward pass twice that), an episode for ``cartpole``, a function
evaluation for the black-box functions. All methods of a task get the same budget.

===============  ==============  =================  ==========  ======================================
task             kind            unit of cost       budget      metric
===============  ==============  =================  ==========  ======================================
mnist1d-mlp      classification  sample             5·10⁶       test accuracy (higher is better)
digits-mlp       classification  sample             2·10⁶       test accuracy (higher is better)
fashion-small    classification  sample             5·10⁶       test accuracy (higher is better)
minilm-sent…k16  classification  sample             12,800      test accuracy (higher is better)
cartpole         control         episode            10⁴         mean greedy return, 50 episodes
sphere-D         function        evaluation         see below   f(x) (lower is better)
rosenbrock-D     function        evaluation         see below   f(x) (lower is better)
rastrigin-D      function        evaluation         see below   f(x) (lower is better)
===============  ==============  =================  ==========  ======================================

The functions come in D = 10, 100 and 1000 dimensions with budgets of 2·10⁴, 10⁵ and 10⁵
evaluations (2000·D, 1000·D and 100·D: in 1000 dimensions the full-covariance peers ``cma`` and
``xnes`` spend up to seconds per generation, so a larger budget would take them hours per run).
:mod:`unigrad.suite.problems` defines the problems.

Default methods of a task: unigrad's zeroth-order estimators (``spsa``, ``es``, ``mezo``, plus
``anp`` on the classification tasks: it perturbs ``nn.Linear`` outputs and needs per-sample
losses), ``backprop`` as the first-order reference (not on ``cartpole``, whose return is not
differentiable), and every peer of :data:`PEERS` (third-party black-box optimizers, run with
``torch.optim.SGD(lr=1)``). A method whose estimator has a ``max_dim`` attribute smaller than the
task's dimension is skipped with a note, as is a peer whose optional package is missing.

Options come from :data:`unigrad.train.methods.DEFAULTS` (tuned on MNIST-1D), overridden per task
by :attr:`BenchTask.overrides`, and a method spec given by the user overrides both key by key:

* ``minilm-sentiment-k16`` (needs ``unigrad[finetune]``; only with ``--tasks``): fine-tuning the pretrained
  all-MiniLM-L6-v2 on 32 words, with the options of ``unigrad experiment finetune`` (q = 1, σ = 1e-3; MeZO and
  SPSA with SGD at 3e-4, MeZO in its fast step; ES and ANP, on the Linear layers, with Adam; backprop with Adam at
  2e-5), batch 32, and no peer: a population over 22.6M dimensions is out of reach (``excluded``).
* ``mnist1d-mlp``: ``spsa`` and ``mezo`` at lr 3e-3, as in ``unigrad compare``'s default set
  (at 1e-3 they end 6–8 points lower on this task).
* ``cartpole``: the greedy return is piecewise constant in the weights, so the perturbations must be
  large enough to change actions: σ = 0.2 with 4 probes (pairs) per update and Adam at lr 0.1 for
  unigrad's estimators, σ₀ = 0.3 for the peers. Chosen on seeds 10–15 (not the reported 0–2) at a
  fifth of the budget: mezo went from 224 (σ 0.1, lr 0.05) to 484 (lr 0.1) and 500 (σ 0.2, lr 0.1);
  cma from 297 (σ₀ 0.1) to 500, snes 414 → 500, xnes 368 → 450 (σ₀ 0.3). With σ = 0.05 a seed whose
  initial policy always takes one action never moves (every probe ties at a return of about 9).
* black-box functions: 4 probes and Adam at lr 10⁻² (3·10⁻³ in 1000 dimensions, where the estimates
  are noisier); ``spsa``/``mezo`` with σ = 10⁻³ (a finite difference), ``es`` with σ = 0.1
  (smoothing, which can step over Rastrigin's local minima); ``backprop`` with Adam at lr 10⁻².
  Adam at a constant rate ends at a noise floor that grows with the rate: on sphere-100 (half the
  budget, seed 0) spsa ends at 0.07 with lr 0.05 and at 10⁻³⁴ with lr 0.01; on sphere-1000 at 7.3
  with 0.01 and 0.6 with 0.003. These were picked from such short runs of one seed; they are
  reasonable, not tuned per function.
* peers: their defaults (σ₀ = 0.05, the library's population size) on the classification tasks;
  σ₀ = 0.1 on ``cartpole`` (as unigrad's σ) and on the functions about a quarter of the start
  point's spread (:data:`FUNCTION_SIGMA0`: 0.5 for sphere and rosenbrock, 2 for rastrigin), the
  usual advice for CMA-ES.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from unigrad.core.errors import UnigradError, unknown_name
from unigrad.train.methods import MethodSpec, check_available, method_names, parse_method, variants

PEERS = ("cma", "sep-cma", "nevergrad", "pgpe", "snes", "cem", "xnes")
"""Registry names of the third-party black-box optimizers (``unigrad.peers``)."""

KINDS = ("classification", "control", "function")

ZEROTH = ("spsa", "es", "mezo")
"""unigrad's zeroth-order methods run on every task (``anp`` is added on classification tasks)."""


ZO_FAMILY = ("mezo", "sparse-mezo", "hizoo", "lozo", "subzero", "fzoo", "mezo-svrg", "eggroll")
"""The modern zeroth-order family with MeZO as its reference (``docs/zo-family.md``)."""

GROUPS: dict[str, tuple[str, ...]] = {"zo-family": ZO_FAMILY}
"""Names ``--methods`` accepts for a group of methods: ``unigrad bench --methods zo-family``."""


@dataclass(frozen=True)
class BenchTask:
    """One task of the suite (module docs).

    Attributes:
        name, description: as listed by ``unigrad bench --list``.
        kind: ``"classification"`` (trained by :func:`unigrad.train.train`), ``"control"`` or ``"function"``.
        budget: default budget in FE of the task's unit of cost.
        batch_size: samples per step (classification only).
        eval_points: evaluation points per run (plus the initial one).
        metric: what is measured at each evaluation point; ``higher_is_better`` says which way is good.
        unit: what one unit of cost (one FE) is on this task.
        dim: number of trainable parameters.
        methods: unigrad's default methods (the peers are added by :func:`default_methods`).
        overrides: method name → ``key=value:...`` options replacing the defaults on this task.
        excluded: method name → why it cannot run on this task.
        default: whether ``unigrad bench`` without ``--tasks`` runs it (the fine-tuning task is named explicitly).
    """

    name: str
    description: str
    kind: str
    budget: float
    batch_size: int | None
    eval_points: int
    metric: str
    higher_is_better: bool
    unit: str
    dim: int
    methods: tuple[str, ...]
    overrides: Mapping[str, str] = field(default_factory=dict)
    excluded: Mapping[str, str] = field(default_factory=dict)
    default: bool = True

    def problem(self) -> object:
        """A :class:`~unigrad.data.tasks.Task` (classification) or a problem of :mod:`unigrad.suite.problems`."""
        from unigrad.suite import problems

        if self.kind == "classification":
            from unigrad.data.tasks import get_task

            return problems.FASHION_SMALL if self.name == "fashion-small" else get_task(self.name)
        if self.kind == "control":
            return problems.CartPoleProblem()
        fn, dim = self.name.rsplit("-", 1)
        return problems.FunctionProblem(fn, int(dim))


FUNCTION_SIGMA0 = {"sphere": 0.5, "rosenbrock": 0.5, "rastrigin": 2.0}
"""Initial step size of the peers on the black-box functions: about a quarter of the start point's spread."""

_NN_METHODS = (*ZEROTH, "anp", "backprop")
MEZO_FAST = "noise_source=table:table_size=1048576:perturb=forward"
"""MeZO's fast step on a pretrained transformer (``docs/finetuning.md``, Step cost)."""
_POPULATION_OUT_OF_REACH = (
    "a population of 22.6M-dimensional candidates (and a covariance or its diagonal per generation) is out of reach "
    "of a CPU; the fine-tuning task runs unigrad's estimators only"
)
_NOT_DIFFERENTIABLE = "the objective is not differentiable (greedy returns of a simulator)"


def _classification(name: str, description: str, budget: float, dim: int, **overrides: str) -> BenchTask:
    return BenchTask(
        name,
        description,
        "classification",
        budget,
        64,
        20,
        "test accuracy",
        True,
        "sample",
        dim,
        _NN_METHODS,
        overrides,
    )


def _function(fn: str, dim: int) -> BenchTask:
    from unigrad.suite.problems import FUNCTIONS

    budget = {10: 2e4, 100: 1e5, 1000: 1e5}[dim]
    lr = 3e-3 if dim >= 1000 else 1e-2
    return BenchTask(
        f"{fn}-{dim}",
        f"{fn} function in {dim} dimensions, start {FUNCTIONS[fn].start_text}, f(x*) = 0",
        "function",
        budget,
        None,
        40,
        "f(x)",
        False,
        "function evaluation",
        dim,
        (*ZEROTH, "backprop"),
        {
            "spsa": f"probes=4:sigma=1e-3:lr={lr:g}",
            "mezo": f"probes=4:sigma=1e-3:lr={lr:g}",
            "es": f"probes=4:sigma=0.1:lr={lr:g}",
            "backprop": "lr=0.01",
            **dict.fromkeys(PEERS, f"sigma0={FUNCTION_SIGMA0[fn]:g}"),
        },
        {"anp": "it perturbs nn.Linear outputs and the model here has none"},
    )


TASKS: dict[str, BenchTask] = {
    t.name: t
    for t in (
        _classification(
            "mnist1d-mlp",
            "MNIST-1D (4,000/1,000 sequences of 40), MLP 40-100-100-10",
            5e6,
            15_210,
            spsa="lr=3e-3",
            mezo="lr=3e-3",
        ),
        _classification("digits-mlp", "sklearn 8x8 digits (1,437/360), MLP 64-64-10", 2e6, 4_810),
        _classification("fashion-small", "Fashion-MNIST pooled to 7x7 (60,000/10,000), MLP 49-16-10", 5e6, 970),
        BenchTask(
            "cartpole",
            "CartPole-v1, policy MLP 4-16-2 (tanh), 4 episodes per update, greedy actions",
            "control",
            1e4,
            None,
            10,
            "mean return",
            True,
            "episode",
            114,
            ZEROTH,
            {
                "spsa": "probes=4:sigma=0.2:lr=0.1",
                "es": "probes=4:sigma=0.2:lr=0.1",
                "mezo": "probes=4:sigma=0.2:lr=0.1",
                **dict.fromkeys(PEERS, "sigma0=0.3"),
            },
            {"backprop": _NOT_DIFFERENTIABLE, "anp": "it needs per-sample losses of a supervised batch"},
        ),
        *(_function(fn, d) for fn in ("sphere", "rosenbrock", "rastrigin") for d in (10, 100, 1000)),
        BenchTask(
            "minilm-sentiment-k16",
            "VADER words, 16 per class (32/1,116), pretrained all-MiniLM-L6-v2 + prototype head (unigrad[finetune])",
            "classification",
            12_800,
            32,
            5,
            "test accuracy",
            True,
            "sample",
            22_566_146,
            _NN_METHODS,
            {
                "spsa": "probes=1:sigma=1e-3:optimizer=sgd:lr=3e-4",
                "mezo": f"probes=1:sigma=1e-3:optimizer=sgd:lr=3e-4:{MEZO_FAST}",
                "es": "probes=1:sigma=1e-3:lr=1e-4",
                "anp": "probes=1:sigma=1e-3:lr=5e-5:train=linear",
                "backprop": "lr=2e-5",
            },
            dict.fromkeys(PEERS, _POPULATION_OUT_OF_REACH),
            default=False,
        ),
    )
}


USER_TASK_EPOCHS = 5
"""The default budget of a task of your own: the forward-pass equivalents of this many epochs of backprop
(3 FE per training sample: a forward and a backward pass)."""


def get_bench_task(name: str) -> BenchTask:
    """The suite's task called ``name``, or a task of your own named by its import path ``module.path:function``
    (:func:`user_bench_task`); unknown names raise an error listing the valid ones."""
    if ":" in name:
        return user_bench_task(name)
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return TASKS[name]


@functools.cache
def user_bench_task(path: str) -> BenchTask:
    """The suite's view of the classification task your function at ``path`` returns
    (:func:`unigrad.data.tasks.load_user_task`): the default methods of the built-in classification tasks and
    every peer, the task's batch size, 20 evaluation points and a budget of :data:`USER_TASK_EPOCHS` epochs of
    backprop in FE. Not in the default set: run it with ``--tasks``."""
    from unigrad.data.tasks import load_user_task

    task = load_user_task(path)
    n_train = len(task.data().y_train)
    dim = sum(p.numel() for p in task.build_model(0).parameters() if p.requires_grad)
    return replace(
        _classification(path, task.description, float(3 * USER_TASK_EPOCHS * n_train), dim),
        batch_size=task.batch_size,
        default=False,
    )


def parse_tasks(tasks: str | Sequence[str] | None) -> list[BenchTask]:
    """A comma-separated list (or a sequence) of task names; ``None`` means every default task (all but the
    fine-tuning one, which is named explicitly)."""
    if tasks is None:
        return [t for t in TASKS.values() if t.default]
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise UnigradError(f"no tasks given; valid tasks: {', '.join(TASKS)}")
    if len(set(names)) != len(names):
        raise UnigradError(f"tasks given twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return [get_bench_task(n) for n in names]


def default_methods(task: BenchTask) -> tuple[str, ...]:
    """unigrad's default methods of ``task`` followed by every peer."""
    return (*task.methods, *PEERS)


def _split(spec: str) -> tuple[str, dict[str, str]]:
    name, *parts = spec.strip().split(":")
    options: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UnigradError(f"malformed method spec {spec!r}: {part!r} is not key=value")
        if key.strip() in options:
            raise UnigradError(f"malformed method spec {spec!r}: option {key.strip()} given twice")
        options[key.strip()] = value.strip()
    return name.strip(), options


def method_spec(task: BenchTask, spec: str) -> MethodSpec:
    """``spec`` parsed for ``task``: its overrides of the defaults, then the options of ``spec`` itself."""
    name, given = _split(spec)
    base = _split(f"{name}:{task.overrides[name]}")[1] if name in task.overrides else {}
    merged = {**base, **given}
    text = ":".join([name, *(f"{k}={v}" for k, v in merged.items())])
    parsed = parse_method(text)
    parsed.label = spec.strip() if given else name
    return parsed


def _estimator_name(name: str) -> str:
    return variants().get(name, (name, {}))[0]


def resolve_methods(task: BenchTask, specs: Sequence[str] | None = None) -> tuple[list[MethodSpec], list[str]]:
    """The methods to run on ``task`` (``specs``, or :func:`default_methods`) and notes on those skipped.

    Unknown names and bad options raise :class:`UnigradError`. Skipped with a note instead: a method
    the task excludes, a method whose estimator has a ``max_dim`` below the task's dimension, and a
    peer that is not registered or not available here (its optional package missing).
    """
    from unigrad.registry import make_estimator

    out: list[MethodSpec] = []
    notes: list[str] = []
    for spec in specs if specs is not None else default_methods(task):
        name = _split(spec)[0]
        valid = method_names()
        if name in PEERS and name not in valid:
            notes.append(f"{name}: not registered in this installation")
            continue
        if name not in valid:
            raise unknown_name("method", name, valid)
        estimator = _estimator_name(name)
        if estimator in task.excluded:
            notes.append(f"{name}: not run on {task.name}: {task.excluded[estimator]}")
            continue
        if name in PEERS:
            try:
                check_available(name)
                parse_method(name)
            except UnigradError as e:
                notes.append(f"{name}: not available: {e}")
                continue
        parsed = method_spec(task, spec)
        max_dim = getattr(make_estimator(parsed.name, **parsed.options), "max_dim", None)
        if isinstance(max_dim, int) and not isinstance(max_dim, bool) and task.dim > max_dim:
            notes.append(f"{name}: not run on {task.name}: its dimension {task.dim} exceeds max_dim {max_dim}")
            continue
        out.append(parsed)
    labels = [m.label for m in out]
    if len(set(labels)) != len(labels):
        raise UnigradError(f"methods given twice: {', '.join(sorted({x for x in labels if labels.count(x) > 1}))}")
    return out, notes


__all__ = [
    "KINDS",
    "PEERS",
    "TASKS",
    "BenchTask",
    "default_methods",
    "get_bench_task",
    "method_spec",
    "parse_tasks",
    "resolve_methods",
]
