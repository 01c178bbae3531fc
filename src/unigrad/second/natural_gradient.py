"""Natural gradient: the :class:`NaturalGradient` estimator (the gradient preconditioned by the damped Fisher)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from unigrad.core import rng
from unigrad.core.errors import UnigradError
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, Supervised
from unigrad.core.options import check_choice, check_number, check_positive
from unigrad.core.params import write_grad
from unigrad.second.curvature import FlatLoss, conjugate_gradient, likelihood_of

_FISHERS = ("true", "empirical", "sampled")
_LABEL_STREAM = 0x1AB31  # names the label-sampling stream among this estimator's keys


class NaturalGradient(Estimator):
    """Natural gradient: the gradient preconditioned by the (damped) Fisher information, solved by CG.

    With ``f`` the mean loss, ``θ`` the flattened trainable parameters, ``g = ∇f(θ)`` and ``F`` a Fisher
    matrix that is never formed, each call solves::

        (F + λI) d = g

    by conjugate gradients (:func:`~unigrad.second.curvature.conjugate_gradient`) from products
    ``v ↦ F v``, and writes ``d`` itself into ``.grad``. Unlike ``hessian-free`` (which writes the
    negated Newton step ``−s``), this is a *preconditioned gradient*: the outer optimizer's learning
    rate ``η`` is the step size, ``θ ← θ − η d`` (``η = 1`` is the full natural-gradient step of the
    local quadratic model, usually too long early in training).

    Cost per estimate, for ``B`` samples: ``B`` forwards and ``B`` backwards (``f`` and ``g``), plus
    ``"true"``: ``B`` JVPs and ``B`` backwards per CG product; ``"empirical"``: ``B`` backwards once (the
    per-sample gradients); ``"sampled"``: ``B`` forwards (the outputs again, for the
    sampled losses) and ``B·M`` backwards once.

    ``info``: ``cg_iterations``, ``gradient_norm``, ``direction_norm``, ``residual`` (``‖g − (F + λI)d‖``
    from the CG recurrence).

    State (``state_dict``): the step counter only (it keys the label samples of ``"sampled"``).

    Args:
        fisher: which Fisher matrix ``F`` (default: ``"true"``):

            * ``"true"`` (default) — the Fisher of the model's predictive distribution,
              ``F = (1/B) Σ_b E_{y∼p(y|z_b)}[∇ log p(y|z_b) ∇ log p(y|z_b)ᵀ]``, computed *exactly* (no
              sampling) as the generalized Gauss-Newton matrix ``G = Jᵀ H_z J`` by
              :meth:`~unigrad.second.curvature.FlatLoss.ggn_vp`. The identity ``F = G`` holds when the
              per-sample loss is the negative log-likelihood ``−log p(y|z)`` of an exponential family
              whose natural parameter is the model's output ``z``: then ``H_z = ∇²_z(−log p) =
              Cov_{p(y|z)}[T(y)]``, the Fisher in ``z`` (Martens 2020, §9.2). That covers softmax
              cross-entropy on logits (``F.cross_entropy``: ``H_z = diag(p) − ppᵀ``), sigmoid binary
              cross-entropy on logits, and squared error (a Gaussian of fixed variance; ``F.mse_loss``
              averages over the ``k`` outputs, which only rescales ``F`` by a constant). The estimator
              cannot check the loss: with any other loss this is still the Gauss-Newton matrix, but not
              a Fisher. Needs a supervised objective (``unigrad.supervised``).
            * ``"empirical"`` — ``F = (1/B) Σ_b ∇ℓ_b ∇ℓ_bᵀ`` from the per-sample gradients of the
              objective's own losses (the observed labels, not samples from the model; Martens 2020,
              §11 explains how it differs from the true Fisher). The ``(B, d)`` matrix ``J_ℓ`` is formed
              once; each product ``J_ℓᵀ(J_ℓ v)/B`` is two matrix–vector products, no further passes.
              Works on any objective that returns per-sample losses.
            * ``"sampled"`` — the Monte Carlo true Fisher ``(1/(BM)) Σ_b Σ_m ∇ℓ(z_b, ŷ_bm) ∇ℓ(z_b, ŷ_bm)ᵀ``
              with targets ``ŷ_bm ∼ p(y|z_b)`` drawn (in float64) from the keyed stream ``(seed, step)``.
              ``p(y|z)`` is the predictive distribution of the objective's loss, recognised numerically
              on the batch (:func:`~unigrad.second.curvature.likelihood_of`): categorical ``softmax(z)``
              for cross-entropy on ``(B, k)`` logits (class indices or probabilities as targets), Bernoulli
              ``σ(z)`` for binary cross-entropy with logits, Gaussian for mean squared error
              (:class:`~unigrad.second.curvature.Likelihood`, whose output gradients are scaled so that
              the expectation is the true Fisher ``= G`` above). Any other loss is refused. Needs a
              supervised objective.

        damping: ``λ > 0`` added to ``F``; it bounds the step where ``F`` is (nearly) singular — always
            the case for the empirical Fisher when ``d > B`` (default: 1e-2).
        max_cg: the most Fisher products per CG solve (default: 50).
        cg_tol: CG stops when ``‖r‖ ≤ cg_tol·‖g‖`` (default: 1e-10).
        mc_samples: labels ``M`` drawn per input with ``fisher="sampled"`` (default: 1).
        seed: names the label-sampling stream of ``fisher="sampled"`` (default: 0).

    References:
        S. Amari, "Natural gradient works efficiently in learning", Neural Computation 10 (1998).
        J. Martens, "New insights and perspectives on the natural gradient method", JMLR 21 (2020).
    """

    name = "natural-gradient"
    order = 2
    description = "natural gradient (F + λI)⁻¹g by CG on Fisher products: true (=GGN), empirical or sampled"
    _options = ("fisher", "damping", "max_cg", "cg_tol", "mc_samples")

    def __init__(
        self,
        fisher: str = "true",
        damping: float = 1e-2,
        max_cg: int = 50,
        cg_tol: float = 1e-10,
        mc_samples: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_choice("fisher", fisher, _FISHERS)
        self.damping = check_number("damping", damping, what="a number > 0")
        check_positive("damping", damping)
        check_positive("max_cg", max_cg, integer=True)
        self.cg_tol = check_number("cg_tol", cg_tol, what="a number > 0")
        check_positive("cg_tol", cg_tol)
        check_positive("mc_samples", mc_samples, integer=True)
        self.fisher, self.max_cg, self.mc_samples = fisher, max_cg, mc_samples

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        if self.fisher != "empirical" and not isinstance(objective, Supervised):
            raise UnigradError(
                f"natural-gradient with fisher={self.fisher} needs a supervised objective (unigrad.supervised) to "
                "see the model's outputs; use fisher=empirical for other objectives"
            )
        fl = FlatLoss(model, objective, params, outputs=self.fisher == "true", method=self.name)
        g = fl.grad
        product: Callable[[Tensor], Tensor]
        if self.fisher == "true":
            product = fl.ggn_vp
        else:
            rows = fl.per_sample_grads() if self.fisher == "empirical" else self._sampled_grads(fl, objective)
            scale = 1.0 / rows.shape[0]

            def product(v: Tensor) -> Tensor:
                return scale * (rows.T @ (rows @ v))

        lam = self.damping
        res = conjugate_gradient(lambda v: product(v) + lam * v, g, max_iter=self.max_cg, tol=self.cg_tol)
        write_grad(params, fl.unflatten(res.x))
        info = {
            "cg_iterations": res.iterations,
            "gradient_norm": float(g.norm()),
            "direction_norm": float(res.x.norm()),
            "residual": res.residual,
        }
        return Estimate(loss=fl.loss, cost=fl.cost, info=info)

    def _sampled_grads(self, fl: FlatLoss, objective: Supervised) -> Tensor:
        """Per-sample gradients of the loss at targets drawn from the model (``(B·M, d)``).

        Row ``b·M + j`` is ``∇_θ ℓ(z_b, ŷ_bj) = J_bᵀ g_bj`` with ``g_bj`` the sampled output gradient of
        the objective's likelihood (:meth:`~unigrad.second.curvature.Likelihood.output_grads`, drawn in
        float64): one vector–Jacobian product of the outputs per row (batched), no per-row forward.
        """
        with torch.enable_grad():
            theta = fl.theta0.clone().requires_grad_(True)
            z = functional_call(fl.model, dict(zip(fl.names, fl.unflatten(theta), strict=True)), (objective.inputs,))
            likelihood = likelihood_of(
                objective,
                z,
                fl.losses,
                method="natural-gradient with fisher=sampled",
                instead="use fisher=true or fisher=empirical",
            )
            b, m = z.shape[0], self.mc_samples
            gen = rng.generator(self.seed, self.step, _LABEL_STREAM, device=z.device)
            residual = likelihood.output_grads(z, gen, m, dtype=torch.float64)  # (B, M, *outputs) = ∂ℓ/∂z
            rows = torch.arange(b * m, device=z.device)
            cotangents = torch.zeros(b * m, *z.shape, dtype=z.dtype, device=z.device)
            cotangents[rows, rows // m] = residual.reshape(b * m, *z.shape[1:])
            try:
                (jac,) = torch.autograd.grad(z, theta, grad_outputs=cotangents, is_grads_batched=True)
            except RuntimeError:  # an op without a batching rule: one vector–Jacobian product per row
                jac = torch.stack(
                    [torch.autograd.grad(z, theta, grad_outputs=c, retain_graph=True)[0] for c in cotangents]
                )
        fl.cost.forwards += fl.batch
        fl.cost.backwards += fl.batch * m
        return jac.detach()
