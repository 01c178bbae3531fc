"""Node perturbation: the :class:`NP` estimator (noise on every layer's output, correlated with the change in loss)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.exchange import ProbeExchange, check_exchange
from unigrad.core.objective import Objective
from unigrad.core.rng import ProbeNoise
from unigrad.nn.perturbation import (
    LayerTaps,
    accumulate_signal,
    gaussian_node_noise,
    layer_owners,
    noisy_groups,
    pass_bytes,
    per_sample_losses,
    perturbable_layers,
    write_layer_grads,
)
from unigrad.zeroth._probing import check_probes, gather_losses


class NP(Estimator):
    """NP — node perturbation: noise on every layer's output, correlated with the change in loss.

    One clean pass records each ``nn.Linear`` / ``nn.Conv2d`` layer's input ``x_{l−1,b}`` and the
    per-sample losses ``L_b``. Each of ``q`` noisy passes adds ``ε_{l,b} ~ N(0, σ²I)`` to every layer's
    pre-activation ``h_l`` (same shape as the layer's output) and measures ``L̃_b``; with
    ``δL_b = L̃_b − L_b``, for each Linear layer::

        g_{W_l} = (1/q) Σ_i (1/B) Σ_b (δL_{i,b}/σ²) ε_{i,l,b} x_{l−1,b}ᵀ
        g_{b_l} = (1/q) Σ_i (1/B) Σ_b (δL_{i,b}/σ²) ε_{i,l,b}

    and for Conv2d the same signal ``G_l = Σ_i δL_{i,b}/σ²·ε_{i,l}/(qB)`` is passed as ``grad_output`` to
    ``torch.nn.grad.conv2d_weight`` (summed over batch and space for the bias). The optimizer descends
    along ``g``. Since ``δL_b ≈ Σ_l ∇_{h_l}L_b·ε_{l,b}`` and ``E[εεᵀ] = σ²I``, ``E[δL_b ε_{l,b}]/σ² =
    ∇_{h_l}L_b + O(σ²)``: ``g`` is the backprop gradient up to O(σ²) (exactly, at any σ, when the loss is
    quadratic in the outputs of a single layer, since the second-order term ``‖ε‖²ε`` has zero mean).
    NP searches a space of dimension (number of nodes) rather than (number of weights), so it is slower
    than gradient descent by about the number of outputs M, and WP by about M·N (Werfel, Xie & Seung [2]).

    Only the weights and biases of ``nn.Linear`` and ``nn.Conv2d`` layers can be trained: a trainable
    parameter that belongs to any other module (norm layers, embeddings, free parameters) raises a
    :class:`~unigrad.core.errors.UnigradError` at estimate time (freeze it with ``requires_grad_(False)``).
    A layer that did not run in the pass gets a zero gradient. The objective must return per-sample
    losses of shape ``(B,)`` (each sample's loss is correlated with its own noise), and every layer must
    run at most once per objective call (feed-forward models).

    The ``q`` noisy passes share the weights, so where the model and objective allow it they run as one
    forward over ``q·B`` stacked rows (:func:`~unigrad.nn.perturbation.noisy_groups`; same noise, results
    equal to separate passes up to rounding).

    Cost: ``(1 + q)·B`` forward samples for a batch of B. ``Estimate.loss`` is the clean (exact) loss.

    Args:
        probes: number of noisy passes q (≥ 1), sharing one clean pass (default: 1).
        sigma: node noise scale σ (> 0) (default: 1e-3).
        noise_source: ``"auto"``, ``"generator"`` or ``"table"``; see ``core/rng.py`` (default: ``"auto"``).
        seed: names the noise stream; the noise of layer l in probe i is keyed by (seed, step, i, l)
            (default: 0).
        exchange: a :class:`~unigrad.core.exchange.ProbeExchange` to spread the probes over processes
            (``None``: all local). Each process runs the clean pass and its block of noisy passes, the
            processes all-gather the **per-sample** losses ``L̃_{i,b}`` (``B·q`` scalars, independent of the
            number of weights), and every process regenerates ``ε_{i,l}`` of every probe from its key, shaped
            like the clean pass's outputs, and combines them in probe order: the result is the one-process
            result, bitwise when the passes run one by one (``unigrad.nn.perturbation.STACK_PASSES = False``),
            to rounding when they are stacked (each process stacks its own block, and a matrix product over
            a different number of rows may round differently). The data-parallel variant is refused: a
            process cannot form another shard's ``ε·xᵀ`` without that shard's activations, so it would need
            the d-sized all-reduce of DDP (default: None).

    References:
        [1] N. Dalm, M. van Gerven, N. Ahmad, "Effective Learning with Node Perturbation in Deep Neural
            Networks", arXiv:2310.00965.
        [2] J. Werfel, X. Xie, H. S. Seung, "Learning Curves for Stochastic Gradient Descent in Linear
            Feedforward Networks", Neural Computation 17(12), 2005.
    """

    name = "np"
    supports_exchange = True
    order = 0
    description = "node perturbation: noise on Linear/Conv2d outputs, δL·ε·xᵀ/σ² per layer"
    _options = ("probes", "sigma", "noise_source")

    def __init__(
        self,
        probes: int = 1,
        sigma: float = 1e-3,
        noise_source: str = "auto",
        seed: int = 0,
        exchange: ProbeExchange | None = None,
    ) -> None:
        super().__init__(seed)
        check_probes(probes, sigma)
        self.noise = ProbeNoise("gaussian", noise_source)
        self.probes, self.sigma, self.noise_source = probes, float(sigma), noise_source
        self.exchange = check_exchange(exchange)

    @torch.no_grad()
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        layers = perturbable_layers(model)
        owners = layer_owners(model, params, self.name, layers)
        cost = Cost()
        q, sigma, ex = self.probes, self.sigma, self.exchange
        if ex is not None and ex.data_parallel:
            raise UnigradError(
                "np cannot run data-parallel: each shard's ε·xᵀ needs that shard's activations (a d-sized "
                "all-reduce); spread the probes instead (data_parallel=False)"
            )
        # clean pass: per-sample losses L_b and each layer's input x_{l−1} (and output shapes, to regenerate ε)
        clean = LayerTaps(model, record_inputs=True, record_outputs=ex is not None, layers=layers)
        f0 = per_sample_losses(clean.evaluate(objective, model, cost), self.name)
        batch = f0.shape[0]
        signals: list[Tensor | None] = [None] * len(clean.layers)
        probe_losses = torch.empty(q, dtype=torch.float64)
        mine = range(q) if ex is None else ex.local_probes(q)
        local = None if ex is None else torch.empty(batch, len(mine), dtype=torch.float64)
        # probe: h_l ← h_l + ε_{i,l} in every layer, per sample (the passes stacked into one batch where exact)
        noises = [gaussian_node_noise(self.noise, self.seed, self.step, i, sigma) for i in mine]
        groups = noisy_groups(model, objective, cost, f0, noises, "np", bytes_per_pass=pass_bytes(clean), layers=layers)
        done = 0
        for group in groups:  # k passes at once (stacked into one batch where exact, else k = 1)
            k, f = len(group), group.losses
            for layer_index, eps in enumerate(group.added):
                if eps is not None and eps.shape[1] != batch:
                    raise UnigradError(
                        f"np: layer {clean.layers[layer_index][0]!r} saw a batch of {eps.shape[1]} but the "
                        f"objective returned {batch} per-sample losses"
                    )
            if ex is None:
                probe_losses[done : done + k] = f.double().mean(1)
                self._measure(signals, f, f0, group.added)
            else:
                local[:, done : done + k] = f.double().T  # type: ignore[index]
            done += k
        if local is not None:  # every process gets every probe's per-sample losses and regenerates its noise
            table = gather_losses(ex, local, q, cost)
            for i in range(q):
                f = table[:, i].to(f0.dtype)
                probe_losses[i] = table[:, i].mean()
                draw = gaussian_node_noise(self.noise, self.seed, self.step, i, sigma)
                added = [None if out is None else draw(index, out) for index, out in enumerate(clean.outputs)]
                self._measure(signals, f, f0, added)
        # combine: Σ G_l x_{l−1}ᵀ per layer, written into .grad
        write_layer_grads(params, owners, clean.layers, clean.inputs, signals)
        info: dict[str, Any] = {"probe_losses": probe_losses.float()}
        return Estimate(loss=float(f0.double().mean()), cost=cost, loss_is_probe_mean=False, info=info)

    def _measure(self, signals: list[Tensor | None], f: Tensor, f0: Tensor, added: list[Tensor | None]) -> None:
        """Add one probe's ``δL_b/σ²·ε_{l,b}/(qB)`` to every layer's signal (or, with a leading pass axis on ``f``
        and ``added``, a group of probes' summed terms)."""
        coeff = (f - f0) / (self.sigma * self.sigma * f0.shape[0] * self.probes)
        for layer_index, eps in enumerate(added):
            if eps is not None:
                accumulate_signal(signals, layer_index, coeff, eps)
