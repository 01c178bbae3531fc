"""Any nevergrad optimizer as a peer: the :class:`Nevergrad` adapter (rules in :mod:`unigrad.peers._adapter`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.rng import key_hash
from unigrad.peers._adapter import PeerEstimator, check_sigma0, needs

_PARAM_TAG = 0x9E5
_SUGGESTED = ("NGOpt", "CMA", "DiagonalCMA", "TwoPointsDE", "OnePlusOne", "PSO")


class Nevergrad(PeerEstimator):
    """Any nevergrad optimizer on all trainable parameters (a peer; see :mod:`unigrad.peers._adapter`).

    nevergrad (Rapin & Teytaud, 2018, github.com/facebookresearch/nevergrad) optimizes an ``ng.p.Array``
    initialised at θ with mutation scale ``sigma0``. One generation::

        for i = 1 … λ:  x_i = optimizer.ask();  optimizer.tell(x_i, f(x_i))     (all on this call's batch)
        m' = optimizer.provide_recommendation().value

    The adapter writes ``θ − m'`` into ``.grad``; SGD with lr 1 moves the parameters to ``m'``. The centre
    ``m'`` is nevergrad's *recommendation*, its best estimate of the optimum: the distribution mean for
    CMA-like methods, but for others (``OnePlusOne``, ``TwoPointsDE``) the best point so far, whose loss was
    measured on an earlier batch.

    Candidates are asked and told one at a time: with nevergrad 1.0.12, asking a whole batch before telling
    makes its CMA in about 1,000 dimensions fail after ~1,400 evaluations ("Mean shift samples are expected but
    missing", pycma's TPA step-size rule). Other library failures (some meta-model choices raise a
    ``TypeError`` with numpy 2.4) are re-raised as a :class:`UnigradError` naming the algorithm and suggesting
    another.

    Cost: ``λ·B`` forward samples per call (one generation of λ candidates, each evaluated on the batch of B);
    ``Estimate.loss`` is the mean candidate loss (a probe mean).

    Args:
        algorithm: a name in ``ng.optimizers.registry`` (``"NGOpt"``, the default, picks a method from the
            dimension, the budget and the number of workers; ``"CMA"``, ``"TwoPointsDE"``, ``"OnePlusOne"``,
            ``"DiagonalCMA"`` are common choices) (default: ``"NGOpt"``).
        budget: the total evaluations nevergrad plans for (``NGOpt`` uses it to choose). Training may ask for
            more; nevergrad then goes on (default: 10,000).
        popsize: candidates asked per generation, also passed as ``num_workers``; ``None``: max(16, 4 + ⌊3 ln d⌋),
            which is also nevergrad's CMA population, so a CMA generation is one ``estimate`` (default: None).
        sigma0: the mutation scale of the parameter array (default: 0.05).
        max_dim: the largest d accepted; ``None``: no limit (default: None).
        seed: keys ``parametrization.random_state``, a private numpy ``RandomState`` (default: 0).

    References:
        J. Rapin, O. Teytaud, "Nevergrad – A gradient-free optimization platform", GitHub repository (2018),
        github.com/facebookresearch/nevergrad.
    """

    name = "nevergrad"
    description = "any nevergrad optimizer (NGOpt by default) on all parameters; peer, needs .[peers]"
    library = "nevergrad"
    _options = ("algorithm", "budget", "popsize", "sigma0", "max_dim")

    def __init__(
        self,
        algorithm: str = "NGOpt",
        budget: int = 10_000,
        popsize: int | None = None,
        sigma0: float = 0.05,
        max_dim: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(max_dim, seed)
        check_positive("budget", budget, integer=True)
        if popsize is not None:
            check_positive("popsize", popsize, integer=True)
        check_sigma0(sigma0)
        ng = needs(self.name, "nevergrad", "nevergrad")
        registry = ng.optimizers.registry
        if not isinstance(algorithm, str) or algorithm not in registry:
            some = ", ".join(a for a in _SUGGESTED if a in registry)
            raise UnigradError(
                f"unknown nevergrad algorithm {algorithm!r}; valid ones include {some} "
                f"({len(registry)} in nevergrad.optimizers.registry)"
            )
        self.algorithm = algorithm
        self.budget = budget
        self.popsize = popsize
        self.sigma0 = float(sigma0)

    def _build(self, x0: np.ndarray) -> Any:
        ng = needs(self.name, "nevergrad", "nevergrad")
        workers = self.popsize or max(16, 4 + int(3 * math.log(x0.size)))
        param = ng.p.Array(init=x0).set_mutation(sigma=self.sigma0)
        param.random_state = np.random.RandomState(key_hash(self.seed, _PARAM_TAG) % 2**32)
        with self._library_errors():
            return ng.optimizers.registry[self.algorithm](
                parametrization=param, budget=self.budget, num_workers=workers
            )

    def _generation(self, f: Callable[[np.ndarray], np.ndarray]) -> None:
        # ask and tell one candidate at a time (all on this call's batch): asking a whole batch before telling
        # breaks nevergrad's CMA in ~1,000 dimensions ("Mean shift samples are expected but missing")
        for _ in range(self._peer.num_workers):
            with self._library_errors():
                cand = self._peer.ask()
                x = np.asarray(cand.value, dtype=np.float64).reshape(1, -1)
            loss = f(x)[0]  # outside: the objective's own errors are not nevergrad's
            with self._library_errors():
                self._peer.tell(cand, float(loss))

    def _centre(self) -> np.ndarray:
        with self._library_errors():
            return np.asarray(self._peer.provide_recommendation().value, dtype=np.float64)

    @contextmanager
    def _library_errors(self) -> Iterator[None]:
        """Silence nevergrad's warnings; re-raise its exceptions as one-line errors naming the algorithm."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        except UnigradError:
            raise
        except Exception as exc:
            others = ", ".join(a for a in ("CMA", "TwoPointsDE", "OnePlusOne") if a != self.algorithm)
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnigradError(
                f"nevergrad algorithm {self.algorithm} failed ({type(exc).__name__}: {text}); "
                f"try another, e.g. algorithm={others}"
            ) from exc
