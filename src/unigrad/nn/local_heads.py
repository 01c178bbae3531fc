"""Local classifier heads: one small readout per block, for local greedy losses.

A *block* ``l`` of a feed-forward network is a perturbable layer (``nn.Linear`` / ``nn.Conv2d``,
see :mod:`unigrad.nn.perturbation`) together with everything that runs after it up to the next
perturbable layer (activation, pooling, flattening). Its output ``a_l`` is therefore the input of the
next perturbable layer. A local greedy loss (Ren et al. [1], §4; also Nøkland & Eidnes 2019,
Belilovsky et al. 2019) scores each block on its own::

    ℓ_l = loss(head_l(pool(a_l)), y)          for every block but the last
    ℓ_L = the model's own loss                for the last block (its output is the logits)

with a stop-gradient at every block input, so the weights of block ``l`` learn only from ``ℓ_l``.
``pool`` averages over the spatial positions of a feature map ``(B, C, H, W) → (B, C)`` and leaves
flat features ``(B, n)`` unchanged; ``head_l`` is a single ``nn.Linear(C or n, classes)``.

:func:`with_local_heads` wraps a model in a :class:`LocallySupervised` module that holds the network
(``body``) and the heads (``heads``, a :class:`LocalHeads`); its ``forward`` is the body's, so
evaluation, losses and parameter counts of the body are unchanged and the heads' parameters appear
in ``model.parameters()`` (an optimizer made afterwards trains them). The heads are never perturbed:
:func:`~unigrad.nn.perturbation.perturbable_layers` skips a :class:`LocalHeads` subtree. Each head
is trained with the exact gradient of its own loss, which is local: a head is one linear layer whose
input is the block's output, so its gradient is ``(softmax(z) − onehot(y))·pool(a_l)ᵀ`` — no
error travels back through the network.

The estimator that uses them is ``activity-forward-gradient`` with ``local_losses=True``
(``unigrad.first.activity_forward_gradient``): its
:meth:`~unigrad.core.estimator.Estimator.prepare_model` is :func:`prepare_local_heads`, so
``unigrad.train.train`` wraps the task's model when that option is set.

Reference: [1] M. Ren, S. Kornblith, R. Liao, G. Hinton, "Scaling Forward Gradient With Local
Losses", ICLR 2023, arXiv:2210.03310. Their local losses are also replicated over patches and
feature groups (LocalMixer); here there is one loss per block.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from unigrad.core.errors import UnigradError
from unigrad.nn.models import init_
from unigrad.nn.perturbation import LayerTaps

_HEAD_TAG = 0x10CA1


class LocalHeads(nn.ModuleDict):
    """The heads of a :class:`LocallySupervised` model, keyed by the layer whose input they read.

    ``perturbable = False`` makes :func:`~unigrad.nn.perturbation.perturbable_layers` skip them.
    """

    perturbable = False


def pool(a: Tensor) -> Tensor:
    """``(B, C, *spatial) → (B, C)`` by the mean over positions; ``(B, n)`` is returned unchanged."""
    return a.flatten(2).mean(-1) if a.dim() > 2 else a


def head_key(layer_name: str) -> str:
    """The :class:`LocalHeads` key of the head that reads the input of layer ``layer_name``."""
    return "in_" + layer_name.replace(".", "_")


class LocallySupervised(nn.Module):
    """A network (``body``) and its local heads (``heads``); ``forward`` is the body's forward.

    ``head_inputs`` lists, in run order, the perturbable layers of the body whose *input* a head
    reads (all but the first layer that runs).
    """

    def __init__(self, body: nn.Module, heads: LocalHeads, head_inputs: list[str]) -> None:
        super().__init__()
        self.body = body
        self.heads = heads
        self.head_inputs = list(head_inputs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.body(*args, **kwargs)


def with_local_heads(model: nn.Module, example_input: Tensor, seed: int = 0) -> LocallySupervised:
    """Wrap ``model`` with one linear head per block (module docstring).

    Args:
        model: a feed-forward network whose output is ``(B, classes)`` logits.
        example_input: a batch the model accepts (two samples suffice); one pass without gradients
            finds the blocks, their feature sizes and the number of classes.
        seed: initialises the heads (``kaiming_uniform`` as ``nn.Linear``, from a generator keyed by
            ``(seed, head stream)``; the global RNG is not used).
    """
    if isinstance(model, LocallySupervised):
        raise UnigradError("this model already has local heads")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), LayerTaps(model, record_inputs=True) as taps:
            out = model(example_input)
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UnigradError(f"local heads need a model that returns (batch, classes) logits, got {shape}")
    classes = out.shape[1]
    order = taps.order
    if len(order) < 2:
        raise UnigradError("local heads need at least two Linear/Conv2d layers (one block before the output)")
    heads = LocalHeads()
    names: list[str] = []
    for index in order[1:]:
        name, layer = taps.layers[index]
        features = pool(taps.inputs[index]).shape[1]
        weight = layer.weight
        heads[head_key(name)] = skip_init(nn.Linear, features, classes).to(device=weight.device, dtype=weight.dtype)
        names.append(name)
    init_(heads, seed, stream=_HEAD_TAG)
    return LocallySupervised(model, heads, names)


def prepare_local_heads(estimator: Any, model: nn.Module, example_inputs: Tensor, seed: int) -> nn.Module:
    """:meth:`~unigrad.core.estimator.Estimator.prepare_model` of an estimator with a ``local_losses`` option:
    ``model`` with local heads (:func:`with_local_heads`, keyed by ``seed``) when the option is set, else
    ``model``."""
    return with_local_heads(model, example_inputs, seed=seed) if estimator.local_losses else model
