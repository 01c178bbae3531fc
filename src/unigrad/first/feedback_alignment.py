"""Feedback alignment: the :class:`FeedbackAlignment` estimator and its fixed random feedback matrices
(:func:`random_feedback`, also used by :mod:`unigrad.first.dfa`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, loss_and_gradient
from unigrad.core.params import write_grad
from unigrad.core.rng import generator
from unigrad.first._layer_hooks import LayerHooks
from unigrad.nn.perturbation import perturbable_layers

FEEDBACKS = ("random", "sign", "transpose")
FA_TAG = 0xFA


def random_feedback(
    seed: int, index: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, tag: int = FA_TAG
) -> Tensor:
    """The fixed feedback matrix of layer ``index``: N(0, 1/fan_in) entries, ``fan_in = prod(shape[1:])``.

    Drawn in float32 on the CPU from the generator keyed ``(seed, index, tag)``, then cast: a pure
    function of ``(seed, index, shape, tag)``, identical on every device.
    """
    fan_in = math.prod(shape[1:])
    r = torch.randn(shape, generator=generator(seed, index, tag), dtype=torch.float32)
    return r.mul_(1.0 / math.sqrt(max(fan_in, 1))).to(dtype=dtype, device=device)


def _input_feedback(layer: nn.Module, b: Tensor, delta: Tensor, x_shape: torch.Size) -> Tensor:
    """The input-gradient of ``layer`` with weight ``b`` and no bias, for the error ``delta`` on its output."""
    b = b.to(delta.dtype)
    if isinstance(layer, nn.Linear):
        return delta @ b
    if layer.padding_mode == "zeros" and not isinstance(layer.padding, str) and delta.dim() == 4:
        return torch.nn.grad.conv2d_input(x_shape, b, delta, layer.stride, layer.padding, layer.dilation, layer.groups)
    with torch.enable_grad():  # padding modes and shapes the closed form does not cover: the vjp itself
        xz = delta.new_zeros(x_shape, requires_grad=True)
        return torch.autograd.grad(layer._conv_forward(xz, b, None), xz, delta)[0]


class _Feedback(torch.autograd.Function):
    """Identity on the layer's output; in the backward, the input receives ``feedback(δ)``."""

    @staticmethod
    def forward(ctx: Any, output: Tensor, x: Tensor, feedback: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.feedback = feedback
        return output.detach()

    @staticmethod
    def backward(ctx: Any, delta: Tensor) -> tuple[Tensor, Tensor, None]:
        return delta, ctx.feedback(delta), None


class _FeedbackHooks(LayerHooks):
    """Hooks that make every layer send errors back through ``feedback(index, layer)`` (a context manager)."""

    def __init__(self, layers: list[tuple[str, nn.Module]], feedback: Callable[[int, nn.Module], Tensor]) -> None:
        super().__init__(layers)
        self.feedback = feedback
        self.live: list[Tensor | None] = [None] * len(layers)

    def _pre(self, i: int) -> Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor, ...] | None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
            x = args[0]
            self.live[i] = x if torch.is_grad_enabled() and x.requires_grad else None
            return None if self.live[i] is None else (x.detach(), *args[1:])

        return hook

    def _post(self, i: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor | None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            x, self.live[i] = self.live[i], None
            if x is None:  # no error needs to reach this input (the data, or a detached branch)
                return None
            b, shape = self.feedback(i, module), x.shape
            return _Feedback.apply(output, x, lambda delta: _input_feedback(module, b, delta, shape))

        return hook

    def __enter__(self) -> _FeedbackHooks:
        super().__enter__()
        return self


class FeedbackAlignment(Estimator):
    """FA — feedback alignment: backprop with fixed random matrices in place of the transposed weights.

    For a chain of layers ``a_l = W_l x_l + b_l``, ``x_{l+1} = φ(a_l)`` (column convention), backprop
    sends the error back through ``W_lᵀ``. Feedback alignment sends it back through a fixed matrix
    ``B_l`` of ``W_l``'s shape instead::

        δ_L = ∂L/∂a_L,        δ_l = (B_{l+1}ᵀ δ_{l+1}) ⊙ φ'(a_l),        g_{W_l} = δ_l x_lᵀ,  g_{b_l} = δ_l

    with ``L`` the mean loss over the batch, so ``g`` is a pseudo-gradient averaged over the batch as the
    gradient is. The output layer's update is its exact gradient; hidden layers learn because the
    forward weights come to align with the feedback (``W_{l+1}ᵀ ≈ B_{l+1}ᵀ`` in direction), so ``g``
    turns towards the gradient during training.

    Implementation: one autograd pass in which every ``nn.Linear`` / ``nn.Conv2d`` layer (the layers of
    :func:`~unigrad.nn.perturbation.perturbable_layers`, in module order; ``l`` is the position there)
    computes its output from its detached input and hands the error ``δ`` on its output back to the
    input as the input-gradient of the same layer with weight ``B_l`` and no bias: ``δ B_l`` for
    Linear (row convention), the transposed convolution with kernel ``B_l`` for Conv2d (with the
    layer's stride, padding, padding mode, dilation and groups). Weights and biases get their local
    gradients ``δ_l x_lᵀ`` and ``δ_l`` from autograd. Everything else (activations, pooling, norms,
    other modules) passes the error back exactly, as backprop does, and any trainable parameter outside
    the layers gets the derivative of the loss along this modified backward pass. A layer may run
    several times in a pass (shared weights); every call uses the same ``B_l``. Decorrelated layers
    (:mod:`unigrad.nn.decorrelation`) are refused.

    Feedback matrices: ``B_l = R_l``, drawn once from N(0, 1/fan_in) (the variance of the usual
    weight initialisation, so the backward signals keep backprop's scale at initialisation), with
    ``fan_in = W_l[0].numel()``. ``R_l`` is a pure function of ``(seed, l, W_l.shape)``: it is drawn in
    float32 on the CPU from :func:`unigrad.core.rng.generator` keyed ``(seed, l, tag)`` and only then
    cast to the weight's dtype and device, so it is the same on every device and needs no storage (it is
    cached in memory, never saved).

    Cost per call: one forward and one backward per sample (``B`` each for a batch of B).
    ``Estimate.loss`` is the exact loss. State: ``seed`` and ``step`` only.

    Args:
        feedback: ``"random"``: ``B_l = R_l`` (FA [1]); ``"sign"``: ``B_l = sign(W_l) ⊙ |R_l|``,
            sign-concordant feedback with random magnitudes ([2], it follows the current weights);
            ``"transpose"``: ``B_l = W_l``, exactly backprop (a reference for comparisons)
            (default: ``"random"``).
        seed: names the feedback matrices (they do not depend on the step) (default: 0).

    References:
        [1] T. P. Lillicrap, D. Cownden, D. B. Tweed, C. J. Akerman, "Random synaptic feedback weights
            support error backpropagation for deep learning", Nature Communications 7:13276 (2016).
        [2] Q. Liao, J. Z. Leibo, T. Poggio, "How important is weight symmetry in backpropagation?",
            AAAI 2016, arXiv:1510.05067 (sign-concordant feedback).
    """

    name = "feedback-alignment"
    order = 1
    description = "backprop with fixed random feedback matrices B_l in place of W_lᵀ (Lillicrap et al. 2016)"
    _options = ("feedback",)

    def __init__(self, feedback: str = "random", seed: int = 0) -> None:
        super().__init__(seed)
        check_choice("feedback", feedback, FEEDBACKS)
        self.feedback = feedback
        self._cache: dict[tuple[Any, ...], Tensor] = {}

    def feedback_matrix(self, index: int, layer: nn.Module) -> Tensor:
        """``B_l`` for layer ``index`` (``W_l``'s shape, dtype and device)."""
        w = layer.weight.detach()
        if self.feedback == "transpose":
            return w
        key = (self.seed, index, tuple(w.shape), w.dtype, w.device)
        if key not in self._cache:
            self._cache[key] = random_feedback(self.seed, index, tuple(w.shape), w.dtype, w.device)
        r = self._cache[key]
        return torch.sign(w) * r.abs() if self.feedback == "sign" else r

    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        layers = perturbable_layers(model)
        for lname, layer in layers:
            if not isinstance(layer, nn.Linear | nn.Conv2d):
                raise UnigradError(
                    f"{self.name} supports nn.Linear and nn.Conv2d layers; layer {lname!r} is a "
                    f"{type(layer).__name__} (use the plain layer)"
                )
        cost = Cost()
        # forward with feedback hooks, then one backward in which B_l stands in for W_lᵀ
        with _FeedbackHooks(layers, self.feedback_matrix):
            loss, grads = loss_and_gradient(objective, model, params, cost, self.name)
        write_grad(params, grads, owned=True)
        return Estimate(loss=loss, cost=cost)
