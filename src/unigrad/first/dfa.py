"""Direct feedback alignment: the :class:`DFA` estimator (hidden layers get the output error through fixed matrices)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, check_differentiable, evaluate, reduce
from unigrad.core.params import write_grad
from unigrad.first._layer_hooks import LayerHooks
from unigrad.first.feedback_alignment import random_feedback
from unigrad.nn.perturbation import perturbable_layers

DFA_TAG = 0xDFA


class _LocalTaps(LayerHooks):
    """Hooks that cut every layer from its input and keep the live input and output (a context manager)."""

    def __init__(self, layers: list[tuple[str, nn.Module]]) -> None:
        super().__init__(layers)
        self.inputs: list[Tensor | None] = [None] * len(layers)
        self.outputs: list[Tensor | None] = [None] * len(layers)
        self.order: list[int] = []

    def _pre(self, i: int) -> Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor, ...]]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            if i in self.order:
                raise UnigradError(
                    f"dfa: layer {self.layers[i][0]!r} ran twice in one pass; every Linear/Conv2d must run at "
                    f"most once per objective call"
                )
            self.order.append(i)
            self.inputs[i] = args[0]
            return (args[0].detach().requires_grad_(), *args[1:])  # a_l depends on W_l, b_l and nothing else

        return hook

    def _post(self, i: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            self.outputs[i] = output

        return hook

    def __enter__(self) -> _LocalTaps:
        super().__enter__()
        return self


def _rows(t: Tensor) -> int:
    """The batch size of a layer's input or output (1 for an unbatched tensor)."""
    return t.shape[0] if t.dim() > 1 else 1


