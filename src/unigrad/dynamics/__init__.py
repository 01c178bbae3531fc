"""Learning dynamics: the diagnostics recorded during training (:mod:`unigrad.dynamics.diagnostics`),
made of the pure measures of :mod:`unigrad.dynamics.measures`.

The experiments on how estimators converge and scale live in :mod:`unigrad.experiments`.
"""
