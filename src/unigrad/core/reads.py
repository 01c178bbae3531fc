"""Perturbing parameters where the forward reads them, never writing them.

:class:`PerturbedReads` is a ``TorchFunctionMode``: while it is active, every torch function that reads one of
the given parameters gets a perturbed value instead, computed by a caller's function when it is read and dropped
after the call. The parameters themselves are never written, so nothing has to be restored (bitwise, by
construction), and the extra memory is the perturbed copy of the one tensor in use. Reading metadata (shape,
dtype, …) sees the parameter itself. ``F.embedding`` may look up the perturbed rows only, if the caller says how
(``rows``), so a word-embedding matrix is never perturbed whole.

Used by the zeroth-order estimators that perturb in the forward (:class:`~unigrad.zeroth.mezo.MeZO` with
``perturb="forward"`` and the structured probes of :mod:`unigrad.zeroth._structured`). A model that modifies its
parameters during the forward, or reads them other than through torch functions, is not supported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from unigrad.core.probe import reads_metadata

Value = Callable[[int, Tensor], Tensor]
"""``value(k, p)``: the perturbed value of parameter ``k`` (``p`` itself is passed in), shaped like ``p``."""

Rows = Callable[[int, Tensor, Tensor], Tensor]
"""``rows(k, weight, ids)``: the perturbed rows ``weight[ids]`` of embedding parameter ``k``."""


def _embedding_args(input: Tensor, weight: Tensor, padding_idx: Any = None, max_norm: Any = None, *_: Any, **__: Any):
    return input, weight, max_norm


class PerturbedReads(TorchFunctionMode):
    """Gives every torch function that reads one of ``params`` the value ``value(k, p)`` instead (module docs).

    Args:
        params: the parameters to perturb; a parameter's position is its ``k``.
        value: the perturbed value of parameter ``k``.
        rows: if given, ``F.embedding`` of a 2-d parameter without ``max_norm`` looks up ``rows(k, weight, ids)``
            instead of perturbing the whole matrix.
    """

    def __init__(self, params: Sequence[Tensor], value: Value, rows: Rows | None = None) -> None:
        super().__init__()
        self.value, self.rows = value, rows
        self.index = {id(p): (k, p) for k, p in enumerate(params)}

    def _find(self, a: Any) -> int | None:
        hit = self.index.get(id(a)) if isinstance(a, Tensor) else None
        return hit[0] if hit is not None and hit[1] is a else None

    def _uses(self, a: Any) -> bool:
        return self._find(a) is not None or (isinstance(a, (list, tuple)) and any(self._find(b) is not None for b in a))

    def _swap(self, a: Any) -> Any:
        if isinstance(a, (list, tuple)):
            return type(a)(self._swap(b) for b in a)
        k = self._find(a)
        return a if k is None else self.value(k, a)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if reads_metadata(func) or not any(self._uses(a) for a in (*args, *kwargs.values())):
            return func(*args, **kwargs)
        if func is F.embedding and self.rows is not None:
            ids, weight, max_norm = _embedding_args(*args, **kwargs)
            k = self._find(weight)
            if k is not None and max_norm is None and weight.dim() == 2 and self._find(ids) is None:
                return self.rows(k, weight, ids)
        return func(*self._swap(args), **{name: self._swap(v) for name, v in kwargs.items()})