class DFA(Estimator):
    """DFA — direct feedback alignment: every hidden layer gets the output error through its own fixed random matrix.

    For a chain of layers ``a_l = W_l x_l + b_l``, ``x_{l+1} = φ(a_l)`` ending in the output layer ``L``
    (column convention, per sample), with ``e = ∂L/∂a_L`` the error at the output layer's
    pre-activation (``L`` the mean loss over the batch)::

        δ_L = e,        δ_l = (B_l e) ⊙ φ'(a_l)  (l < L),        g_{W_l} = δ_l x_lᵀ,  g_{b_l} = δ_l

    summed over the batch (the 1/B is in ``e``). The output layer's update is its exact gradient; no
    error travels from layer to layer, so the hidden updates can be computed in parallel. With one
    hidden layer and ``B_1 = W_2ᵀ`` DFA is backprop.

    Implementation: one forward pass with hooks on every ``nn.Linear`` / ``nn.Conv2d`` layer (the layers
    of :func:`~unigrad.nn.perturbation.perturbable_layers`; decorrelated layers count as one layer):
    each layer computes its output ``a_l`` from its detached input, so no derivative crosses a layer, and
    the input ``x_{l+1}`` of the next layer to run (with its autograd history back to ``a_l``) is kept.
    The layer that runs last is the output layer; ``e`` is the autograd derivative of the mean loss with
    respect to its output. ``B_l e`` is formed in the shape of ``x_{l+1}`` (per sample, everything after
    the batch dimension flattened) and carried back to ``a_l`` by a vector-Jacobian product of the
    parameter-free segment between them, ``torch.autograd.grad(x_{l+1}, a_l, B_l e)``. For an elementwise
    activation (a ``Linear → φ → Linear`` MLP; a flatten in between is fine) that is exactly
    ``(B_l e) ⊙ φ'(a_l)``, without knowing ``φ``; for other segments (pooling) it is the derivative along
    that segment. The weight and bias updates are the vector-Jacobian products of ``a_l`` with ``δ_l``
    (``δ_l x_lᵀ`` and ``δ_l``, for Conv2d the usual weight gradient of a convolution).

    The model must be a feed-forward chain: every layer runs once per pass, only the last layer's output
    reaches the loss directly, and each layer's output reaches the next layer's input. Only the
    parameters of these layers can be trained; any other trainable parameter raises a
    :class:`~unigrad.core.errors.UnigradError` (freeze it with ``requires_grad_(False)``).

    Feedback matrices: ``B_l`` of shape ``(n_{l+1}, n_L)`` (``n_{l+1}`` the per-sample size of ``x_{l+1}``,
    ``n_L`` that of ``a_L``), l the layer's position in run order, N(0, 1/n_L) entries so that ``B_l e``
    has entries of the size of ``e``'s. ``B_l`` is a pure function of ``(seed, l, shape)``
    (:func:`~unigrad.first.feedback_alignment.random_feedback` with its own tag), the same on every device,
    cached in memory and never saved.

    Cost per call: one forward and one backward per sample (``B`` each for a batch of B: the local
    vector-Jacobian products together cost about one backward pass). ``Estimate.loss`` is the exact
    loss. State: ``seed`` and ``step`` only.

    Args:
        seed: names the feedback matrices (they do not depend on the step) (default: 0).

    References:
        [1] A. Nøkland, "Direct Feedback Alignment Provides Learning in Deep Neural Networks",
            NeurIPS 2016, arXiv:1609.01596.
    """

    name = "dfa"
    order = 1
    description = "direct feedback alignment: hidden layers get the output error through fixed random B_l"
    _options = ()

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._cache: dict[tuple[Any, ...], Tensor] = {}

    def feedback_matrix(self, index: int, shape: tuple[int, int], like: Tensor) -> Tensor:
        """``B_l`` of shape ``(n_{l+1}, n_L)`` for the hidden layer that ran ``index``-th (``like``'s dtype, device)."""
        key = (self.seed, index, shape, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = random_feedback(self.seed, index, shape, like.dtype, like.device, tag=DFA_TAG)
        return self._cache[key]

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        layers = perturbable_layers(model)
        owned = {id(p) for _, layer in layers for p in layer.parameters()}
        for pname, p in params:
            if id(p) not in owned:
                raise UnigradError(
                    f"dfa only trains nn.Linear/nn.Conv2d weights and biases; parameter {pname!r} belongs to "
                    f"another module (freeze it with requires_grad_(False))"
                )
        cost = Cost()
        with torch.enable_grad():
            # forward: each layer's output a_l from its detached input, and the next layer's live input
            with _LocalTaps(layers) as taps:
                losses = evaluate(objective, model, cost)
            check_differentiable(losses, self.name)
            loss = reduce(losses)
            ran = taps.order
            if not ran:
                raise UnigradError("dfa: no nn.Linear/nn.Conv2d layer ran in the objective")
            outs = [taps.outputs[i] for i in ran]
            names = [layers[i][0] for i in ran]
            # output error e = ∂L/∂a_L; no other layer may reach the loss directly
            direct = torch.autograd.grad(loss, outs, allow_unused=True, retain_graph=True)
            e = direct[-1]
            if e is None:
                raise UnigradError(f"dfa: the loss does not depend on the output of the last layer {names[-1]!r}")
            for name, d in zip(names[:-1], direct[:-1]):
                if d is not None:
                    raise UnigradError(
                        f"dfa needs a feed-forward chain: the output of layer {name!r} reaches the loss without "
                        f"passing through the last layer {names[-1]!r}"
                    )
            # hidden layers: δ_l = vjp of the segment a_l → x_{l+1} with B_l e
            deltas = [e]
            rows = _rows(e)
            e_flat = e.reshape(rows, -1)
            for k in range(len(ran) - 2, -1, -1):
                x_next = taps.inputs[ran[k + 1]]
                if x_next is None or not x_next.requires_grad or _rows(x_next) != rows:
                    raise UnigradError(
                        f"dfa needs a feed-forward chain: the input of layer {names[k + 1]!r} must be computed "
                        f"from the output of layer {names[k]!r} for the same batch"
                    )
                b = self.feedback_matrix(k, (x_next.numel() // rows, e_flat.shape[1]), e)
                (delta,) = torch.autograd.grad(
                    x_next, outs[k], (e_flat @ b.T).reshape(x_next.shape), allow_unused=True, retain_graph=True
                )
                if delta is None:
                    raise UnigradError(
                        f"dfa needs a feed-forward chain: the input of layer {names[k + 1]!r} does not depend on "
                        f"the output of layer {names[k]!r}"
                    )
                deltas.insert(0, delta)
            # weights: the local vjps δ_l x_lᵀ and δ_l (each a_l depends only on its own layer's parameters)
            live = [(o, d) for o, d in zip(outs, deltas) if o.requires_grad]
            grads = torch.autograd.grad(
                [o for o, _ in live], [p for _, p in params], [d for _, d in live], allow_unused=True
            )
        cost.backwards += cost.forwards
        write_grad(params, [torch.zeros_like(p) if g is None else g for (_, p), g in zip(params, grads)], owned=True)
        return Estimate(loss=float(loss.detach()), cost=cost)
