"""Third-party black-box optimizers as order-0 estimators: pycma, nevergrad and EvoTorch on an ``nn.Module``.

Each adapter runs one generation of its peer per :meth:`~unigrad.core.estimator.Estimator.estimate` and writes
``θ − m'`` (``m'`` the peer's new centre) into ``.grad``, so ``torch.optim.SGD(lr=1)`` takes the peer's own
step; the trainer, cost accounting and reports treat them like unigrad's estimators. The libraries are
optional (``pip install -e .[peers]``) and imported only when an adapter is made. See
``docs/peers-adapters.md`` and :mod:`unigrad.peers._adapter` for the rules (SGD with lr 1, cost ``λ·B``
forwards per generation, pickled state).

Registry names: ``cma``, ``sep-cma`` (:mod:`unigrad.peers.cma`), ``nevergrad`` (:mod:`unigrad.peers.nevergrad`),
``pgpe``, ``snes``, ``cem``, ``xnes`` (:mod:`unigrad.peers.evotorch`).
"""

from unigrad.peers._adapter import PeerEstimator

__all__ = ["PeerEstimator"]
