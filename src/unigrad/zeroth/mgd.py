"""Multiplexed gradient descent: the :class:`MGD` estimator and its codes (:func:`hadamard`, :func:`sinusoid_codes`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective, evaluate, reduce
from unigrad.core.options import check_int
from unigrad.core.params import write_grad
from unigrad.core.rng import ProbeNoise, generator

DITHERS = ("random-sign", "walsh", "sinusoid")
BASELINES = ("clean", "mean")
_ASSIGN_KEY = 0x4D4744  # names the code-assignment stream: generator(seed, step, _ASSIGN_KEY)


def hadamard(n: int) -> Tensor:
    """The ``n×n`` Sylvester Hadamard matrix (``n`` a power of two), float64:
    ``H[a, t] = (−1)^popcount(a AND t)``."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def sinusoid_codes(window: int) -> Tensor:
    """The ``2F × T`` table of sinusoid codes, ``F = ⌊(T−1)/2⌋``: row ``2(f−1) + q`` is
    ``√2·sin(2π f t/T + qπ/2)`` for ``f = 1..F`` and ``q ∈ {0, 1}``."""
    n_freq = (window - 1) // 2
    t = torch.arange(window, dtype=torch.float64)
    f = torch.arange(1, n_freq + 1, dtype=torch.float64).repeat_interleave(2)
    phase = torch.tensor([0.0, math.pi / 2], dtype=torch.float64).repeat(n_freq)
    return math.sqrt(2.0) * torch.sin(2 * math.pi * f[:, None] * t[None, :] / window + phase[:, None])


