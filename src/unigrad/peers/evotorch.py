"""EvoTorch's Gaussian search algorithms as peers: the :class:`PGPE`, :class:`SNES`, :class:`XNES` and :class:`CEM`
adapters (the rules are in :mod:`unigrad.peers._adapter`).

How the adapters drive EvoTorch. EvoTorch's own ``step()`` updates the distribution from the *previous*
generation's evaluations and then samples and evaluates a new one. The adapter applies each update right after its
generation is evaluated (through the searcher's ``_update_distribution``, then marks the next step as a first step),
so the move of every call uses that call's batch, as with the other peers, and the first call already moves.
Each ``seed`` keys the ``Problem``'s own ``torch.Generator`` (EvoTorch samples from it, not from the global RNG).
The search runs on the CPU in float64 whatever the model's device. EvoTorch's informational log lines are
silenced while a peer is built and stepped.

What every adapter here does. Each call runs one ``searcher.step()`` of a Gaussian search distribution with
centre ``m``: λ candidates ``x_i = m + (spread)·z_i``, ``z_i ~ N(0, I)``, ``i = 1 … λ`` (each class gives its
spread) are evaluated by the adapter's objective and the distribution is updated. The centre after the step is
``searcher.status["center"]``; the adapter writes ``θ − m'`` into ``.grad`` and SGD with lr 1 moves the
parameters there. Options every adapter takes: ``sigma0``, the initial standard deviation of every coordinate
(EvoTorch's ``stdev_init``); ``max_dim``, the largest d accepted (``None``: no limit); ``seed`` (above).

Cost: ``λ·B`` forward samples per call (one generation of λ candidates, each evaluated on the batch of B);
``Estimate.loss`` is the mean candidate loss (a probe mean).

Reference: N. E. Toklu et al., "EvoTorch: scalable evolutionary computation in Python", arXiv:2302.12600 (2023).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from unigrad.core.errors import UnigradError, check_choice
from unigrad.core.options import check_fraction, check_number
from unigrad.core.rng import key_hash
from unigrad.peers._adapter import PeerEstimator, check_popsize, needs

_PROBLEM_TAG = 0xE707
_PROBLEM: type | None = None


def _problem_class() -> type:
    """An EvoTorch ``Problem`` ("min") whose batch evaluation calls the adapter's ``fn`` (made once, lazily)."""
    global _PROBLEM
    if _PROBLEM is None:
        evotorch = needs("evotorch", "evotorch", "evotorch")

        class _CallbackProblem(evotorch.Problem):
            fn: Callable[[np.ndarray], np.ndarray] | None = None

            def _evaluate_batch(self, batch: Any) -> None:
                if self.fn is None:
                    raise UnigradError("an evotorch peer was stepped outside estimate()")
                X = batch.values.as_subclass(torch.Tensor).detach().cpu().numpy().copy()
                batch.set_evals(torch.as_tensor(self.fn(X), dtype=torch.float64))

        _CallbackProblem.__module__ = __name__
        _CallbackProblem.__qualname__ = "_CallbackProblem"
        _PROBLEM = _CallbackProblem
    return _PROBLEM


def __getattr__(name: str) -> Any:  # so a pickled peer finds its Problem class in a fresh process
    if name == "_CallbackProblem":
        return _problem_class()
    raise AttributeError(name)


