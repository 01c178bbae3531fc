"""Forward gradient: the :class:`ForwardGradient` estimator (unbiased estimates from forward-mode derivatives)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from unigrad.core.cost import Cost
from unigrad.core.errors import check_positive
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, check_differentiable, n_samples, reduce
from unigrad.core.params import write_grad
from unigrad.core.probe import DEFAULT_MEMORY_BUDGET, _Bound, check_batching, probes_per_chunk
from unigrad.core.rng import ProbeNoise
from unigrad.core.step_state import StepState
from unigrad.first._forward_mode import forward_mode


class ForwardGradient(Estimator):
    """Forward gradient — unbiased gradient estimates from forward-mode directional derivatives.

    With ``q`` tangents ``v_i`` drawn with ``E[v vᵀ] = I`` (Gaussian, Rademacher, or uniform on the
    sphere of radius √d)::

        g = (1/q) Σ_i (∇f·v_i) v_i

    Each directional derivative ``∇f·v_i`` is one Jacobian-vector product: the tangent is pushed
    forward alongside the primal, with no backward pass and no stored activations. ``E[g] = ∇f``
    exactly (no smoothing bias, unlike finite differences); for one Gaussian tangent
    ``E‖g − ∇f‖² = (d+1)‖∇f‖²``, so the cosine with the gradient is of order √(q/d), as for RGE.

    The JVPs use ``torch.func.jvp`` on a ``functional_call`` of the model, batched over tangents with
    ``torch.vmap`` (the primal, which does not depend on the tangent, is computed once per batch);
    objectives that cannot be vmapped are evaluated tangent by tangent.

    Cost, for a batch of B: ``forwards`` B per batch of tangents (the primal; once unless the memory
    budget splits the tangents, B per tangent in the fallback loop) and ``jvps`` qB (the tangent
    propagations). ``Estimate.loss`` is the exact loss (the primal).

    Args:
        probes: number of tangents q (≥ 1) (default: 1).
        distribution: ``"gaussian"``, ``"rademacher"`` or ``"sphere"`` (default: ``"gaussian"``).
        noise_source: ``"auto"`` (the shared noise table for tensors that fit, else the generator),
            ``"generator"`` (exact RNG per key) or ``"table"`` (shared noise table); see ``core/rng.py``
            (default: ``"auto"``).
        probe_batch: tangents pushed forward together under ``vmap``; ``None``: as many as fit
            ``memory_budget`` (default: None).
        memory_budget: bytes of stacked tangents allowed at once (default: 256 MiB).
        seed: names the noise stream; each tangent is keyed by (seed, step, probe, tensor) (default: 0).

    References:
        [1] A. G. Baydin, B. A. Pearlmutter, D. Syme, F. Wood, P. Torr, "Gradients without
            Backpropagation", arXiv:2202.08587 (2022).
    """

    name = "forward-gradient"
    order = 1
    description = "(∇f·v)v from JVPs, q tangents"
    _options = ("probes", "distribution", "noise_source", "probe_batch")

    def __init__(
        self,
        probes: int = 1,
        distribution: str = "gaussian",
        noise_source: str = "auto",
        probe_batch: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_positive("probes", probes, integer=True)
        check_batching(probe_batch, memory_budget)
        self.noise = ProbeNoise(distribution, noise_source)
        self.probes, self.distribution, self.noise_source = probes, distribution, noise_source
        self.probe_batch, self.memory_budget = probe_batch, memory_budget

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        cost = Cost()
        q, values = self.probes, [p.detach() for _, p in params]
        chunk = probes_per_chunk(params, 1, self.probe_batch, self.memory_budget)
        state = self._step_state
        f = _losses_at(model, objective, [n for n, _ in params], state)
        grads = [torch.zeros_like(v) for v in values]
        derivs, loss = torch.empty(q, dtype=torch.float64), 0.0
        for lo in range(0, q, chunk):
            block = range(lo, min(q, lo + chunk))
            # probe: tangents v_i, regenerated from their keys
            tangents = self.noise.block(self.seed, self.step, block, values)
            # measure: directional derivatives ∇f·v_i (and the primal loss) by forward-mode AD
            losses, d, primals, buffers = _jvps(f, values, tangents, getattr(objective, "vmappable", True))
            if lo == 0 and state is not None:  # the primal's buffer update: one forward's
                state.record_values(buffers, "model.")
            b = n_samples(objective, losses)
            cost.forwards += primals * b
            cost.jvps += len(block) * b
            loss = float(reduce(losses))
            derivs[lo : block.stop] = d.double()
            # combine: g = (1/q) Σ (∇f·v_i) v_i
            for g, v in zip(grads, tangents):
                g.add_(((d / q).to(v.dtype) @ v.reshape(len(block), -1)).view(v.shape[1:]))
        write_grad(params, grads)
        return Estimate(loss=loss, cost=cost, info={"directional_derivatives": derivs.float()})


def _losses_at(model: nn.Module, objective: Objective, names: Sequence[str], state: StepState | None = None) -> Any:
    """``f(*values) -> (losses, buffers)``: the per-sample losses with the trainable parameters replaced by
    ``values``, and the buffers that evaluation left.

    A ``torch.func`` transform may not update a tensor it captured, so the buffers (batch-norm running
    statistics) are passed in as copies of their pre-step values, made inside the transform, and
    returned; the caller records them (:meth:`~unigrad.core.step_state.StepState.record_values`)."""
    bound = _Bound(model, objective)
    keys = ["model." + n for n in names]
    buffers = {} if state is None else state.functional_buffers("model.")

    def f(*vals: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        copies = {k: b.clone() for k, b in buffers.items()}
        out = functional_call(bound, {**dict(zip(keys, vals, strict=True)), **copies}, (), strict=False)
        check_differentiable(out, "forward-gradient", forward_mode=True)
        return out, copies

    return f


def _jvps(
    f: Any, values: Sequence[Tensor], tangents: Sequence[Tensor], vmappable: bool = True
) -> tuple[Tensor, Tensor, int, dict[str, Tensor]]:
    """Losses ``f(θ)``, the mean-loss JVPs ``∇f·v_i`` for a block of tangents ``(P, *shape)`` per
    tensor, how many primal evaluations that took, and the buffers the (first) primal left."""
    primals, P = tuple(values), tangents[0].shape[0]

    def one(*tangent: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        losses, dlosses, buffers = jvp(f, primals, tangent, has_aux=True)
        return losses, reduce(dlosses), buffers

    with forward_mode():
        if P > 1 and vmappable:
            try:
                losses, d, buffers = torch.vmap(one, randomness="same")(*tangents)
                return losses[0], d, 1, {k: b[0] for k, b in buffers.items()}
            except RuntimeError:
                pass  # not vmappable: one tangent at a time
        outs = [one(*[t[i] for t in tangents]) for i in range(P)]
        return outs[0][0], torch.stack([d for _, d, _ in outs]), P, outs[0][2]
