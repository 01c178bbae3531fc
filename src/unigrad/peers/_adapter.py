"""The peer adapter: a third-party black-box optimizer behind the :class:`Estimator` contract.

A peer (pycma, nevergrad, EvoTorch) keeps its own search distribution and takes its own step. One call of
:meth:`PeerEstimator.estimate` runs one peer generation on the trainable parameters θ (flattened, float64)::

    x_1 … x_λ ~ peer.ask()                      (centred at the peer's centre m = θ)
    f_i = mean_b loss_b(x_i)                    (the objective's mean loss; the sense is minimise)
    peer.tell(f_1 … f_λ);  m' = peer's new centre
    grad = θ − m'

so ``torch.optim.SGD(lr=1)`` (no momentum, no weight decay) lands on ``m'``. The parameters are restored
bitwise before it returns. Every candidate costs one call of the objective, so a generation costs
``λ·B`` forwards (``B`` samples per call). ``Estimate.loss`` is the mean candidate loss (a probe mean).

Rules the adapter enforces:

* **SGD with lr 1.** The peer's centre must be the parameters it sees next; if another optimizer (Adam,
  a learning rate other than 1, momentum) moved them elsewhere, the next call raises a
  :class:`UnigradError` saying so.
* **Randomness.** Each peer draws from its own streams, keyed by ``key_hash(seed, …)``: its own numpy
  ``RandomState`` or ``torch.Generator`` where the library takes one, and in any case the library runs
  with the global numpy and torch CPU states swapped for private ones (saved, installed, called, saved
  back, restored). The objective itself runs on the caller's global state. The global states are
  unchanged by a call, and the same seed gives a bitwise identical run.
* **Dimension.** ``max_dim`` bounds the dimension a peer accepts (full-covariance methods are quadratic in
  memory); checked on the first call, when the dimension is first known.

``state_dict()`` holds the seed, the step and the whole peer object with its private random states,
**pickled** into a ``torch.uint8`` tensor so that checkpoints round-trip. Unpickling runs code: load only
checkpoints you trust.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from unigrad.core.cost import Cost
from unigrad.core.errors import NonFiniteLossError, UnigradError, check_positive
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, evaluate, reduce
from unigrad.core.rng import key_hash

INSTALL = "pip install -e .[peers] (torch==2.13.0 first)"
_RNG_TAG = 0x9EE2


def needs(peer: str, module: str, package: str) -> Any:
    """Import the optional ``module`` for ``peer``, or raise a :class:`UnigradError` saying how to install it."""
    import importlib
    import warnings

    try:
        with warnings.catch_warnings():  # the libraries' own deprecation notices at import time
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module(module)
    except ImportError:
        raise UnigradError(f"peer {peer} needs {package}: {INSTALL}") from None


def check_popsize(popsize: int | None) -> None:
    """Refuse a population size that is not an integer >= 2 (``None``, the library's default, passes)."""
    if popsize is not None:
        check_positive("popsize", popsize, integer=True)
        if popsize < 2:
            raise UnigradError(f"option popsize must be an integer >= 2, got {popsize!r}")


def check_sigma0(sigma0: float) -> None:
    """Refuse an initial step size that is not a finite number > 0."""
    if not (isinstance(sigma0, int | float) and math.isfinite(sigma0)) or isinstance(sigma0, bool):
        raise UnigradError(f"option sigma0 must be a finite number > 0, got {sigma0!r}")
    check_positive("sigma0", sigma0)


class PeerEstimator(Estimator):
    """Base of the peer adapters; subclasses implement :meth:`_build`, :meth:`_generation`, :meth:`_centre`.

    Args:
        max_dim: the largest number of trainable parameters accepted (``None``: no limit).
        seed: keys the peer's random streams.
    """

    order = 0
    library: ClassVar[str] = ""  # the third-party package, reported in ``info["peer"]``

    def __init__(self, max_dim: int | None = None, seed: int = 0) -> None:
        super().__init__(seed)
        if max_dim is not None:
            check_positive("max_dim", max_dim, integer=True)
        self.max_dim = max_dim
        self._peer: Any = None
        self._mean: np.ndarray | None = None  # the peer's centre after its last generation
        key = key_hash(seed, _RNG_TAG)
        self._np_state: Any = np.random.RandomState(key % 2**32).get_state()
        self._torch_state = torch.Generator().manual_seed(key % 2**63).get_state()
        self._outer: tuple[Any, torch.Tensor] | None = None

    # -- hooks -----------------------------------------------------------------------------
    def _build(self, x0: np.ndarray) -> Any:
        """Return the peer object centred at ``x0`` (float64, shape ``(d,)``)."""
        raise NotImplementedError

    def _generation(self, f: Callable[[np.ndarray], np.ndarray]) -> None:
        """Run one generation of ``self._peer``; ``f(X)`` maps candidates ``(λ, d)`` to losses ``(λ,)``."""
        raise NotImplementedError

    def _centre(self) -> np.ndarray:
        """The peer's current centre (float64, ``(d,)``)."""
        raise NotImplementedError

    # -- the contract ----------------------------------------------------------------------
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        tensors = [p for _, p in params]
        theta_t = parameters_to_vector(tensors).detach()
        theta = theta_t.double().cpu().numpy()
        if self._peer is None:
            if self.max_dim is not None and theta.size > self.max_dim:
                raise UnigradError(
                    f"peer {self.name}: {theta.size} parameters exceed max_dim={self.max_dim}; raise max_dim "
                    f"(memory and time grow quadratically or worse) or use sep-cma, snes or pgpe, which scale linearly"
                )
            with self._own_rng():
                self._peer = self._build(theta.copy())
            self._mean = theta.copy()
        else:
            self._check_centre(theta, theta_t.dtype)
        originals = [p.detach().clone() for p in tensors]
        cost, seen = Cost(), []

        def f(X: np.ndarray) -> np.ndarray:
            X = np.asarray(X, dtype=np.float64).reshape(-1, theta.size)
            out = np.empty(len(X))
            with self._global_rng(), torch.no_grad():
                for i, x in enumerate(X):
                    vector_to_parameters(torch.as_tensor(x).to(theta_t), tensors)
                    out[i] = float(reduce(evaluate(objective, model, cost)).mean())
            if not np.isfinite(out).all():
                raise NonFiniteLossError(f"peer {self.name}: a candidate's loss became {out[~np.isfinite(out)][0]}")
            seen.append(out)
            return out

        try:
            with self._own_rng():
                self._generation(f)
                new = np.array(self._centre(), dtype=np.float64).reshape(-1)
        finally:
            with torch.no_grad():
                for p, o in zip(tensors, originals):
                    p.copy_(o)
        self._mean = new
        direction = theta_t - torch.as_tensor(new).to(theta_t)
        with torch.no_grad():
            for p, g in zip(tensors, direction.split([p.numel() for p in tensors])):
                p.grad = g.view_as(p).clone()
        losses = np.concatenate(seen) if seen else np.full(1, np.nan)
        info = {"sense": "minimize", "population": int(losses.size), "best_loss": float(losses.min())}
        info["peer"] = self.library
        return Estimate(loss=float(losses.mean()), cost=cost, loss_is_probe_mean=True, info=info)

    def _check_centre(self, theta: np.ndarray, dtype: torch.dtype) -> None:
        assert self._mean is not None
        rtol = max(1e-5, 8 * torch.finfo(dtype).eps)
        atol = 0.1 * rtol * (1.0 + float(np.abs(theta).max(initial=0.0)))
        if self._mean.shape != theta.shape or not np.allclose(theta, self._mean, rtol=rtol, atol=atol):
            raise UnigradError(
                f"peer {self.name}: the parameters moved away from the peer's mean since the last step; a peer takes "
                f"its own step, so run peers with --optimizer sgd --lr 1 (the default; no momentum or weight decay)"
            )

    # -- randomness ------------------------------------------------------------------------
    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run the library on this peer's private global numpy/torch states; leave the caller's as they were."""
        self._outer = (np.random.get_state(), torch.get_rng_state())
        np.random.set_state(self._np_state)
        torch.set_rng_state(self._torch_state)
        try:
            yield
        finally:
            self._np_state, self._torch_state = np.random.get_state(), torch.get_rng_state()
            np.random.set_state(self._outer[0])
            torch.set_rng_state(self._outer[1])
            self._outer = None

    @contextmanager
    def _global_rng(self) -> Iterator[None]:
        """Inside :meth:`_own_rng`: run the objective on the caller's global states (dropout draws from them)."""
        if self._outer is None:
            yield
            return
        own = (np.random.get_state(), torch.get_rng_state())
        np.random.set_state(self._outer[0])
        torch.set_rng_state(self._outer[1])
        try:
            yield
        finally:
            self._outer = (np.random.get_state(), torch.get_rng_state())
            np.random.set_state(own[0])
            torch.set_rng_state(own[1])

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Seed, step and the pickled peer (a ``torch.uint8`` tensor; unpickling runs code, trust the source)."""
        state = super().state_dict()
        blob = pickle.dumps(
            {"peer": self._peer, "mean": self._mean, "numpy": self._np_state, "torch": self._torch_state},
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        state["peer"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. It unpickles the peer: load only checkpoints you trust."""
        super().load_state_dict(state)
        blob = state["peer"]
        data = pickle.load(io.BytesIO(blob.numpy().tobytes() if isinstance(blob, torch.Tensor) else bytes(blob)))
        self._peer, self._mean = data["peer"], data["mean"]
        self._np_state, self._torch_state = data["numpy"], data["torch"]