@contextmanager
def _quiet() -> Iterator[None]:
    """EvoTorch logs at INFO when a Problem is made; raise its logger's level for the duration."""
    log = logging.getLogger("evotorch")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _number(option: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    check_number(option, value, low=0, low_inclusive=False)


class EvoTorchPeer(PeerEstimator):
    """Base of the EvoTorch adapters: subclasses give :meth:`_algorithm` and :meth:`_searcher_options`."""

    library = "evotorch"
    _options: tuple[str, ...] = ("popsize", "sigma0", "max_dim")

    def __init__(self, popsize: int | None, sigma0: float, max_dim: int | None, seed: int) -> None:
        super().__init__(max_dim, seed)
        check_popsize(popsize)
        _number("sigma0", sigma0, allow_none=False)
        needs(self.name, "evotorch", "evotorch")
        self.popsize = popsize
        self.sigma0 = float(sigma0)

    @staticmethod
    def _algorithm() -> Any:
        """The EvoTorch searcher class (imported when first needed)."""
        raise NotImplementedError

    def _searcher_options(self) -> dict[str, Any]:
        """The searcher's own keyword arguments, besides population size, initial spread and centre."""
        raise NotImplementedError

    def _searcher(self, problem: Any, center: torch.Tensor) -> Any:
        return self._algorithm()(
            problem, popsize=self.popsize, stdev_init=self.sigma0, center_init=center, **self._searcher_options()
        )

    def _build(self, x0: np.ndarray) -> Any:
        with _quiet():
            problem = _problem_class()(
                "min",
                solution_length=x0.size,
                dtype=torch.float64,
                device="cpu",
                seed=key_hash(self.seed, _PROBLEM_TAG) % 2**63,
            )
            return self._searcher(problem, torch.as_tensor(x0, dtype=torch.float64))

    def _generation(self, f: Callable[[np.ndarray], np.ndarray]) -> None:
        searcher = self._peer
        problem = searcher.problem
        problem.fn = f
        try:
            with _quiet():
                searcher.step()  # a first step: sample around the centre and evaluate, no update yet
        finally:
            problem.fn = None  # the peer is pickled by state_dict(); it must not hold the callback
        # EvoTorch updates the distribution at the start of the *next* step, from these evaluations; do it
        # now, so this call's move uses this batch, and mark the next step as a first step again
        pop = searcher._population
        fitness = pop.access_evals()[:, searcher._obj_index]
        gradients = searcher._distribution.compute_gradients(
            pop.access_values(keep_evals=True),
            fitness,
            objective_sense=problem.senses[searcher._obj_index],
            ranking_method=searcher._ranking_method,
        )
        searcher._update_distribution(gradients)
        searcher._first_iter = True

    def _centre(self) -> np.ndarray:
        self._peer.clear_status()  # the status caches the centre of before the update above
        return self._peer.status["center"].as_subclass(torch.Tensor).detach().cpu().numpy().astype(np.float64)


class PGPE(EvoTorchPeer):
    """PGPE from EvoTorch, on all trainable parameters (a peer; see :mod:`unigrad.peers._adapter`).

    One generation samples around the centre ``m``::

        x_i = m + σ ⊙ z_i,   z_i ~ N(0, I),   i = 1 … λ

    ``pgpe`` — policy gradients with parameter-based exploration, symmetric (antithetic) sampling,
    centered ranks. Its centre gradient ``∇m`` is handed to an optimizer: ``m ← m + Adam(∇m; center_lr)``,
    and ``σ ← σ + stdev_lr·∇σ`` (change capped at 20 %).

    Args:
        popsize: λ; pgpe needs it even (default: 16).
        sigma0: EvoTorch's ``stdev_init`` (default: 0.05).
        center_lr: learning rate of the centre, taken as it is (default: 0.01).
        stdev_lr: learning rate of the standard deviation, taken as it is (default: 0.1).
        optimizer: pgpe's optimizer of the centre (``"adam"``, ``"clipup"`` or ``"sgd"``) (default: ``"adam"``).
        max_dim: the largest d accepted (default: None).
        seed: keys the ``Problem``'s own ``torch.Generator`` (default: 0).

    References:
        F. Sehnke, C. Osendorfer, T. Rückstieß, A. Graves, J. Peters, J. Schmidhuber, "Parameter-exploring
        policy gradients", Neural Networks 23(4) (2010).
    """

    name = "pgpe"
    description = "EvoTorch PGPE (Sehnke et al. 2010), symmetric sampling, Adam on the centre; peer, needs .[peers]"
    _options = ("popsize", "sigma0", "center_lr", "stdev_lr", "optimizer", "max_dim")

    def __init__(
        self,
        popsize: int = 16,
        sigma0: float = 0.05,
        center_lr: float = 0.01,
        stdev_lr: float = 0.1,
        optimizer: str = "adam",
        max_dim: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(popsize, sigma0, max_dim, seed)
        if popsize % 2:
            raise UnigradError(f"option popsize of pgpe must be even (symmetric pairs), got {popsize}")
        _number("center_lr", center_lr, allow_none=False)
        _number("stdev_lr", stdev_lr, allow_none=False)
        check_choice("optimizer", optimizer, ("adam", "clipup", "sgd"))
        self.center_lr, self.stdev_lr, self.optimizer = float(center_lr), float(stdev_lr), optimizer

    @staticmethod
    def _algorithm() -> Any:
        from evotorch.algorithms import PGPE as Searcher

        return Searcher

    def _searcher_options(self) -> dict[str, Any]:
        return {
            "center_learning_rate": self.center_lr,
            "stdev_learning_rate": self.stdev_lr,
            "optimizer": self.optimizer,
        }


class SNES(EvoTorchPeer):
    """SNES from EvoTorch, on all trainable parameters (a peer; see :mod:`unigrad.peers._adapter`).

    One generation samples around the centre ``m``::

        x_i = m + σ ⊙ z_i,   z_i ~ N(0, I),   i = 1 … λ

    ``snes`` — separable natural evolution strategies: ``m ← m + η_m Σ u_i σ z_i``,
    ``σ ← σ·exp(½ η_σ Σ u_i (z_i² − 1))`` with rank utilities ``u_i``. Learning rates default to EvoTorch's
    (``η_m = 1``, ``η_σ = (3 + ln d)/(5√d)``).

    Args:
        popsize: λ; ``None``: EvoTorch's 4 + ⌊3 ln d⌋ (default: None).
        sigma0: EvoTorch's ``stdev_init`` (default: 0.05).
        center_lr: learning rate of the centre; ``None`` means EvoTorch's default (default: None).
        stdev_lr: learning rate of the standard deviation; ``None`` means EvoTorch's default, and a given
            ``stdev_lr`` *multiplies* EvoTorch's default (its ``scale_learning_rate``) (default: None).
        max_dim: the largest d accepted (default: None).
        seed: keys the ``Problem``'s own ``torch.Generator`` (default: 0).

    References:
        T. Schaul, T. Glasmachers, J. Schmidhuber, "High dimensions and heavy tails for natural evolution
        strategies", GECCO (2011).
    """

    name = "snes"
    description = "EvoTorch separable NES (Schaul et al. 2011), diagonal Gaussian; peer, needs .[peers]"
    _options = ("popsize", "sigma0", "center_lr", "stdev_lr", "max_dim")

    def __init__(
        self,
        popsize: int | None = None,
        sigma0: float = 0.05,
        center_lr: float | None = None,
        stdev_lr: float | None = None,
        max_dim: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(popsize, sigma0, max_dim, seed)
        _number("center_lr", center_lr)
        _number("stdev_lr", stdev_lr)
        self.center_lr, self.stdev_lr = center_lr, stdev_lr

    @staticmethod
    def _algorithm() -> Any:
        from evotorch.algorithms import SNES

        return SNES

    def _searcher_options(self) -> dict[str, Any]:
        return {"center_learning_rate": self.center_lr, "stdev_learning_rate": self.stdev_lr}


class XNES(SNES):
    """xNES from EvoTorch, on all trainable parameters (a peer; see :mod:`unigrad.peers._adapter`).

    One generation samples around the centre ``m``::

        x_i = m + A z_i,   z_i ~ N(0, I),   i = 1 … λ

    ``xnes`` — exponential natural evolution strategies: full covariance ``AAᵀ``, O(d²) memory and O(d³)
    time per generation, so ``max_dim`` is 1000 by default. Learning rates default to EvoTorch's. The options are
    :class:`SNES`'s; only the default of ``max_dim`` differs.

    Args:
        popsize: λ (default: None).
        sigma0: EvoTorch's ``stdev_init`` (default: 0.05).
        center_lr: learning rate of the centre (default: None).
        stdev_lr: multiplies EvoTorch's learning rate of the standard deviation (default: None).
        max_dim: the largest d accepted (default: 1000).
        seed: keys the ``Problem``'s own ``torch.Generator`` (default: 0).

    References:
        T. Glasmachers, T. Schaul, Y. Sun, D. Wierstra, J. Schmidhuber, "Exponential natural evolution
        strategies", GECCO (2010).
    """

    name = "xnes"
    description = "EvoTorch exponential NES (Glasmachers et al. 2010), full covariance; peer, needs .[peers]"

    def __init__(
        self,
        popsize: int | None = None,
        sigma0: float = 0.05,
        center_lr: float | None = None,
        stdev_lr: float | None = None,
        max_dim: int | None = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__(popsize, sigma0, center_lr, stdev_lr, max_dim, seed)

    @staticmethod
    def _algorithm() -> Any:
        from evotorch.algorithms import XNES

        return XNES


class CEM(EvoTorchPeer):
    """The cross-entropy method from EvoTorch, on all trainable parameters (a peer; see :mod:`unigrad.peers._adapter`).

    One generation samples around the centre ``m``::

        x_i = m + σ ⊙ z_i,   z_i ~ N(0, I),   i = 1 … λ

    ``cem`` — cross-entropy method: ``m`` and ``σ`` become the mean and standard deviation of the best
    ``elite_ratio·λ`` candidates.

    Args:
        popsize: λ (default: 16).
        sigma0: EvoTorch's ``stdev_init`` (default: 0.05).
        elite_ratio: cem's fraction of candidates the distribution is refitted to (default: 0.25).
        max_dim: the largest d accepted (default: None).
        seed: keys the ``Problem``'s own ``torch.Generator`` (default: 0).

    References:
        R. Rubinstein, "The cross-entropy method for combinatorial and continuous optimization", Methodology
        and Computing in Applied Probability 1(2) (1999).
    """

    name = "cem"
    description = "EvoTorch cross-entropy method (Rubinstein 1999), refit to the elite; peer, needs .[peers]"
    _options = ("popsize", "sigma0", "elite_ratio", "max_dim")

    def __init__(
        self,
        popsize: int = 16,
        sigma0: float = 0.05,
        elite_ratio: float = 0.25,
        max_dim: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(popsize, sigma0, max_dim, seed)
        check_fraction("elite_ratio", elite_ratio, low_inclusive=False, high_inclusive=True)
        if int(popsize * elite_ratio) < 2:
            raise UnigradError(
                f"options popsize={popsize} and elite_ratio={elite_ratio} leave fewer than 2 elite candidates; "
                f"raise either"
            )
        self.elite_ratio = float(elite_ratio)

    @staticmethod
    def _algorithm() -> Any:
        from evotorch.algorithms import CEM as Searcher

        return Searcher

    def _searcher_options(self) -> dict[str, Any]:
        return {"parenthood_ratio": self.elite_ratio}
