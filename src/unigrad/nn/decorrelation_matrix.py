"""The decorrelation matrix: a :class:`Decorrelation` module holds ``R``, maps ``x`` to ``x̂ = R·x``, records the
rows of its training-mode inputs and changes ``R`` by one of the :data:`RULES`.

The rules, the options and when inputs are recorded are described in :mod:`unigrad.nn.decorrelation`;
the layers that pair a :class:`Decorrelation` with the ``nn.Linear`` or ``nn.Conv2d`` it feeds are in
:mod:`unigrad.nn.decorrelated_layers`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.rng import generator

RULES = ("offdiag", "cov-identity")

_SAMPLE_TAG = 0xDEC0


def check_sample(sample: int | None) -> None:
    """Refuse a ``sample`` (rows recorded per update) that is not ``None`` or an integer > 0."""
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
        rule: ``"offdiag"`` or ``"cov-identity"`` (see :mod:`unigrad.nn.decorrelation`).
        lr: decorrelation rate ``η_d > 0``.
        sample: rows of each batch recorded for the update (``None``: all).
        seed: key of the subsample stream.
        dtype, device: of ``R``.
    """

    R: Tensor
    rowwise = True  # row by row, and the subsample is drawn from its own generator
    static_buffers = ("R",)  # the forward never changes R (only update() does): an estimator step need not track it

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
        check_sample(sample)
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

    def _recorded(self) -> Tensor:
        """:attr:`last`, refused when no training-mode forward has recorded inputs since the last update."""
        last = self.last
        if last is None:
            raise UnigradError("Decorrelation.update needs a forward pass in training mode first")
        return last

    def covariance(self) -> Tensor:
        """``C = x̂ᵀx̂ / B`` of the last recorded inputs (second moment, not mean-centred)."""
        last = self._recorded()
        return last.T @ last / last.shape[0]

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
        rows = self._recorded().to(self.R.dtype)
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


def mean_offdiag(c: Tensor) -> float:
    """Mean absolute off-diagonal entry of a square matrix (0 for a 1×1 matrix)."""
    n = c.shape[0]
    if n < 2:
        return 0.0
    return float((c.abs().sum() - c.diagonal().abs().sum()) / (n * (n - 1)))
