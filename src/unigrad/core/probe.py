"""Evaluating an objective at perturbed parameters without touching the model.

Three ways, all leaving the model's parameters bit-for-bit unchanged:

* ``losses_at(model, objective, values)`` — one set of parameter values, via
  ``torch.func.functional_call`` (works for any objective).
* ``batched_losses(model, objective, stacked)`` — many sets at once: ``stacked`` holds one
  ``(P, *shape)`` tensor per trainable parameter, and the objective runs under ``torch.vmap`` over
  the probe axis, in chunks of at most ``probe_batch`` probes (the memory-budget knob). Falls back
  to a loop over probes if the objective cannot be vmapped (data-dependent control flow, in-place
  buffer updates) or ``probe_batch == 1``.
* ``perturbed_losses(model, objective, base, directions, scales)`` — the losses at ``θ + s_j·u_i`` for
  every scale ``s_j`` and direction ``u_i`` (antithetic probes use ``s = ±σ``): ``batched_losses``
  on the ``S·P`` perturbed copies, or the linear fast path below.

All return per-sample losses and add one forward per sample and parameter set to the cost;
``probe_means`` averages them over the samples.

**Linear fast path** (``perturbed_losses`` with two or more scales). A linear map is linear in its
weights, and so is a convolution::

    F.linear(x, W + s·U, b + s·u_b) = F.linear(x, W, b) + s·F.linear(x, U, u_b)      (F.conv1d, F.conv2d alike)

When the input ``x`` of a linear map does not depend on the perturbation (the first layer's input,
or any layer below which nothing is perturbed), ``x·Wᵀ`` is computed once for all probes and
``x·U_iᵀ`` once per direction, shared by its ``±σ`` pair: with ``S`` scales and ``P`` directions such
a layer costs ``1 + P`` matrix products instead of ``S·P`` (about half, for antithetic pairs). Sharing adds two
sums over the layer's output per pair, so a layer shares only if each output sums at least
:data:`MIN_SHARED_REDUCTION` products (a first convolution over one input channel does not). In an MLP
whose first layer holds most of the weights that is a large share of the step (the P1 benchmark,
``benchmarks/p1_step_time.py``, measures it). Layers whose input does depend on the perturbation
materialise ``W + s·U_i`` and run one product per probe. The result is the same function of the same
noise, not an approximation: it agrees with the generic path to floating-point rounding (the sum is
merely formed in another order).

The probes are evaluated one after the other (a ``±`` pair back to back), not under ``vmap``: on a
CPU this measured faster than ``vmap`` for the models we benchmark, and it needs no stacked copies
of the parameters.

How it stays exact for any model: trainable tensors used only as the ``weight``/``bias`` of
``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` modules are replaced, for the duration of the call, by
*placeholders* (detached aliases of the current values) while a ``TorchFunctionMode`` watches every torch call:

- a placeholder reaching ``F.linear`` (or ``F.conv1d``, ``F.conv2d``) as its weight or bias gives the
  decomposition above;
- every tensor computed from perturbed values is marked, so ``F.linear`` knows whether its input
  varies with the probe; the shared products are reused only for an input with the very same values
  (the same tensor with an unchanged version counter, or an equal one); a layer whose unmarked input
  still changes between probes (dropout on the data, say) materialises ``W + s·U_i`` from then on;
- a placeholder used in any other way (a weight penalty inside the objective, weights tied to a
  non-linear module, a hook or parent module reading ``module.weight``) aborts the attempt: the
  generic path runs instead, and the fast path is not tried again for that model.

An ``nn.Embedding`` weight (without ``max_norm``) gets a placeholder too: a lookup reads only its rows, so it
returns ``E[ids] + s·U_i[ids]`` and the perturbed table (11.7M entries in a transformer's word embedding) is
never formed; each entry is ``E + s·U_i`` up to one rounding. The other parameters (norms, …) are perturbed as
in the generic path, per probe.
Set ``unigrad.core.probe.LINEAR_FAST_PATH = False`` to disable the fast path.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from unigrad.core import rng
from unigrad.core.cost import Cost
from unigrad.core.errors import check_positive
from unigrad.core.objective import Objective, Supervised, check_losses, losses_of, n_samples
from unigrad.core.params import trainable
from unigrad.core.rowwise import rowwise

DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes of stacked perturbed parameters (or tangents) a probing estimator holds at once by default."""


