"""MeZO-SVRG: the :class:`MeZOSVRG` estimator (two-point estimates with a periodically refreshed control variate)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, evaluate, reduce, supervised
from unigrad.core.params import write_grad
from unigrad.core.precision import warn_if_sigma_too_small
from unigrad.core.reads import PerturbedReads
from unigrad.core.rng import ProbeNoise, generator
from unigrad.zeroth._probing import check_probes

_ANCHOR_TAG = 0xA1C  # names the draw of the anchor subset


class MeZOSVRG(Estimator):
    """MeZO-SVRG — zeroth-order SVRG: a minibatch two-point estimate corrected by an anchor's.

    Every ``refresh`` steps the anchor is renewed: ``θ̄ ← θ`` and ``g̃ ← ĝ_A(θ̄)``, the two-point estimate on the
    large *anchor* batch ``A``; that step's direction is ``anchor_scale·g̃``. On the other steps, with ``z_i ~ N(0, I)``
    keyed ``(seed, step, i, tensor)`` and the *same* ``z_i`` at both points::

        c_i(θ) = [f_B(θ + σz_i) − f_B(θ − σz_i)] / (2σ)
        g = (1/q) Σ_i [c_i(θ) − c_i(θ̄)]·z_i + g̃

    ``E[g] = ∇f_B(θ) − ∇f_B(θ̄) + g̃ + O(σ²)``, and over batches ``∇f(θ) + O(σ²)`` when ``g̃`` is unbiased for
    ``∇f(θ̄)``. Near the anchor ``c_i(θ) ≈ c_i(θ̄)``: the noisy part of the estimate cancels and ``g`` is close to
    ``g̃``, an estimate on ``|A|`` samples. The anchor batch is set by :meth:`set_anchor_data` (the training loop
    passes ``anchor_samples`` training samples drawn once from the seed); without it, the batch of the refresh step
    is the anchor batch. Using the same ``z_i`` at ``θ`` and ``θ̄`` is what makes the correction a control variate;
    the authors' code draws a fresh direction for each (noted in the docs). The paper's two learning rates (a
    large one for the anchor steps, a small one otherwise) are one learning rate here times ``anchor_scale`` on
    anchor steps.

    Cost: ``4qB`` forward samples on a minibatch step, ``2q|A|`` on an anchor step. ``Estimate.loss`` is the mean of
    the probe losses around θ (on an anchor step, on the anchor batch). Memory: ``θ̄`` and ``g̃``,
    twice the parameters (``Estimate.info["state_bytes"]``), kept in ``state_dict`` for an exact resume. θ is
    never written: the probes at ``θ`` and at ``θ̄`` are evaluated in the forward
    (:class:`~unigrad.core.reads.PerturbedReads`).

    Args:
        probes: number of directions q (≥ 1) (default: 1).
        sigma: perturbation scale σ (> 0) (default: 1e-3).
        refresh: steps between anchors (≥ 1); the paper's q = 2 (default: 2).
        anchor_samples: samples in the anchor batch, when the training loop provides the data (≥ 1) (default: 512).
        anchor_scale: multiplies the anchor steps' direction (> 0): the ratio of the paper's two learning rates
            (default: 1.0).
        noise_source: ``"generator"``, ``"table"`` or ``"auto"``; see ``core/rng.py`` (default: ``"generator"``).
        seed: names the noise stream and the draw of the anchor batch (default: 0).

    References:
        "Variance-reduced Zeroth-Order Methods for Fine-Tuning Language Models" (MeZO-SVRG), ICML 2024,
        arXiv:2404.08080. R. Johnson, T. Zhang, "Accelerating Stochastic Gradient Descent using Predictive
        Variance Reduction", NeurIPS 2013.
    """

    name = "mezo-svrg"
    order = 0
    description = "MeZO-SVRG: two-point estimates corrected by a refreshed anchor estimate (arXiv 2404.08080)"
    _options = ("probes", "sigma", "refresh", "anchor_samples", "anchor_scale", "noise_source")
    wants_anchor_data = True
    """The training loop gives it training data for the anchor batch (:meth:`set_anchor_data`)."""

    def __init__(
        self,
        probes: int = 1,
        sigma: float = 1e-3,
        refresh: int = 2,
        anchor_samples: int = 512,
        anchor_scale: float = 1.0,
        noise_source: str = "generator",
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_probes(probes, sigma)
        check_positive("refresh", refresh, integer=True)
        check_positive("anchor_samples", anchor_samples, integer=True)
        check_positive("anchor_scale", anchor_scale)
        self.probes, self.sigma, self.refresh = probes, float(sigma), refresh
        self.anchor_samples, self.anchor_scale, self.noise_source = anchor_samples, float(anchor_scale), noise_source
        self.noise = ProbeNoise("gaussian", noise_source)
        self.anchor: list[Tensor] = []  # θ̄
        self.anchor_grad: list[Tensor] = []  # g̃
        self.anchor_objective: Objective | None = None

    def set_anchor_data(self, inputs: Tensor, targets: Tensor, loss_fn: Callable[..., Tensor]) -> None:
        """Use ``anchor_samples`` rows of ``(inputs, targets)`` (drawn once from the seed; all if fewer) as the anchor
        batch ``A``, scored by ``loss_fn`` (as :func:`~unigrad.core.objective.supervised`)."""
        n = inputs.shape[0]
        if n > self.anchor_samples:
            rows = torch.randperm(n, generator=generator(_ANCHOR_TAG, self.seed))[: self.anchor_samples]
            rows = rows.sort().values.to(inputs.device)
            inputs, targets = inputs[rows], targets[rows]
        self.anchor_objective = supervised(loss_fn, inputs, targets)

    def _z(self, step: int, k: int, p: Tensor, probe: int) -> Tensor:
        return self.noise.raw(self.seed, step, probe, k, p.shape, p.dtype, p.device)

    def _coefficients(
        self, model: nn.Module, objective: Objective, cost: Cost, tensors: list[Tensor], at: list[Tensor]
    ) -> tuple[list[float], float]:
        """``c_i`` at the point ``at`` (θ itself or θ̄), evaluated without writing θ, and the mean probe loss."""
        out, total = [], 0.0
        for i in range(self.probes):
            f = []
            for s in (self.sigma, -self.sigma):

                def value(k: int, p: Tensor, i: int = i, s: float = s) -> Tensor:
                    return torch.add(at[k], self._z(self.step, k, p, i) * s)

                with PerturbedReads(tensors, value):
                    f.append(float(reduce(evaluate(objective, model, cost))))
            out.append((f[0] - f[1]) / (2 * self.sigma))
            total += f[0] + f[1]
        return out, total / (2 * self.probes)

    def _sum(self, tensors: list[Tensor], weights: list[float]) -> list[Tensor]:
        grads = []
        for k, p in enumerate(tensors):
            g = torch.zeros_like(p)
            for i, w in enumerate(weights):
                g.add_(self._z(self.step, k, p, i), alpha=w)
            grads.append(g)
        return grads

    @torch.no_grad()
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        cost, q = Cost(), self.probes
        tensors = [p for _, p in params]
        if self.step == 0:
            warn_if_sigma_too_small(params, self.sigma)
        if self.anchor and [a.shape for a in self.anchor] != [p.shape for p in tensors]:
            raise UnigradError("mezo-svrg: the trainable parameters changed since the anchor was set; use a new one")
        info: dict[str, Any] = {}
        if not self.anchor or self.step % self.refresh == 0:  # a new anchor: θ̄ ← θ, g̃ ← ĝ_A(θ̄)
            source = self.anchor_objective or objective
            self.anchor = [p.detach().clone() for p in tensors]
            c, loss = self._coefficients(model, source, cost, tensors, self.anchor)
            self.anchor_grad = self._sum(tensors, [ci / q for ci in c])
            grads = [g * self.anchor_scale for g in self.anchor_grad]
            info["anchor_step"] = True
        else:  # g = (1/q) Σ [c_i(θ) − c_i(θ̄)] z_i + g̃
            live = [p.detach() for p in tensors]
            c, loss = self._coefficients(model, objective, cost, tensors, live)
            c_bar, _ = self._coefficients(model, objective, cost, tensors, self.anchor)
            grads = self._sum(tensors, [(a - b) / q for a, b in zip(c, c_bar, strict=True)])
            for g, anchor in zip(grads, self.anchor_grad, strict=True):
                g.add_(anchor)
            info["anchor_step"] = False
            info["anchor_differences"] = torch.tensor(c_bar, dtype=torch.float64)
        write_grad(params, grads, owned=True)
        info["projected_gradients"] = torch.tensor(c, dtype=torch.float64)
        info["state_bytes"] = sum(t.nbytes for t in (*self.anchor, *self.anchor_grad))
        return Estimate(loss=loss, cost=cost, loss_is_probe_mean=True, info=info)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "anchor": [a.clone() for a in self.anchor],
            "anchor_grad": [g.clone() for g in self.anchor_grad],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for key in ("anchor", "anchor_grad"):
            value = state[key]
            if not isinstance(value, list | tuple) or not all(isinstance(t, Tensor) for t in value):
                raise UnigradError(f"mezo-svrg state: {key} must be a list of tensors, one per trainable parameter")
        self.anchor = [a.clone() for a in state["anchor"]]
        self.anchor_grad = [g.clone() for g in state["anchor_grad"]]
