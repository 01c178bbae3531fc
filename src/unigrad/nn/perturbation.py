"""Layer taps for node-perturbation rules: record layer inputs, add noise to layer outputs.

The *perturbable layers* of a model are its ``nn.Linear`` and ``nn.Conv2d`` modules in module order
(``model.named_modules()``), where a decorrelated layer (``DecorrelatedLinear``,
``DecorrelatedConv2d`` of :mod:`unigrad.nn.decorrelation`) counts as one layer (its input is the
raw ``x``, its output the wrapped layer's); a layer's position in that list is its *layer index*,
the ``tensor`` part of a noise key ``(seed, step, probe, layer index)``. For layer ``l`` with input
``x_{l−1}`` and
pre-activation output ``h_l = W_l x_{l−1} + b_l``:

- :class:`LayerTaps` is a context manager that installs forward hooks on every perturbable layer
  for one pass of the model and always removes them on exit (also when the pass raises). It can
  record each layer's input ``x_{l−1}`` (``record_inputs``) and add node noise ``ε_l`` of the
  output's shape (per sample) to ``h_l`` (``node_noise``), keeping what it added, and record each
  layer's output as it leaves the layer (``record_outputs``, after any noise was added).
- :func:`gaussian_node_noise` draws ``ε_l = σ·z`` with ``z`` from a seeded
  :class:`~unigrad.core.rng.ProbeNoise` stream (never the global RNG).
- :func:`layer_grads` turns a signal ``G_l`` of the output's shape (e.g. ``δL/σ²·ε_l``) into the
  weight and bias updates ``Σ G_l x_{l−1}ᵀ`` and ``Σ G_l`` (for ``nn.Conv2d`` through
  ``torch.nn.grad.conv2d_weight``, summed over space for the bias).
- :func:`attach_node_noise` makes a model noisy on its own: every forward of every perturbable layer
  adds seeded Gaussian noise to its output until the returned handle is removed. It stands for noise
  a learning rule cannot read (device noise in analog or neuromorphic hardware).
- :func:`layer_owners` maps each trainable parameter to the layer slots it fills.
- :func:`noisy_passes` runs the noisy passes of a node-perturbation step, stacked (below) where it can.

Each layer must run at most once per pass (feed-forward models); a layer called twice raises.

**Stacked passes.** The noisy passes of a step share the weights; only the node noise differs. Where every
sample's losses depend on that sample alone, ``k`` passes run as *one* forward over ``k·B`` rows: the
objective's batch is stacked ``k`` times (:meth:`~unigrad.core.objective.Supervised.repeat`) and the taps add
pass ``p``'s noise, drawn from the very key and shape it has when run alone, to rows ``p·B … (p+1)·B − 1``.
One call of the model instead of ``k`` and one larger matrix product per layer: the passes cost what their
forwards cost. The results equal those of separate passes up to floating-point rounding (a matrix product
over more rows may round a row differently), and the noise is bit for bit the same. :func:`stackable`
decides when this is exact (:func:`unigrad.core.rowwise.rowwise`: a supervised objective with a row-wise
loss, no hooks, and only module types known to treat rows independently and draw no random numbers; a module
class or a loss function may declare ``rowwise = True``). Otherwise, and with ``STACK_PASSES = False``, the
passes run one by one. Passes are stacked in groups that keep their activations within a memory budget (256 MiB
by default).
Decorrelation layers keep the statistics of the baseline pass: the noisy passes, stacked or not, do not
record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_positive
from unigrad.core.objective import Objective, Supervised, check_losses, evaluate, n_samples
from unigrad.core.options import check_seed
from unigrad.core.params import write_grad
from unigrad.core.probe import DEFAULT_MEMORY_BUDGET
from unigrad.core.rng import ProbeNoise
from unigrad.core.rowwise import rowwise
from unigrad.core.step_state import StepState
from unigrad.nn.decorrelation import DecorrelatedConv2d, DecorrelatedLinear
from unigrad.nn.decorrelation_matrix import Decorrelation

LAYER_TYPES = (nn.Linear, nn.Conv2d, DecorrelatedLinear, DecorrelatedConv2d)

NodeNoise = Callable[[int, Tensor], Tensor]
"""``node_noise(layer_index, output) -> ε`` (same shape as ``output``)."""


def perturbable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``nn.Linear`` and ``nn.Conv2d`` of ``model``, in module order.

    A module with the class attribute ``perturbable = False`` (such as the local heads of
    :mod:`unigrad.nn.local_heads`) is skipped together with everything inside it.
    """
    found: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        if getattr(module, "perturbable", True) is False:
            return
        if isinstance(module, LAYER_TYPES):
            found.append((prefix, module))
            if isinstance(module, DecorrelatedLinear | DecorrelatedConv2d):
                return  # one layer: the layer inside runs as part of it, never on its own
        for name, child in module.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return found


