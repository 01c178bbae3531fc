"""Model builders, initialised deterministically from a seed.

Every builder draws its initial weights from a local ``torch.Generator`` keyed by ``seed``
(:func:`unigrad.core.rng.generator`), never from the global RNG: the modules are created without
their default initialisation (``torch.nn.utils.skip_init``) and then filled with

* weights: Kaiming-uniform with ``a = √5`` (PyTorch's default for ``nn.Linear`` / ``nn.Conv2d``,
  i.e. U(−1/√fan_in, 1/√fan_in)),
* biases: U(−1/√fan_in, 1/√fan_in),

layer by layer in registration order. The same seed gives bit-identical models, and building a
model leaves ``torch.random.get_rng_state()`` untouched.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import skip_init

from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.rng import generator

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}

_INIT_TAG = 0x1417


def init_(model: nn.Module, seed: int, stream: int = _INIT_TAG) -> nn.Module:
    """Re-initialise every ``nn.Linear`` and ``nn.Conv*`` of ``model`` from ``seed`` (in place).

    The generator is keyed by ``(seed, stream)``; modules that must not share the model's stream
    (such as auxiliary heads) pass their own ``stream``.
    """
    g = generator(seed, stream)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=g)
    return model


def mlp(sizes: Sequence[int], activation: str = "relu", seed: int = 0) -> nn.Sequential:
    """``Flatten → Linear(sizes[0], sizes[1]) → act → … → Linear(sizes[-2], sizes[-1])``.

    No activation after the last layer (it outputs logits).
    """
    if len(sizes) < 2:
        raise UnigradError(f"an MLP needs at least an input and an output size, got {list(sizes)}")
    for s in sizes:
        check_positive("layer size", s, integer=True)
    check_choice("activation", activation, ACTIVATIONS)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(skip_init(nn.Linear, a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return init_(nn.Sequential(*layers), seed)


def small_cnn(
    in_channels: int = 1,
    image_size: int = 28,
    channels: Sequence[int] = (16, 32),
    classes: int = 10,
    activation: str = "relu",
    seed: int = 0,
) -> nn.Sequential:
    """``[Conv3×3(pad 1) → act → MaxPool2]`` per entry of ``channels``, then ``Flatten → Linear → logits``.

    Inputs are ``(B, in_channels, image_size, image_size)``.
    """
    check_positive("in_channels", in_channels, integer=True)
    check_positive("image_size", image_size, integer=True)
    check_positive("classes", classes, integer=True)
    check_choice("activation", activation, ACTIVATIONS)
    layers: list[nn.Module] = []
    c_in, side = in_channels, image_size
    for c in channels:
        check_positive("channels", c, integer=True)
        if side < 2:
            raise UnigradError(f"image_size {image_size} is too small for {len(channels)} pooling stages")
        layers += [skip_init(nn.Conv2d, c_in, c, 3, padding=1), ACTIVATIONS[activation](), nn.MaxPool2d(2)]
        c_in, side = c, side // 2
    layers += [nn.Flatten(), skip_init(nn.Linear, c_in * side * side, classes)]
    return init_(nn.Sequential(*layers), seed)
