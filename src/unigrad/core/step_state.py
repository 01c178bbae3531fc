"""What one estimator step does to a model's buffers and to its stochastic layers.

An estimator evaluates the model many times in one step: at ``θ ± σu_i`` for every probe, along a
line search, for a curvature product. A network with state would otherwise see each evaluation
change it: batch norm in training mode moves its running statistics and ``num_batches_tracked``
on every forward, and dropout draws a new mask from the global generator on every forward, so the
two sides of an antithetic pair would see two different networks and their difference would measure
the masks, not the perturbation. :class:`StepState`, entered by :meth:`Estimator.estimate
<unigrad.core.estimator.Estimator.estimate>` around every step, fixes the semantics:

1. **Buffers advance at most once per step, as one forward would.** Every evaluation (every call of
   the model passed to ``estimate``) starts from the buffers as they were before the step, so no
   probe sees another probe's statistics. After the step, a buffer that the evaluations changed holds
   the mean, over those evaluations, of the value each left::

       b ← (1/K) Σ_k b_k        (floating-point buffers; K evaluations changed b)

   This is the rule of the zeroth-order estimators, whose evaluations are probes around ``θ``. For
   batch norm's running mean ``b_k = (1 − m)·b + m·μ(θ + s_k·σu_k)``, so the mean is one update with
   the batch statistics averaged over the probes: equal to those at ``θ`` up to ``O(σ²)`` for
   antithetic pairs (exactly, for statistics linear in the perturbed weights). Estimators of order
   1 and up evaluate ``θ`` first and then other points (line searches, trust regions, curvature
   products): for them the buffers take the value the *first* evaluation left (``rule="first"``),
   which is exactly one forward at ``θ``. Integer and boolean buffers (``num_batches_tracked``) always
   take the value the first evaluation left. Buffers that no evaluation changed are not touched (not
   even their version counter).

2. **Every call of the model in a step draws the same random numbers from the global generators.**
   Before each call the default generator of every device holding the model's tensors is seeded from
   ``(seed, step)``, so dropout (and anything else drawing from the global generator inside
   ``forward``) gives every probe, both sides of a ``±`` pair, and the primal and tangents of a JVP the
   same masks: finite differences measure the perturbation, not the mask noise (common random
   numbers). The masks change from step to step and replay exactly. The caller's generator states
   are restored when the step ends, so the step consumes nothing from them. Two calls of the model
   inside one evaluation (a siamese objective) draw the same masks for inputs of the same shape.
   Batched probes (``torch.vmap``) use ``randomness="same"`` for the same reason.

3. **Live buffers.** A module class may name, in a ``live_buffers`` class attribute (a tuple of buffer names),
   buffers that every evaluation must advance, such as the trial counter that keys a network's
   intrinsic noise (the noisy rate networks of the bio package); these are left alone. A module class may
   also name, in ``static_buffers``, buffers its forward never changes (a decorrelation matrix, changed only
   by an explicit update between steps); they are neither copied nor compared on every call.

An evaluation is a call of the root module: objectives that call a submodule directly bypass the
reset and the seeding for that call (its buffer changes are still averaged at the end of the step).
Forward-mode estimators pass the buffers into ``torch.func`` explicitly
(:meth:`StepState.functional_buffers`), because a transform may not update a captured tensor.

The cost: one copy of the model's buffers per step, and a generator seed per call. A step that provably
draws nothing at random (``quiet``: :func:`unigrad.core.rowwise.rowwise` model and objective, which the
estimators check) and whose model has no buffers to track skips all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.rng import key_hash

_DROPOUT_TAG = 0xD50
RULES = ("mean", "first")


def _version(t: Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors: no version counter, and no in-place updates outside inference
        return None


@dataclass
class _Slot:
    """One buffer: where it lives, its value before the step, the tensor installed now, what it left."""

    module: nn.Module
    name: str
    original: Tensor
    snapshot: Tensor
    installed: Tensor
    total: Tensor | None = None  # float64 sum of the values left by the evaluations that changed it
    first: Tensor | None = None  # integer buffers: the value the first changing evaluation left
    count: int = 0


class StepState:
    """Context manager applying the module docstring's rules to ``model`` for one step ``(seed, step)``."""

    def __init__(self, model: nn.Module, seed: int, step: int, rule: str = "mean", quiet: bool = False) -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        self.model, self.rule, self.quiet = model, rule, quiet
        self.rng_seed = 0 if quiet else key_hash(_DROPOUT_TAG, seed, step) & ((1 << 63) - 1)
        self.slots: list[_Slot] = []
        cuda: set[int] = set()
        for module in model.modules():  # one pass: the buffers to track, and the devices holding the model
            for p in module._parameters.values():
                if p is not None and p.device.type == "cuda":
                    cuda.add(p.device.index or 0)
            if not module._buffers:
                continue
            kind = type(module)  # class attributes (see the module docs)
            skip = (*getattr(kind, "live_buffers", ()), *getattr(kind, "static_buffers", ()))
            for name, buf in module._buffers.items():
                if buf is None:
                    continue
                if buf.device.type == "cuda":
                    cuda.add(buf.device.index or 0)
                if name in skip or _version(buf) is None:
                    continue
                self.slots.append(_Slot(module, name, buf, buf.detach().clone(), buf))
        self.cuda = sorted(cuda)
        self._handle: Any = None
        self._saved: list[tuple[Any, Tensor]] = []

    # -- the step -------------------------------------------------------------------------
    def __enter__(self) -> StepState:
        if self.quiet and not self.slots:  # nothing to track, nothing drawn: nothing to do
            return self
        gens: list[Any] = [torch.default_generator]
        gens += [torch.cuda.default_generators[i] for i in self.cuda]
        self._saved = [(g, g.get_state()) for g in gens]
        self._seed()  # draws in the objective before its first call of the model are keyed too
        self._handle = self.model.register_forward_pre_hook(self._before_call)
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        """Put the original buffer tensors back, holding the step's values (the pre-step ones if it failed)."""
        try:
            if self._handle is not None:
                self._handle.remove()
            self._collect()
            with torch.no_grad():
                for s in self.slots:
                    s.module._buffers[s.name] = s.original
                    if kind is not None:
                        value = s.snapshot
                    elif s.count == 0:
                        continue
                    else:
                        value = s.first if s.total is None else (s.total / s.count).to(s.original.dtype)
                    if not torch.equal(s.original, value):
                        s.original.copy_(value)
        finally:
            for g, state in self._saved:
                g.set_state(state)

    # -- every call of the model ----------------------------------------------------------
    def _before_call(self, module: nn.Module, args: Any) -> None:
        self._collect()
        self._seed()

    def _seed(self) -> None:
        torch.default_generator.manual_seed(self.rng_seed)
        for i in self.cuda:
            torch.cuda.default_generators[i].manual_seed(self.rng_seed)

    def _collect(self) -> None:
        """Record the value each changed buffer left and install a fresh copy of its pre-step value.

        Changes are found by value: batch norm's kernels update the running statistics without
        bumping their version counters. A fresh tensor rather than an in-place reset: an autograd
        graph of the last evaluation may still hold the changed one (batch norm saves its running
        statistics for the backward pass).
        """
        for s in self.slots:
            cur = s.module._buffers.get(s.name)
            if cur is not s.installed or torch.equal(cur, s.snapshot):
                continue  # unchanged, or swapped out by the caller (functional_call with buffers)
            self.record(s, cur)
            fresh = s.snapshot.clone()
            s.module._buffers[s.name] = s.installed = fresh

    def record(self, s: _Slot, value: Tensor) -> None:
        if self.rule == "first" and s.count:
            return
        value = value.detach()
        if value.is_floating_point() or value.is_complex():
            wide = value.to(torch.complex128 if value.is_complex() else torch.float64)
            s.total = wide.clone() if s.total is None else s.total.add_(wide)
        elif s.first is None:
            s.first = value.clone()
        s.count += 1

    # -- forward-mode estimators ---------------------------------------------------------
    def functional_buffers(self, prefix: str = "") -> dict[str, Tensor]:
        """The tracked buffers as ``{prefix + qualified name: pre-step value}``, for ``functional_call``."""
        names = {id(b): n for n, b in self.model.named_buffers(remove_duplicate=False)}
        return {prefix + names[id(s.original)]: s.snapshot for s in self.slots if id(s.original) in names}

    def record_values(self, values: dict[str, Tensor], prefix: str = "") -> None:
        """Record buffer values one evaluation left (as returned next to a ``torch.func`` transform's output)."""
        names = {id(b): n for n, b in self.model.named_buffers(remove_duplicate=False)}
        for s in self.slots:
            v = values.get(prefix + names.get(id(s.original), "\0"))
            if v is not None and not torch.equal(v, s.snapshot):
                self.record(s, v)
