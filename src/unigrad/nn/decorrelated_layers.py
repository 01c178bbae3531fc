"""Layers paired with a decorrelation, and the model transform that puts them in.

:class:`DecorrelatedLinear` and :class:`DecorrelatedConv2d` put a
:class:`~unigrad.nn.decorrelation_matrix.Decorrelation` in front of an existing ``nn.Linear`` or ``nn.Conv2d`` (its
``Parameter`` objects kept); :func:`decorrelate` does it to every such layer of a model, in place, and
:func:`update_decorrelation` updates every decorrelation of a model.
The rules and options are described in :mod:`unigrad.nn.decorrelation`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.rng import key_hash
from unigrad.nn.decorrelation_matrix import RULES, Decorrelation, check_sample, mean_offdiag


class _DecorrelatedLayer(nn.Module):
    """A :class:`Decorrelation` paired with the layer it feeds (``self.inner``): the shared parts.

    A subclass names the layer type it wraps (``wraps``) and the attribute that keeps the layer (``slot``; the
    layer's parameter names gain that component), and may refuse layers of that type it cannot decorrelate
    (:meth:`_refuse`).

    Args:
        layer: the layer (an instance of ``wraps``), kept as is: its ``Parameter`` objects stay the same.
        rule, lr, sample, seed: of the :class:`Decorrelation`, whose ``n`` is the number of inputs one output's
            weights see (the flattened weight is ``(outputs, n)``): a linear layer's inputs, a convolution's patch.
        compensate: default of :meth:`update`: whether to apply ``W ← W·A⁻¹`` after each update.
    """

    wraps: type[nn.Linear] | type[nn.Conv2d]
    slot: str
    decor: Decorrelation
    compensate: bool
    rowwise = True  # row by row like the layer it wraps (whose own type is checked separately)

    def __init__(
        self,
        layer: nn.Linear | nn.Conv2d,
        rule: str = "cov-identity",
        lr: float = 1e-4,
        sample: int | None = None,
        seed: int = 0,
        compensate: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(layer, self.wraps):
            raise UnigradError(f"{type(self).__name__} wraps an nn.{self.wraps.__name__}, got {type(layer).__name__}")
        self._refuse(layer)
        w = layer.weight
        self.decor = Decorrelation(w.shape[1:].numel(), rule, lr, sample, seed, dtype=w.dtype, device=w.device)
        self.add_module(self.slot, layer)
        self.compensate = bool(compensate)

    def _refuse(self, layer: nn.Linear | nn.Conv2d) -> None:
        """Raise :class:`~unigrad.core.errors.UnigradError` for a ``layer`` this pairing cannot decorrelate."""

    @property
    def inner(self) -> nn.Linear | nn.Conv2d:
        """The wrapped layer."""
        return getattr(self, self.slot)

    @property
    def weight(self) -> Tensor:
        """The wrapped layer's weight ``W`` (applied to decorrelated inputs)."""
        return self.inner.weight

    @property
    def bias(self) -> Tensor | None:
        """The wrapped layer's bias."""
        return self.inner.bias

    @torch.no_grad()
    def update(self, rule: str | None = None, lr: float | None = None, compensate: bool | None = None) -> Tensor | None:
        """Update ``R`` (see :meth:`Decorrelation.update`); with ``compensate``, also ``W ← W·A⁻¹``
        (on the weight flattened to ``(outputs, n)``).

        Returns ``A`` when compensating, else ``None``.
        """
        comp = self.compensate if compensate is None else compensate
        a = self.decor.update(rule, lr, need_a=comp)
        if a is not None:
            w = self.inner.weight
            w.copy_(torch.linalg.solve(a.to(w.dtype), w.flatten(1), left=False).view_as(w))  # X·A = W
        return a


class DecorrelatedLinear(_DecorrelatedLayer):
    """``y = W·(R·x) + b``: a :class:`Decorrelation` followed by an existing ``nn.Linear``.

    The ``linear`` module (and its ``Parameter`` objects) is kept as is. :meth:`update` updates ``R``
    and, with ``compensate=True``, the weight ``W ← W·A⁻¹`` so the layer's output is unchanged.

    The forward takes the cheaper of two equal products: ``(x·Rᵀ)·Wᵀ`` (``rows·n²`` multiply-adds
    for ``R``) or, when the layer has fewer outputs than the input has rows, ``x·(W·R)ᵀ``
    (``m·n²`` to form ``W·R`` for ``m`` outputs); in the second case the statistics are recorded
    raw and decorrelated once at the update. Node-perturbation rules treat the module as one
    perturbable layer with input ``x`` (:func:`unigrad.nn.perturbation.layer_grads`).

    Made as ``DecorrelatedLinear(layer, rule, lr, sample, seed, compensate)``, the options those of
    :func:`decorrelate`.
    """

    wraps = nn.Linear
    slot = "linear"
    linear: nn.Linear

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        lin = self.linear
        if type(lin).forward is not nn.Linear.forward:  # a layer with its own forward (a device) gets R·x
            return lin(self.decor(x))
        rows = x.numel() // max(x.shape[-1], 1)
        if lin.out_features < rows and x.shape[-1] == self.decor.features:
            w = lin.weight
            y = nn.functional.linear(x, w @ self.decor.R.to(w.dtype), lin.bias)
            if self.training:
                self.decor.record(x)
            return y
        return nn.functional.linear(self.decor(x), lin.weight, lin.bias)


class DecorrelatedConv2d(_DecorrelatedLayer):
    """Patch-wise decorrelation before an existing ``nn.Conv2d``: ``y = W·(R·patch) + b`` at every position.

    Each ``C_in·k_h·k_w`` input patch ``p`` (``torch.nn.functional.unfold``) is one row seen by a
    :class:`Decorrelation`; the convolution applies the flattened weight ``(C_out, C_in·k_h·k_w)`` to
    the decorrelated patches, so compensation is ``W ← W·A⁻¹`` on the flattened weight. Since
    ``W·(R·p) = (W·R)·p``, the forward is one ordinary convolution with the weight ``W·R`` (``C_out·n²``
    multiply-adds to form, instead of ``n²`` per patch); in training mode the patches are unfolded
    only to record the statistics of ``R·p`` (of a ``sample`` of them, if set).
    Only ``groups=1``, ``padding_mode="zeros"`` and numeric padding are supported. With many
    positions per image, a ``sample`` keeps the update cheap.

    Node-perturbation rules treat the whole module as one perturbable layer (its output is the
    convolution's output, its input the raw ``x``): the weight gradient of a signal ``S`` on the
    output is ``G·Rᵀ`` with ``G = conv2d_weight(x, S)`` the gradient with respect to ``W·R``
    (:func:`unigrad.nn.perturbation.layer_grads`).

    Made as ``DecorrelatedConv2d(layer, rule, lr, sample, seed, compensate)``, the options those of
    :func:`decorrelate`.
    """

    wraps = nn.Conv2d
    slot = "conv"
    conv: nn.Conv2d

    def _refuse(self, layer: nn.Linear | nn.Conv2d) -> None:
        """Refuse grouped convolutions and padding other than numeric zeros."""
        assert isinstance(layer, nn.Conv2d)  # checked against ``wraps`` first
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise UnigradError("DecorrelatedConv2d supports groups=1, padding_mode='zeros' and numeric padding only")

    def effective_weight(self) -> Tensor:
        """``W·R`` in the convolution's weight shape: the weight applied to the raw patches."""
        w = self.conv.weight
        return (w.flatten(1) @ self.decor.R.to(w.dtype)).view_as(w)

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        if x.shape[-3] != c.in_channels:
            raise UnigradError(f"DecorrelatedConv2d expects {c.in_channels} input channels, got {x.shape[-3]}")
        y = nn.functional.conv2d(x, self.effective_weight(), c.bias, c.stride, c.padding, c.dilation)
        if self.training:
            batched = (x if x.dim() == 4 else x.unsqueeze(0)).detach()
            # rows: one patch per (image, position), unfolded only if the statistics are used
            self.decor.record(
                lambda: nn.functional.unfold(batched, c.kernel_size, c.dilation, c.padding, c.stride).transpose(1, 2)
            )
        return y


_PAIRED = (DecorrelatedLinear, DecorrelatedConv2d)  # the _DecorrelatedLayer types


def is_decorrelated(model: nn.Module) -> bool:
    """Whether ``model`` holds a layer paired with a decorrelation (:class:`DecorrelatedLinear`,
    :class:`DecorrelatedConv2d`), as :func:`decorrelate` makes them."""
    return any(isinstance(m, _PAIRED) for m in model.modules())


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
    check_sample(sample)
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
    model: nn.Module,
    rule: str | None = None,
    lr: float | None = None,
    compensate: bool | None = None,
    stats: bool = False,
) -> dict[str, float]:
    """Update every decorrelation of ``model``; with ``stats``, return each one's mean ``|offdiag(C)|``
    before the update (an extra ``b·n²`` per layer; ``{}`` otherwise).

    ``rule``, ``lr`` and ``compensate`` default to each layer's own options. Decorrelations that
    have recorded no input since their last update (no training-mode forward) are skipped.
    """
    if rule is not None:
        check_choice("rule", rule, RULES)
    if lr is not None:
        check_positive("lr", lr)
    out: dict[str, float] = {}
    paired = {id(m.decor) for m in model.modules() if isinstance(m, _PAIRED)}
    for name, m in model.named_modules():
        if isinstance(m, _PAIRED):
            decor, upd = m.decor, lambda m=m: m.update(rule, lr, compensate)
        elif isinstance(m, Decorrelation) and id(m) not in paired:
            decor, upd = m, lambda m=m: m.update(rule, lr, need_a=False)
        else:
            continue
        if decor.last is None:
            continue
        if stats:
            out[name] = mean_offdiag(decor.covariance())
        upd()
    return out
