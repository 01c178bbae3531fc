"""CMA-ES and sep-CMA-ES from pycma as peers: the :class:`CMA` and :class:`SepCMA` adapters (the rules are in
:mod:`unigrad.peers._adapter`).

Each call runs one generation of CMA-ES with mean ``m``, step size ``σ`` and covariance ``C``::

    x_i = m + σ·y_i,   y_i ~ N(0, C),   i = 1 … λ
    m' = m + c_m·Σ_{i≤μ} w_i (x_{i:λ} − m)        (x_{i:λ}: the i-th best by loss)
    C, σ updated from the evolution paths and the rank-μ update

The adapter writes ``θ − m'`` into ``.grad``; SGD with lr 1 moves the parameters to ``m'``. The two adapters differ
only in the shape of ``C`` (full or diagonal).

pycma's printing and file logging are off, and its termination criteria are disabled (a training run decides when
to stop); if pycma still reports a stop condition, generations simply go on. ``seed`` keys the sampler (a private
numpy ``RandomState`` passed as pycma's ``randn``).

Cost: ``λ·B`` forward samples per call (one generation of λ candidates, each evaluated on the batch of B);
``Estimate.loss`` is the mean candidate loss (a probe mean).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from unigrad.core.rng import key_hash
from unigrad.peers._adapter import PeerEstimator, check_popsize, check_sigma0, needs

_SAMPLER_TAG = 0xC3A


class CMA(PeerEstimator):
    """CMA-ES (full covariance) from pycma, on all trainable parameters (a peer; the generation is in
    :mod:`unigrad.peers.cma`, the rules in :mod:`unigrad.peers._adapter`).

    Registry name ``cma``: full covariance; ``C`` is d×d: O(d²) memory and O(d²)–O(d³) time per generation.

    Args:
        sigma0: initial step size σ, on the scale of network weights (default: 0.05).
        popsize: λ, candidates per generation; ``None``: pycma's default 4 + ⌊3 ln d⌋ (default: None).
        max_dim: the largest d accepted; ``None``: no limit (default: 2000).
        seed: keys the sampler (default: 0).

    References:
        N. Hansen, A. Ostermeier, "Completely derandomized self-adaptation in evolution strategies",
        Evolutionary Computation 9(2) (2001).
        pycma, Hansen et al., arXiv:1604.00772 (N. Hansen, "The CMA Evolution Strategy: A Tutorial", 2016).
    """

    name = "cma"
    description = "pycma CMA-ES (full covariance) on all parameters; peer, needs .[peers]"
    library = "pycma"
    _options = ("sigma0", "popsize", "max_dim")
    _diagonal = False

    def __init__(
        self, sigma0: float = 0.05, popsize: int | None = None, max_dim: int | None = 2000, seed: int = 0
    ) -> None:
        super().__init__(max_dim, seed)
        check_sigma0(sigma0)
        check_popsize(popsize)
        needs(self.name, "cma", "pycma")
        self.sigma0 = float(sigma0)
        self.popsize = popsize

    def _build(self, x0: np.ndarray) -> Any:
        cma = needs(self.name, "cma", "pycma")
        sampler = np.random.RandomState(key_hash(self.seed, _SAMPLER_TAG) % 2**32)
        opts: dict[str, Any] = {
            "randn": sampler.randn,
            "seed": float("nan"),  # pycma then leaves numpy's global seed alone
            "verbose": -9,
            "verb_log": 0,
            "verb_disp": 0,
            "CMA_diagonal": self._diagonal,
            "maxiter": math.inf,
            "maxfevals": math.inf,
            "timeout": math.inf,
            "tolfun": 0,
            "tolfunhist": 0,
            "tolfunrel": 0,
            "tolx": 0,
            "tolstagnation": math.inf,
            "tolflatfitness": math.inf,
            "tolconditioncov": math.inf,
            "tolupsigma": math.inf,
            "tolfacupx": math.inf,
        }
        if self.popsize is not None:
            opts["popsize"] = self.popsize
        return cma.CMAEvolutionStrategy(x0, self.sigma0, opts)

    def _generation(self, f: Callable[[np.ndarray], np.ndarray]) -> None:
        X = np.asarray(self._peer.ask(), dtype=np.float64)
        self._peer.tell(list(X), f(X).tolist())

    def _centre(self) -> np.ndarray:
        return np.asarray(self._peer.mean, dtype=np.float64)


class SepCMA(CMA):
    """sep-CMA-ES (diagonal covariance) from pycma, on all trainable parameters (a peer; the generation is in
    :mod:`unigrad.peers.cma`, the rules in :mod:`unigrad.peers._adapter`).

    Registry name ``sep-cma``: diagonal ``C`` (pycma option ``CMA_diagonal=True``): linear in d.

    Args:
        sigma0: initial step size σ, on the scale of network weights (default: 0.05).
        popsize: λ, candidates per generation; ``None``: pycma's default 4 + ⌊3 ln d⌋ (default: None).
        max_dim: the largest d accepted; ``None``: no limit (default: None).
        seed: keys the sampler (default: 0).

    References:
        R. Ros, N. Hansen, "A simple modification in CMA-ES achieving linear time and space complexity",
        Parallel Problem Solving from Nature (PPSN X) (2008).
        pycma, Hansen et al., arXiv:1604.00772.
    """

    name = "sep-cma"
    description = "pycma sep-CMA-ES (diagonal covariance, linear in d) on all parameters; peer, needs .[peers]"
    _diagonal = True

    def __init__(
        self, sigma0: float = 0.05, popsize: int | None = None, max_dim: int | None = None, seed: int = 0
    ) -> None:
        super().__init__(sigma0, popsize, max_dim, seed)
