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
evaluation passes do not overwrite the statistics of the last training batch, and never inside a
``torch.func`` transform (the batched probes of ``vmap``, the forward-mode passes of ``jvp``): the
statistics are those of the last plain training-mode pass.

(The module is longer than most: the layers, the model transformation, the option checks and the
:class:`Decorrelated` method share the rules and the subsample keys defined here.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice, check_positive, unknown_name
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective
from unigrad.core.rng import generator, key_hash

RULES = ("offdiag", "cov-identity")

_SAMPLE_TAG = 0xDEC0


def _check_sample(sample: int | None) -> None:
    if sample is not None:
        check_positive("sample", sample, integer=True)


def _recordable() -> bool:
    """Whether a forward's statistics can be kept: not inside a ``torch.func`` transform (``vmap``,
    ``jvp``), whose tensors must not outlive it. Batched probes and forward-mode passes are
    evaluations of perturbed copies; the statistics come from the plain training-mode passes."""
    return torch._C._functorch.maybe_current_level() is None


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
        self._rows: Tensor | Callable[[], Tensor] | None = None  # raw rows x (…, n), or what makes them
        self._last: Tensor | None = None  # recorded x̂ rows (b, n), detached

    @property
    def last(self) -> Tensor | None:
        """The recorded rows ``x̂ = R·x`` (``(b, n)``, detached) for the next update, or ``None``.

        Rows recorded by :meth:`record` are multiplied by ``R`` here, once, on first use.
        """
        if self._last is None and self._rows is not None:
            rows = self._rows() if callable(self._rows) else self._rows
            with torch.no_grad():
                self._last = self._subsample(rows.detach().reshape(-1, self.features)) @ self.R.T
            self._rows = None
        return self._last

    @last.setter
    def last(self, value: Tensor | None) -> None:
        self._rows, self._last = None, value

    def extra_repr(self) -> str:
        return f"{self.features}, rule={self.rule!r}, lr={self.lr:g}, sample={self.sample}"

    def get_extra_state(self) -> Tensor:
        """The update counter ``step`` (it keys the subsample), so the module's ``state_dict`` carries it."""
        return torch.tensor(self.step)

    def set_extra_state(self, state: Tensor) -> None:
        """Continue from a counter of :meth:`get_extra_state`; recorded statistics belong to the state left behind
        and are dropped (the next update needs a training-mode forward)."""
        self.step, self.last = int(state), None

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.features:
            raise UnigradError(f"Decorrelation expects inputs with last dimension {self.features}, got {x.shape[-1]}")
        out = x @ self.R.T
        if self.training and _recordable():
            self.last = self._subsample(out.detach().reshape(-1, self.features))
        return out

    def _subsample(self, rows: Tensor) -> Tensor:
        """The rows kept for the next update: all, or ``sample`` of them drawn by the ``(seed, step)`` stream."""
        if self.sample is not None and self.sample < rows.shape[0]:
            g = generator(self.seed, self.step, _SAMPLE_TAG)
            idx = torch.randperm(rows.shape[0], generator=g)[: self.sample].to(rows.device)
            rows = rows[idx]
        return rows

    def record(self, x: Tensor | Callable[[], Tensor]) -> None:
        """Keep the rows of ``x`` ``(…, n)`` (or of what the callable ``x`` returns, e.g. unfolded
        patches) for the next update, as ``forward`` does in training mode, without transforming the
        input: the rows are made, subsampled and multiplied by ``R`` only when :attr:`last` is first
        read (once per update, however many passes recorded)."""
        if _recordable():
            self._rows, self._last = x, None

    def covariance(self) -> Tensor:
        """``C = x̂ᵀx̂ / B`` of the last recorded inputs (second moment, not mean-centred)."""
        if self.last is None:
            raise UnigradError("Decorrelation.update needs a forward pass in training mode first")
        return self.last.T @ self.last / self.last.shape[0]

    @torch.no_grad()
    def update(self, rule: str | None = None, lr: float | None = None, need_a: bool = True) -> Tensor | None:
        """Apply one step of the rule, ``R ← A·R`` with ``A = I − η_d·M``; return ``A`` (``None`` if
        not ``need_a``).

        ``M = offdiag(C)`` (``"offdiag"``) or ``M = C − I`` (``"cov-identity"``), with ``C`` from the
        last recorded inputs. ``rule``/``lr`` default to the module's options. With ``b`` recorded
        rows and ``2b < n``, ``M·R = X̂ᵀ(X̂·R)/b − D·R`` (``D = I`` or ``diag(C)``) is formed without
        ``C``: ``2·b·n²`` multiply-adds instead of ``n³``; ``A`` itself (``b·n²``) is only built
        when asked for (weight compensation needs it).
        """
        rule = self.rule if rule is None else rule
        lr = self.lr if lr is None else lr
        check_choice("rule", rule, RULES)
        check_positive("lr", lr)
        if self.last is None:
            raise UnigradError("Decorrelation.update needs a forward pass in training mode first")
        rows = self.last.to(self.R.dtype)
        b, n = rows.shape
        a = None
        if need_a or 2 * b >= n:
            c = rows.T @ rows / b
            eye = torch.eye(n, dtype=c.dtype, device=c.device)
            a = eye - lr * (c - eye if rule == "cov-identity" else c - torch.diag_embed(torch.diagonal(c)))
        if 2 * b < n:
            d = torch.ones(n, dtype=rows.dtype, device=rows.device) if rule == "cov-identity" else rows.pow(2).mean(0)
            self.R.sub_(lr * (rows.T @ (rows @ self.R) / b - d[:, None] * self.R))
        else:
            assert a is not None
            self.R.copy_(a @ self.R)
        self.step += 1
        self.last = None  # statistics are used once: the next update needs a new training-mode forward
        return a if need_a else None


class _DecorrelatedLayer(nn.Module):
    """A :class:`Decorrelation` paired with the layer it feeds (``self.inner``): the shared parts."""

    decor: Decorrelation
    compensate: bool

    @property
    def inner(self) -> nn.Linear | nn.Conv2d:
        raise NotImplementedError

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

    @property
    def inner(self) -> nn.Linear:
        return self.linear

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

    @property
    def inner(self) -> nn.Conv2d:
        return self.conv

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


def mean_offdiag(c: Tensor) -> float:
    """Mean absolute off-diagonal entry of a square matrix (0 for a 1×1 matrix)."""
    n = c.shape[0]
    if n < 2:
        return 0.0
    return float((c.abs().sum() - c.diagonal().abs().sum()) / (n * (n - 1)))


DECORRELATION_OPTIONS = ("rule", "lr", "sample", "compensate", "conv")


def check_decorrelation(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate decorrelation options (the trainer's ``decorrelation`` option, those of :class:`Decorrelated`);
    return a copy (``None`` stays ``None``)."""
    if options is None:
        return None
    if not isinstance(options, dict):
        raise UnigradError(f"option decorrelation must be a dict of {', '.join(DECORRELATION_OPTIONS)} or None")
    if "seed" in options:
        raise UnigradError("decorrelation option seed is set by the run's seed; remove it")
    for key in options:
        if key not in DECORRELATION_OPTIONS:
            raise unknown_name("decorrelation option", str(key), DECORRELATION_OPTIONS)
    opts = dict(options)
    if "rule" in opts:
        check_choice("decorrelation rule", opts["rule"], RULES)
    if "lr" in opts:
        lr = opts["lr"]
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or not lr > 0:
            raise UnigradError(f"option decorrelation lr must be a finite number > 0, got {lr!r}")
    if opts.get("sample") is not None:
        check_positive("decorrelation sample", opts["sample"], integer=True)
    for key in ("compensate", "conv"):
        if key in opts and not isinstance(opts[key], bool):
            raise UnigradError(f"option decorrelation {key} must be true or false, got {opts[key]!r}")
    return opts


# the decorrelation options of the decorrelated methods (dbp, dnp, dinp, danp) unless given; why lr 1e-3 and not
# the 1e-4 of :func:`decorrelate` (the rate used with DANP in recurrent networks): unigrad.train.methods' docstring
DECORRELATION_DEFAULTS: dict[str, Any] = {
    "rule": "cov-identity",
    "lr": 1e-3,
    "sample": 1024,
    "compensate": False,
    "conv": True,
}


def _unrecorded(model: nn.Module) -> bool:
    """Whether some decorrelation of ``model`` has recorded no statistics since its last update."""
    return any(m.last is None for m in model.modules() if isinstance(m, Decorrelation))


class Decorrelated(Estimator):
    """A decorrelated method (DBP, DNP, DINP, DANP): ``base`` trains the weights of a model whose layers get
    decorrelation matrices ``R`` (:func:`decorrelate`), and ``R`` learns by its local rule after every
    optimizer step (:func:`update_decorrelation`). ``unigrad.make_estimator("danp")`` builds one.

    A method is an estimator, a model transformation and an update, so using it takes two calls more than a
    plain estimator: :meth:`prepare` once, before the optimizer is made, and :meth:`update` after every
    ``optimizer.step()``::

        est = unigrad.make_estimator("danp", probes=4, sigma=1e-3, seed=0)
        model = est.prepare(model)                   # nn.Linear -> DecorrelatedLinear, same Parameters
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for x, y in loader:
            optimizer.zero_grad()
            est.estimate(model, unigrad.supervised(F.cross_entropy, x, y))
            optimizer.step()
            est.update(model)                        # R <- (I - lr·M)·R from the step's statistics

    This is the training loop of :func:`unigrad.train.train` for a decorrelated method, step for step, so the
    two end bitwise equal. :meth:`estimate` is ``base``'s; when none of ``base``'s passes was a plain
    training-mode forward (the batched probes of ``spsa``, the forward-mode passes of ``forward-gradient``),
    it runs the objective once more, without gradients, to record the statistics of the update, and adds that
    forward (the batch, in samples) to the cost. The state (:meth:`state_dict`) is ``base``'s; the matrices
    ``R`` (buffers) and the update counters (each :class:`Decorrelation`'s extra state) are in the model's
    ``state_dict``.

    Args:
        base: the estimator that trains the weights (its ``seed`` also keys the update's subsample).
        name: the method's name (``"danp"``); ``"<base name>+decorrelation"`` by default.
        rule: ``"offdiag"`` or ``"cov-identity"`` (default ``"cov-identity"``), as in :func:`decorrelate`.
        lr: decorrelation rate ``η_d > 0`` (default ``1e-3``).
        sample: rows of a batch recorded for an update (default 1024; ``None``: all).
        compensate: apply ``W ← W·A⁻¹`` after each update, keeping the function unchanged (default False).
        conv: decorrelate ``nn.Conv2d`` layers patch-wise too (default True).
    """

    def __init__(self, base: Estimator, name: str | None = None, **decorrelation: Any) -> None:
        if not isinstance(base, Estimator) or isinstance(base, Decorrelated):
            raise UnigradError(f"Decorrelated wraps an estimator that is not decorrelated, got {type(base).__name__}")
        self.base = base
        self.name = f"{base.name}+decorrelation" if name is None else name  # type: ignore[misc]
        self.order = base.order  # type: ignore[misc]
        self.description = base.description  # type: ignore[misc]
        opts = check_decorrelation({**DECORRELATION_DEFAULTS, **decorrelation})
        assert opts is not None
        self.decorrelation: dict[str, Any] = opts

    def __getattr__(self, key: str) -> Any:
        """The wrapped estimator's options and attributes (``probes``, ``local_losses``)."""
        if key == "base":  # not set yet: no recursion during construction
            raise AttributeError(key)
        return getattr(self.base, key)

    @property
    def seed(self) -> int:  # type: ignore[override]
        return self.base.seed

    @property
    def write_grad(self) -> bool:  # type: ignore[override]
        """``base``'s: whether it writes ``.grad``."""
        return self.base.write_grad

    def prepare_model(self, model: nn.Module, example_inputs: Tensor, seed: int) -> nn.Module:
        """``base``'s (the decorrelation itself is :meth:`prepare`)."""
        return self.base.prepare_model(model, example_inputs, seed)

    @property
    def step(self) -> int:  # type: ignore[override]
        return self.base.step

    def prepare(self, model: nn.Module) -> nn.Module:
        """Decorrelate ``model`` in place (:func:`decorrelate` with this method's options, keyed by the seed) and
        return it. Call it once, before the optimizer is made (the parameters stay the same objects)."""
        return decorrelate(model, seed=self.seed, **self.decorrelation)

    def estimate(self, model: nn.Module, objective: Objective) -> Estimate:
        """``base``'s estimate on the decorrelated ``model``, recording the statistics of :meth:`update` (above)."""
        if isinstance(model, nn.Module) and not any(isinstance(m, _PAIRED) for m in model.modules()):
            raise UnigradError(
                f"{self.name} trains a decorrelated model, and this one has no decorrelation layer: call "
                "model = estimator.prepare(model) once, before making the optimizer"
            )
        est = self.base.estimate(model, objective)
        if model.training and _unrecorded(model):
            with torch.no_grad():
                losses = objective(model)
            samples = int(losses.shape[0]) if isinstance(losses, Tensor) and losses.dim() > 0 else 1
            est = replace(est, cost=est.cost + Cost(forwards=samples))
        return est

    def update(self, model: nn.Module) -> dict[str, float]:
        """Update every decorrelation of ``model`` from the statistics of the step (:func:`update_decorrelation`);
        call it after ``optimizer.step()``."""
        return update_decorrelation(model)

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        raise NotImplementedError  # estimate() is base's

    def state_dict(self) -> dict[str, Any]:
        """``base``'s state."""
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``, a :meth:`state_dict` of the same method."""
        self.base.load_state_dict(state)

    def min_forwards_per_sample(self) -> float:
        return self.base.min_forwards_per_sample()

    def options(self) -> dict[str, Any]:
        """``base``'s options and the decorrelation's (under ``decor_<key>``, as in a method spec)."""
        return {**self.base.options(), **{f"decor_{k}": v for k, v in self.decorrelation.items()}}