def check_batching(probe_batch: int | None, memory_budget: int) -> None:
    """The batching options of a probing estimator: ``probe_batch`` ≥ 1 (or None) and ``memory_budget`` ≥ 1."""
    if probe_batch is not None:
        check_positive("probe_batch", probe_batch, integer=True)
    check_positive("memory_budget", memory_budget, integer=True)


def probes_per_chunk(
    params: Sequence[tuple[str, Tensor]], signs: int, probe_batch: int | None, memory_budget: int
) -> int:
    """How many probes to evaluate at once: ``probe_batch`` if given, else what fits in the budget.

    A probe holds ``signs`` perturbed copies of every tensor of ``params`` (two for an antithetic pair).
    """
    if probe_batch is not None:
        return probe_batch
    per_probe = signs * sum(p.numel() * p.element_size() for _, p in params)
    return max(1, memory_budget // max(1, per_probe))


class _Bound(nn.Module):
    """A module whose forward is ``objective(model)``, so ``functional_call`` can swap its parameters."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self) -> Tensor:
        return losses_of(self.objective, self.model)


def losses_at(model: nn.Module, objective: Objective, values: Sequence[Tensor], cost: Cost) -> Tensor:
    """Per-sample losses with the trainable parameters replaced by ``values`` (model untouched)."""
    names = ["model." + n for n, _ in trainable(model)]
    with torch.no_grad():
        out = functional_call(_Bound(model, objective), dict(zip(names, values, strict=True)), (), strict=False)
    cost.forwards += n_samples(objective, out)
    return out


def batched_losses(
    model: nn.Module, objective: Objective, stacked: Sequence[Tensor], cost: Cost, probe_batch: int | None = None
) -> Tensor:
    """Per-sample losses for each of the ``P`` parameter sets in ``stacked`` (``(P, *shape)`` each)."""
    P = stacked[0].shape[0]
    chunk = P if probe_batch is None else max(1, min(P, probe_batch))
    names = ["model." + n for n, _ in trainable(model)]
    bound = _Bound(model, objective)

    def one(*vals: Tensor) -> Tensor:
        return functional_call(bound, dict(zip(names, vals, strict=True)), (), strict=False)

    outs: list[Tensor] = []
    with torch.no_grad():
        for lo in range(0, P, chunk):
            part = [s[lo : lo + chunk] for s in stacked]
            if chunk > 1 and getattr(objective, "vmappable", True):
                try:
                    outs.append(torch.vmap(one, randomness="same")(*part))
                    continue
                except RuntimeError:
                    pass  # not vmappable: fall through to the loop
            outs.extend(one(*[v[i] for v in part]).unsqueeze(0) for i in range(part[0].shape[0]))
    losses = torch.cat(outs)
    cost.forwards += P * n_samples(objective, losses[0])
    return losses


def probe_means(losses: Tensor, probe_dims: int = 1) -> Tensor:
    """Mean loss of each probe: averages the sample axis of per-sample losses ``(*probes, B)``.

    ``probe_dims`` is the number of leading probe axes (1 for :func:`batched_losses`, 2 for
    :func:`perturbed_losses`); losses of a scalar objective have no sample axis and pass through.
    """
    return losses.mean(dim=-1) if losses.dim() > probe_dims else losses


# -- perturbed_losses and its linear fast path ------------------------------------------------------


class _Unsupported(Exception):
    """A placeholder was used other than as the weight or bias of ``F.linear``."""


_META_ATTRS = frozenset(
    {Tensor.shape, Tensor.dtype, Tensor.device, Tensor.ndim, Tensor.layout, Tensor.is_cuda, Tensor.requires_grad}
)
_META_METHODS = frozenset({Tensor.size, Tensor.dim, Tensor.numel})


def reads_metadata(func: Any) -> bool:
    """Whether a ``__torch_function__`` call only reads a tensor's metadata (shape, dtype, device, ...)."""
    return getattr(func, "__self__", None) in _META_ATTRS or func in _META_METHODS


_PERTURBED = "_unigrad_perturbed"
"""Attribute marking a tensor computed from perturbed parameters during a fast-path probe."""


def _perturbed(obj: Any) -> bool:
    if isinstance(obj, Tensor):
        return getattr(obj, _PERTURBED, False)
    if isinstance(obj, (list, tuple)):
        return any(_perturbed(o) for o in obj)
    if isinstance(obj, dict):
        return any(_perturbed(o) for o in obj.values())
    return False


def _mark(obj: Any) -> None:
    if isinstance(obj, Tensor):
        setattr(obj, _PERTURBED, True)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _mark(o)


def _version(x: Tensor) -> int | None:
    """``x``'s version counter (bumped by in-place updates); None where it is not tracked."""
    try:
        return x._version
    except RuntimeError:  # inference tensors
        return None


class _Shared:
    """Products of one linear layer with an unperturbed input ``x``, reusable while ``x`` is unchanged."""

    __slots__ = ("base", "i", "product", "version", "x")

    def __init__(self, x: Tensor, base: Tensor) -> None:
        self.x, self.version = x, _version(x)  # holding x keeps its id from being reused
        self.base = base  # F.linear(x, W, b)
        self.i: int | None = None
        self.product: Tensor | None = None  # F.linear(x, U_i, u_b,i) for direction i

    def holds(self, x: Tensor) -> bool:
        """Whether ``x`` has this input's values: the same unmodified tensor, or an equal one."""
        if x is self.x and self.version is not None and _version(x) == self.version:
            return True
        return x.shape == self.x.shape and x.dtype == self.x.dtype and torch.equal(x, self.x)


class _LinearProbes(TorchFunctionMode):
    """Evaluates the objective for probe ``θ + s·u_i`` with linear layers given by placeholders.

    ``table`` maps ``id(placeholder)`` to ``(key, base value, directions (P, *shape))``. Every tensor
    computed from a perturbed value is marked. ``F.linear`` on a placeholder with an unmarked input
    ``x`` returns ``F.linear(x, W, b) + s·F.linear(x, U_i, u_b,i)``, reusing both products while
    ``x`` is the very same, unmodified tensor; with a marked input it materialises ``W + s·U_i``.
    Any other use of a placeholder raises :class:`_Unsupported`.
    """

    def __init__(self, table: dict[int, tuple[int, Tensor, Tensor]]) -> None:
        super().__init__()
        self.table = table
        self.shared: dict[int, _Shared] = {}
        self.varying: set[int] = set()  # layers whose unmarked input still changes between probes
        self.i, self.s = 0, 0.0

    def _holds(self, obj: Any) -> bool:
        if isinstance(obj, Tensor):
            return id(obj) in self.table
        if isinstance(obj, (list, tuple)):
            return any(self._holds(o) for o in obj)
        if isinstance(obj, dict):
            return any(self._holds(o) for o in obj.values())
        return False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        table = self.table
        if func is F.embedding:
            ids, w, rest = _embedding_args(*args, **(kwargs or {}))
            pw = table.get(id(w))
            if pw is not None and rest["max_norm"] is None and not self._holds(ids):
                # a lookup reads only its rows: E[ids] + s·U_i[ids] (E + s·U_i up to rounding, never formed)
                u = pw[2][self.i]
                rows = u.rows(ids) if isinstance(u, rng.LazyProbe) else F.embedding(ids, u, **rest)
                out = torch.add(F.embedding(ids, pw[1], **rest), rows, alpha=self.s)
                setattr(out, _PERTURBED, True)
                return out
        layer = _AFFINE.get(func)
        if layer is not None:
            x, w, b, rest = layer(*args, **(kwargs or {}))
            pw, pb = table.get(id(w)), None if b is None else table.get(id(b))
            if (pw is not None or pb is not None) and id(x) not in table and not self._holds(rest):
                out = self._affine(func, x, w, b, rest, pw, pb)
                setattr(out, _PERTURBED, True)
                return out
        perturbed = False
        for a in args if not kwargs else (*args, *kwargs.values()):
            if isinstance(a, Tensor):
                if id(a) in table:
                    return self._other_use(func, args, kwargs)
                perturbed = perturbed or getattr(a, _PERTURBED, False)
            elif isinstance(a, (list, tuple, dict)):
                if self._holds(a):
                    return self._other_use(func, args, kwargs)
                perturbed = perturbed or _perturbed(a)
        out = func(*args, **(kwargs or {}))
        if perturbed:
            _mark(out)
        return out

    def _other_use(self, func: Any, args: tuple, kwargs: dict | None) -> Any:
        """A placeholder outside ``F.linear``: reading its metadata is fine, anything else aborts."""
        if reads_metadata(func):
            return func(*args, **(kwargs or {}))
        raise _Unsupported(getattr(func, "__name__", str(func)))

    def _affine(
        self, func: Any, x: Tensor, w: Tensor, b: Tensor | None, rest: dict, pw: tuple | None, pb: tuple | None
    ) -> Tensor:
        """``func(x, W + s·U_i, b + s·u_i, **rest)`` for a layer linear in its weights (``F.linear``, ``F.conv*``)."""
        weight, u = (w, None) if pw is None else (pw[1], rng.dense(pw[2][self.i]))
        bias, ub = (b, None) if pb is None else (pb[1], rng.dense(pb[2][self.i]))
        key = pw[0] if pw is not None else pb[0]
        sh = self.shared.get(key)
        if sh is None and w[0].numel() < MIN_SHARED_REDUCTION:
            self.varying.add(key)  # few products per output (a first convolution): sharing would not pay
        if sh is not None and not _perturbed(x) and key not in self.varying and not sh.holds(x):
            self.varying.add(key)  # e.g. dropout on the input: sharing would not pay
        if _perturbed(x) or key in self.varying:  # the input varies: one product with W + s·U_i
            return _materialised(func, x, weight, bias, u, ub, self.s, rest)
        if sh is None:
            sh = self.shared[key] = _Shared(x, func(x, weight, bias, **rest))
        return _from_shared(func, x, sh, u, ub, self.i, self.s, rest)


def _materialised(
    func: Any, x: Tensor, weight: Tensor, bias: Tensor | None, u: Tensor | None, ub: Tensor | None, s: float, rest: dict
) -> Tensor:
    """``func(x, W + s·U, b + s·u)``, the perturbed weight and bias formed first (``U``/``u`` None: unperturbed)."""
    weight = weight if u is None else torch.add(weight, u, alpha=s)
    bias = bias if ub is None else torch.add(bias, ub, alpha=s)
    return func(x, weight, bias, **rest)


def _from_shared(
    func: Any, x: Tensor, sh: _Shared, u: Tensor | None, ub: Tensor | None, i: int, s: float, rest: dict
) -> Tensor:
    """``func(x, W, b) + s·func(x, U_i, u_i)`` from the products ``sh`` keeps (the second made once per direction)."""
    if sh.i != i:
        sh.i = i
        if u is not None:
            sh.product = func(x, u, ub, **rest)
        else:  # only the bias is perturbed: it broadcasts over the output (features last, or channels second)
            shape = (-1,) if func is F.linear else (-1, *([1] * (sh.base.dim() - 2)))
            sh.product = ub.view(shape).expand_as(sh.base)
    return torch.add(sh.base, sh.product, alpha=s)


def _linear_layer(
    input: Tensor, weight: Tensor, bias: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None, dict]:
    return input, weight, bias, {}


def _conv_layer(
    input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
    groups: int = 1,
) -> tuple[Tensor, Tensor, Tensor | None, dict]:  # fmt: skip
    return input, weight, bias, {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}


_AFFINE: dict[Any, Any] = {F.linear: _linear_layer, F.conv1d: _conv_layer, F.conv2d: _conv_layer}
"""Functions linear in their weight and bias, with a parser of their arguments into (input, weight, bias, rest)."""

_AFFINE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _embedding_args(
    input: Tensor, weight: Tensor, padding_idx: Any = None, max_norm: Any = None, norm_type: float = 2.0,
    scale_grad_by_freq: bool = False, sparse: bool = False,
) -> tuple[Tensor, Tensor, dict]:  # fmt: skip
    rest = {"padding_idx": padding_idx, "max_norm": max_norm, "norm_type": norm_type}
    return input, weight, {**rest, "scale_grad_by_freq": scale_grad_by_freq, "sparse": sparse}


MIN_SHARED_REDUCTION = 64
"""A layer shares its products only if each output sums at least this many products (``in_features``, or
``C_in/groups·k_h·k_w``): sharing saves one product per ± pair but adds two sums over the output, which costs
more than it saves in a convolution with few input channels."""

SEQUENTIAL_FAST_PATH = True
"""Set to False to run the linear fast path through the function mode even for a plain ``nn.Sequential``."""

LINEAR_FAST_PATH = True
"""Set to False to disable the linear fast path everywhere (for benchmarks and debugging)."""

_NO_FAST_PATH: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _linear_slots(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """``id(parameter) → [(module, "weight" or "bias"), …]`` for parameters used only by ``nn.Linear``,
    ``nn.Conv1d``/``nn.Conv2d`` and (their weight, without ``max_norm``) ``nn.Embedding`` modules."""
    slots: dict[int, list[tuple[nn.Module, str]]] = {}
    other: set[int] = set()
    for mod in model.modules():
        for attr, p in mod._parameters.items():
            if p is None:
                continue
            if (isinstance(mod, _AFFINE_MODULES) and attr in ("weight", "bias")) or (
                type(mod) is nn.Embedding and attr == "weight" and mod.max_norm is None
            ):
                slots.setdefault(id(p), []).append((mod, attr))
            else:
                other.add(id(p))
    return {k: v for k, v in slots.items() if k not in other}


class _Probes(NamedTuple):
    """What the fast path evaluates: the trainable ``params`` at ``base + s·u_i`` for every scale ``s`` of ``scales``
    and direction ``u_i`` of ``directions``; ``slots`` from :func:`_linear_slots`."""

    params: Sequence[tuple[str, Tensor]]
    base: Sequence[Tensor]
    directions: Sequence[Tensor | rng.ProbeViews]
    scales: Sequence[float]
    slots: dict[int, list[tuple[nn.Module, str]]]


def _sequential_fast_path(model: nn.Module, objective: Objective, probes: _Probes) -> Tensor | None:
    """The fast path's losses computed by running an ``nn.Sequential`` layer by layer, without the function mode.

    Applies (else returns None) when the model is a plain ``nn.Sequential`` (or a single ``Linear``/``Conv``
    layer, a sequence of one) and the objective a supervised one, both provably row-wise and free of random draws
    (:func:`~unigrad.core.rowwise.rowwise`: no hooks), and every trainable tensor is the weight or bias of one
    ``Linear``/``Conv`` child. Then ``objective(model)`` is
    ``objective.score`` of the children applied in turn to ``objective.inputs``, and each affine child is computed
    with the very operations :class:`_LinearProbes` would use (its input is unperturbed until the first perturbed
    child): the losses are bitwise the function mode's, without its per-operation dispatch.
    """
    if type(model) is nn.Sequential:
        layers = list(model)
    elif type(model) in _AFFINE_MODULES:
        layers = [model]  # a single layer is a sequence of one
    else:
        return None
    if not SEQUENTIAL_FAST_PATH or not rowwise(model, objective):
        return None
    params, base, directions, scales, slots = probes
    children = {id(m) for m in layers}
    entries: dict[int, dict[str, tuple[int, Tensor, Tensor | rng.ProbeViews]]] = {}
    for key, ((_, p), b, u) in enumerate(zip(params, base, directions)):
        where = slots.get(id(p))
        if where is None or len(where) != 1 or id(where[0][0]) not in children:
            return None
        entries.setdefault(id(where[0][0]), {})[where[0][1]] = (key, b, u)
    for m in layers:
        if id(m) in entries and not isinstance(m, _AFFINE_MODULES):
            return None  # an embedding: the function mode looks up its perturbed rows
        if id(m) not in entries and any(q.requires_grad for q in m.parameters()):
            return None  # trainable tensors deeper inside a child: only the function mode sees them
    assert isinstance(objective, Supervised)
    kept: dict[int, _Shared] = {}  # the shared products of each child whose input is unperturbed
    rows: list[list[Tensor]] = [[] for _ in scales]
    for i in range(directions[0].shape[0]):
        for j, s in enumerate(scales):
            h, perturbed = objective.inputs, False
            for m in layers:
                entry = entries.get(id(m))
                if entry is None:
                    h = m(h)
                    continue
                h = _affine_child(m, h, entry, perturbed, i, s, kept)
                perturbed = True
            rows[j].append(check_losses(objective.score(h)))
    return torch.stack([torch.stack(r) for r in rows])


def _affine_child(m: nn.Module, x: Tensor, entry: dict, perturbed: bool, i: int, s: float, kept: dict) -> Tensor:
    """Child ``m`` (``Linear``/``Conv``) at ``W + s·U_i``, ``b + s·u_i``, as :meth:`_LinearProbes._affine` would."""
    pw, pb = entry.get("weight"), entry.get("bias")
    weight, u = (m.weight, None) if pw is None else (pw[1], rng.dense(pw[2][i]))
    bias, ub = (m.bias, None) if pb is None else (pb[1], rng.dense(pb[2][i]))
    # a convolution as its forward computes it (``_conv_forward``: the padding modes included)
    func = F.linear if isinstance(m, nn.Linear) else m._conv_forward
    if perturbed or weight[0].numel() < MIN_SHARED_REDUCTION:  # one product with W + s·U_i
        return _materialised(func, x, weight, bias, u, ub, s, {})
    sh = kept.get(id(m))
    if sh is None:
        sh = kept[id(m)] = _Shared(x, func(x, weight, bias))
    return _from_shared(func, x, sh, u, ub, i, s, {})


def _linear_fast_path(model: nn.Module, objective: Objective, probes: _Probes) -> Tensor:
    """Losses ``(S, P, ...)`` probe by probe, a ``±`` pair after the other, affine layers via placeholders.

    A plain ``nn.Sequential`` (or single layer) runs layer by layer (:func:`_sequential_fast_path`). Otherwise the
    placeholders are put in the ``Linear``, ``Conv`` and ``Embedding`` modules once for all probes (and the
    parameters put back afterwards); only the other parameters are swapped per probe, by ``functional_call``.
    """
    direct = _sequential_fast_path(model, objective, probes)
    if direct is not None:
        return direct
    params, base, directions, scales, slots = probes
    table: dict[int, tuple[int, Tensor, Tensor]] = {}
    swaps: list[tuple[nn.Module, str, Tensor]] = []
    others: list[tuple[str, Tensor, Tensor]] = []
    for key, ((name, p), b, u) in enumerate(zip(params, base, directions)):
        if id(p) in slots:
            placeholder = b.detach()
            table[id(placeholder)] = (key, b, u)
            swaps += [(mod, attr, placeholder) for mod, attr in slots[id(p)]]
        else:
            others.append(("model." + name, b, u))
    bound = _Bound(model, objective)
    mode = _LinearProbes(table)
    rows: list[list[Tensor]] = [[] for _ in scales]
    originals = [(mod, attr, mod._parameters[attr]) for mod, attr, _ in swaps]
    try:
        for mod, attr, placeholder in swaps:
            mod._parameters[attr] = placeholder
        with mode:
            for i in range(directions[0].shape[0]):
                for j, s in enumerate(scales):
                    mode.i, mode.s = i, s
                    if not others:
                        rows[j].append(losses_of(objective, model))
                        continue
                    values = {name: torch.add(b, rng.dense(u[i]), alpha=s) for name, b, u in others}
                    _mark(list(values.values()))
                    rows[j].append(functional_call(bound, values, (), strict=False))
    finally:
        for mod, attr, p in originals:
            mod._parameters[attr] = p
    return torch.stack([torch.stack(r) for r in rows])


def perturbed_losses(
    model: nn.Module,
    objective: Objective,
    base: Sequence[Tensor],
    directions: Sequence[Tensor | rng.ProbeViews],
    scales: Tensor,
    cost: Cost,
    fast_linear: bool = True,
) -> Tensor:
    """Per-sample losses at ``θ + s_j·u_i``: shape ``(S, P, B)`` (or ``(S, P)`` for scalar objectives).

    Args:
        base: the values ``θ`` of the trainable parameters, in :func:`~unigrad.core.params.trainable` order.
        directions: one ``(P, *shape)`` tensor (or :class:`~unigrad.core.rng.ProbeViews`) per parameter; ``u_i``
            is index ``i`` of each.
        scales: the ``S`` scales ``s_j`` (e.g. ``[σ, −σ]``), a 1-d tensor.
        fast_linear: allow the linear fast path (see the module docstring) when ``S ≥ 2``.
    """
    S, P = scales.numel(), directions[0].shape[0]
    losses = None
    with torch.no_grad():
        if fast_linear and LINEAR_FAST_PATH and S > 1 and model not in _NO_FAST_PATH:
            slots = _linear_slots(model)
            if slots:
                params = trainable(model)
                try:
                    losses = _linear_fast_path(
                        model, objective, _Probes(params, base, directions, scales.tolist(), slots)
                    )
                except _Unsupported:
                    _NO_FAST_PATH.add(model)
        if losses is None:
            stacked = []
            for b, u in zip(base, (rng.stacked(d) for d in directions)):
                out = torch.empty((S * P, *b.shape), dtype=b.dtype, device=b.device)
                for j, s in enumerate(scales.tolist()):
                    torch.add(b, u, alpha=s, out=out[j * P : (j + 1) * P])
                stacked.append(out)
            losses = batched_losses(model, objective, stacked, Cost())
            losses = losses.view(S, P, *losses.shape[1:])
    cost.forwards += S * P * n_samples(objective, losses[0, 0])
    return losses
