"""Decorrelation layers: a learned whitening-like matrix ``R`` in front of each linear layer.

A :class:`Decorrelation` module holds a square matrix ``R`` (initialised to ``I``) and maps a layer's
input ``x`` to ``x̂ = R·x`` (for a batch of rows, ``x̂ = x·Rᵀ``). ``R`` is *not* trained by gradient
estimators: it is a buffer (saved in the ``state_dict``, absent from ``model.parameters()``, so no
estimator perturbs it and no optimizer steps it) and is changed only by an explicit call to
:meth:`Decorrelation.update` after a training step, with one of two local rules. With
``C = x̂ᵀx̂ / B`` the second-moment matrix of the recorded inputs (``B`` rows):

``"offdiag"`` (Ahmad et al., arXiv:2310.00965 as used in arXiv:2405.02385)
    ``R ← R − η_d · offdiag(C) · R``: only cross-correlations are penalised, the scale of each unit
    is left to the forward weights.

``"cov-identity"`` (Ahmad, "Correlations are ruining your gradient descent", arXiv:2407.10780)
    ``R ← R − η_d · (C − I) · R``: drives ``C`` towards ``I`` (decorrelates *and* normalises the
    variances), usually computed on a random subsample of the batch to save cost.

Both updates have the form ``R ← A·R`` with ``A = I − η_d·M``. When the decorrelation is paired with
the linear layer it feeds (:class:`DecorrelatedLinear`), the update can *compensate* the forward
weight, ``W ← W·A⁻¹``, so that ``W·x̂`` (hence the network's function) is unchanged by the update:
``W·A⁻¹·(A·R·x) = W·R·x``. Decorrelated backprop (DBP, Dalm et al., arXiv:2405.02385) and the
decorrelated node/activity perturbation rules (DNP, DINP, DANP; Dalm et al., arXiv:2310.00965)
train ``W`` with their usual estimator and ``R`` with these rules.

:func:`decorrelate` turns a model into its decorrelated version in place (every ``nn.Linear``
becomes a :class:`DecorrelatedLinear` reusing the *same* ``Parameter`` objects, so existing
optimizers still see them; parameter names gain a ``.linear`` component) and
:func:`update_decorrelation` updates every decorrelation of a model. ``nn.Conv2d`` layers are left
untouched unless ``conv=True``, which wraps them in :class:`DecorrelatedConv2d` (patch-wise
decorrelation: ``R`` acts on each flattened ``C_in·k_h·k_w`` input patch).

Options (of :class:`Decorrelation`, :class:`DecorrelatedLinear` and :func:`decorrelate`):

``rule``
    ``"offdiag"`` or ``"cov-identity"`` (default ``"cov-identity"``); overridable per update.
``lr``
    Decorrelation rate ``η_d > 0`` (default ``1e-4``, the rate used with DANP in recurrent networks);
    overridable per update. Too large a rate (``η_d·‖C‖ ≳ 1``) makes the iteration diverge.
``sample``
    Number of rows of the batch recorded for the update (``None``: all rows). The subsample is drawn
    without replacement by a generator keyed by ``(seed, step)`` (:func:`unigrad.core.rng.generator`;
    ``step`` counts the updates done so far), never by the global RNG. Inputs with more than two
    dimensions ``(…, n)`` are flattened to rows first.
``seed``
    Key of the subsample stream (:func:`decorrelate` gives layer ``i`` the key ``(seed, i)``).
``compensate``
    (:class:`DecorrelatedLinear`, :func:`decorrelate`) default for :meth:`DecorrelatedLinear.update`:
    whether to apply ``W ← W·A⁻¹`` after each update (default ``False``, as in the papers).

The inputs are recorded (detached) by ``forward`` only in training mode (``module.train()``), so
evaluation passes do not overwrite the statistics of the last training batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.rng import generator, key_hash

RULES = ("offdiag", "cov-identity")

_SAMPLE_TAG = 0xDEC0


def _check_sample(sample: int | None) -> None:
    if sample is not None:
        check_positive("sample", sample, integer=True)


class Decorrelation(nn.Module):
    """``x̂ = R·x`` with ``R`` (a buffer, initialised to ``I``) updated by :meth:`update`.

    Args:
        features: size ``n`` of the last input dimension.
        rule: ``"offdiag"`` or ``"cov-identity"`` (see the module docstring).
        lr: decorrelation rate ``η_d > 0``.
        sample: rows of each batch recorded for the update (``None``: all).
        seed: key of the subsample stream.
        dtype, device: of ``R``.
    """

    R: Tensor

    def __init__(
        self,
        features: int,
        rule: str = "cov-identity",
        lr: float = 1e-4,
        sample: int | None = None,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_positive("features", features, integer=True)
        check_choice("rule", rule, RULES)
        check_positive("lr", lr)
        _check_sample(sample)
        self.features = features
        self.rule = rule
        self.lr = float(lr)
        self.sample = sample
        self.seed = int(seed)
        self.step = 0
        self.register_buffer("R", torch.eye(features, dtype=dtype, device=device))
        self.last: Tensor | None = None  # recorded x̂ rows, (b, n), detached

    def extra_repr(self) -> str:
        return f"{self.features}, rule={self.rule!r}, lr={self.lr:g}, sample={self.sample}"

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.features:
            raise UnigradError(f"Decorrelation expects inputs with last dimension {self.features}, got {x.shape[-1]}")
        out = x @ self.R.T
        if self.training:
            rows = out.detach().reshape(-1, self.features)
            if self.sample is not None and self.sample < rows.shape[0]:
                g = generator(self.seed, self.step, _SAMPLE_TAG)
                idx = torch.randperm(rows.shape[0], generator=g)[: self.sample].to(rows.device)
                rows = rows[idx]
            self.last = rows
        return out

    def covariance(self) -> Tensor:
        """``C = x̂ᵀx̂ / B`` of the last recorded inputs (second moment, not mean-centred)."""
        if self.last is None:
            raise UnigradError("Decorrelation.update needs a forward pass in training mode first")
        return self.last.T @ self.last / self.last.shape[0]

    @torch.no_grad()
    def update(self, rule: str | None = None, lr: float | None = None) -> Tensor:
        """Apply one step of the rule, ``R ← A·R`` with ``A = I − η_d·M``; return ``A``.

        ``M = offdiag(C)`` (``"offdiag"``) or ``M = C − I`` (``"cov-identity"``), with ``C`` from the
        last recorded inputs. ``rule``/``lr`` default to the module's options.
        """
        rule = self.rule if rule is None else rule
        lr = self.lr if lr is None else lr
        check_choice("rule", rule, RULES)
        check_positive("lr", lr)
        c = self.covariance().to(self.R.dtype)
        eye = torch.eye(self.features, dtype=c.dtype, device=c.device)
        m = c - eye if rule == "cov-identity" else c - torch.diag_embed(torch.diagonal(c))
        a = eye - lr * m
        rows = self.last.to(self.R.dtype)
        b, n = rows.shape
        if 2 * b < n:
            # M·R = X̂ᵀ(X̂·R)/b − D·R with D = I or diag(C): 2·b·n² multiply-adds instead of n³ for A·R
            d = torch.ones_like(c[0]) if rule == "cov-identity" else torch.diagonal(c)
            mr = rows.T @ (rows @ self.R) / b - d[:, None] * self.R
            self.R.sub_(lr * mr)
        else:
            self.R.copy_(a @ self.R)
        self.step += 1
        return a


class DecorrelatedLinear(nn.Module):
    """``y = W·(R·x) + b``: a :class:`Decorrelation` followed by an existing ``nn.Linear``.

    The ``linear`` module (and its ``Parameter`` objects) is kept as is. :meth:`update` updates ``R``
    and, with ``compensate=True``, the weight ``W ← W·A⁻¹`` so the layer's output is unchanged.
    """

    def __init__(
        self,
        linear: nn.Linear,
        rule: str = "cov-identity",
        lr: float = 1e-4,
        sample: int | None = None,
        seed: int = 0,
        compensate: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise UnigradError(f"DecorrelatedLinear wraps an nn.Linear, got {type(linear).__name__}")
        self.decor = Decorrelation(
            linear.in_features, rule, lr, sample, seed, dtype=linear.weight.dtype, device=linear.weight.device
        )
        self.linear = linear
        self.compensate = bool(compensate)

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.decor(x))

    @torch.no_grad()
    def update(self, rule: str | None = None, lr: float | None = None, compensate: bool | None = None) -> Tensor:
        """Update ``R`` (see :meth:`Decorrelation.update`); with ``compensate``, also ``W ← W·A⁻¹``."""
        a = self.decor.update(rule, lr)
        if self.compensate if compensate is None else compensate:
            w = self.linear.weight
            w.copy_(torch.linalg.solve(a.to(w.dtype), w, left=False))  # X·A = W
        return a


class DecorrelatedConv2d(nn.Module):
    """Patch-wise decorrelation before an existing ``nn.Conv2d``: ``y = W·(R·patch) + b`` at every position.

    Each ``C_in·k_h·k_w`` input patch (``torch.nn.functional.unfold``) is one row seen by a
    :class:`Decorrelation`; the convolution is then the flattened weight ``(C_out, C_in·k_h·k_w)``
    applied to the decorrelated patches, so compensation is ``W ← W·A⁻¹`` on the flattened weight.
    Only ``groups=1``, ``padding_mode="zeros"`` and numeric padding are supported. With many
    positions per image, a ``sample`` keeps the update cheap.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        rule: str = "cov-identity",
        lr: float = 1e-4,
        sample: int | None = None,
        seed: int = 0,
        compensate: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise UnigradError(f"DecorrelatedConv2d wraps an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UnigradError("DecorrelatedConv2d supports groups=1, padding_mode='zeros' and numeric padding only")
        features = conv.weight[0].numel()
        self.decor = Decorrelation(features, rule, lr, sample, seed, dtype=conv.weight.dtype, device=conv.weight.device)
        self.conv = conv
        self.compensate = bool(compensate)

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        h, w = x.shape[-2:]
        patches = nn.functional.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)  # (B, F, L)
        y = self.decor(patches.transpose(1, 2)) @ c.weight.flatten(1).T  # (B, L, C_out)
        if c.bias is not None:
            y = y + c.bias
        ho, wo = (
            (size + 2 * c.padding[i] - c.dilation[i] * (c.kernel_size[i] - 1) - 1) // c.stride[i] + 1
            for i, size in enumerate((h, w))
        )
        return y.transpose(1, 2).reshape(x.shape[0], c.out_channels, ho, wo)

    @torch.no_grad()
    def update(self, rule: str | None = None, lr: float | None = None, compensate: bool | None = None) -> Tensor:
        """Update ``R`` (see :meth:`Decorrelation.update`); with ``compensate``, also ``W ← W·A⁻¹``."""
        a = self.decor.update(rule, lr)
        if self.compensate if compensate is None else compensate:
            w = self.conv.weight
            w.copy_(torch.linalg.solve(a.to(w.dtype), w.flatten(1), left=False).view_as(w))
        return a


