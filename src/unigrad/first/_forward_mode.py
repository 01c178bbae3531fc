"""The setting every forward-mode (JVP) pass of the first-order room runs in.

:func:`forward_mode` turns off autograd recording (the tangents carry the derivatives), hides the
deprecation warning PyTorch's own forward-AD decompositions raise on first use, and restricts
``F.scaled_dot_product_attention`` to its math backend: the fused CPU kernels (flash attention,
chosen by transformer models such as Hugging Face's BERT when dropout is off) have no forward-mode
derivative, while the math backend is built from differentiable operations. Models without
attention are unaffected; with attention the derivatives are the same function, computed unfused.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


@contextlib.contextmanager
def forward_mode() -> Iterator[None]:
    """No autograd graph, no forward-AD decomposition warnings, attention on the math backend."""
    with torch.no_grad(), warnings.catch_warnings(), sdpa_kernel(SDPBackend.MATH):
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=DeprecationWarning)
        yield
