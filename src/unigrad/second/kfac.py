"""K-FAC: the :class:`KFAC` estimator (natural gradient by layer-wise Kronecker-factored curvature)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import NonFiniteLossError, UnigradError
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import (
    Objective,
    Supervised,
    check_differentiable,
    check_finite,
    losses_of,
    n_samples,
    reduce,
)
from unigrad.core.options import check_choice, check_number, check_positive
from unigrad.core.params import write_grad
from unigrad.core.rng import generator
from unigrad.nn.decorrelation import _DecorrelatedLayer
from unigrad.second.curvature import likelihood_of

FISHERS = ("sampled", "empirical")

_TAG = 0x4B464143  # names the label-sampling stream: generator(seed, step, _TAG)


@dataclass
class _Layer:
    """A preconditioned layer: its module, and the positions of its weight and bias in ``params``."""

    name: str
    module: nn.Linear | nn.Conv2d
    weight: int
    bias: int | None


@dataclass
class _Record:
    """What the hooks saw during one call: the layer's inputs and its output gradients per backward."""

    inputs: list[Tensor] = field(default_factory=list)
    grads: dict[tuple[str, int], Tensor] = field(default_factory=dict)


class KFAC(Estimator):
    """K-FAC — Kronecker-factored approximate curvature (natural gradient by layer-wise Kronecker factors).

    For every ``nn.Linear`` and ``nn.Conv2d`` module ``l`` whose weight is trainable, the Fisher block of
    its weight matrix ``W̄ = [W, b]`` (the bias, when it is trainable, as a last column; a Conv2d weight
    flattened to ``(out, in·kh·kw)``) is approximated by a Kronecker product and the direction written to
    ``.grad`` is the preconditioned gradient::

        F_l ≈ A_l ⊗ G_l,     V_l = (G_l + γ_G I)⁻¹ ∇_W̄ f (A_l + γ_A I)⁻¹

    with factored Tikhonov damping ``γ_A = π·√λ``, ``γ_G = √λ/π``,
    ``π = √((tr A_l / dim A_l) / (tr G_l / dim G_l))`` (Martens & Grosse §6.3), ``λ = damping``. Any
    ``torch.optim`` optimizer then steps ``θ ← θ − η·V`` (typically SGD with momentum).

    The factors, for ``B`` samples, layer inputs ``ā`` (with a 1 appended when the bias is trained) and
    ``g = ∂ℓ_b/∂s``, the gradient of one sample's loss with respect to the layer's output ``s`` (its
    pre-activation)::

        A = (1/B) Σ_b (1/T) Σ_t ā_{b,t} ā_{b,t}ᵀ        G = (1/B) Σ_b Σ_t g_{b,t} g_{b,t}ᵀ

    ``t`` runs over the ``T`` positions at which a sample uses the weight: one for a Linear layer on
    ``(B, n)`` inputs; the spatial output locations of a Conv2d (``ā_{b,t}`` is the patch that
    ``torch.nn.functional.unfold`` extracts); the extra leading dimensions of a Linear layer applied to
    ``(B, …, n)`` inputs; and every call, when a module runs more than once per forward. The inputs are
    *averaged* over positions and the output gradients *summed*: the product ``A ⊗ G`` is KFC's
    ``Ω ⊗ Γ`` (Grosse & Martens 2016); which factor carries the ``1/T`` does not matter, since the
    factored damping rebalances the two. Under KFC's assumptions (spatially
    homogeneous, uncorrelated derivatives) ``A ⊗ G ≈ E[vec(∇_W̄ ℓ_b) vec(∇_W̄ ℓ_b)ᵀ]``.

    The per-sample output gradients come from tensor hooks on the layers' outputs (registered by forward
    hooks that live only for the call), so they are gradients with respect to the pre-activation even
    when an in-place activation follows. With the mean loss ``f = (1/B) Σ_b ℓ_b`` a backward gives
    ``g_b/B``, so it is scaled by ``B`` (this assumes the samples do not interact, e.g. no batch norm in
    training mode). A loss that returns a scalar counts as one sample.

    ``fisher`` chooses where ``g`` comes from:

    * ``"sampled"`` (default) — the true Fisher by Monte Carlo: labels ``ŷ_b ~ p(y | z_b)`` are drawn
      from the model's outputs ``z`` and a second backward of ``Σ_b ℓ(z_b, ŷ_b)`` runs through the same
      forward graph. Only for :func:`unigrad.supervised` objectives whose loss is (checked numerically on
      the batch) cross-entropy over class indices or probabilities, ``ŷ ~ softmax(z)``; binary
      cross-entropy with logits, ``ŷ ~ Bernoulli(σ(z))``; or mean squared error, ``ŷ = z − √(k/2)·ε``
      with ``ε ~ N(0, I)`` — the Gaussian whose negative log-likelihood is ``‖z − y‖²/k`` per sample of
      ``k`` outputs. Losses averaged over ``k`` elements are scaled so that in every case
      ``E[g_z g_zᵀ] = ∇²_z ℓ``, the loss's output Hessian (the Gauss–Newton factor, equal to the output
      Fisher of the exponential-family likelihood). The labels come from the keyed stream
      ``(seed, step, tag)`` of :func:`unigrad.core.rng.generator`. The loss check and the draws are
      :func:`unigrad.second.curvature.likelihood_of` and :class:`~unigrad.second.curvature.Likelihood`.
    * ``"empirical"`` — ``g`` from the real labels' backward (the empirical Fisher); any objective, no
      extra pass, and no randomness at all.

    Running statistics: every ``factor_interval`` steps the factors are averaged with the batch's,
    ``A ← ε·A + (1 − ε)·A_batch`` with ``ε = min(1 − 1/k, decay)`` at the ``k``-th update (as in
    Martens & Grosse: the first update takes the batch's factors, ``decay = 1`` keeps the plain mean of all
    updates). Steps without a factor update run no hooks and no sampled backward.
    Every ``inverse_interval`` steps (and on the first call, and when a layer's factors are new) the
    damped factors are inverted, ``(A + γ_A I)⁻¹`` and ``(G + γ_G I)⁻¹``, by Cholesky factorisation in
    float64 (stored in the factors' dtype), with ``π`` from the factors' traces at that moment; between
    inversions the preconditioner is fixed, and a change of ``damping`` takes effect at the next
    inversion. (Inverses rather than eigendecompositions: on a CPU a Cholesky inverse costs a fraction
    of a symmetric eigendecomposition — measured in ``docs/second-order.md`` — which matters because
    early in training the inverses go stale quickly — see ``inverse_interval``.)

    Parameters outside the supported layers (norms, embeddings, a bare parameter vector, a Conv2d with
    ``groups > 1`` or a non-zero ``padding_mode``, a layer whose weight is frozen but whose bias is not,
    a layer whose forward never ran) receive the plain gradient of the mean loss. Models containing
    decorrelated layers (:mod:`unigrad.nn.decorrelation`) are refused, as are weights shared by two
    layers.

    Cost per estimate, for ``B`` samples: ``forwards`` B, ``backwards`` B (the loss), plus ``backwards``
    B for the sampled-Fisher backward on steps that update the factors with ``fisher="sampled"``.
    ``info``: ``damping``, ``factors_updated``, ``inverses_updated``, ``layers`` (the number of
    preconditioned layers) and, with ``kl_clip``, ``kl_scale`` (``ν``).

    State (``state_dict``): seed and step; per layer, keyed by module name, the factors ``A``, ``G`` and
    their number of updates, and the damped inverses — a resumed run continues bitwise.

    Args:
        damping: ``λ > 0`` of the factored Tikhonov damping (default: 0.03).
        decay: ``decay`` in ``(0, 1]`` of the running factors (default: 0.95).
        factor_interval: update the factors every this many steps (integer ≥ 1) (default: 1).
        inverse_interval: invert the damped factors every this many steps (integer ≥ 1). Early in
            training the factors change fast and stale inverses can make the steps blow up; if a run
            diverges in its first steps, lower it (1 is safest) or raise ``damping`` (default: 10).
        fisher: ``"sampled"`` or ``"empirical"`` (see above) (default: ``"sampled"``).
        kl_clip: if set (``> 0``), scale the preconditioned layers' directions by
            ``ν = min(1, √(kl_clip / (lr² Σ_l ⟨V_l, ∇_W̄ f⟩)))``, which bounds the step's predicted KL
            change; the plain-gradient parameters are not scaled. Needs ``lr``. ``None``: off
            (default: None).
        lr: the optimizer's learning rate, used only by ``kl_clip`` (required with it, refused without)
            (default: None).
        seed: names the label-sampling stream of ``fisher="sampled"`` (default: 0).

    References:
        J. Martens & R. Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate
        Curvature", ICML 2015 (arXiv:1503.05671).
        R. Grosse & J. Martens, "A Kronecker-factored approximate Fisher matrix for convolution layers",
        ICML 2016 (arXiv:1602.01407).
        ``kl_clip`` as in the KFAC-Pytorch library (github.com/alecwangcq/KFAC-Pytorch).
    """

    name = "kfac"
    order = 2
    description = "K-FAC: Kronecker-factored natural gradient for Linear and Conv2d layers"
    _options = ("damping", "decay", "factor_interval", "inverse_interval", "fisher", "kl_clip", "lr")

    def __init__(
        self,
        damping: float = 0.03,
        decay: float = 0.95,
        factor_interval: int = 1,
        inverse_interval: int = 10,
        fisher: str = "sampled",
        kl_clip: float | None = None,
        lr: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_number("damping", damping, finite=False, what="a number")
        check_positive("damping", damping)
        check_number("decay", decay, finite=False, what="a number")
        if not 0 < decay <= 1:
            raise UnigradError(f"option decay must be in (0, 1], got {decay!r}")
        check_positive("factor_interval", factor_interval, integer=True)
        check_positive("inverse_interval", inverse_interval, integer=True)
        check_choice("fisher", fisher, FISHERS)
        if kl_clip is not None:
            check_number("kl_clip", kl_clip, finite=False, what="a number")
            check_positive("kl_clip", kl_clip)
            if lr is None:
                raise UnigradError("option kl_clip needs the optimizer's learning rate: pass lr as well")
        if lr is not None:
            check_number("lr", lr, finite=False, what="a number")
            check_positive("lr", lr)
            if kl_clip is None:
                raise UnigradError("option lr is only used by kl_clip; set kl_clip or leave lr out")
        self.damping, self.decay = float(damping), float(decay)
        self.factor_interval, self.inverse_interval = factor_interval, inverse_interval
        self.fisher = fisher
        self.kl_clip = None if kl_clip is None else float(kl_clip)
        self.lr = None if lr is None else float(lr)
        self._factors: dict[str, dict[str, Any]] = {}  # name -> {"A", "G", "updates"}
        self._inverses: dict[str, dict[str, Tensor]] = {}  # name -> {"A": (A + γ_A I)⁻¹, "G": (G + γ_G I)⁻¹}

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "factors": {k: dict(v) for k, v in self._factors.items()},
            "inverses": {k: dict(v) for k, v in self._inverses.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._factors = {
            k: {"A": v["A"].clone(), "G": v["G"].clone(), "updates": int(v["updates"])}
            for k, v in state["factors"].items()
        }
        self._inverses = {k: {n: t.clone() for n, t in v.items()} for k, v in state["inverses"].items()}

    # -- the estimate ----------------------------------------------------------------------------
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        layers = _find_layers(model, params)
        sampled = self.fisher == "sampled"
        if sampled and not isinstance(objective, Supervised):
            raise UnigradError(
                "kfac with fisher='sampled' needs a supervised objective (unigrad.supervised) to sample labels "
                "from the model's outputs; use fisher='empirical' for other objectives"
            )
        update_factors = bool(layers) and (
            self.step % self.factor_interval == 0 or any(layer.name not in self._factors for layer in layers)
        )
        records = {layer.name: _Record() for layer in layers} if update_factors else {}
        cost = Cost()
        loss, losses, grads, phase = self._gradients(model, objective, params, layers, records, cost)
        batch = losses.shape[0] if losses.dim() >= 1 else 1
        update_inverses = self._refresh(layers, records, phase, batch)
        info: dict[str, Any] = {
            "damping": self.damping,
            "factors_updated": update_factors,
            "inverses_updated": update_inverses,
            "layers": sum(layer.name in self._inverses for layer in layers),
        }
        write_grad(params, self._directions(layers, params, grads, info), owned=True)
        return Estimate(loss=float(loss.detach()), cost=cost, info=info)

    # -- pieces ----------------------------------------------------------------------------------
    def _gradients(
        self,
        model: nn.Module,
        objective: Objective,
        params: list[tuple[str, nn.Parameter]],
        layers: list[_Layer],
        records: dict[str, _Record],
        cost: Cost,
    ) -> tuple[Tensor, Tensor, list[Tensor], str]:
        """``(f, per-sample losses, ∇f per tensor, phase)``: one forward and backward, recording the layers'
        inputs and output gradients into ``records`` (where not empty); with the sampled Fisher, a second
        backward of sampled output gradients (phase ``"sampled"``) records the gradients the factors use."""
        sampled = self.fisher == "sampled"
        phase = ["real"]
        handles = []
        try:
            for layer in layers if records else ():
                handles.append(layer.module.register_forward_hook(_recorder(records[layer.name], phase)))
            with torch.enable_grad():
                if sampled:
                    assert isinstance(objective, Supervised)
                    outputs = model(objective.inputs)
                    losses = objective.score(outputs)
                else:
                    losses = losses_of(objective, model)
                check_differentiable(losses, self.name)
                batch_cost = n_samples(objective, losses)
                cost.forwards += batch_cost
                loss = reduce(losses)
                backward_sampled = sampled and bool(records)
                grads = torch.autograd.grad(
                    loss, [p for _, p in params], allow_unused=True, retain_graph=backward_sampled
                )
                cost.backwards += batch_cost
                if backward_sampled:
                    check_finite(loss.detach())  # a diverged model has nothing to sample from
                    g_out = self._sampled_output_grads(objective, outputs, losses)  # type: ignore[arg-type]
                    phase[0] = "sampled"
                    weights = [params[layer.weight][1] for layer in layers]
                    torch.autograd.grad(outputs, weights, grad_outputs=g_out, allow_unused=True)
                    cost.backwards += batch_cost
        finally:
            for h in handles:
                h.remove()
        grads = [torch.zeros_like(p) if g is None else g.detach() for (_, p), g in zip(params, grads, strict=True)]
        return loss, losses, grads, phase[0]

    def _refresh(self, layers: list[_Layer], records: dict[str, _Record], phase: str, batch: int) -> bool:
        """Fold the recorded statistics into the factors, then re-invert where due; whether it inverted."""
        refreshed = False
        scale = 1.0 if self.fisher == "sampled" else float(batch)
        for layer in layers if records else ():
            rec = records[layer.name]
            if rec.inputs:
                a, g = _statistics(layer, rec, phase, batch, scale=scale)
                refreshed |= self._update_factors(layer.name, a, g)
        update_inverses = refreshed or self.step % self.inverse_interval == 0
        update_inverses |= any(layer.name in self._factors and layer.name not in self._inverses for layer in layers)
        if update_inverses:
            for layer in layers:
                if layer.name in self._factors:
                    self._invert(layer.name)
        return update_inverses

    def _directions(
        self, layers: list[_Layer], params: list[tuple[str, nn.Parameter]], grads: list[Tensor], info: dict[str, Any]
    ) -> list[Tensor]:
        """``(A⁻¹ ⊗ G⁻¹)`` applied to each inverted layer's ``[∇W | ∇b]``, the other tensors' gradients as they
        are; with ``kl_clip``, the preconditioned ones scaled by ``ν`` (recorded in ``info["kl_scale"]``)."""
        directions, vg = list(grads), 0.0
        preconditioned = []
        for layer in layers:
            if layer.name not in self._inverses:
                continue
            w = params[layer.weight][1]
            gw = grads[layer.weight].reshape(w.shape[0], -1)
            mat = gw if layer.bias is None else torch.cat([gw, grads[layer.bias].reshape(-1, 1)], dim=1)
            v = self._precondition(layer.name, mat)
            if self.kl_clip is not None:
                vg += float((v * mat).sum())
            directions[layer.weight] = v[:, : gw.shape[1]].reshape(w.shape)
            preconditioned.append(layer.weight)
            if layer.bias is not None:
                directions[layer.bias] = v[:, -1].reshape(params[layer.bias][1].shape)
                preconditioned.append(layer.bias)
        if self.kl_clip is not None:
            assert self.lr is not None
            vg *= self.lr**2
            nu = min(1.0, math.sqrt(self.kl_clip / vg)) if vg > 0 else 1.0
            for i in preconditioned:
                directions[i] = directions[i] * nu
            info["kl_scale"] = nu
        return directions

    def _sampled_output_grads(self, objective: Supervised, outputs: Tensor, losses: Tensor) -> Tensor:
        """Per-sample ``∂ℓ(z_b, ŷ_b)/∂z_b`` for labels ``ŷ`` drawn from the model (class docs)."""
        z = outputs.detach()
        likelihood = likelihood_of(
            objective, z, losses, method="kfac with fisher='sampled'", instead="use fisher='empirical'"
        )
        return likelihood.output_grads(z, generator(self.seed, self.step, _TAG, device=z.device))[:, 0]

    def _update_factors(self, name: str, a: Tensor, g: Tensor) -> bool:
        """Fold the batch's factors into the running ones; True on the layer's first update."""
        old = self._factors.get(name)
        if old is None:
            self._factors[name] = {"A": a, "G": g, "updates": 1}
            return True
        k = old["updates"] + 1
        keep = min(1.0 - 1.0 / k, self.decay)
        new_a, new_g = keep * old["A"] + (1 - keep) * a, keep * old["G"] + (1 - keep) * g
        self._factors[name] = {"A": new_a, "G": new_g, "updates": k}
        return False

    def _invert(self, name: str) -> None:
        """Store ``(A + γ_A I)⁻¹`` and ``(G + γ_G I)⁻¹`` with the factored damping of the current factors."""
        f = self._factors[name]
        pi = _pi(f["A"], f["G"])
        root = math.sqrt(self.damping)
        self._inverses[name] = {"A": _damped_inverse(f["A"], pi * root), "G": _damped_inverse(f["G"], root / pi)}

    def _precondition(self, name: str, grad: Tensor) -> Tensor:
        """``(G + γ_G I)⁻¹ grad (A + γ_A I)⁻¹`` with the stored inverses."""
        inv = self._inverses[name]
        return (inv["G"] @ grad.to(inv["G"].dtype) @ inv["A"]).to(grad.dtype)


# -- helpers -----------------------------------------------------------------------------------------


def _pi(a: Tensor, g: Tensor) -> float:
    """``π = √((tr A/dim A)/(tr G/dim G))``; 1 when a factor has no mass."""
    mean_a, mean_g = float(torch.trace(a)) / a.shape[0], float(torch.trace(g)) / g.shape[0]
    if not (mean_a > 0 and mean_g > 0 and math.isfinite(mean_a) and math.isfinite(mean_g)):
        return 1.0
    return math.sqrt(mean_a / mean_g)


def _damped_inverse(f: Tensor, gamma: float) -> Tensor:
    """``(F + γI)⁻¹`` of a symmetric positive semi-definite factor, by Cholesky in float64."""
    m = f.double()
    m = 0.5 * (m + m.T)
    m.diagonal().add_(gamma)
    chol, bad = torch.linalg.cholesky_ex(m)
    if int(bad) != 0:
        raise NonFiniteLossError("kfac: a damped curvature factor is not positive definite (non-finite values?)")
    return torch.cholesky_inverse(chol).to(f.dtype)


def _find_layers(model: nn.Module, params: list[tuple[str, nn.Parameter]]) -> list[_Layer]:
    """The preconditioned layers: Linear and plain Conv2d modules whose weight is trainable."""
    index = {id(p): i for i, (_, p) in enumerate(params)}
    layers, owners = [], {}
    for name, m in model.named_modules():
        if isinstance(m, _DecorrelatedLayer):
            raise UnigradError(
                f"kfac does not support decorrelated layers (module {name!r}); use a model without decorrelation"
            )
        if not isinstance(m, nn.Linear | nn.Conv2d) or id(m.weight) not in index:
            continue
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"):
            continue
        if id(m.weight) in owners:
            raise UnigradError(
                f"kfac: modules {owners[id(m.weight)]!r} and {name!r} share a weight; tied weights are not supported"
            )
        owners[id(m.weight)] = name
        bias = None if m.bias is None else index.get(id(m.bias))
        layers.append(_Layer(name, m, index[id(m.weight)], bias))
    return layers


def _recorder(rec: _Record, phase: list[str]) -> Any:
    """A forward hook that keeps the layer's input and hooks its output's gradient (per backward phase)."""

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        call = len(rec.inputs)
        rec.inputs.append(inputs[0].detach())
        if output.requires_grad:

            def keep(grad: Tensor) -> None:
                rec.grads[(phase[0], call)] = grad.detach()

            output.register_hook(keep)

    return hook


def _conv_pad(m: nn.Conv2d) -> tuple[int, int, int, int]:
    """``F.pad`` amounts (left, right, top, bottom) equal to the convolution's own zero padding."""
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return (0, 0, 0, 0)
        pads: list[int] = []
        for d, k in zip(reversed(m.dilation), reversed(m.kernel_size), strict=True):  # 'same': extra pad at the end
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return (pads[0], pads[1], pads[2], pads[3])
    ph, pw = m.padding
    return (pw, pw, ph, ph)


def _statistics(layer: _Layer, rec: _Record, phase: str, batch: int, scale: float) -> tuple[Tensor, Tensor]:
    """The batch's factors ``A`` and ``G`` of one layer from the recorded inputs and output gradients."""
    m = layer.module
    patches, grads = [], []
    for call, x in enumerate(rec.inputs):
        if isinstance(m, nn.Conv2d):
            if x.dim() == 3:  # unbatched (C, H, W)
                x = x.unsqueeze(0)
            cols = F.unfold(F.pad(x, _conv_pad(m)), m.kernel_size, dilation=m.dilation, stride=m.stride)
            a = cols.transpose(1, 2)  # (N, L, C·kh·kw)
        else:
            a = x
        n_in = a.shape[-1]
        if batch > 1 and (a.dim() < 2 or a.shape[0] != batch):
            raise UnigradError(
                f"kfac: layer {layer.name!r} sees inputs of shape {tuple(x.shape)}, whose leading dimension is "
                f"not the batch size {batch}"
            )
        a = a.reshape(batch, -1, n_in)
        if layer.bias is not None:
            a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
        n_out = m.weight.shape[0]
        g = rec.grads.get((phase, call))
        if g is None:  # the output did not reach the loss
            g = torch.zeros(batch, a.shape[1], n_out, dtype=a.dtype, device=a.device)
        elif isinstance(m, nn.Conv2d):
            g = g.reshape(batch, n_out, -1).transpose(1, 2)
        else:
            g = g.reshape(batch, -1, n_out)
        patches.append(a)
        grads.append(g * scale)
    a = torch.cat(patches, dim=1)
    g = torch.cat(grads, dim=1)
    positions = a.shape[1]
    a2, g2 = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
    return a2.T @ a2 / (batch * positions), g2.T @ g2 / batch
