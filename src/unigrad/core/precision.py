"""Precision guard: a perturbation too small to change the parameters estimates zero, silently.

In float16/bfloat16 (and, for large weights, even float32) ``fl(θ + σu) == θ`` when σ·|u| is
below half a unit in the last place of θ. Then every finite difference is exactly 0 and the
"gradient" is 0. :func:`warn_if_sigma_too_small` warns once per (dtype, σ) when the typical
perturbation is below the typical spacing of the parameters' floating-point grid.

The trainer's float32 master weights (its ``MasterWeights``) keep the optimizer's
updates from rounding away, but the estimators perturb the half-precision model itself, so this guard
still applies to half-precision runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

_WARNED: set[tuple[torch.dtype, float]] = set()


def warn_if_sigma_too_small(params: Sequence[tuple[str, Tensor]], sigma: float) -> bool:
    """Warn (once per dtype and σ) if σ is below half the median float spacing of the parameters.

    Returns True if it warned (or would have, had it not warned already).
    """
    too_small = False
    for name, p in params:
        if not p.is_floating_point() or p.numel() == 0:
            continue
        eps = torch.finfo(p.dtype).eps
        median = float(p.detach().reshape(-1)[:65536].abs().float().median())  # sliced first: no full-size copy
        spacing = eps * median
        if sigma < 0.5 * spacing:
            too_small = True
            key = (p.dtype, sigma)
            if key not in _WARNED:
                _WARNED.add(key)
                warnings.warn(
                    f"sigma={sigma:g} is below the {p.dtype} spacing (~{spacing:.2g}) of parameter {name!r}: "
                    "perturbations round away and the estimate is zero; raise sigma or use float32",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return too_small
