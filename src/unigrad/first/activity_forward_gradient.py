"""Activity-perturbed forward gradient: the :class:`ActivityForwardGradient` estimator (tangents on layer outputs)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jvp

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, check_differentiable, evaluate, losses_of, n_samples
from unigrad.core.params import write_grad
from unigrad.core.rng import ProbeNoise
from unigrad.first._forward_mode import forward_mode
from unigrad.nn.local_heads import LocallySupervised, head_key, pool, prepare_local_heads
from unigrad.nn.perturbation import LayerTaps, layer_owners, per_sample_losses, signal_grads


class ActivityForwardGradient(Estimator):
    """Activity-perturbed forward gradient — forward-mode directional derivatives along node tangents.

    Instead of a tangent on the weights, every ``nn.Linear`` / ``nn.Conv2d`` layer's pre-activation
    ``h_l`` (its output, per sample) gets a tangent ``v_{l,b} ~ N(0, I)``. One forward-mode pass pushes
    all of them at once and gives, for each sample ``b``, the directional derivative::

        d_b = Σ_l ∇_{h_l}L_b · v_{l,b}

    Since ``E[v vᵀ] = I``, ``d_b v_{l,b}`` is an unbiased estimate of ``∇_{h_l}L_b``, and the layer's
    weight gradient follows exactly from its clean input ``x_{l−1,b}`` (for Linear)::

        g_{W_l} = (1/q) Σ_i (1/B) Σ_b d_{i,b} v_{i,l,b} x_{l−1,b}ᵀ
        g_{b_l} = (1/q) Σ_i (1/B) Σ_b d_{i,b} v_{i,l,b}

    (for Conv2d the signal ``Σ_i d_{i,b} v_{i,l,b}/(qB)`` is passed to ``torch.nn.grad.conv2d_weight``).
    The search space has dimension (number of nodes) rather than (number of weights), so the variance
    is far lower than the weight-perturbed forward gradient's when layers have more weights than units.

    Implementation: forward hooks add an offset ``o_l`` (zero) to each layer's output, and
    ``torch.func.jvp`` differentiates the per-sample losses with respect to the offsets along the
    tangents ``v``, batched over tangents with ``torch.vmap`` (objectives that cannot be vmapped are
    evaluated tangent by tangent). A clean pass first records each layer's input and output shape.

    Local greedy losses ([1], §4; ``local_losses=True``): the model must carry one linear head per
    block (:func:`unigrad.nn.local_heads.with_local_heads`; ``unigrad.train.train`` adds them when this
    option is set). Every layer's input is cut from the derivative (a stop-gradient at each block
    boundary), so the tangent ``v_l`` on block ``l`` reaches only that block's local loss
    ``ℓ_l = loss(head_l(pool(a_l)), y)`` (the model's own loss for the last block), and one forward-mode
    pass gives a separate directional derivative per block::

        d_{l,b} = ∇_{h_l}ℓ_{l,b} · v_{l,b},        g_{W_l} = (1/q) Σ_i (1/B) Σ_b d_{i,l,b} v_{i,l,b} x_{l−1,b}ᵀ

    an unbiased estimate of the gradient of ``Σ_l ℓ_l`` with stop-gradients (each block learns greedily
    from its own loss). The heads get the exact gradient of their own loss, which is local (one linear
    layer on the block's output). The objective must be :func:`unigrad.supervised` (the heads are
    scored against its targets with its loss).

    Only the weights and biases of ``nn.Linear`` and ``nn.Conv2d`` layers (and, with local losses, the
    heads) can be trained (any other trainable parameter raises a
    :class:`~unigrad.core.errors.UnigradError`); a layer that did not run gets a zero gradient. The
    objective must return per-sample losses ``(B,)``, and every layer must run at most once per
    objective call (feed-forward models).

    Cost, for a batch of B: ``forwards`` 2B with vmapped tangents (the clean recording pass and the
    primal of the JVPs; (1 + q)B in the tangent-by-tangent fallback) and ``jvps`` qB. With local losses
    the heads' forwards and their one-layer gradients are not counted (a head has ``classes × features``
    weights, under 1% of the 3×500 MLP's multiply-adds per head). ``Estimate.loss`` is the exact (clean)
    loss of the model; with local losses ``info["local_losses"]`` holds each head's mean loss.

    Args:
        probes: number of tangent draws q (≥ 1); the estimate averages over them (default: 1).
        distribution: ``"gaussian"``, ``"rademacher"`` or ``"sphere"`` (over all layers' outputs of the
            batch jointly); all have ``E[v vᵀ] = I`` (default: ``"gaussian"``).
        noise_source: ``"auto"``, ``"generator"`` or ``"table"``; see ``core/rng.py`` (default: ``"auto"``).
        local_losses: train each block on its own local loss through its head (above) instead of the
            model's loss (default: False).
        seed: names the noise stream; the tangent of layer l in probe i is keyed by (seed, step, i, l)
            (default: 0).

    References:
        [1] M. Ren, S. Kornblith, R. Liao, G. Hinton, "Scaling Forward Gradient With Local Losses",
            ICLR 2023, arXiv:2210.03310 (activity perturbation, §3).
    """

    name = "activity-forward-gradient"
    order = 1
    description = "forward gradient with tangents on Linear/Conv2d outputs: d·v·xᵀ per layer"
    _options = ("probes", "distribution", "noise_source", "local_losses")
    prepare_model = prepare_local_heads

    def __init__(
        self,
        probes: int = 1,
        distribution: str = "gaussian",
        noise_source: str = "auto",
        local_losses: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_positive("probes", probes, integer=True)
        if not isinstance(local_losses, bool | int) or local_losses not in (0, 1):
            raise UnigradError(f"option local_losses must be true or false, got {local_losses!r}")
        self.noise = ProbeNoise(distribution, noise_source)
        self.probes, self.distribution, self.noise_source = probes, distribution, noise_source
        self.local_losses = bool(local_losses)

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        body, head_params = model, []
        if self.local_losses:
            body, head_params, params = _split_local(model, objective, params, self.name)
        owners = layer_owners(body, params, self.name)
        cost = Cost()
        q = self.probes
        # clean pass: per-sample losses L_b, each layer's input x_{l−1} and output shape
        with torch.no_grad(), LayerTaps(body, record_inputs=True, record_outputs=True) as clean:
            f0 = per_sample_losses(evaluate(objective, model, cost), self.name)
        batch = f0.shape[0]
        ran = [i for i, out in enumerate(clean.outputs) if out is not None]
        for i in ran:
            out = clean.outputs[i]
            if out.dim() == 0 or out.shape[0] != batch:
                raise UnigradError(
                    f"{self.name}: layer {clean.layers[i][0]!r} saw a batch of {tuple(out.shape)[:1]} but the "
                    f"objective returned {batch} per-sample losses"
                )
        outputs = [clean.outputs[i] for i in ran]
        # probe: tangents v_{i,l} on every layer's output, regenerated from their keys (seed, step, i, l)
        tangents = self.noise.block(self.seed, self.step, range(q), outputs) if ran else []
        # measure: d_{i,b} = Σ_l ∇_{h_l}L_b · v_{i,l,b}, by forward-mode AD with respect to the offsets
        # (with local losses, one row per block: d_{i,l,b} = ∇_{h_l}ℓ_{l,b} · v_{i,l,b})
        info: dict[str, Any] = {}
        if self.local_losses:
            blocks = _blocks(clean, model, ran)
            f = _losses_with_offsets(model, body, objective, ran, blocks)
            head_grads, info["local_losses"] = _head_grads(model, objective, clean, blocks, head_params)
        else:
            f = _losses_with_offsets(model, body, objective, ran)
        d, primals = _jvps(f, [torch.zeros_like(o) for o in outputs], tangents, q, batch, vmappable(objective))
        cost.forwards += primals * n_samples(objective, f0)
        cost.jvps += q * n_samples(objective, f0)
        # combine: signal_l = (1/(qB)) Σ_i d_{i,b} v_{i,l,b}, then Σ signal_l x_{l−1}ᵀ per layer
        signals: list[Tensor | None] = [None] * len(clean.layers)
        with torch.no_grad():
            coeff = d / (q * batch)
            for k, layer_index in enumerate(ran):
                v = tangents[k]
                c = (coeff[:, k] if self.local_losses else coeff).to(v.dtype).view(q, batch, *([1] * (v.dim() - 2)))
                signals[layer_index] = (c * v).sum(0)
            grads = signal_grads(params, owners, clean.layers, clean.inputs, signals)
        write_grad(params + head_params, grads + (head_grads if self.local_losses else []), owned=True)
        info["directional_derivatives"] = d.float()
        return Estimate(loss=float(f0.double().mean()), cost=cost, loss_is_probe_mean=False, info=info)


def _split_local(
    model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]], method: str
) -> tuple[nn.Module, list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """The body, the heads' trainable parameters and the body's trainable parameters of a model with heads."""
    if not isinstance(model, LocallySupervised):
        raise UnigradError(
            f"{method} with local_losses needs a model with local heads: wrap it with "
            f"unigrad.nn.local_heads.with_local_heads(model, example_input)"
        )
    if not callable(getattr(objective, "score", None)):
        raise UnigradError(f"{method} with local_losses needs a unigrad.supervised objective (to score the heads)")
    head_ids = {id(p) for p in model.heads.parameters()}
    heads = [(n, p) for n, p in params if id(p) in head_ids]
    return model.body, heads, [(n, p) for n, p in params if id(p) not in head_ids]


def _blocks(clean: LayerTaps, model: LocallySupervised, ran: Sequence[int]) -> dict[int, int | None]:
    """Layer index → the index of the layer its block feeds (whose input its head reads); ``None`` for the last."""
    order = clean.order
    names = {clean.layers[i][0] for i in order[1:]}
    if names != set(model.head_inputs):
        raise UnigradError(
            "the model's layers ran differently from when its local heads were made; rebuild them with with_local_heads"
        )
    feeds: dict[int, int | None] = dict(itertools.pairwise(order))
    feeds[order[-1]] = None
    return {i: feeds[i] for i in ran}


def _head_losses(
    model: LocallySupervised,
    objective: Any,
    inputs: Sequence[Tensor | None],
    layers: Sequence[tuple[str, nn.Module]],
    feeds: int,
) -> Tensor:
    """Per-sample loss of the head that reads the input of layer ``feeds``."""
    head = model.heads[head_key(layers[feeds][0])]
    return objective.score(head(pool(inputs[feeds])))


def _head_grads(
    model: LocallySupervised,
    objective: Any,
    clean: LayerTaps,
    blocks: dict[int, int | None],
    head_params: list[tuple[str, nn.Parameter]],
) -> tuple[list[Tensor], list[float]]:
    """Exact gradients of the heads' own mean losses (one linear layer each), and those losses."""
    with torch.enable_grad():
        losses = [
            _head_losses(model, objective, clean.inputs, clean.layers, feeds).mean()
            for feeds in blocks.values()
            if feeds is not None
        ]
        grads: Sequence[Tensor | None] = [None] * len(head_params)
        if losses and head_params:
            total = torch.stack(losses).sum()
            grads = torch.autograd.grad(total, [p for _, p in head_params], allow_unused=True)
    out = [torch.zeros_like(p) if g is None else g for (_, p), g in zip(head_params, grads, strict=True)]
    return out, [float(v.detach()) for v in losses]


def vmappable(objective: Objective) -> bool:
    return bool(getattr(objective, "vmappable", True))


def _losses_with_offsets(
    model: nn.Module,
    body: nn.Module,
    objective: Objective,
    ran: Sequence[int],
    blocks: dict[int, int | None] | None = None,
) -> Any:
    """``f(*offsets)``: the per-sample losses with ``offsets[k]`` added to the output of layer ``ran[k]``
    (layers of ``body``).

    With ``blocks`` (local losses), ``f`` returns ``(len(ran), B)``: row ``k`` is the local loss of
    the block of layer ``ran[k]`` (its head's loss, or the model's loss for the last block), with a
    stop-gradient at every layer's input.
    """
    slot = {layer_index: k for k, layer_index in enumerate(ran)}

    def f(*offsets: Tensor) -> Tensor:
        def add(layer_index: int, output: Tensor) -> Tensor:
            if layer_index not in slot:
                raise UnigradError("activity-forward-gradient: a layer ran that did not run in the clean pass")
            return offsets[slot[layer_index]]

        with LayerTaps(body, node_noise=add, stop_gradient=blocks is not None) as taps:
            losses = losses_of(objective, model)
        check_differentiable(losses, "activity-forward-gradient", forward_mode=True)
        if blocks is None:
            return losses
        assert isinstance(model, LocallySupervised)
        rows = [
            losses if feeds is None else _head_losses(model, objective, taps.live_inputs, taps.layers, feeds)
            for feeds in (blocks[i] for i in ran)
        ]
        return torch.stack(rows)

    return f


def _jvps(
    f: Any, offsets: Sequence[Tensor], tangents: Sequence[Tensor], q: int, batch: int, vmappable: bool
) -> tuple[Tensor, int]:
    """Per-sample directional derivatives ``(q, *f's shape)`` along each probe's tangents, and the
    primal passes it took."""
    primals = tuple(offsets)

    def one(*tangent: Tensor) -> Tensor:
        _, dlosses = jvp(f, primals, tangent)
        return dlosses

    if not primals:  # no perturbable layer ran: the loss does not depend on the trainable parameters
        return torch.zeros(q, batch), 0
    with forward_mode():
        if q > 1 and vmappable:
            try:
                return torch.vmap(one, randomness="same")(*tangents), 1
            except RuntimeError:
                pass  # not vmappable: one tangent at a time
        return torch.stack([one(*[t[i] for t in tangents]) for i in range(q)]), q
