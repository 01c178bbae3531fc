"""Memory-efficient zeroth-order SPSA: the :class:`MeZO` estimator, run in place with seed replay and exact restore."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.exchange import ProbeExchange, check_exchange
from unigrad.core.objective import Objective, evaluate, reduce
from unigrad.core.precision import warn_if_sigma_too_small
from unigrad.core.reads import PerturbedReads
from unigrad.core.replay import ReplayDirection, flat_view
from unigrad.core.rng import CHUNK, ProbeNoise
from unigrad.zeroth._probing import check_probes, gather_losses

DISTRIBUTIONS = ("gaussian", "rademacher")
PERTURB = ("in_place", "forward")
_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_OFFSET = torch.int16 if CHUNK <= 1 << 15 else torch.int32  # fix-up positions are offsets within a chunk

Fixups = dict[tuple[int, int], tuple[Tensor, Tensor]]  # (tensor, chunk start) -> (offsets, original values)


class MeZO(Estimator):
    """MeZO — memory-efficient zeroth-order SPSA, run in place with seed replay.

    For ``q`` probes ``z_i`` (Gaussian or Rademacher), each regenerated from its key
    ``(seed, step, i, tensor)``::

        c_i = [f(θ+σz_i) − f(θ−σz_i)] / (2σ)        g = (1/q) Σ_i c_i z_i

    which is :class:`~unigrad.zeroth.rge.RGE` with the central scheme, evaluated *in place*: the model
    itself is perturbed, one chunk of :data:`~unigrad.core.rng.CHUNK` elements at a time, so no copy of
    θ and no full-size noise tensor ever exists and the memory is that of inference.

    Exact restore. In floating point, θ+σz−2σz+σz is not θ: with σ = 1e-3 on PyTorch's default
    initialisation of an MLP many entries come back changed, and where |θ| ≪ σ nearly all of them.
    Here each move is exact: perturbing computes θ' = fl(θ+δ) chunk by chunk, with δ = ±σz, and records
    the positions where fl(θ'−δ) is not bitwise θ, with their original values (a sparse fix-up list);
    restoring computes fl(θ'−δ) and scatters the recorded values back. θ → θ−σz restores θ first, then
    perturbs by −δ. Fix-ups occur only where θ+δ lands in a binade with a coarser grid than θ's and a
    lost bit mattered, i.e. mostly where |θ| ≲ |δ|: a few percent of the perturbed entries of an MLP at
    PyTorch's default initialisation, more for a wider one (smaller weights); where |θ| ≪ σ nearly all do
    (θ's bits are rounded away). Each costs a 2-byte offset within its chunk and the original value (6 bytes
    in float32, so 1.5× the parameters in the worst case), and a list is freed chunk by chunk as it is
    consumed. ``Estimate.info`` reports ``fixup_fraction`` and ``fixup_bytes`` (the most held at once).
    The fractions and bytes measured by ``benchmarks/p2_memory.py``, and the naive sequence's share of
    changed entries, are in ``docs/benchmarks.md`` (P2 — memory).

    Perturbing in the forward (``perturb="forward"``). θ is never written: while the objective runs, every
    torch function that reads a parameter gets θ + s·σz_i instead, computed when it is read, with the
    operations of the in-place move (``fl(θ + fl(z·sσ))``) and dropped after the call; ``F.embedding`` looks
    up the perturbed rows only (from the generator, only the noise chunks that hold those rows are drawn). The
    forward therefore sees the same bits as in place: the probe losses, ``.grad``, the replayed direction and
    the trained parameters are bitwise those of ``perturb="in_place"`` (same stream, same replay), with no
    restore, no fix-ups and one noise pass per forward instead of three sweeps per probe. Extra memory: the
    perturbed copy of the one tensor in use (the looked-up rows for an embedding). A model that modifies its
    parameters during the forward, or reads them other than through torch functions, needs ``"in_place"``.

    Update. With ``write_grad=True`` (default) ``g`` is accumulated into ``.grad`` (``d`` extra floats)
    while the last probe is restored, so any ``torch.optim`` optimizer can step. With
    ``write_grad=False``, ``.grad`` is left untouched and ``Estimate.info["direction"]`` holds ``g`` in
    compressed form (a :class:`~unigrad.core.replay.ReplayDirection`: noise keys and the coefficients
    ``c_i/q``); :class:`~unigrad.optim.ReplaySGD` applies θ ← θ − η(g + λθ) by regenerating
    ``z_i`` chunk by chunk, which is the paper's MeZO-SGD. This departs from the ``.grad`` contract on
    purpose: ``.grad`` alone costs as much as the model (see :mod:`unigrad.core.replay`). The replayed
    direction is bitwise equal to the dense ``.grad`` of the same seed and step.

    Cost: ``2qB`` forward samples for a batch of B; three passes of noise generation per probe (plus one
    per probe for :class:`~unigrad.optim.ReplaySGD`), as in the paper's algorithm. The loss reported
    is the mean of the 2q probe losses (``loss_is_probe_mean``). Warns when σ is too small to move most
    parameters at their precision. In place, a step takes several times the time of its two forwards on a CPU;
    the fast configuration ``perturb="forward", noise_source="table", table_size=2**20`` (a 4 MiB table)
    takes under 2× on a pretrained transformer, memory-lean at inference memory
    (``benchmarks/finetune_step.py``, ``benchmarks/finetune_memory.py``, ``docs/finetuning.md``), and
    far more on a GPU, where the chunk-by-chunk work is bound by kernel launches and host syncs, so there
    memory, not speed, is what MeZO buys: the ratios measured by ``benchmarks/p2_memory.py`` are in
    ``docs/benchmarks.md`` (P2 — memory).

    Args:
        probes: number of probes q (≥ 1) (default: 1).
        sigma: perturbation scale σ (> 0) (default: 1e-3).
        distribution: ``"gaussian"`` or ``"rademacher"`` (the latter is SPSA) (default: ``"gaussian"``).
        noise_source: ``"generator"`` (regenerated per key and chunk; no memory), ``"table"`` (a shared
            table of ``table_size`` normals read at seeded offsets: faster, but the table is held in memory,
            4·table_size bytes per cached table; a tensor larger than the table, such as a word embedding,
            is read in row windows, see :mod:`unigrad.core.rng`; the memory it adds for the small MLP of
            ``benchmarks/p2_memory.py`` is in ``docs/benchmarks.md``) or ``"auto"`` (the table for tensors
            that fit, the generator for the others) (default: ``"generator"``).
        table_size: entries of the shared table (``noise_source="table"``); 4·2²⁰ entries are 16 MiB of
            float32 (default: 4,194,304).
        write_grad: write the dense direction into ``.grad`` (True) or only return it compressed (False)
            (default: True).
        seed: names the noise stream; each perturbation is keyed by (seed, step, probe, tensor) (default: 0).
        perturb: ``"in_place"`` (write θ ± σz_i into the model and restore it exactly) or ``"forward"`` (leave
            θ alone and perturb each parameter where the forward reads it; bitwise the same results, faster;
            see above) (default: ``"in_place"``).
        exchange: a :class:`~unigrad.core.exchange.ProbeExchange` to spread the probes over processes
            (``unigrad.distributed``): each process perturbs, measures and restores its own probes, the
            scalar losses are all-gathered, then every process accumulates ``g`` over all ``q`` probes by
            regenerating each ``z_i`` (one more noise pass per probe; ``.grad`` is bitwise the same as in
            one process, since the sum runs in the same order). ``None``: all probes here.
            Not listed in ``options()`` (default: None).

    References:
        S. Malladi, T. Gao, E. Nichani, A. Damian, J. D. Lee, D. Chen, S. Arora, "Fine-Tuning
        Language Models with Just Forward Passes", NeurIPS 2023, arXiv:2305.17333 (Algorithm 1).
    """

    name = "mezo"
    supports_exchange = True
    order = 0
    description = "in-place SPSA with seed replay: memory of inference"
    _options = ("probes", "sigma", "distribution", "noise_source", "write_grad")

    def __init__(
        self,
        probes: int = 1,
        sigma: float = 1e-3,
        distribution: str = "gaussian",
        noise_source: str = "generator",
        table_size: int = 1 << 22,
        write_grad: bool = True,
        seed: int = 0,
        exchange: ProbeExchange | None = None,
        perturb: str = "in_place",
    ) -> None:
        super().__init__(seed)
        check_probes(probes, sigma)
        check_choice("distribution", distribution, DISTRIBUTIONS)
        check_choice("perturb", perturb, PERTURB)
        if not isinstance(write_grad, bool):
            raise UnigradError(f"option write_grad must be True or False, got {write_grad!r}")
        self.noise = ProbeNoise(distribution, noise_source, table_size)
        self.probes, self.sigma, self.distribution = probes, float(sigma), distribution
        self.noise_source, self.table_size, self.write_grad = noise_source, table_size, write_grad
        self.exchange = check_exchange(exchange)
        self.perturb = perturb
        self._fixed = self._perturbed = self._fixup_bytes = 0  # fix-up statistics of the current estimate
        self._shapes: list[torch.Size] = []

    @torch.no_grad()
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        cost, q = Cost(), self.probes
        flats = [flat_view(p) for _, p in params]
        self._shapes = [p.shape for _, p in params]
        grads = self._zeroed_grads(params) if self.write_grad else None
        self._fixed = self._perturbed = self._fixup_bytes = 0
        ex = self.exchange
        mine = range(q) if ex is None else ex.local_probes(q)
        f = torch.empty(2, len(mine), dtype=torch.float64)
        projected, coeffs = [], []
        in_forward = self.perturb == "forward"
        if in_forward and self.step == 0:
            warn_if_sigma_too_small(params, self.sigma)
        for k, i in enumerate(mine):
            if in_forward:  # θ untouched: each forward reads θ ± σz_i where it uses a parameter
                f[0, k], f[1, k] = (self._measure_in_forward(model, objective, cost, params, i, s) for s in (1, -1))
                fix: Fixups = {}
            else:  # probe: θ+σz_i, measure, then θ (exact) and θ−σz_i, measure, then θ (exact) again
                fix = self._sweep(flats, i, undo=0.0, do=1.0, fixups={}, check_sigma=k == 0)
                f[0, k] = self._measure(model, objective, cost, flats, i, 1.0, fix)
                fix = self._sweep(flats, i, undo=1.0, do=-1.0, fixups=fix)
                f[1, k] = self._measure(model, objective, cost, flats, i, -1.0, fix)
            undo = 0.0 if in_forward else -1.0
            if ex is not None:  # restore only: the combination waits for every process's losses
                if undo:
                    self._sweep(flats, i, undo=undo, do=0.0, fixups=fix)
                continue
            # combine: c_i = (f+ − f−)/(2σ); g += (c_i/q) z_i while restoring
            c = float(f[0, k] - f[1, k]) / (2 * self.sigma)
            projected.append(c)
            coeffs.append(c / q)
            if undo or grads is not None:
                self._sweep(flats, i, undo=undo, do=0.0, fixups=fix, grads=grads, coeff=c / q)
        if ex is not None:
            # gather the scalar losses of all processes, then combine all q probes, regenerating each z_i
            f = gather_losses(ex, f, q, cost)
            projected = [float(f[0, i] - f[1, i]) / (2 * self.sigma) for i in range(q)]
            coeffs = [c / q for c in projected]
            if grads is not None:
                for i in range(q):
                    self._sweep(flats, i, undo=0.0, do=0.0, fixups={}, grads=grads, coeff=coeffs[i])
        direction = ReplayDirection(self.noise, self.seed, self.step, tuple(coeffs), tuple(p for _, p in params))
        info: dict[str, Any] = {
            "projected_gradients": torch.tensor(projected, dtype=torch.float64),
            "probe_losses": f,
            "direction": direction,
            "fixup_fraction": self._fixed / max(1, self._perturbed),
            "fixup_bytes": self._fixup_bytes,
        }
        return Estimate(loss=float(f.mean()), cost=cost, loss_is_probe_mean=True, info=info)

    @staticmethod
    def _zeroed_grads(params: list[tuple[str, nn.Parameter]]) -> list[Tensor]:
        """Flat views of ``.grad``, zeroed (reusing the tensor if it fits, as ``write_grad`` does)."""
        out = []
        for _, p in params:
            if p.grad is None or p.grad.shape != p.shape or p.grad.dtype != p.dtype or not p.grad.is_contiguous():
                p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format)
            else:
                p.grad.zero_()
            out.append(p.grad.view(-1))
        return out

    def _measure(
        self, model: nn.Module, objective: Objective, cost: Cost, flats: list[Tensor], i: int, s: float, fix: Fixups
    ) -> float:
        """Mean loss at the current (perturbed) parameters; restores θ exactly if the objective fails."""
        try:
            return float(reduce(evaluate(objective, model, cost)))
        except BaseException:
            self._sweep(flats, i, undo=s, do=0.0, fixups=fix)
            raise

    def _measure_in_forward(
        self, model: nn.Module, objective: Objective, cost: Cost, params: list[tuple[str, nn.Parameter]], i: int, s: int
    ) -> float:
        """Mean loss at θ + s·σz_i, computed without writing θ (``perturb="forward"``)."""
        with _in_forward(self, [p for _, p in params], i, s * self.sigma):
            return float(reduce(evaluate(objective, model, cost)))

    def options(self) -> dict[str, Any]:
        """The constructor options; ``perturb`` and ``table_size`` are listed only when not the defaults
        (``table_size`` changes the noise stream when the table is used)."""
        opts = super().options()
        if self.noise_source != "generator" and self.table_size != 1 << 22:
            opts["table_size"] = self.table_size
        return opts if self.perturb == "in_place" else {**opts, "perturb": self.perturb}

    def _sweep(
        self,
        flats: list[Tensor],
        probe: int,
        *,
        undo: float,
        do: float,
        fixups: Fixups,
        grads: list[Tensor] | None = None,
        coeff: float = 0.0,
        check_sigma: bool = False,
    ) -> Fixups:
        """One pass over the noise of ``probe``: undo the move ``undo·σz`` (exactly, with ``fixups``),
        add ``coeff·z`` to ``grads``, then move by ``do·σz``; returns the fix-ups of the new move."""
        new: Fixups = {}
        held = sum(a.nbytes + b.nbytes for a, b in fixups.values())
        unchanged = 0
        for k, flat in enumerate(flats):
            bits = _BITS[flat.element_size()]
            chunks = self.noise.chunks(self.seed, self.step, probe, k, flat.numel(), flat.device, self._shapes[k])
            for start, z in chunks:
                x, z = flat[start : start + z.numel()], z.to(flat.dtype)
                if undo:
                    x.sub_(z * (undo * self.sigma))
                    if (k, start) in fixups:
                        idx, vals = fixups.pop((k, start))  # released as soon as used
                        held -= idx.nbytes + vals.nbytes
                        x[idx.long()] = vals
                if grads is not None:
                    grads[k][start : start + z.numel()].add_(z, alpha=coeff)
                if do:
                    delta = z * (do * self.sigma)
                    y = x + delta
                    torch.sub(y, delta, out=delta)  # what restoring will compute: fl(fl(θ+δ) − δ)
                    idx = (delta.view(bits) != x.view(bits)).nonzero().view(-1)
                    if idx.numel():
                        new[(k, start)] = (idx.to(_OFFSET), x[idx])
                        held += idx.numel() * (_OFFSET.itemsize + flat.element_size())
                        self._fixup_bytes = max(self._fixup_bytes, held)
                    if check_sigma:
                        unchanged += int((y == x).sum())
                    x.copy_(y)
                    self._fixed += idx.numel()
                    self._perturbed += x.numel()
        if check_sigma and unchanged > 0.5 * sum(f.numel() for f in flats):
            warnings.warn(
                f"sigma={self.sigma} does not change {unchanged} of the parameters at their precision; raise sigma",
                RuntimeWarning,
                stacklevel=5,
            )
        return new


def _in_forward(mezo: MeZO, params: list[nn.Parameter], probe: int, scale: float) -> PerturbedReads:
    """A :class:`~unigrad.core.reads.PerturbedReads` giving every torch function that reads one of ``params`` the
    perturbed value θ + scale·z_probe instead.

    The value is computed when it is read and dropped after the call, with the in-place sweep's operations
    (``fl(θ + fl(z·scale))``), so the forward sees the very bits the in-place perturbation would write.
    ``F.embedding`` perturbs only the rows it looks up (:meth:`~unigrad.core.rng.ProbeNoise.rows`). The two
    functions close over the estimator, not the mode (no reference cycle keeps the parameters alive).
    """
    noise, seed, step = mezo.noise, mezo.seed, mezo.step

    def value(k: int, p: Tensor) -> Tensor:
        n = p.numel()
        out = torch.empty(n, dtype=p.dtype, device=p.device)
        for start, z in noise.chunks(seed, step, probe, k, n, p.device, p.shape, noise.span(n)):
            torch.mul(z.to(p.dtype), scale, out=out[start : start + z.numel()])
        return out.add_(flat_view(p)).view(p.shape)

    def rows(k: int, weight: Tensor, ids: Tensor) -> Tensor:
        z = noise.rows(seed, step, probe, k, weight.shape, ids).to(weight.dtype)
        return torch.mul(z, scale).add_(F.embedding(ids, weight))

    return PerturbedReads(params, value, rows)
