"""Learning dynamics: diagnostics and experiments on how estimators converge and scale.

:data:`EXPERIMENTS` names the experiments ``unigrad experiment NAME`` runs.
"""

from __future__ import annotations

EXPERIMENTS: dict[str, str] = {
    "convergence-orders": (
        "error against iteration and work for orders 0-3 on Rosenbrock and an ill-conditioned quadratic"
    ),
}
