"""Activity-based node perturbation: the :class:`ANP` estimator (it learns from measured activity changes)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective
from unigrad.core.rng import ProbeNoise
from unigrad.nn.perturbation import (
    LayerTaps,
    NodeNoise,
    accumulate_signal,
    check_external_noise,
    gaussian_node_noise,
    layer_owners,
    noisy_groups,
    pass_bytes,
    per_sample_losses,
    write_layer_grads,
)
from unigrad.zeroth._probing import check_probes

SCALES = ("sqrt", "n", "none")
PASSES = ("clean-noisy", "two-noisy")
NOISES = ("internal", "external")


def anp_coefficients(
    scale: str, nodes: int, dloss: Tensor, norm2: Tensor, batch: int, probes: int
) -> tuple[Tensor, int]:
    """ANP's per-sample coefficient ``c·δL_b / (‖δh_b‖²·B·q)`` and how many samples had ``δh_b = 0``.

    ``c`` is ``√N`` (``scale="sqrt"``), ``N`` (``"n"``) or 1 (``"none"``) for ``N = nodes`` perturbed nodes;
    ``dloss`` is ``δL_b`` and ``norm2`` is ``‖δh_b‖²`` per sample. A sample whose activity did not move gets 0.
    """
    factor = {"sqrt": math.sqrt(nodes), "n": float(nodes), "none": 1.0}[scale]
    moved = norm2 > 0
    coeff = torch.where(moved, factor * dloss.double() / (norm2.clamp_min(1e-300) * batch * probes), 0.0)
    return coeff, int((~moved).sum())


class ANP(Estimator):
    """ANP — activity-based node perturbation: learn from measured activity changes, never the noise itself.

    Each pass records every ``nn.Linear`` / ``nn.Conv2d`` layer's output ``h_l`` as it leaves the layer.
    A *baseline* pass gives ``h_l``, each layer's input ``x_{l−1}`` and the per-sample losses ``L_b``; each
    of ``q`` noisy passes gives ``h̃_l`` and ``L̃_b``. With the measured differences ``δh_{l,b} = h̃_{l,b} −
    h_{l,b}`` and ``δL_b = L̃_b − L_b``, for each Linear layer::

        g_{W_l} = (1/q) Σ_i (1/B) Σ_b c·δL_{i,b}·(δh_{i,l,b}/‖δh_{i,b}‖²)·x_{l−1,b}ᵀ
        g_{b_l} = (1/q) Σ_i (1/B) Σ_b c·δL_{i,b}·(δh_{i,l,b}/‖δh_{i,b}‖²)

    where ``‖δh_{i,b}‖² = Σ_l ‖δh_{i,l,b}‖²`` sums over *all* layers' nodes of sample b (a global
    normalisation), ``N`` is the number of perturbed nodes per sample (the sum of the layers' output
    sizes) and ``c`` is set by ``scale``. For Conv2d the same signal is passed as ``grad_output`` to
    ``torch.nn.grad.conv2d_weight`` as in NP. The optimizer descends along ``g``. A sample whose
    activities did not change (``‖δh_b‖ = 0``) contributes nothing.

    Why it works: with ``u = δh/‖δh‖``, ``δL ≈ ∇_h L·δh`` gives ``δL·δh/‖δh‖² ≈ (∇_h L·u)·u``, a
    directional derivative along the *measured* direction whatever its size or origin; for isotropic
    ``u``, ``E[uuᵀ] = I/N``. In a single-layer model with internal noise and a clean baseline, ``δh = ε``
    and the update is NP's with a per-sample positive factor ``c·σ²/‖ε_b‖²``. In deeper models ``δh_l``
    also carries the noise of earlier layers propagated forward, which is exactly what the loss change
    responded to, so ANP correlates ``δL`` with the direction the activities really moved.

    ``scale`` sets the step size, since ``c·(∇L·u)·u`` has norm about ``c·‖∇_h L‖/√N``:

    - ``"sqrt"`` (default, as in the authors' code): ``c = √N``; the update has about the gradient's norm.
    - ``"n"``: ``c = N``; the update is about unbiased (``E[N·uuᵀ] = I``) and matches NP's scale, √N
      times larger than ``"sqrt"`` (so it needs a √N smaller learning rate).
    - ``"none"``: ``c = 1``.

    Inaccessible noise (ANP's point): ANP only ever reads activities and losses, so the noise may come
    from the model itself (device noise, e.g. a model made noisy by
    :func:`unigrad.nn.perturbation.attach_node_noise` or a noisy layer the estimator cannot read). With
    ``noise="external"`` the estimator injects nothing: each pass is a plain call of the objective and
    the passes differ through the model's own noise. A clean pass is then impossible (the estimator
    cannot switch that noise off), so ``noise="external"`` requires ``passes="two-noisy"``.

    Only the weights and biases of ``nn.Linear`` and ``nn.Conv2d`` layers can be trained (as NP); the
    objective must return per-sample losses of shape ``(B,)`` and every layer must run at most once per
    objective call (feed-forward models).

    The ``q`` noisy passes share the weights, so where the model and objective allow it they run as one
    forward over ``q·B`` stacked rows and are measured together (:func:`~unigrad.nn.perturbation.noisy_groups`;
    same noise, results equal to separate passes up to rounding).

    Cost: ``(1 + q)·B`` forward samples for a batch of B. ``Estimate.loss`` is the clean loss with
    ``passes="clean-noisy"``; with ``"two-noisy"`` it is the mean over all 1 + q noisy passes
    (``loss_is_probe_mean``).

    Args:
        probes: number of noisy passes q (≥ 1), each compared with the one baseline pass (default: 1).
        sigma: node noise scale σ (> 0) of the injected noise (``noise="internal"``; unused otherwise)
            (default: 1e-3).
        scale: ``"sqrt"`` (c = √N), ``"n"`` (c = N) or ``"none"`` (c = 1); see above (default: ``"sqrt"``).
        passes: ``"clean-noisy"`` (the baseline pass is clean) or ``"two-noisy"`` (the baseline pass is
            noisy too, with its own noise, for hardware where no clean pass exists) (default: ``"clean-noisy"``).
        noise: ``"internal"`` (Gaussian node noise added to every layer's output, as NP) or ``"external"``
            (add nothing; the model's own noise makes the passes differ; needs ``passes="two-noisy"``)
            (default: ``"internal"``).
        noise_source: ``"auto"``, ``"generator"`` or ``"table"``; see ``core/rng.py`` (default: ``"auto"``).
        seed: names the noise stream; internal noise of layer l in probe i is keyed by (seed, step, i, l),
            the two-noisy baseline by (seed, step, q, l) (default: 0).

    References:
        [1] N. Dalm, M. van Gerven, N. Ahmad, "Effective Learning with Node Perturbation in Deep Neural
            Networks", arXiv:2310.00965.
    """

    name = "anp"
    order = 0
    description = "activity-based node perturbation: c·δL·δh/‖δh‖²·xᵀ from measured activity changes"
    _options = ("probes", "sigma", "scale", "passes", "noise", "noise_source")

    def __init__(
        self,
        probes: int = 1,
        sigma: float = 1e-3,
        scale: str = "sqrt",
        passes: str = "clean-noisy",
        noise: str = "internal",
        noise_source: str = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_probes(probes, sigma)
        check_choice("scale", scale, SCALES)
        check_choice("passes", passes, PASSES)
        check_choice("noise", noise, NOISES)
        check_external_noise(noise, passes, "model")
        self.noise_stream = ProbeNoise("gaussian", noise_source)
        self.probes, self.sigma, self.scale = probes, float(sigma), scale
        self.passes, self.noise, self.noise_source = passes, noise, noise_source

    def _node_noise(self, probe: int) -> NodeNoise | None:
        if self.noise == "external":
            return None
        return gaussian_node_noise(self.noise_stream, self.seed, self.step, probe, self.sigma)

    @torch.no_grad()
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        owners = layer_owners(model, params, "anp")
        cost = Cost()
        q = self.probes
        # baseline pass: clean, or noisy with its own noise (probe key q); record x_{l−1}, h_l, L_b
        base_noise = self._node_noise(q) if self.passes == "two-noisy" else None
        base = LayerTaps(model, record_inputs=True, record_outputs=True, node_noise=base_noise)
        f0 = per_sample_losses(base.evaluate(objective, model, cost), self.name)
        batch = f0.shape[0]
        signals: list[Tensor | None] = [None] * len(base.layers)
        probe_losses = torch.empty(q, dtype=torch.float64)
        silent = 0
        noises = [self._node_noise(i) for i in range(q)]
        groups = noisy_groups(
            model, objective, cost, f0, noises, "anp", record_outputs=True, bytes_per_pass=pass_bytes(base)
        )
        done = 0
        for group in groups:  # k passes at once (stacked into one batch where exact, else k = 1)
            k, f = len(group), group.losses
            probe_losses[done : done + k] = f.double().mean(1)
            done += k
            # measure: δh_l per layer, ‖δh_b‖² over all layers, N nodes per sample, for each pass
            deltas: list[Tensor | None] = [None] * len(base.layers)
            norm2 = torch.zeros(k, batch, dtype=torch.float64)
            nodes = 0
            for li, (h0, h1) in enumerate(zip(base.outputs, group.outputs)):
                if (h0 is None) != (h1 is None):
                    raise UnigradError(f"anp: layer {base.layers[li][0]!r} ran in one pass but not in the other")
                if h0 is None or h1 is None:
                    continue
                if h0.shape[0] != batch or h1.shape[1:] != h0.shape:
                    raise UnigradError(
                        f"anp: layer {base.layers[li][0]!r} produced shapes {tuple(h0.shape)} and "
                        f"{tuple(h1.shape[1:])} but the objective returned {batch} per-sample losses"
                    )
                dh = h1 - h0
                deltas[li] = dh
                norm2 += torch.linalg.vector_norm(dh.reshape(k, batch, -1), dim=2, dtype=torch.float64).square()
                nodes += dh[0, 0].numel()
            # combine: c·δL_b/‖δh_b‖² per sample, spread over that sample's δh, summed over the group's passes
            coeff, still = anp_coefficients(self.scale, nodes, f - f0, norm2, batch, q)
            silent += still
            for li, dh in enumerate(deltas):
                if dh is not None:
                    accumulate_signal(signals, li, coeff, dh)
        # combine: Σ G_l x_{l−1}ᵀ per layer, written into .grad
        write_layer_grads(params, owners, base.layers, base.inputs, signals)
        info: dict[str, Any] = {"probe_losses": probe_losses.float(), "silent_samples": silent}
        if self.passes == "two-noisy":
            loss = float((f0.double().sum() + probe_losses.sum() * batch) / (batch * (1 + q)))
            return Estimate(loss=loss, cost=cost, loss_is_probe_mean=True, info=info)
        return Estimate(loss=float(f0.double().mean()), cost=cost, loss_is_probe_mean=False, info=info)
