"""Iterative node perturbation: the :class:`INP` estimator (node noise on one layer at a time)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective
from unigrad.core.rng import ProbeNoise
from unigrad.nn.perturbation import (
    LayerTaps,
    NodeNoise,
    accumulate_signal,
    gaussian_node_noise,
    layer_owners,
    noisy_passes,
    pass_bytes,
    per_sample_losses,
    write_layer_grads,
)
from unigrad.zeroth._probing import check_probes


def _only(layer: int, draw: NodeNoise) -> NodeNoise:
    """Node noise on ``layer`` alone: every other layer gets zeros (its output unchanged)."""

    def noise(index: int, output: Tensor) -> Tensor:
        return draw(index, output) if index == layer else torch.zeros_like(output)

    return noise


class INP(Estimator):
    """INP — iterative node perturbation: node noise on one layer at a time, so each loss change has one cause.

    This is the *layer-wise* formulation. One clean pass records each ``nn.Linear`` / ``nn.Conv2d``
    layer's input ``x_{l−1,b}`` and the per-sample losses ``L_b``. Then, for each layer ``l`` in turn,
    ``q`` noisy passes add ``ε_{l,i,b} ~ N(0, σ²I)`` to layer ``l``'s pre-activation ``h_l`` *only*
    (every other layer runs clean) and measure ``L̃_{l,i,b}``. With ``δL_{l,i,b} = L̃_{l,i,b} − L_b``,
    which is caused by layer ``l``'s noise alone, for each Linear layer::

        g_{W_l} = (1/q) Σ_i (1/B) Σ_b (δL_{l,i,b}/σ²) ε_{l,i,b} x_{l−1,b}ᵀ
        g_{b_l} = (1/q) Σ_i (1/B) Σ_b (δL_{l,i,b}/σ²) ε_{l,i,b}

    and for Conv2d the signal ``G_l = Σ_i δL_{l,i,b}/σ²·ε_{l,i}/(qB)`` goes through
    :func:`~unigrad.nn.perturbation.layer_grads` as in NP. The optimizer descends along ``g``.

    Why: in NP every noisy pass perturbs all layers at once, so ``δL_b ≈ Σ_k ∇_{h_k}L_b·ε_{k,b}`` and
    layer ``l``'s estimate ``δL_b ε_{l,b}/σ²`` carries the terms ``(∇_{h_k}L_b·ε_{k,b}) ε_{l,b}``, k ≠ l:
    zero mean, but variance that grows with the number of nodes in the *other* layers. Perturbing one
    layer per pass removes them; ``E[δL_{l,b} ε_{l,b}]/σ² = ∇_{h_l}L_b + O(σ²)`` as in NP (exact at any
    σ when the loss is quadratic in the layer's output), at the cost of ``L·q`` noisy passes instead of
    ``q``.

    Relation to the paper: Dalm et al. [1] introduce INP to remove exactly this cross-layer
    interference, by attributing the loss change to each layer separately through an iteration over
    the layers of forward passes. The rule here does that attribution in its simplest form: one clean
    pass and ``q`` passes per layer with noise in that layer only, each estimate being NP's ``δL·ε/σ²``.
    It therefore matches the intent (no cross-layer noise in a layer's update) and, for small σ, the
    per-layer directional-derivative update of the paper; it is not a line-by-line reproduction of the
    authors' algorithm (e.g. their normalisation of the update, or activity-based variants, see
    :mod:`unigrad.zeroth.anp`).

    Only the weights and biases of ``nn.Linear`` and ``nn.Conv2d`` layers can be trained (as NP); the
    objective must return per-sample losses of shape ``(B,)`` and every layer must run at most once per
    objective call (feed-forward models). A layer that did not run in the clean pass gets no noisy
    passes and a zero gradient.

    The ``L·q`` noisy passes share the weights, so where the model and objective allow it they run as one
    forward over ``L·q·B`` stacked rows (:func:`~unigrad.nn.perturbation.noisy_groups`, within its memory
    budget; same noise, results equal to separate passes up to rounding).

    Cost: ``(1 + L·q)·B`` forward samples for a batch of B and L layers that ran. ``Estimate.loss`` is
    the clean (exact) loss; ``info["probe_losses"]`` holds the mean noisy loss of each pass, ``(L, q)``.

    Args:
        probes: number of noisy passes q per layer (≥ 1), all sharing one clean pass (default: 1).
        sigma: node noise scale σ (> 0) (default: 1e-3).
        noise_source: ``"auto"``, ``"generator"`` or ``"table"``; see ``core/rng.py`` (default: ``"auto"``).
        seed: names the noise stream; the noise of layer l in its probe i is keyed by
            (seed, step, l·q + i, l) (default: 0).

    References:
        [1] N. Dalm, M. van Gerven, N. Ahmad, "Effective Learning with Node Perturbation in Deep Neural
            Networks", arXiv:2310.00965.
    """

    name = "inp"
    order = 0
    description = "iterative node perturbation: noise on one Linear/Conv2d layer per pass, δL·ε·xᵀ/σ²"
    _options = ("probes", "sigma", "noise_source")

    def __init__(self, probes: int = 1, sigma: float = 1e-3, noise_source: str = "auto", seed: int = 0) -> None:
        super().__init__(seed)
        check_probes(probes, sigma)
        self.noise = ProbeNoise("gaussian", noise_source)
        self.probes, self.sigma, self.noise_source = probes, float(sigma), noise_source

    @torch.no_grad()
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        owners = layer_owners(model, params, "inp")
        cost = Cost()
        q, sigma = self.probes, self.sigma
        # clean pass: per-sample losses L_b and each layer's input x_{l−1}
        clean = LayerTaps(model, record_inputs=True)
        f0 = per_sample_losses(clean.evaluate(objective, model, cost), self.name)
        batch = f0.shape[0]
        n_layers = len(clean.layers)
        signals: list[Tensor | None] = [None] * n_layers
        probe_losses = torch.full((n_layers, q), float("nan"), dtype=torch.float64)
        # probe: h_l ← h_l + ε_{l,i} in layer l only, per sample (the passes stacked into one batch where exact)
        keys = [(li, i) for li in range(n_layers) if clean.inputs[li] is not None for i in range(q)]
        noises = [_only(li, gaussian_node_noise(self.noise, self.seed, self.step, li * q + i, sigma)) for li, i in keys]
        passes = noisy_passes(model, objective, cost, f0, noises, "inp", bytes_per_pass=pass_bytes(clean))
        for (li, i), noisy in zip(keys, passes, strict=True):
            f, eps = noisy.losses, noisy.added[li]
            if eps is None:
                raise UnigradError(f"inp: layer {clean.layers[li][0]!r} ran in the clean pass but not the noisy one")
            if eps.shape[0] != batch:
                raise UnigradError(
                    f"inp: layer {clean.layers[li][0]!r} saw a batch of {eps.shape[0]} but the objective "
                    f"returned {batch} per-sample losses"
                )
            probe_losses[li, i] = f.double().mean()
            # measure: δL_{l,b}/σ² per sample, spread over that sample's noise in layer l
            coeff = (f - f0) / (sigma * sigma * batch * q)
            accumulate_signal(signals, li, coeff, eps)
        # combine: Σ G_l x_{l−1}ᵀ per layer, written into .grad
        write_layer_grads(params, owners, clean.layers, clean.inputs, signals)
        info: dict[str, Any] = {"probe_losses": probe_losses.float()}
        return Estimate(loss=float(f0.double().mean()), cost=cost, loss_is_probe_mean=False, info=info)
