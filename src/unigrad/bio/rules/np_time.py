"""Node perturbation in time: the :class:`NPTime` estimator (NP or ANP on a rate RNN's units at every time step)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unigrad.bio.lif import LIFNetwork
from unigrad.bio.rate_rnn import RateRNN, Trajectory
from unigrad.core.cost import Cost
from unigrad.core.errors import UnigradError, check_choice, check_positive
from unigrad.core.estimator import Estimate, Estimator
from unigrad.core.objective import Objective
from unigrad.core.options import check_number
from unigrad.core.params import write_grad
from unigrad.core.rng import ProbeNoise
from unigrad.nn.decorrelation import DecorrelatedLinear
from unigrad.nn.perturbation import check_external_noise
from unigrad.zeroth.anp import NOISES, PASSES, SCALES, anp_coefficients

VARIANTS = ("np", "anp")
READOUTS = ("perturb", "local")
LAYERS = ("inp", "rec", "out")

_UNITS, _OUTPUTS = 0, 1  # tensor part of the noise key


def _linear(net: RateRNN, name: str) -> tuple[nn.Linear, DecorrelatedLinear | None]:
    """The ``nn.Linear`` behind layer ``name`` and its decorrelating wrapper, if any."""
    layer = getattr(net, name)
    if isinstance(layer, DecorrelatedLinear):
        return layer.linear, layer
    if isinstance(layer, nn.Linear):
        return layer, None
    raise UnigradError(f"np-time: layer {name!r} of the RateRNN must be an nn.Linear, got {type(layer).__name__}")


class NPTime(Estimator):
    """NP in time — node perturbation on a rate RNN's units at every time step, or its activity-based variant (ANP).

    The network (:class:`~unigrad.bio.rate_rnn.RateRNN`, ``α = dt/τ``, ``r = φ(x)``)::

        x_{t+1} = (1 − α) x_t + α (W_rec r_t + W_in u_t + b) + ξ_t        y_t = W_out r_{t+1} + b_out + ζ_t

    runs twice on the same trials: a *baseline* pass and a *noisy* pass whose units receive keyed Gaussian noise
    ``ξ_t ~ N(0, σ²I)`` at every step (and, with ``readout="perturb"``, its outputs ``ζ_t ~ N(0, σ²I)``). With the
    per-trial loss change ``δL_b = L̃_b − L_b`` the rule correlates ``δL`` with each unit's perturbation and its
    presynaptic input, summed over time.

    Where α goes
        The noise enters ``x_{t+1}`` additively while the weights enter through ``α·W·r_t``, so
        ``∂x_{t+1}/∂(W_rec)_{ij} = α·r_j(t)``, ``∂x_{t+1}/∂(W_in)_{ij} = α·u_j(t)`` and ``∂x_{t+1}/∂b_i = α``.
        Writing ``λ_{t+1} = ∂L/∂x_{t+1}`` (the adjoint of BPTT: the total derivative of the loss with respect to a
        state, through all later steps), BPTT gives ``∂L/∂W_rec = α Σ_t λ_{t+1} r_tᵀ``. Adding ``ξ_t`` to
        ``x_{t+1}`` changes the loss by ``δL = Σ_t λ_{t+1}·ξ_t + O(σ²)``, so with ``E[ξ_t ξ_sᵀ] = σ² δ_{ts} I``,
        ``E[δL·ξ_t]/σ² = λ_{t+1} + O(σ²)``.

    ``variant="np"`` — node perturbation in time, unbiased up to O(σ²) (the second-order term of ``δL`` has
    vanishing odd moments against ``ξ``; exact at any σ when the loss is quadratic in the noise, as for a linear
    network with a squared error)::

        g_{W_rec} = (1/q) Σ_i (1/B) Σ_b (δL_{i,b}/σ²) · α Σ_t ξ_{i,t,b} r_{t,b}ᵀ
        g_{W_in}  = (1/q) Σ_i (1/B) Σ_b (δL_{i,b}/σ²) · α Σ_t ξ_{i,t,b} u_{t,b}ᵀ,    g_b = … α Σ_t ξ_{i,t,b}
        g_{W_out} = (1/q) Σ_i (1/B) Σ_b (δL_{i,b}/σ²) · Σ_t ζ_{i,t,b} r_{t+1,b}ᵀ,   g_{b_out} = … Σ_t ζ_{i,t,b}

    ``variant="anp"`` — activity-based NP in time (García Fernández, Keemink & van Gerven): the noise is replaced by
    the *measured* change of activity ``δx_{t+1} = x̃_{t+1} − x_{t+1}`` of every unit at every step (and
    ``δy_t = ỹ_t − y_t`` of the outputs with ``readout="perturb"``), normalised by its squared norm over all units,
    outputs and steps of the trial, ``‖δ_b‖² = Σ_t ‖δx_{t+1,b}‖² + Σ_t ‖δy_{t,b}‖²``::

        g_{W_rec} = (1/q) Σ_i (1/B) Σ_b c · δL_{i,b}/‖δ_{i,b}‖² · α Σ_t δx_{i,t+1,b} r_{t,b}ᵀ     (W_in, b, W_out alike)

    with ``N`` the number of measured nodes per trial (``T·n_rec``, plus ``T·n_out`` with ``readout="perturb"``) and
    ``c`` set by ``scale`` (√N, N or 1, as :class:`~unigrad.zeroth.anp.ANP`). ANP reads activities and losses only,
    never the noise, so it also learns from noise the network makes itself and the rule cannot read (an
    ``intrinsic`` process with ``accessible=False``). ``δx`` carries the noise of earlier steps propagated through
    the dynamics, which is what the loss responded to; the update is a directional derivative along the measured
    direction, biased in general, and needs no knowledge of σ. A trial whose activity did not move contributes
    nothing.

    The presynaptic factors ``r_t``, ``u_t``, ``r_{t+1}`` are those of the baseline pass.

    Spiking networks
        The same rule trains an :class:`~unigrad.bio.lif.LIFNetwork`: the perturbed state is the membrane potential
        (``x = v``, noise added to ``v_{t+1}``), the presynaptic signal of ``W_rec`` is the spike train (``r = s``),
        the weights enter ``v_{t+1}`` through ``α = 1 − β`` (``β = exp(−dt/τ_mem)``), and ``W_out``'s factor is the
        leaky trace of the readout, ``∂y_t/∂W_out = (1 − β_out) Σ_{k≤t} β_out^{t−k} s_{k+1}``. Spikes are
        discontinuous in ``v``: NP then estimates the gradient of the Gaussian-smoothed loss of the true spiking
        network (no surrogate derivative is involved), ANP a directional derivative along the measured change of
        the potentials.

    Readout (``readout``)
        ``"perturb"`` (default): the outputs are perturbed nodes like the units (NP: their own noise ``ζ``; ANP:
        their measured change ``δy``), so every weight learns from the scalar loss change alone, as in the
        feed-forward NP/ANP of Dalm, van Gerven & Ahmad where every layer, the output layer included, is perturbed.
        ``"local"``: the readout, being linear, gets its exact local gradient ``Σ_t (∂L/∂y_t) r_{t+1}ᵀ`` from the
        baseline pass (a delta rule: it needs the error of every output unit, a vector signal rather than a global
        reward); the outputs are then neither perturbed nor counted in ANP's ``N`` and ``‖δ‖²``.

    Decorrelation
        The layers may be wrapped by :func:`unigrad.decorrelate` (``x̂ = R·x`` before each of ``inp``, ``rec``,
        ``out``; the decorrelated ANP of the paper). The rule then uses the decorrelated presynaptic inputs
        ``R·r_t``, ``R·u_t``, ``R·r_{t+1}`` (the gradient of ``W·(R·x)`` with respect to ``W``). In training mode the
        estimator also hands every decorrelation the baseline pass's presynaptic rows *of all time steps*
        (:meth:`~unigrad.nn.decorrelation.Decorrelation.record`), so a following
        :func:`~unigrad.nn.decorrelation.update_decorrelation` sees the statistics of the whole sequence (the
        wrapped ``rec`` layer alone would keep only its last call, the last step). ``R`` itself is never changed.

    Intrinsic noise (the network's own ``intrinsic`` process)
        No clean pass exists then, so ``passes="two-noisy"`` is required: both passes carry the network's noise
        (different trials, hence different draws), and the probe pass adds the injected noise. ANP compares the two
        activities as usual. NP must read the realised noise: it uses the difference of the two passes' total noise
        ``Δξ = ξ̃ − ξ⁰`` and the per-entry variance of that difference, ``s² = k·σ² + 2v`` (``v`` the process's
        variance, ``k`` the number of passes that inject noise: 2 with ``two-noisy``, 0 with ``noise="external"``),
        in place of ``σ²``; this is unbiased for noise white in time, biased for temporally correlated noise
        (Ornstein–Uhlenbeck), since ``E[Δξ_t Δξ_sᵀ]`` is then not diagonal in time. NP refuses, with a one-line
        error, when the process is inaccessible (``accessible=False``). Each pass advances the network's trial
        counter, which keys its noise.

    Model and objective
        The model is a :class:`~unigrad.bio.rate_rnn.RateRNN` whose trainable parameters are weights and biases of
        its ``inp``, ``rec`` and ``out`` layers (plain or decorrelated ``nn.Linear``); any other trainable parameter
        raises (freeze it). The objective must expose ``inputs`` ``(T, B, n_in)`` and ``score(outputs)`` → ``(B,)``
        per-trial losses, as a task's :class:`~unigrad.bio.tasks.base.TaskObjective` does; each trial's loss is
        correlated with its own noise.

    Cost: ``(1 + q)·B`` forward samples (trials) for a batch of B: one baseline pass and q noisy passes, no backward
    (``readout="local"`` adds one derivative of the loss with respect to the outputs, not a pass through the
    network). ``Estimate.loss`` is the clean loss with ``passes="clean-noisy"``, else the mean over all 1 + q noisy
    passes (``loss_is_probe_mean``). ``info``: ``probe_losses`` (mean loss of each noisy pass) and, for ANP,
    ``silent_samples`` (trials whose activity did not move).

    State: the seed and the step counter (keys of the noise); nothing else.

    Args:
        probes: number of noisy passes q (≥ 1), each compared with the one baseline pass (default: 1).
        sigma: standard deviation σ (> 0) of the injected noise on units (and outputs) (default: 1e-3).
        variant: ``"np"`` (correlate with the injected noise) or ``"anp"`` (with the measured activity
            change) (default: ``"np"``).
        scale: ANP's factor c: ``"sqrt"`` (c = √N), ``"n"`` (c = N: about NP's scale) or ``"none"``
            (c = 1). Ignored by NP (default: ``"sqrt"``).
        readout: ``"perturb"`` or ``"local"``; see above (default: ``"perturb"``).
        passes: ``"clean-noisy"`` or ``"two-noisy"`` (the baseline pass is noisy too: it gets its own
            injected noise, keyed as probe q, and the network's intrinsic noise; required when the network
            has intrinsic noise) (default: ``"clean-noisy"``).
        noise: ``"internal"`` (the estimator injects σ-noise) or ``"external"`` (it injects nothing; the
            network's intrinsic noise is the only probe; needs ``passes="two-noisy"`` and an ``intrinsic``
            process, and with NP ``readout="local"``, since nothing then perturbs the outputs independently)
            (default: ``"internal"``).
        noise_source: ``"auto"``, ``"generator"`` or ``"table"``; see ``core/rng.py`` (default: ``"auto"``).
        seed: names the noise stream; the unit noise of probe i is keyed by (seed, step, i, 0), the output
            noise by (seed, step, i, 1) (default: 0).

    References:
        [1] J. García Fernández, S. Keemink, M. van Gerven, "Gradient-free training of recurrent neural networks
            using random perturbations", Frontiers in Neuroscience 18:1439155, 2024 (arXiv:2405.08967): ANP
            extended to the time domain, with decorrelation, compared with BPTT, NP and WP on the copy task,
            Mackey–Glass and sequential MNIST (500 tanh units, Adam 1e-3, σ = 1e-3, decorrelation rate 1e-4).
        [2] N. Dalm, M. van Gerven, N. Ahmad, "Effective Learning with Node Perturbation in Deep Neural Networks",
            arXiv:2310.00965 (NP, ANP and decorrelation in feed-forward networks).
        [3] R. J. Williams, "Simple statistical gradient-following algorithms for connectionist reinforcement
            learning", Machine Learning 8, 1992; I. R. Fiete, H. S. Seung, "Gradient learning in spiking neural
            networks by dynamic perturbation of conductances", Phys. Rev. Lett. 97, 2006 (node perturbation in time).
    """

    name = "np-time"
    order = 0
    description = "node perturbation in time on a rate RNN: δL·ξ_t·α·preᵀ/σ² summed over steps (or ANP's δx/‖δx‖²)"
    _options = ("probes", "sigma", "variant", "scale", "readout", "passes", "noise", "noise_source")

    def __init__(
        self,
        probes: int = 1,
        sigma: float = 1e-3,
        variant: str = "np",
        scale: str = "sqrt",
        readout: str = "perturb",
        passes: str = "clean-noisy",
        noise: str = "internal",
        noise_source: str = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        check_positive("probes", probes, integer=True)
        check_number("sigma", sigma, low=0, low_inclusive=False)
        check_choice("variant", variant, VARIANTS)
        check_choice("scale", scale, SCALES)
        check_choice("readout", readout, READOUTS)
        check_choice("passes", passes, PASSES)
        check_choice("noise", noise, NOISES)
        check_external_noise(noise, passes, "network")
        if noise == "external" and variant == "np" and readout == "perturb":
            raise UnigradError(
                "variant='np' with noise='external' cannot perturb the outputs (only the network's own noise "
                "probes); use readout='local' or variant='anp'"
            )
        self.noise_stream = ProbeNoise("gaussian", noise_source)
        self.probes, self.sigma, self.variant, self.scale = probes, float(sigma), variant, scale
        self.readout, self.passes, self.noise, self.noise_source = readout, passes, noise, noise_source

    # -- checks ---------------------------------------------------------------------------------------
    def _check(
        self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]
    ) -> tuple[RateRNN, Tensor, dict[int, tuple[str, str]]]:
        if not isinstance(model, RateRNN | LIFNetwork):
            raise UnigradError(f"np-time trains a RateRNN or an LIFNetwork (unigrad.bio), got {type(model).__name__}")
        inputs = getattr(objective, "inputs", None)
        if not isinstance(inputs, Tensor) or not callable(getattr(objective, "score", None)):
            raise UnigradError(
                "np-time needs an objective with .inputs (T, B, n_in) and .score(outputs) -> (B,) losses, "
                "e.g. task.objective(task.sample(...))"
            )
        owners: dict[int, tuple[str, str]] = {}
        for name in LAYERS:
            lin, _ = _linear(model, name)
            for slot in ("weight", "bias"):
                p = getattr(lin, slot)
                if p is not None:
                    owners[id(p)] = (name, slot)
        for pname, p in params:
            if id(p) not in owners:
                raise UnigradError(
                    f"np-time trains the weights and biases of the inp, rec and out layers only; parameter {pname!r} "
                    f"is not one of them (freeze it with requires_grad_(False))"
                )
        intrinsic = model.intrinsic
        if intrinsic is None and self.noise == "external":
            raise UnigradError(
                "noise='external' needs a network with intrinsic noise (RateRNN(..., intrinsic=...)); "
                "use noise='internal'"
            )
        if intrinsic is not None and self.passes == "clean-noisy":
            raise UnigradError(
                "np-time: the network makes its own (intrinsic) noise, so no clean pass exists; use passes='two-noisy'"
            )
        if intrinsic is not None and self.variant == "np" and not bool(getattr(intrinsic, "accessible", True)):
            raise UnigradError(
                "np-time: variant='np' must read the noise, but the network's intrinsic noise is inaccessible "
                "(accessible=False); use variant='anp', which reads only activity"
            )
        return model, inputs, owners

    # -- passes ---------------------------------------------------------------------------------------
    def _injected(self, probe: int, inputs: Tensor, net: RateRNN) -> tuple[Tensor | None, Tensor | None]:
        """The injected unit noise ``(T, B, n_rec)`` and output noise ``(T, B, n_out)`` of ``probe`` (or None)."""
        if self.noise == "external":
            return None, None
        steps, batch = inputs.shape[0], inputs.shape[1]
        raw = self.noise_stream.raw
        xi = raw(self.seed, self.step, probe, _UNITS, (steps, batch, net.n_rec), inputs.dtype, inputs.device)
        zeta = None
        if self.readout == "perturb":
            zeta = raw(self.seed, self.step, probe, _OUTPUTS, (steps, batch, net.n_out), inputs.dtype, inputs.device)
            zeta = zeta * self.sigma
        return xi * self.sigma, zeta

    def _run(
        self, net: RateRNN, objective: Objective, inputs: Tensor, probe: int | None, cost: Cost
    ) -> tuple[Trajectory, Tensor, Tensor, Tensor | None]:
        """One pass (``probe=None``: clean): trajectory, outputs (with output noise), losses ``(B,)``, ζ."""
        xi, zeta = (None, None) if probe is None else self._injected(probe, inputs, net)
        traj = net.run(inputs, xi)
        outputs = traj.outputs if zeta is None else traj.outputs + zeta
        losses = objective.score(outputs)  # type: ignore[attr-defined]
        cost.forwards += int(inputs.shape[1])
        if not isinstance(losses, Tensor) or losses.shape != (inputs.shape[1],):
            got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise UnigradError(f"np-time needs per-trial losses of shape (B,) = ({inputs.shape[1]},), got {got}")
        return traj, outputs, losses.detach(), zeta

    # -- the estimate ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _estimate(self, model: nn.Module, objective: Objective, params: list[tuple[str, nn.Parameter]]) -> Estimate:
        net, inputs, owners = self._check(model, objective, params)
        cost = Cost()
        q, sigma, batch = self.probes, self.sigma, int(inputs.shape[1])
        two = self.passes == "two-noisy"
        base, out0, f0, zeta0 = self._run(net, objective, inputs, q if two else None, cost)
        work = torch.float64 if inputs.dtype == torch.float64 else torch.float32
        units = torch.zeros_like(base.x[1:], dtype=work)  # Σ_i coefficient·perturbation of the units (T, B, n_rec)
        outs = torch.zeros_like(base.outputs, dtype=work) if self.readout == "perturb" else None
        # NP's variance of the perturbation difference, per unit and per output entry
        injecting = 0 if self.noise == "external" else (2 if two else 1)
        v = float(net.intrinsic.variance) if net.intrinsic is not None else 0.0
        s2_units, s2_outs = injecting * sigma * sigma + 2.0 * v, injecting * sigma * sigma
        probe_losses = torch.empty(q, dtype=torch.float64)
        silent = 0
        for i in range(q):
            traj, out1, f1, zeta1 = self._run(net, objective, inputs, i, cost)
            probe_losses[i] = f1.double().mean()
            dloss = (f1 - f0).to(work)
            if self.variant == "np":
                # perturbation: the realised noise difference (injected, plus intrinsic if any)
                dxi = traj.noise if base.noise is None else traj.noise - base.noise  # type: ignore[operator]
                assert dxi is not None
                units += (dloss / (s2_units * batch * q))[None, :, None] * dxi.to(work)
                if outs is not None:
                    dzeta = zeta1 if zeta0 is None else zeta1 - zeta0  # type: ignore[operator]
                    assert dzeta is not None
                    outs += (dloss / (s2_outs * batch * q))[None, :, None] * dzeta.to(work)
                continue
            # ANP: measured activity change of units (and outputs), normalised over the whole trial
            dx = (traj.x[1:] - base.x[1:]).to(work)
            norm2 = dx.double().square().sum(dim=(0, 2))
            nodes = dx.shape[0] * dx.shape[2]
            dy = None
            if outs is not None:
                dy = (out1 - out0).to(work)
                norm2 = norm2 + dy.double().square().sum(dim=(0, 2))
                nodes += dy.shape[0] * dy.shape[2]
            coeff, still = anp_coefficients(self.scale, nodes, dloss, norm2, batch, q)
            silent += still
            coeff = coeff.to(work)[None, :, None]
            units += coeff * dx
            if outs is not None and dy is not None:
                outs += coeff * dy
        grads = self._combine(net, objective, base, out0, units, outs, owners)
        self._record_statistics(net, base)
        write_grad(params, [grads[id(p)] for _, p in params], owned=True)
        info: dict[str, Any] = {"probe_losses": probe_losses.float()}
        if self.variant == "anp":
            info["silent_samples"] = silent
        if two:
            loss = float((f0.double().sum() + probe_losses.sum() * batch) / (batch * (1 + q)))
            return Estimate(loss=loss, cost=cost, loss_is_probe_mean=True, info=info)
        return Estimate(loss=float(f0.double().mean()), cost=cost, loss_is_probe_mean=False, info=info)

    def _combine(
        self,
        net: RateRNN,
        objective: Objective,
        base: Trajectory,
        out0: Tensor,
        units: Tensor,
        outs: Tensor | None,
        owners: dict[int, tuple[str, str]],
    ) -> dict[int, Tensor]:
        """Σ_t signal_t · (decorrelated presynaptic input)_tᵀ per layer, keyed by parameter id."""
        alpha = net.alpha
        if outs is None:  # readout="local": the exact ∂L/∂y of the mean loss, from the baseline outputs
            with torch.enable_grad():
                y = out0.detach().requires_grad_(True)
                (dy,) = torch.autograd.grad(objective.score(y).mean(), y)  # type: ignore[attr-defined]
            outs = dy.to(units.dtype)
        presyn = {"inp": base.inputs, "rec": base.r[:-1], "out": base.readout_inputs}
        signal = {"inp": alpha * units, "rec": alpha * units, "out": outs}
        grads: dict[int, Tensor] = {}
        for name in LAYERS:
            lin, wrapper = _linear(net, name)
            pre = presyn[name].to(units.dtype)
            if wrapper is not None:
                pre = pre @ wrapper.decor.R.to(units.dtype).T
            s = signal[name]
            w = lin.weight
            if id(w) in owners:
                grads[id(w)] = torch.einsum("tbo,tbi->oi", s, pre).to(w.dtype)
            if lin.bias is not None and id(lin.bias) in owners:
                if name == "out":  # the readout may filter its bias in time (LIF: 1 − β_out^{t+1})
                    s = s * base.readout_bias_inputs.to(s.dtype)
                grads[id(lin.bias)] = s.sum(dim=(0, 1)).to(lin.bias.dtype)
        return grads

    @staticmethod
    def _record_statistics(net: RateRNN, base: Trajectory) -> None:
        """Hand each decorrelation the baseline pass's presynaptic rows of all steps (training mode only)."""
        if not net.training:
            return
        presyn = {"inp": base.inputs, "rec": base.r[:-1], "out": base.readout_inputs}
        for name in LAYERS:
            _, wrapper = _linear(net, name)
            if wrapper is not None:
                wrapper.decor.record(presyn[name].detach())
