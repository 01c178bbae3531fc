"""The predictive distributions behind the sampled Fisher, and recognising which one an objective's loss is.

**Likelihoods** (:class:`Likelihood`, :func:`likelihood_of`). The sampled (Monte Carlo) Fisher
``F = E_{ŷ∼p(y|z)}[∇_θ ℓ(z, ŷ) ∇_θ ℓ(z, ŷ)ᵀ]`` needs the model's predictive distribution ``p(y|z)``,
the one whose negative log-likelihood the loss ``ℓ`` is. Three losses name one (per sample, with ``k``
output elements, the loss averaged over them as ``F.mse_loss`` and ``F.binary_cross_entropy_with_logits``
do):

=================  =====================================  ==========================================  ================
loss               ``p(y|z)``                             sampled target ``ŷ``                        ``g``
=================  =====================================  ==========================================  ================
``cross_entropy``  categorical, ``softmax(z)``            a class index ``ŷ ∼ softmax(z)``            ``p − e_ŷ``
``bce``            Bernoulli ``σ(z_i)`` per element       ``ŷ_i = [u_i < σ(z_i)]``, ``u ∼ U(0, 1)``   ``(σ(z) − ŷ)/√k``
``mse``            Gaussian ``N(z, (k/2)·I)``             ``ŷ = z − √(k/2)·ε``, ``ε ∼ N(0, I)``       ``√(2/k)·ε``
=================  =====================================  ==========================================  ================

``g`` is the output gradient ``∂ℓ(z, ŷ)/∂z`` for ``cross_entropy`` and ``mse`` (there ``ℓ`` is the
negative log-likelihood itself, up to a constant); the ``bce`` loss is the Bernoulli negative
log-likelihood divided by ``k``, and ``g`` is ``√k·∂ℓ/∂z``. So in every case ``E[g gᵀ] = ∇²_z ℓ``, the
Hessian of the per-sample loss in the outputs: the output Fisher of the exponential family, and the
``H_z`` of the Gauss-Newton matrix (Martens 2020, §9.2). Any other loss is
refused: the sampled Fisher of an unknown likelihood is not defined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.objective import Supervised

LOSSES = {"cross_entropy": "categorical", "bce": "Bernoulli", "mse": "Gaussian"}
"""The losses whose predictive distribution :class:`Likelihood` knows: ``loss -> distribution``."""

_SUPPORTED = (
    "cross-entropy (categorical), binary cross-entropy with logits (Bernoulli) and mean squared error (Gaussian)"
)


@dataclass(frozen=True)
class Likelihood:
    """The predictive distribution ``p(y|z)`` of a model trained with ``loss`` (module docs, table).

    Args:
        loss: ``"cross_entropy"``, ``"bce"`` (binary cross-entropy with logits) or ``"mse"``; any other
            is refused with a :class:`~unigrad.core.errors.UnigradError`.

    Both methods take the outputs ``z`` (``(B, k)`` logits for ``cross_entropy``; ``(B, …)`` with ``k``
    elements per sample otherwise), a keyed ``torch.Generator`` and ``samples = M`` draws per input, and
    consume the generator in the same way, so the same key gives corresponding targets and gradients.
    ``dtype`` is the precision of the draw (default ``z``'s); results are in ``z``'s dtype.
    """

    loss: str

    def __post_init__(self) -> None:
        if not isinstance(self.loss, str) or self.loss not in LOSSES:
            raise UnigradError(
                "Likelihood knows the losses cross_entropy (categorical), bce (binary cross-entropy with logits, "
                f"Bernoulli) and mse (mean squared error, Gaussian), got {self.loss!r}"
            )

    @property
    def distribution(self) -> str:
        """``"categorical"``, ``"Bernoulli"`` or ``"Gaussian"``."""
        return LOSSES[self.loss]

    def _draw(self, z: Tensor, generator: torch.Generator, samples: int, dtype: torch.dtype | None) -> Tensor:
        """Class indices ``(B, M)``; uniforms ``u`` or normals ``ε`` ``(B, M, *z.shape[1:])`` in ``dtype``."""
        check_positive("samples", samples, integer=True)
        dtype = z.dtype if dtype is None else dtype
        shape = (z.shape[0], samples, *z.shape[1:])
        if self.loss == "cross_entropy":
            if z.dim() != 2:
                raise UnigradError(f"cross-entropy sampling needs (batch, classes) logits, got {tuple(z.shape)}")
            p = torch.softmax(z, dim=1)
            return torch.multinomial(p.to(dtype), samples, replacement=True, generator=generator)
        if self.loss == "bce":
            return torch.rand(shape, generator=generator, dtype=dtype, device=z.device)
        return torch.randn(shape, generator=generator, dtype=dtype, device=z.device)

    def sample(
        self, z: Tensor, generator: torch.Generator, samples: int = 1, *, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Targets ``ŷ ∼ p(y|z)``: class indices ``(B, M)`` for ``cross_entropy``, else ``(B, M, *z.shape[1:])``."""
        z = z.detach()
        draw = self._draw(z, generator, samples, dtype)
        if self.loss == "cross_entropy":
            return draw
        if self.loss == "bce":
            return (draw < torch.sigmoid(z).to(draw.dtype)[:, None]).to(z.dtype)
        return z[:, None] - math.sqrt(z[0].numel() / 2.0) * draw.to(z.dtype)

    def output_grads(
        self, z: Tensor, generator: torch.Generator, samples: int = 1, *, dtype: torch.dtype | None = None
    ) -> Tensor:
        """The output gradients ``g`` at sampled targets (module docs), ``(B, M, *z.shape[1:])``, with
        ``E[g gᵀ] = ∇²_z ℓ`` for each input."""
        z = z.detach()
        draw = self._draw(z, generator, samples, dtype)
        if self.loss == "cross_entropy":
            p = torch.softmax(z, dim=1)
            return p[:, None] - F.one_hot(draw, z.shape[1]).to(p.dtype)
        k = z[0].numel()
        if self.loss == "bce":
            p = torch.sigmoid(z)
            y = (draw < p.to(draw.dtype)[:, None]).to(z.dtype)
            return (p[:, None] - y) / math.sqrt(k)
        return draw.to(z.dtype) * math.sqrt(2.0 / k)


def loss_kind(objective: Supervised, z: Tensor, losses: Tensor) -> str | None:
    """Which loss of :data:`LOSSES` the objective computes on this batch, by comparing its per-sample
    ``losses`` at the outputs ``z`` with each candidate's (relative 1e-4, absolute 1e-6); None if none
    matches (per-sample losses are needed)."""
    y = objective.targets
    b = z.shape[0]
    if losses.dim() != 1 or losses.shape[0] != b or z.dim() < 2:
        return None

    def close(candidate: Tensor) -> bool:
        candidate = candidate.reshape(b, -1).mean(dim=1).to(losses.dtype)
        return bool(torch.allclose(losses, candidate, rtol=1e-4, atol=1e-6))

    with torch.no_grad():
        if z.dim() == 2:
            if not y.is_floating_point() and y.shape == (b,) and bool(((y >= 0) & (y < z.shape[1])).all()):
                if close(F.cross_entropy(z, y, reduction="none")):
                    return "cross_entropy"
            if y.is_floating_point() and y.shape == z.shape and close(F.cross_entropy(z, y, reduction="none")):
                return "cross_entropy"
        if y.is_floating_point() and y.numel() == z.numel():
            t = y.reshape(z.shape).to(z.dtype)
            if bool(((t >= 0) & (t <= 1)).all()) and close(F.binary_cross_entropy_with_logits(z, t, reduction="none")):
                return "bce"
            if close((z - t).square()):
                return "mse"
    return None


def likelihood_of(objective: Supervised, z: Tensor, losses: Tensor, *, method: str, instead: str) -> Likelihood:
    """The :class:`Likelihood` of the loss ``objective`` computes (found by :func:`loss_kind` from its
    per-sample ``losses`` at the outputs ``z``), or a one-line :class:`~unigrad.core.errors.UnigradError`
    naming the supported losses, ``method`` (who asks) and ``instead`` (what to do)."""
    kind = loss_kind(objective, z.detach(), losses.detach())
    if kind is None:
        raise UnigradError(
            f"{method} samples targets from the model's predictive distribution, known for {_SUPPORTED} "
            f"losses on per-sample outputs; this objective's loss matches none of them ({instead})"
        )
    return Likelihood(kind)


__all__ = ["LOSSES", "Likelihood", "likelihood_of", "loss_kind"]
