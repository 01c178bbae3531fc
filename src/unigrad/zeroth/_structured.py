"""Structured zeroth-order probes: directions other than plain noise, evaluated where the forward reads them.

The modern zeroth-order methods keep MeZO's two-point estimate but change the direction it probes: a mask of the
parameters (Sparse MeZO), a low-rank product per weight matrix (LOZO, SubZero), a diagonal preconditioner
(HiZOO), batched one-sided probes with a step normalised by the spread of the losses (FZOO).
:class:`StructuredZO` is their common skeleton, so that each method's file holds only what makes it
different:

    probe     f_{s,i} = f(θ + s·σ·u_i)            (s = ±1 central, s = +1 with f(θ) for "forward")
    measure   c_i = (f_{+,i} − f_{−,i}) / (2σ)     or  (f_{+,i} − f(θ)) / σ
    combine   g = Σ_i a_i·u_i,   a_i = c_i / q    (a subclass may reweight: :meth:`StructuredZO._weights`)

``u_i`` for parameter ``k`` is :meth:`StructuredZO._direction` ``(k, p, i)``, regenerated from keys
``(seed, step, probe, tensor)`` (and the method's lazily refreshed factors, themselves keyed) whenever it is
needed: it is never stored. θ is never written: every torch function that reads a parameter gets
``θ + fl(u·sσ)`` instead (:class:`~unigrad.core.reads.PerturbedReads`), so θ stays bitwise as it was and the
extra memory of a probe is one perturbed tensor; or, for small models (``perturb``), the directions of all
probes are formed and evaluated through the batched probe path of :mod:`unigrad.core.probe`, which never
writes θ either. With ``write_grad=True`` ``g`` is written into ``.grad`` for
any ``torch.optim`` optimizer; with ``write_grad=False`` ``.grad`` is left alone and ``Estimate.info["direction"]``
holds a :class:`~unigrad.core.replay.StructuredDirection` that :class:`~unigrad.optim.ReplaySGD` applies
parameter by parameter (memory-lean: no ``d``-sized tensor beyond the largest parameter).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, evaluate, reduce
from unigrad.core.params import write_grad
from unigrad.core.precision import warn_if_sigma_too_small
from unigrad.core.probe import perturbed_losses, probe_means
from unigrad.core.reads import PerturbedReads
from unigrad.core.replay import StructuredDirection
from unigrad.zeroth._probing import check_probes

SCHEMES = ("central", "forward")
PERTURB = ("auto", "forward", "dense")
DENSE_LIMIT = 1 << 22
"""``perturb="auto"`` forms the directions densely when the ``q`` probes hold at most this many entries together."""


def check_flag(name: str, value: Any) -> bool:
    """A boolean option, refused with a one-line error otherwise."""
    if not isinstance(value, bool):
        raise UnigradError(f"option {name} must be True or False, got {value!r}")
    return value


class StructuredZO(Estimator):
    """Base class of the structured two-point estimators (module docs). Subclasses set ``name``, ``description``
    and ``_options`` and implement :meth:`_direction`; they may override :meth:`_begin` (per-step state, before
    probing), :meth:`_weights` (the combination) and :meth:`_end` (state updates after the step).

    Args:
        probes: number of directions q (≥ 1).
        sigma: perturbation scale σ (> 0).
        scheme: ``"central"`` (``2q`` forwards) or ``"forward"`` (``q + 1``: one-sided probes and ``f(θ)``).
        write_grad: write ``g`` into ``.grad`` (True) or return it compressed (False).
        seed: names the noise stream.
        perturb: ``"forward"`` (perturb each parameter where the forward reads it: θ never written, one perturbed
            tensor at a time, memory-lean), ``"dense"`` (form the ``q`` directions of every tensor and evaluate
            them through the batched probe path, :func:`~unigrad.core.probe.perturbed_losses`, with its linear
            fast path: faster on small models, ``q·d`` more floats) or ``"auto"`` (dense when the ``q``
            directions hold at most :data:`DENSE_LIMIT` entries, 16 MiB of float32, else forward).
    """

    order = 0
    needs_loss_at_theta = False
    """Whether the step also evaluates ``f(θ)`` with the central scheme (HiZOO's curvature)."""
    directions_fixed = True
    """Whether the directions stay as probed until the combination (HiZOO's change with ``H`` in between), so the
    dense path can combine the directions it formed instead of drawing them again."""

    def __init__(
        self,
        probes: int = 1,
        sigma: float = 1e-3,
        scheme: str = "central",
        write_grad: bool = True,
        seed: int = 0,
        perturb: str = "auto",
    ) -> None:
        super().__init__(seed)
        check_probes(probes, sigma)
        check_choice("scheme", scheme, SCHEMES)
        check_choice("perturb", perturb, PERTURB)
        self.probes, self.sigma, self.scheme, self.perturb = probes, float(sigma), scheme, perturb
        self.write_grad = check_flag("write_grad", write_grad)

    # -- what a method defines ----------------------------------------------------------------
    def _direction(self, step: int, k: int, p: Tensor, probe: int) -> Tensor:
        """The direction ``u`` of ``probe`` at ``step`` for parameter ``k`` (``p``): shaped like ``p``, from keyed
        noise (and state that :meth:`_begin` prepared for this step)."""
        raise NotImplementedError

    def _begin(self, params: list[tuple[str, nn.Parameter]]) -> None:
        """Prepare this step's state (masks, factors, …) from ``params`` before any probe."""

    def _weights(self, coeffs: Tensor, losses: Tensor, f0: float | None) -> Tensor:
        """The weight ``a_i`` of each direction in ``g``: ``c_i / q`` (``losses``: the ``(signs, q)`` probe means)."""
        return coeffs / self.probes

    def _end(self, params: list[tuple[str, nn.Parameter]], losses: Tensor, f0: float | None) -> dict[str, Any]:
        """Update state after the step; returns extra diagnostics for ``Estimate.info``."""
        return {}

    def state_bytes(self) -> int:
        """Bytes of state the estimator holds between steps (factors, preconditioners, masks)."""
        return 0

    # -- the step --------------------------------------------------------------------------------
    def _rows(self, step: int, k: int, p: Tensor, probe: int, ids: Tensor) -> Tensor | None:
        """``u[ids]`` for a 2-d parameter ``k`` looked up as an embedding, drawing only those rows; ``None`` (the
        default): the lookup perturbs the whole matrix."""
        return None

    def _value(self, probe: int, scale: float):
        def value(k: int, p: Tensor) -> Tensor:
            return torch.add(p, self._direction(self.step, k, p, probe).to(p.dtype) * scale)

        return value

    def _looked_up(self, probe: int, scale: float):
        value = self._value(probe, scale)

        def rows(k: int, weight: Tensor, ids: Tensor) -> Tensor:
            u = self._rows(self.step, k, weight, probe, ids)
            if u is None:
                return F.embedding(ids, value(k, weight))
            return torch.add(F.embedding(ids, weight), u.to(weight.dtype) * scale)

        return rows

    @torch.no_grad()
    def _loss(self, model: nn.Module, objective: Objective, cost: Cost, params: list[Tensor], probe: int, s: float):
        scale = s * self.sigma
        with PerturbedReads(params, self._value(probe, scale), self._looked_up(probe, scale)):
            return float(reduce(evaluate(objective, model, cost)))

    @torch.no_grad()
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        cost, q, sigma = Cost(), self.probes, self.sigma
        if self.step == 0:
            warn_if_sigma_too_small(params, sigma)
        self._begin(params)
        tensors = [p for _, p in params]
        signs = (1.0, -1.0) if self.scheme == "central" else (1.0,)
        # probe: f(θ + sσu_i), θ never written
        dense = self.perturb == "dense" or (
            self.perturb == "auto" and q * sum(p.numel() for p in tensors) <= DENSE_LIMIT
        )
        if dense:  # the directions of every probe at once, through the batched probe path
            dirs = [torch.stack([self._direction(self.step, k, p, i) for i in range(q)]) for k, p in enumerate(tensors)]
            scales = torch.tensor([s * sigma for s in signs], dtype=tensors[0].dtype, device=tensors[0].device)
            losses = perturbed_losses(model, objective, [p.detach() for p in tensors], dirs, scales, cost)
            f = probe_means(losses, probe_dims=2).double().reshape(len(signs), q)
        else:
            f = torch.tensor(
                [[self._loss(model, objective, cost, tensors, i, s) for i in range(q)] for s in signs],
                dtype=torch.float64,
            )
        f0 = None
        if self.scheme == "forward" or self.needs_loss_at_theta:
            f0 = float(reduce(evaluate(objective, model, cost)))
        # measure: finite differences along each direction
        coeffs = (f[0] - f[1]) / (2 * sigma) if self.scheme == "central" else (f[0] - f0) / sigma
        weights = self._weights(coeffs, f, f0)
        a = [float(w) for w in weights]
        info: dict[str, Any] = {"projected_gradients": coeffs.float(), "probe_losses": f.float()}
        # combine: g = Σ a_i u_i (regenerated), written into .grad or returned compressed
        if self.write_grad:
            if dense and self.directions_fixed and type(self)._combined is StructuredZO._combined:
                grads = [self._sum(list(dirs[k]), p, a) for k, p in enumerate(tensors)]  # formed once, reused
            else:
                grads = [self._combined(k, p, a) for k, p in enumerate(tensors)]
            write_grad(params, grads, owned=True)
        else:
            info["direction"] = self._compressed(a, tensors)
        info.update(self._end(params, f, f0))
        info["state_bytes"] = self.state_bytes()
        loss = f0 if f0 is not None else float(f.mean())
        return Estimate(loss=loss, cost=cost, loss_is_probe_mean=f0 is None, info=info)

    def _combined(self, k: int, p: Tensor, weights: list[float]) -> Tensor:
        """The direction ``g`` for parameter ``k``: ``Σ_i a_i·u_i``, regenerating each ``u_i``."""
        return self._sum([self._direction(self.step, k, p, i) for i in range(len(weights))], p, weights)

    @staticmethod
    def _sum(directions: list[Tensor], p: Tensor, weights: list[float]) -> Tensor:
        """``Σ_i a_i·u_i`` in ``p``'s dtype, in probe order."""
        g = torch.zeros_like(p)
        for u, w in zip(directions, weights, strict=True):
            g.add_(u.to(p.dtype), alpha=w)
        return g

    def _compressed(self, weights: list[float], tensors: list[Tensor]) -> StructuredDirection:
        """``g`` as a :class:`~unigrad.core.replay.StructuredDirection` (``write_grad=False``)."""
        return StructuredDirection(self._frozen_direction(), tuple(weights), tuple(tensors), self._frozen_rows())

    def _frozen_direction(self) -> Callable[[int, Tensor, int], Tensor]:
        """This step's ``direction(k, p, i)``, for the compressed direction (applied after the step counter moved
        on). A subclass whose :meth:`_end` changes the state its directions read binds a copy of that state."""
        return functools.partial(self._direction, self.step)

    def _frozen_rows(self) -> Callable[[int, Tensor, int, Tensor], Tensor | None]:
        """This step's ``rows(k, p, i, ids)`` (:meth:`_rows`), for the compressed direction; as
        :meth:`_frozen_direction`."""
        return functools.partial(self._rows, self.step)
