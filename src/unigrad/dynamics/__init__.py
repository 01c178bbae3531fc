"""Learning dynamics: the diagnostics recorded during training (:mod:`unigrad.dynamics.diagnostics`).

The experiments on how estimators converge and scale live in :mod:`unigrad.experiments`.
"""
