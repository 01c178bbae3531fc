"""Learning dynamics: diagnostics and experiments on how estimators converge and scale.

Its experiments are listed in :data:`unigrad.experiments.EXPERIMENTS`.
"""