class LayerTaps:
    """Forward hooks on every perturbable layer of ``model`` for one pass (a context manager).

    Args:
        model: the network.
        record_inputs: keep each layer's (detached) input ``x_{l−1}`` in ``inputs[l]``.
        node_noise: if given, ``h_l ← h_l + node_noise(l, h_l)``; what was added is kept in ``added[l]``.
        record_outputs: keep each layer's (detached) output in ``outputs[l]``, after ``node_noise``.
        stop_gradient: feed every layer ``x_{l−1}.detach()`` instead of its input, and keep the input
            as it arrived (with its autograd history or forward-mode tangent) in ``live_inputs[l]``;
            derivatives then never cross a layer boundary (blocks of local losses).
        layers: :func:`perturbable_layers` of ``model``, if the caller has them already.

    After the pass, ``inputs[l]`` / ``added[l]`` / ``outputs[l]`` / ``live_inputs[l]`` are ``None``
    for layers that did not run, and ``order`` lists the layer indices in the order they ran.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        record_inputs: bool = False,
        node_noise: NodeNoise | None = None,
        record_outputs: bool = False,
        stop_gradient: bool = False,
        layers: list[tuple[str, nn.Module]] | None = None,
    ) -> None:
        self.layers = perturbable_layers(model) if layers is None else layers
        self.record_inputs = record_inputs
        self.record_outputs = record_outputs
        self.stop_gradient = stop_gradient
        self.node_noise = node_noise
        self.order: list[int] = []
        self.live_inputs: list[Tensor | None] = [None] * len(self.layers)
        self.inputs: list[Tensor | None] = [None] * len(self.layers)
        self.added: list[Tensor | None] = [None] * len(self.layers)
        self.outputs: list[Tensor | None] = [None] * len(self.layers)
        self._calls = [0] * len(self.layers)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def tap(self, index: int, x: Tensor, output: Tensor) -> Tensor:
        """What layer ``index`` passes on when it maps ``x`` to ``output``: records what was asked, adds the noise."""
        self._calls[index] += 1
        if self._calls[index] > 1:
            raise UnigradError(
                f"layer {self.layers[index][0]!r} ran twice in one pass; node perturbation needs every "
                f"Linear/Conv2d to run at most once per objective call"
            )
        self.order.append(index)
        if self.record_inputs:
            self.inputs[index] = x.detach()
        if self.node_noise is not None:
            eps = self.node_noise(index, output)
            self.added[index] = eps
            output = output + eps
        if self.record_outputs:
            self.outputs[index] = output.detach()
        return output

    def _hook(self, index: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor | None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            out = self.tap(index, args[0], output)
            return None if out is output else out

        return hook

    def evaluate(self, objective: Objective, model: nn.Module, cost: Cost) -> Tensor:
        """One pass of ``objective`` through ``model`` with these taps: the per-sample losses (checked, counted
        in ``cost``).

        Runs the model under the hooks (entering and leaving this context), or, where the model is a chain whose
        every perturbable layer is a child (:func:`_chain`: a plain ``nn.Sequential`` or a single layer), the
        objective is supervised and nothing is hooked (:func:`~unigrad.core.rowwise.rowwise`), calls the children
        in turn and taps each perturbable one directly: the same operations on the same values, without the cost
        of installing and calling hooks.
        """
        chain = None
        if DIRECT_PASSES and not self.stop_gradient and not self._handles and rowwise(model, objective):
            chain = _chain(model, self.layers)
        if chain is None:
            with self:
                return evaluate(objective, model, cost)
        assert isinstance(objective, Supervised)
        h = objective.inputs
        for child, index in chain:
            h = child(h) if index is None else self.tap(index, h, child.forward(h))
        losses = check_losses(objective.score(h))
        cost.forwards += n_samples(objective, losses)
        return losses

    def _pre_hook(self, index: int) -> Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor, ...]]:
        def pre_hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            self.live_inputs[index] = args[0]
            return (args[0].detach(), *args[1:])

        return pre_hook

    def __enter__(self) -> LayerTaps:
        try:
            for i, (_, layer) in enumerate(self.layers):
                if self.stop_gradient:
                    self._handles.append(layer.register_forward_pre_hook(self._pre_hook(i)))
                self._handles.append(layer.register_forward_hook(self._hook(i)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this object installed (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


DIRECT_PASSES = True
"""Set to False to run every tapped pass under hooks (:meth:`LayerTaps.evaluate`; for benchmarks and tests)."""


def _chain(model: nn.Module, layers: list[tuple[str, nn.Module]]) -> list[tuple[nn.Module, int | None]] | None:
    """The children of a plain ``nn.Sequential`` (or the single perturbable layer ``model``), each with its layer
    index (``None``: not perturbable), if every perturbable layer is one of them; else ``None``."""
    if type(model) is nn.Sequential:
        children = list(model)
    elif len(layers) == 1 and layers[0][1] is model:
        children = [model]
    else:
        return None
    index = {id(m): i for i, (_, m) in enumerate(layers)}
    chain = [(m, index.get(id(m))) for m in children]
    if sum(i is not None for _, i in chain) != len(layers):
        return None  # a perturbable layer nested deeper, or one child twice: the hooks see every call
    return chain


class GaussianNodeNoise:
    """``ε_l = σ·z`` with ``z`` the stream keyed ``(seed, step, probe, l)``, shaped like the output (a
    :data:`NodeNoise`; made by :func:`gaussian_node_noise`)."""

    __slots__ = ("noise", "probe", "seed", "sigma", "step")

    def __init__(self, noise: ProbeNoise, seed: int, step: int, probe: int, sigma: float) -> None:
        self.noise, self.seed, self.step, self.probe, self.sigma = noise, seed, step, probe, sigma

    def __call__(self, index: int, output: Tensor) -> Tensor:
        z = self.noise.raw(self.seed, self.step, self.probe, index, output.shape, output.dtype, output.device)
        return z * self.sigma

    def same_stream(self, other: object) -> bool:
        """Whether ``other`` draws from the same stream and scale (only the probe may differ)."""
        return (
            isinstance(other, GaussianNodeNoise)
            and other.noise is self.noise
            and (other.seed, other.step, other.sigma) == (self.seed, self.step, self.sigma)
        )


def gaussian_node_noise(noise: ProbeNoise, seed: int, step: int, probe: int, sigma: float) -> NodeNoise:
    """``ε_l = σ·z`` with ``z`` the stream keyed ``(seed, step, probe, l)``, shaped like the output."""
    return GaussianNodeNoise(noise, seed, step, probe, sigma)


class NodeNoiseHandle:
    """Seeded Gaussian noise on every perturbable layer's output, on every forward (see :func:`attach_node_noise`).

    Forward ``k`` (counted from 0, per layer) of layer ``l`` adds ``σ·z`` with ``z`` the stream keyed
    ``(seed, k, 0, l)``: the noise differs between forwards and replays exactly from a fresh handle.
    ``forwards[l]`` counts the forwards of layer ``l`` so far. Use as a context manager, or call
    :meth:`remove`.
    """

    def __init__(self, model: nn.Module, sigma: float, seed: int, noise_source: str) -> None:
        check_positive("sigma", sigma)
        check_seed("seed", seed)
        self.sigma, self.seed = float(sigma), seed
        self.noise = ProbeNoise("gaussian", noise_source)
        self.layers = perturbable_layers(model)
        self.forwards = [0] * len(self.layers)
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, (_, layer) in enumerate(self.layers)]

    def _hook(self, index: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
            k = self.forwards[index]
            self.forwards[index] += 1
            z = self.noise.raw(self.seed, k, 0, index, output.shape, output.dtype, output.device)
            return output + z * self.sigma

        return hook

    def remove(self) -> None:
        """Stop adding noise (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> NodeNoiseHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


def attach_node_noise(model: nn.Module, sigma: float, seed: int = 0, noise_source: str = "auto") -> NodeNoiseHandle:
    """Make ``model`` noisy: ``h_l ← h_l + σ·z`` on every forward of every ``nn.Linear``/``nn.Conv2d``.

    ``z`` is keyed ``(seed, k, 0, l)`` through :class:`~unigrad.core.rng.ProbeNoise` (``k`` counts the
    forwards of layer ``l``), never the global RNG. Returns a handle; ``handle.remove()`` (or leaving
    ``with attach_node_noise(...)``) makes the model deterministic again.
    """
    return NodeNoiseHandle(model, sigma, seed, noise_source)


def layer_owners(
    model: nn.Module,
    params: list[tuple[str, nn.Parameter]],
    method: str,
    layers: list[tuple[str, nn.Module]] | None = None,
) -> dict[int, list[tuple[int, str]]]:
    """Parameter id → the (layer index, ``"weight"``/``"bias"``) slots it fills.

    Raises :class:`UnigradError` for a trainable parameter outside the perturbable layers, or for a
    layer :func:`layer_grads` does not handle; ``method`` names the caller in the message. ``layers``:
    :func:`perturbable_layers` of ``model``, if the caller has them already.
    """
    owners: dict[int, list[tuple[int, str]]] = {}
    for i, (lname, layer) in enumerate(perturbable_layers(model) if layers is None else layers):
        check_layer(lname, layer)
        for slot in ("weight", "bias"):
            p = getattr(layer, slot)
            if p is not None:
                owners.setdefault(id(p), []).append((i, slot))
    for pname, p in params:
        if id(p) not in owners:
            raise UnigradError(
                f"{method} only trains nn.Linear/nn.Conv2d weights and biases; parameter {pname!r} belongs to "
                f"another module (freeze it with requires_grad_(False))"
            )
    return owners


def per_sample_losses(losses: Tensor, method: str) -> Tensor:
    """``losses`` detached, after checking they are per-sample ``(B,)`` (each sample's loss is
    correlated with its own noise); ``method`` names the caller in the error."""
    if losses.dim() != 1:
        raise UnigradError(
            f"{method} needs an objective that returns per-sample losses of shape (B,), got shape {tuple(losses.shape)}"
        )
    return losses.detach()


def noisy_losses(
    objective: Objective, model: nn.Module, cost: Cost, f0: Tensor, method: str, taps: LayerTaps | None = None
) -> Tensor:
    """The per-sample losses of one noisy pass (run through ``taps``, :meth:`LayerTaps.evaluate`, or else under the
    caller's taps), refused unless they are shaped like the clean pass's ``f0``: each sample's change of loss is
    paired with its own noise."""
    losses = evaluate(objective, model, cost) if taps is None else taps.evaluate(objective, model, cost)
    f = per_sample_losses(losses, method)
    if f.shape != f0.shape:
        raise UnigradError(f"{method}: the objective's losses changed shape from {tuple(f0.shape)} to {tuple(f.shape)}")
    return f


STACK_PASSES = True
"""Set to False to run the noisy passes of node perturbation one by one (for benchmarks and debugging)."""


def stackable(model: nn.Module, objective: Objective) -> bool:
    """Whether passes of ``model`` through ``objective`` can run stacked as one batch: ``STACK_PASSES`` and
    :func:`~unigrad.core.rowwise.rowwise` (the step's own hooks allowed)."""
    if not STACK_PASSES:
        return False
    return rowwise(model, objective, allow_hooks_of=StepState)


class NoisyGroup(NamedTuple):
    """Consecutive noisy passes of :func:`noisy_groups`, stacked along a leading pass axis ``k``: per-sample
    ``losses`` ``(k, B)``, and per layer the noise ``added`` and (if recorded) the ``outputs``, ``(k, B, …)``
    (``None`` for layers that did not run)."""

    losses: Tensor
    added: list[Tensor | None]
    outputs: list[Tensor | None]

    def __len__(self) -> int:  # type: ignore[override]
        return self.losses.shape[0]

    def one(self, p: int) -> NoisyPass:
        """Pass ``p`` of the group."""
        return NoisyPass(
            self.losses[p],
            [None if a is None else a[p] for a in self.added],
            [None if o is None else o[p] for o in self.outputs],
        )


class NoisyPass(NamedTuple):
    """One noisy pass of :func:`noisy_passes`: per-sample ``losses`` ``(B,)``, and per layer the noise ``added``
    and (if recorded) the ``outputs`` (``None`` for layers that did not run)."""

    losses: Tensor
    added: list[Tensor | None]
    outputs: list[Tensor | None]


def pass_bytes(taps: LayerTaps) -> int:
    """Working memory of one more pass, estimated from what a baseline pass's ``taps`` recorded."""
    return 4 * sum(t.nbytes for t in (*taps.inputs, *taps.outputs) if t is not None)


@contextmanager
def _keep_decorrelation_records(model: nn.Module) -> Iterator[None]:
    """The decorrelation statistics recorded before the block (the baseline pass's) survive the block's passes."""
    saved = [(m, m._rows, m._last) for m in model.modules() if isinstance(m, Decorrelation)]
    if not saved:
        yield
        return
    try:
        yield
    finally:
        for m, rows, last in saved:
            m._rows, m._last = rows, last


def _stacked_noise(block: Sequence[NodeNoise | None], batch: int, names: list[tuple[str, nn.Module]]) -> NodeNoise:
    """Node noise for ``len(block)`` stacked passes: pass ``p``'s noise, drawn for its own ``batch`` rows, on rows
    ``p·batch … (p+1)·batch − 1`` (zeros for a pass without noise)."""

    def draw(index: int, output: Tensor) -> Tensor:
        if output.shape[0] != len(block) * batch:
            raise UnigradError(
                f"layer {names[index][0]!r} saw a batch of {output.shape[0] // len(block)} but the objective "
                f"returned {batch} per-sample losses"
            )
        rows = output.split(batch)
        if consecutive:  # one block of consecutive probes of one stream: one read (a view, from the table)
            z = first.noise.raw_block(
                first.seed, first.step, range(first.probe, first.probe + len(block)), index, rows[0].shape,
                output.dtype, output.device,
            )  # fmt: skip
            return (z * first.sigma).view(output.shape)
        return torch.cat([torch.zeros_like(r) if n is None else n(index, r) for n, r in zip(block, rows)])

    first = block[0]
    consecutive = isinstance(first, GaussianNodeNoise) and all(
        first.same_stream(n) and n.probe == first.probe + p
        for p, n in enumerate(block)  # type: ignore[union-attr]
    )
    return draw


def _passes(t: Tensor, k: int) -> Tensor:
    """``t`` of ``k`` stacked passes, ``(k·B, …)``, as ``(k, B, …)`` (a view)."""
    return t.unsqueeze(0) if k == 1 else t.view(k, t.shape[0] // k, *t.shape[1:])


def noisy_groups(
    model: nn.Module,
    objective: Objective,
    cost: Cost,
    f0: Tensor,
    noises: Sequence[NodeNoise | None],
    method: str,
    *,
    record_outputs: bool = False,
    bytes_per_pass: int = 0,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    layers: list[tuple[str, nn.Module]] | None = None,
) -> Iterator[NoisyGroup]:
    """The passes with node noise ``noises[p]`` (``None``: none), in order, in groups: stacked into one batch
    within ``memory_budget`` (given ``bytes_per_pass``, e.g. :func:`pass_bytes`) where :func:`stackable`, else
    one pass per group. Each pass is checked against the baseline's per-sample losses ``f0``. The passes do not
    change the decorrelation statistics (those of the baseline pass are kept). ``layers``:
    :func:`perturbable_layers` of ``model``."""
    batch = f0.shape[0]
    layers = perturbable_layers(model) if layers is None else layers
    group = 1
    if len(noises) > 1 and stackable(model, objective) and getattr(objective, "n_samples", None) == batch:
        group = max(1, min(len(noises), memory_budget // max(1, bytes_per_pass)))
    with _keep_decorrelation_records(model):
        for lo in range(0, len(noises), group):
            block = noises[lo : lo + group]
            k = len(block)
            if k == 1:
                taps = LayerTaps(model, node_noise=block[0], record_outputs=record_outputs, layers=layers)
                f = noisy_losses(objective, model, cost, f0, method, taps)
            else:
                assert isinstance(objective, Supervised)
                noise = _stacked_noise(block, batch, layers)
                taps = LayerTaps(model, node_noise=noise, record_outputs=record_outputs, layers=layers)
                f = per_sample_losses(taps.evaluate(objective.repeat(k), model, cost), method)
                if f.shape != (k * batch,):
                    raise UnigradError(
                        f"{method}: the objective's losses changed shape from {tuple(f0.shape)} to {tuple(f.shape)}"
                    )
            added = [None if a is None else _passes(a, k) for a in taps.added]
            outputs = [None if o is None else _passes(o, k) for o in taps.outputs]
            yield NoisyGroup(_passes(f, k), added, outputs)


def noisy_passes(
    model: nn.Module,
    objective: Objective,
    cost: Cost,
    f0: Tensor,
    noises: Sequence[NodeNoise | None],
    method: str,
    **options: Any,
) -> Iterator[NoisyPass]:
    """The passes of :func:`noisy_groups` (same arguments), one at a time."""
    for group in noisy_groups(model, objective, cost, f0, noises, method, **options):
        for p in range(len(group)):
            yield group.one(p)


def check_external_noise(noise: str, passes: str, owner: str) -> None:
    """``noise="external"`` (the ``owner``'s own noise, which cannot be switched off) needs two noisy passes."""
    if noise == "external" and passes != "two-noisy":
        raise UnigradError(
            f"option noise='external' needs passes='two-noisy' (the {owner}'s own noise cannot be switched off "
            "for a clean pass)"
        )


def check_layer(name: str, layer: nn.Module) -> None:
    """Raise for layer configurations :func:`layer_grads` does not handle."""
    if isinstance(layer, nn.Conv2d) and (layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
        raise UnigradError(
            f"layer {name!r}: node perturbation supports Conv2d with numeric zero padding only "
            f"(got padding={layer.padding!r}, padding_mode={layer.padding_mode!r})"
        )


@torch.no_grad()
def layer_grads(layer: nn.Module, x: Tensor, signal: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(Σ signal·xᵀ, Σ signal)`` for ``layer``: the weight and bias updates of a signal on its output.

    For ``nn.Linear`` all leading dimensions are summed over; for ``nn.Conv2d`` the weight term is
    ``torch.nn.grad.conv2d_weight(x, W.shape, signal, …)`` and the bias term sums over batch and space;
    for :class:`~unigrad.nn.decorrelation.DecorrelatedLinear` and
    :class:`~unigrad.nn.decorrelation.DecorrelatedConv2d` (input ``x`` raw) that term times ``Rᵀ``.
    The bias term is ``None`` when the layer has no bias.
    """
    if isinstance(layer, nn.Linear | DecorrelatedLinear):
        s = signal if signal.dim() == 2 else signal.reshape(-1, signal.shape[-1])
        xr = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
        if xr.dtype != s.dtype:
            xr = xr.to(s.dtype)
        if isinstance(layer, DecorrelatedLinear):  # Σ s·(R·x)ᵀ = (Σ s·xᵀ)·Rᵀ: the cheaper order
            r = layer.decor.R.to(s.dtype)
            gw = s.transpose(0, 1) @ (xr @ r.T) if s.shape[0] < s.shape[1] else (s.transpose(0, 1) @ xr) @ r.T
        else:
            gw = s.transpose(0, 1) @ xr
        gb = s.sum(0) if layer.bias is not None else None
        return gw, gb
    if isinstance(layer, nn.Conv2d | DecorrelatedConv2d):
        conv = layer.conv if isinstance(layer, DecorrelatedConv2d) else layer
        if x.dim() == 3:  # unbatched (C, H, W)
            x, signal = x.unsqueeze(0), signal.unsqueeze(0)
        gw = torch.nn.grad.conv2d_weight(
            x.to(signal.dtype),
            conv.weight.shape,
            signal,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
        )
        if isinstance(layer, DecorrelatedConv2d):  # gradient w.r.t. W·R, mapped to W: G·Rᵀ
            gw = (gw.flatten(1) @ layer.decor.R.to(gw.dtype).T).view_as(gw)
        gb = signal.sum(dim=(0, 2, 3)) if conv.bias is not None else None
        return gw, gb
    raise UnigradError(f"layer_grads supports nn.Linear and nn.Conv2d, got {type(layer).__name__}")


def accumulate_signal(signals: list[Tensor | None], index: int, coeff: Tensor, values: Tensor) -> None:
    """``signals[index] += coeff_b · values_b`` per sample ``b`` (the per-layer output signal).

    With a leading pass axis (``coeff`` of shape ``(k, B)``, ``values`` ``(k, B, …)``, a :class:`NoisyGroup`'s),
    the ``k`` passes' terms are summed first (a single pass adds exactly its own term)."""
    s = coeff.to(values.dtype).view(*coeff.shape, *([1] * (values.dim() - coeff.dim()))) * values
    if coeff.dim() == 2:
        s = s[0] if s.shape[0] == 1 else s.sum(0)
    prev = signals[index]
    signals[index] = s if prev is None else prev.add_(s)


def write_layer_grads(
    params: list[tuple[str, nn.Parameter]],
    owners: dict[int, list[tuple[int, str]]],
    layers: list[tuple[str, nn.Module]],
    inputs: list[Tensor | None],
    signals: list[Tensor | None],
) -> None:
    """Write :func:`signal_grads` into every trainable parameter's ``.grad``."""
    write_grad(params, signal_grads(params, owners, layers, inputs, signals), owned=True)


def signal_grads(
    params: list[tuple[str, nn.Parameter]],
    owners: dict[int, list[tuple[int, str]]],
    layers: list[tuple[str, nn.Module]],
    inputs: list[Tensor | None],
    signals: list[Tensor | None],
) -> list[Tensor]:
    """Turn each layer's output signal ``G_l`` into ``G_l x_{l−1}ᵀ`` (:func:`layer_grads`) and sum them into
    one gradient per trainable parameter (zero where its layer got no signal; in the layer's dtype, which
    :func:`~unigrad.core.params.write_grad` converts); ``owners`` comes from :func:`layer_owners`."""
    per_layer: dict[tuple[int, str], Tensor] = {}
    for li, (_, layer) in enumerate(layers):
        x, s = inputs[li], signals[li]
        if x is None or s is None:
            continue
        gw, gb = layer_grads(layer, x, s)
        per_layer[(li, "weight")] = gw
        if gb is not None:
            per_layer[(li, "bias")] = gb
    grads = []
    for _, p in params:
        parts = [per_layer[slot] for slot in owners[id(p)] if slot in per_layer]
        if len(parts) == 1:  # the common case: one layer's term, already a fresh tensor (write_grad shapes it)
            grads.append(parts[0])
            continue
        g = torch.zeros_like(p)
        for part in parts:
            g.add_(part.to(p.dtype).reshape(p.shape))
        grads.append(g)
    return grads
