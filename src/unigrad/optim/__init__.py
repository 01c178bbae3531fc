"""Optimizers that step what an estimator returns when it is not a dense ``.grad`` (every other estimator
writes ``.grad``, which any ``torch.optim`` optimizer steps)."""

from unigrad.optim.replay_sgd import ReplaySGD

__all__ = ["ReplaySGD"]