class MGD(Estimator):
    """MGD — multiplexed gradient descent: every parameter carries its own dither, one scalar is broadcast.

    Over a window of ``T`` time steps ``t = 0..T−1`` every trainable entry ``k`` is dithered by its own
    signal ``δ_k(t) = σ·s_k(t)`` (``s_k`` a unit-power code, ``(1/T)Σ_t s_k(t)² = 1``), all entries at
    once. At each step the cost ``C(t) = L(θ + δ(t))`` (batch-mean loss, one forward pass of the batch)
    is measured, high-pass filtered, ``ΔC(t) = C(t) − C_ref``, and broadcast; each entry correlates it
    with its own dither::

        g_k = (1/(T·σ²)) Σ_t ΔC(t)·δ_k(t) = (1/(T·σ)) Σ_t ΔC(t)·s_k(t)

    To first order ``ΔC(t) = σ Σ_j g*_j s_j(t)`` (``g*`` the gradient), so
    ``g_k = Σ_j g*_j·⟨s_k, s_j⟩`` with ``⟨a, b⟩ = (1/T)Σ_t a(t)b(t)``: the estimate is exact for a
    loss linear in θ whenever the codes are orthonormal over the window, and the *crosstalk* between two
    entries is the overlap of their codes. The optimizer then descends along ``g``.

    Dithers (option ``dither``):

    ``"random-sign"`` (code multiplexing with random codes)
        ``s_k(t) = ±1`` Rademacher, independent over entries and steps, keyed by
        ``(seed, step, t, tensor)`` through :class:`~unigrad.core.rng.ProbeNoise` (exact generator
        stream). Random codes are only orthogonal on average: ``E[g] = g*`` (for a linear loss, and up
        to O(σ²) otherwise), with ``E‖g − g*‖² = ((d−1)/T)·‖g*‖²``, so the cosine with the gradient is
        ``≈ 1/√(1 + (d−1)/T)``, about ``√(T/d)`` when ``T ≪ d``. Works for any ``d`` and ``T``.

    ``"walsh"`` (code multiplexing with Walsh–Hadamard codes)
        ``T`` must be a power of two. With ``H`` the ``T×T`` Sylvester Hadamard matrix
        (``H[a, t] = (−1)^popcount(a AND t)``), entry ``k`` gets a code row ``c_k ∈ {1..T−1}`` (never
        the constant row 0, which a high-pass filter removes) and a sign ``ε_k = ±1``:
        ``s_k(t) = ε_k·H[c_k, t]``. Rows ``1..T−1`` are orthonormal over the window and sum to zero.

    ``"sinusoid"`` (frequency multiplexing)
        ``T ≥ 3``. With ``F = ⌊(T−1)/2⌋`` integer frequencies ``f ∈ 1..F`` and two quadrature phases
        ``φ ∈ {0, π/2}`` there are ``2F`` codes ``√2·sin(2π f t/T + φ)``; entry ``k`` gets code ``c_k``
        (a pair ``(f_k, φ_k)``) and a sign ``ε_k``: ``s_k(t) = ε_k·√2·sin(2π f_k t/T + φ_k)``, so its
        phase is one of ``0, π/2, π, 3π/2``. Over a whole window codes of different frequency are
        orthogonal for *any* phases (``f + f' ≤ 2F < T``, so no frequency aliases onto another), and the
        sine and cosine of one frequency are orthogonal too: the ``2F`` codes are orthonormal and each
        sums to zero over the window.

    Assignment of codes (walsh and sinusoid, ``K`` codes: ``T−1`` or ``2F``). At every call, keyed by
    ``(seed, step)``, the ``d`` entries (flattened over all trainable tensors in order) are dealt the
    codes round-robin in a random order: ``c_k = τ[π_k mod K]`` with ``π`` a random permutation of the
    ``d`` entries and ``τ`` one of the ``K`` codes, and each entry draws an independent sign ``ε_k``.

    - ``d ≤ K``: every entry has its own code (a random subset of the codes), the codes are orthonormal,
      and for a loss linear in θ ``g`` equals the gradient exactly (up to rounding).
    - ``d > K``: codes are shared, each by ``⌊d/K⌋`` or ``⌈d/K⌉`` entries, and entries sharing a code
      cannot be told apart. For a linear loss the estimate is exactly
      ``g_k = g*_k + Σ_{j≠k, c_j = c_k} ε_k ε_j g*_j`` (crosstalk within a code group). Because the
      signs are independent and re-drawn every call, the crosstalk has mean zero: ``E[g] = g*``, with
      ``Var g_k = Σ_{j≠k, c_j=c_k} g*_j²`` (about ``(d/K − 1)·‖g*‖²/d`` per entry, as for random signs
      with ``T ≈ K``).
    - For a nonlinear loss the second-order terms ``½σ² s_i s_j ∂²L/∂θ_i∂θ_j`` alias onto other codes
      (the product of Walsh rows ``a, b`` is row ``a XOR b``; the product of two sinusoids holds the
      sum and difference frequencies), an O(σ) error that also has mean zero over the random signs.

    Baselines (option ``baseline``, the high-pass filter):

    ``"clean"``
        One extra unperturbed pass gives ``C_ref = L(θ)``.
    ``"mean"``
        ``C_ref = C̄ = (1/T)Σ_t C(t)``, the window's mean: the removal of the zero frequency a high-pass
        filter does, with no extra pass. The Walsh and sinusoid codes sum to zero over the window, so for
        them subtracting any constant changes nothing and ``"mean"`` equals ``"clean"`` up to rounding.
        Random signs do not sum to zero, and ``C̄`` contains every step's own dither; since
        ``Σ_t (C(t) − C̄)s_k(t) = Σ_t (C(t) − C̄)(s_k(t) − s̄_k)`` is ``T − 1`` times an unbiased
        covariance, the divisor ``T`` is replaced by ``T − 1`` for ``"random-sign"`` with ``"mean"``
        (without it the estimate would be shrunk by ``1 − 1/T`` on average).

    Implementation: the parameters are perturbed in place, ``θ ← fl(θ₀ + σ·s(t))`` computed from an exact
    copy ``θ₀`` at every step (no drift from adding and subtracting), and restored by copying ``θ₀`` back,
    so they are bitwise unchanged on return. The correlation is accumulated step by step in float64
    (``Σ_t (C(t) − C_0)s(t)`` and, for ``"mean"``, ``Σ_t s(t)``), so no ``T×d`` dither is ever held. The
    correlation uses the nominal dither ``σ·s(t)``, not the rounded one the model saw.

    Hardware. MGD is meant to run on the hardware network itself. The dither is applied to the
    parameters themselves (each synapse or tunable element adds its own small, locally generated signal:
    a ±1 sequence from a counter or shift register, a Walsh code, or a sinusoid of its own frequency);
    the network runs forward on the input as it would for inference; the cost is measured once per time
    step, high-pass filtered (here: minus the clean cost or the window mean) and broadcast. That scalar
    ΔC is the only global signal: there is no backward pass, no weight transport, no per-layer error
    wiring. Each element multiplies ΔC by its own dither and integrates the product over the window in a
    local accumulator (here ``.grad``), then updates itself. As in CDMA or FDMA telecommunication, the
    codes let all elements share one channel at once; the window length ``T`` trades estimation time
    against crosstalk.

    Cost: ``T·B`` forward samples for a batch of B, plus ``B`` for ``baseline="clean"``. Noise: ``T``
    Rademacher draws of ``d`` entries (random-sign) or one permutation of ``d`` entries and ``d`` signs
    (walsh, sinusoid) per call. Memory: a copy of θ and two float64 accumulators of ``d`` entries.
    ``Estimate.loss`` is the clean loss with ``baseline="clean"``, otherwise the window mean
    (``loss_is_probe_mean``). ``Estimate.info``: ``costs`` (the window's ``C(t)``, float64),
    ``reference`` (``C_ref``), ``codes`` (``K``) and ``max_sharing`` (the most entries sharing one code:
    1 means orthogonal; both None for random signs).

    State: the step counter (``state_dict``), which keys all the noise, so a resumed estimator replays
    the same sequence.

    Args:
        dither: ``"random-sign"``, ``"walsh"`` or ``"sinusoid"`` (see above) (default: ``"random-sign"``).
        window: ``T``, the time steps per estimate (≥ 2; a power of two for ``"walsh"``, ≥ 3 for
            ``"sinusoid"``) (default: 16).
        sigma: dither amplitude σ (> 0); every entry's dither has RMS σ over the window (default: 1e-3).
        baseline: ``"clean"`` or ``"mean"`` (see above) (default: ``"clean"``).
        seed: names the noise stream: random signs are keyed by ``(seed, step, t, tensor)``, code
            assignments and signs by ``(seed, step)`` (default: 0).

    References:
        A. N. McCaughan, B. G. Oripov, N. Ganesh, S. W. Nam, A. Dienstfrey, S. M. Buckley,
        "Multiplexed gradient descent: Fast online training of modern datasets on hardware neural networks
        without backpropagation", APL Machine Learning 1, 026118 (2023), arXiv:2303.03986.
    """

    name = "mgd"
    order = 0
    description = (
        "multiplexed gradient descent: per-parameter dithers (random sign, Walsh, sinusoid) correlated with the "
        "broadcast ΔC"
    )
    _options = ("dither", "window", "sigma", "baseline")

    def __init__(
        self,
        dither: str = "random-sign",
        window: int = 16,
        sigma: float = 1e-3,
        baseline: str = "clean",
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_choice("dither", dither, DITHERS)
        check_choice("baseline", baseline, BASELINES)
        check_int("window", window, low=2)
        if dither == "walsh" and window & (window - 1):
            raise UnigradError(f"option window must be a power of two for dither 'walsh', got {window}")
        if dither == "sinusoid" and window < 3:
            raise UnigradError(f"option window must be >= 3 for dither 'sinusoid' (one frequency), got {window}")
        check_positive("sigma", sigma)
        self.dither, self.window, self.sigma, self.baseline = dither, window, float(sigma), baseline
        self.noise = ProbeNoise("rademacher", "generator")
        if dither == "walsh":
            self.code_table: Tensor | None = hadamard(window)[1:]  # rows 1..T−1: never the constant row
        elif dither == "sinusoid":
            self.code_table = sinusoid_codes(window)
        else:
            self.code_table = None

    @property
    def n_codes(self) -> int | None:
        """Number of orthonormal codes ``K`` (walsh: ``T−1``, sinusoid: ``2⌊(T−1)/2⌋``); None for random signs."""
        return None if self.code_table is None else int(self.code_table.shape[0])

    def assignment(self, step: int, shapes: list[torch.Size]) -> tuple[list[Tensor], list[Tensor]]:
        """Code indices (rows of ``code_table``) and signs ``ε`` of every entry at ``step``, one
        ``(codes, signs)`` pair of tensors per parameter shape (walsh and sinusoid only)."""
        if self.code_table is None:
            raise UnigradError("dither 'random-sign' has no code assignment")
        k = self.code_table.shape[0]
        d = sum(math.prod(s) for s in shapes)
        g = generator(self.seed, step, _ASSIGN_KEY)
        perm = torch.randperm(d, generator=g)
        tau = torch.randperm(k, generator=g)
        codes = tau[perm % k]
        signs = torch.randint(0, 2, (d,), generator=g).to(torch.float64).mul_(2).sub_(1)
        out_c, out_s, start = [], [], 0
        for s in shapes:
            n = math.prod(s)
            out_c.append(codes[start : start + n].view(s))
            out_s.append(signs[start : start + n].view(s))
            start += n
        return out_c, out_s

    @torch.no_grad()
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        T, sigma, step = self.window, self.sigma, self.step
        tensors = [p for _, p in params]
        saved = [p.detach().clone() for p in tensors]
        cost = Cost()
        clean = self.baseline == "clean"
        max_sharing = None
        if self.code_table is not None:
            codes, signs = self.assignment(step, [p.shape for p in tensors])
            codes = [c.to(p.device) for c, p in zip(codes, tensors)]
            signs = [s.to(p.device) for s, p in zip(signs, tensors)]
            table = self.code_table
            max_sharing = -(-sum(p.numel() for p in tensors) // table.shape[0])
        acc = [torch.zeros(p.shape, dtype=torch.float64, device=p.device) for p in tensors]
        ssum = None if clean else [torch.zeros_like(a) for a in acc]
        costs = torch.empty(T, dtype=torch.float64)
        c_ref = float(reduce(evaluate(objective, model, cost))) if clean else None
        try:
            for t in range(T):
                if self.code_table is None:
                    dith = [
                        self.noise.raw(self.seed, step, t, i, p.shape, torch.float64, p.device)
                        for i, p in enumerate(tensors)
                    ]
                else:
                    column = table[:, t].to(tensors[0].device)
                    dith = [column[c] * s for c, s in zip(codes, signs)]
                for p, p0, s in zip(tensors, saved, dith):
                    p.copy_(p0.double().add(s, alpha=sigma))
                c = float(reduce(evaluate(objective, model, cost)))
                costs[t] = c
                shift = c_ref if clean else float(costs[0])  # removed now to avoid cancellation later
                for a, s in zip(acc, dith):
                    a.add_(s, alpha=c - shift)
                if ssum is not None:
                    for a, s in zip(ssum, dith):
                        a.add_(s)
        finally:
            for p, p0 in zip(tensors, saved):
                p.copy_(p0)
        mean = float(costs.mean())
        if clean:
            reference, denom = c_ref, T
            grads = [a / (denom * sigma) for a in acc]
        else:
            # ΔC(t) = C(t) − C̄ = (C(t) − C(0)) − (C̄ − C(0))
            reference = mean
            denom = T - 1 if self.code_table is None else T
            off = mean - float(costs[0])
            grads = [(a - off * s) / (denom * sigma) for a, s in zip(acc, ssum)]
        write_grad(params, grads, owned=True)
        info: dict[str, Any] = {
            "costs": costs,
            "reference": reference,
            "codes": self.n_codes,
            "max_sharing": max_sharing,
        }
        return Estimate(loss=c_ref if clean else mean, cost=cost, loss_is_probe_mean=not clean, info=info)