_PAIRED = (DecorrelatedLinear, DecorrelatedConv2d)


def decorrelate(
    model: nn.Module,
    rule: str = "cov-identity",
    lr: float = 1e-4,
    sample: int | None = None,
    seed: int = 0,
    compensate: bool = False,
    conv: bool = False,
) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (recursively, in place) by a :class:`DecorrelatedLinear`.

    With ``conv=True``, every ``nn.Conv2d`` (``groups=1``, zero padding) also becomes a
    :class:`DecorrelatedConv2d`; otherwise convolutions are left untouched. Layers already
    decorrelated are left alone. Layer ``i``
    (in registration order) gets the subsample key ``(seed, i)``. Returns ``model``; at ``R = I`` its
    function is unchanged. Options as in the module docstring.
    """
    check_choice("rule", rule, RULES)
    check_positive("lr", lr)
    _check_sample(sample)
    count = 0

    def visit(parent: nn.Module) -> None:
        nonlocal count
        for name, child in list(parent.named_children()):
            if isinstance(child, (*_PAIRED, Decorrelation)):
                continue
            layer_seed = key_hash(seed, count) & ((1 << 63) - 1)
            if isinstance(child, nn.Linear):
                setattr(parent, name, DecorrelatedLinear(child, rule, lr, sample, layer_seed, compensate))
                count += 1
            elif conv and isinstance(child, nn.Conv2d):
                setattr(parent, name, DecorrelatedConv2d(child, rule, lr, sample, layer_seed, compensate))
                count += 1
            else:
                visit(child)

    if isinstance(model, nn.Linear | nn.Conv2d):
        raise UnigradError("decorrelate transforms a model in place; wrap a bare layer in DecorrelatedLinear/Conv2d")
    visit(model)
    return model


@torch.no_grad()
def update_decorrelation(
    model: nn.Module, rule: str | None = None, lr: float | None = None, compensate: bool | None = None
) -> dict[str, float]:
    """Update every decorrelation of ``model``; return each one's mean ``|offdiag(C)|`` before the update.

    ``rule``, ``lr`` and ``compensate`` default to each layer's own options. Decorrelations that
    have recorded no input yet (no training-mode forward) are skipped.
    """
    if rule is not None:
        check_choice("rule", rule, RULES)
    if lr is not None:
        check_positive("lr", lr)
    stats: dict[str, float] = {}
    paired = {id(m.decor) for m in model.modules() if isinstance(m, _PAIRED)}
    for name, m in model.named_modules():
        if isinstance(m, _PAIRED):
            decor, upd = m.decor, lambda m=m: m.update(rule, lr, compensate)
        elif isinstance(m, Decorrelation) and id(m) not in paired:
            decor, upd = m, lambda m=m: m.update(rule, lr)
        else:
            continue
        if decor.last is None:
            continue
        stats[name] = mean_offdiag(decor.covariance())
        upd()
    return stats


def mean_offdiag(c: Tensor) -> float:
    """Mean absolute off-diagonal entry of a square matrix (0 for a 1×1 matrix)."""
    n = c.shape[0]
    if n < 2:
        return 0.0
    return float((c.abs().sum() - c.diagonal().abs().sum()) / (n * (n - 1)))
