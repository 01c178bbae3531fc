"""Optimizers that step what an estimator returns when it is not a dense ``.grad`` (:class:`ReplaySGD`), and update
rules of the zeroth-order literature that are ``torch.optim`` optimizers over ``.grad`` (:class:`SignSGD`,
:class:`ConserveSGD`; every estimator writes ``.grad``, which any ``torch.optim`` optimizer steps)."""

from unigrad.optim.conserve import ConserveSGD
from unigrad.optim.replay_sgd import ReplaySGD
from unigrad.optim.sign_sgd import SignSGD

__all__ = ["ConserveSGD", "ReplaySGD", "SignSGD"]
