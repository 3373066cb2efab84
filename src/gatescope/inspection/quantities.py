"""The inspection's numbers as declared quantities (docs/adding-a-quantity.md), measured on
an :class:`InspectContext`: a :class:`~gatescope.probes.ProbeContext` that adds the sampling
settings and computes every expensive piece once, streaming (never the dense Jacobian
stack). A cell that declares its :meth:`~gatescope.RecurrentCell.jacobian_structure`
(diagonal or rotation blocks: min_gru, min_lstm, lru, rg_lru) takes the exact structured
path for the sampled rates and the transport norms (docs/maths.md#structured-jacobians);
dense cells and stacks keep the chunked ``diag(J)`` and the matrix-free norms.

They are :class:`~gatescope.probes.Quantity` objects measured by
:func:`gatescope.probes.measure.measure`, like every probe quantity, but deliberately not
added to the registry: registering would put them into every probe's ``"cheap"``/``"full"``
presets as soon as this module is imported, and two of them need an :class:`InspectContext`.
A user who wants one in a probe registers it (``gs.register_quantity(q.name, cost=q.cost,
metrics=q.metrics)(q.function)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from .. import metrics as M
from ..cells.structure import JacobianStructure
from ..dynamics.lyapunov import gate_time_scale_exponents, lyapunov_exponents
from ..dynamics.matrix_free import transport_norms
from ..dynamics.structured import retention_structure_of, structure_of
from ..measures._quantile import quantile
from ..measures.optimizer_steps import DEFAULT_LEVELS
from ..measures.rates import neuron_cv, neuron_retention
from ..measures.timescale_spectrum import spectrum_phase
from ..metrics import declare_metric
from ..probes.context import ProbeContext
from ..probes.quantities_followups import spectrum_metrics
from ..probes.registry import Quantity, SkipQuantity
from .sampled import (
    Progress,
    aligned_at_ends,
    end_time_rates,
    no_progress,
    output_lookback,
    retained_diagonal_chunked,
    saturation_fractions,
    saturation_sources,
    structured_end_time_rates,
    structured_transport_norms,
    tau_of,
)

#: The inspection's quantities, in measuring order (filled by :func:`_quantity`).
INSPECT_QUANTITIES: list[Quantity] = []


def _quantity(name: str, *, cost: int, metrics, description: str):
    """Declare an inspection quantity (a :class:`~gatescope.probes.Quantity`, unregistered)."""
    def decorate(function):
        INSPECT_QUANTITIES.append(Quantity(name, function, cost, tuple(metrics), description))
        return function
    return decorate


TAU_QUANTILES = declare_metric(
    "tau_quantiles", "quantiles of τ = −1/log r over every (example, step, neuron) of the "
    "probe batch", axes=("level",), unit="steps")
TAU_INFINITE_FRACTION = declare_metric(
    "tau_infinite_fraction", "fraction of (example, step, neuron) with r = 1 (τ = ∞)")
GATE_SATURATED = declare_metric(
    "gate_saturated_fraction", "fraction of the entries of every sigmoid gate (update gate, "
    "retention, reset/output gates) below 0.05 or above 0.95")
TANH_SATURATED = declare_metric(
    "tanh_saturated_fraction", "fraction of the entries of every tanh output (candidates, "
    "tanh(c)) with |x| > 0.95")
SAMPLED_ENVELOPE = declare_metric(
    "sampled_envelope", "f(ℓ) = mean over (b, t ≥ ℓ, q) of |μ_{t,ℓ,q}|, first order, over "
    "the sampled end times t only", axes=("lag",), omit_undefined=True)
SAMPLED_RATE_CV = declare_metric(
    "sampled_rate_cv", "median over (b, sampled t ≥ ℓ) of the CV of |μ_{t,ℓ,·}| across "
    "neurons, first order", axes=("rate_lag",), omit_undefined=True)
TRANSPORT_NORM = declare_metric(
    "sampled_transport_norm", "median over (example, sampled end time t) of ‖M_{t,t-ℓ}‖_2, "
    "matrix-free (Lanczos on MᴴM over step JVPs/VJPs), or from cumulative log-sums for a "
    "cell with a Jacobian structure", axes=("transport_lag",))
TRANSPORT_CONVERGED = declare_metric(
    "transport_norm_converged", "fraction of the sampled (example, t, ℓ) norms whose "
    "certificate met the tolerance within the step limit")
LYAPUNOV = declare_metric(
    "lyapunov_exponents", "the top finite-time Lyapunov exponents (QR method on step JVPs, "
    "per step, natural log), mean over examples", axes=("exponent",), unit="1/step")
GATE_EXPONENTS = declare_metric(
    "gate_exponents", "the largest E_t log r_t over neurons (the zeroth-order prediction of "
    "the Lyapunov exponents of a diagonal-gate cell), mean over examples", axes=("exponent",),
    unit="1/step")
OUTPUT_LOOKBACK = declare_metric(
    "output_lookback", "sqrt(mean over examples of ‖∂h_T/∂u_t‖_F²), h_T the readout part of "
    "the final state (exact, or Hutchinson's estimate with Gaussian directions; padded "
    "sequences aligned at their own ends)",
    axes=("time",))


@dataclass
class InspectContext(ProbeContext):
    """A probe context with the inspection's sampling settings.

    Attributes (beyond :class:`~gatescope.probes.ProbeContext`'s; ``lags`` are the envelope
    lags ``1..T`` and ``rate_lags`` the dispersion lags):
        end_times: the sampled end times ``t`` of the effective rates.
        lookback_probes: ``None`` (exact) or the number of Gaussian directions.
        jacobian_budget: bytes of per-step Jacobians alive at once for ``diag(J)``.
        transport_lags: lags of the matrix-free transport norms (``()``: not measured).
        transport_starts: their end times.
        lyapunov_count: how many Lyapunov exponents (``0``: not measured).
        progress: called with the number of steps done, for a progress bar.
    """

    end_times: tuple[int, ...] = ()
    lookback_probes: int | None = None
    jacobian_budget: int = 2**27
    transport_lags: tuple[int, ...] = ()
    transport_starts: tuple[int, ...] = ()
    lyapunov_count: int = 0
    progress: Progress = field(default=no_progress, repr=False)

    @cached_property
    def structure(self) -> JacobianStructure | None:
        """The cell's :meth:`~gatescope.RecurrentCell.jacobian_structure`, checked and held
        past the lengths (:func:`~gatescope.dynamics.structured.structure_of`), or ``None``
        (dense cells, stacks)."""
        return structure_of(self.cell, self.trajectory)

    @cached_property
    def retention_structure(self) -> JacobianStructure | None:
        """The structure of the transport's block on the retention entries
        (:func:`~gatescope.dynamics.structured.retention_structure_of`): :attr:`structure`'s
        inner state, or a cell's own (Mamba's SSM state), or ``None``."""
        return retention_structure_of(self.cell, self.trajectory)

    @cached_property
    def retained_diagonal(self) -> Tensor:
        """``(B, T, n)`` float64 ``diag(J_t)`` on the retained entries, chunked in time."""
        return retained_diagonal_chunked(self.cell, self.trajectory, self.jacobian_budget,
                                         self.progress)

    @cached_property
    def sampled_rates(self) -> tuple[Tensor, Tensor]:
        """``(envelope (T,), μ at rate_lags (B, S, L, n))`` at the sampled end times: from
        the cumulative log-sums of a :attr:`retention_structure` (no ``diag(J)``), else by
        the dual-number recursion on the chunked ``diag(J)``."""
        if self.retention_structure is not None:
            self.progress(self.trajectory.seq_len)  # the diag(J) pass it needs no longer
            return structured_end_time_rates(self.retention_structure, self.end_times,
                                             self.effective_rate_lags, self.progress,
                                             self.trajectory.lengths)
        r = neuron_retention(self.cell, self.trajectory)
        return end_time_rates(r, self.retained_diagonal - r, self.end_times,
                              self.effective_rate_lags, self.progress,
                              self.trajectory.lengths)

    @cached_property
    def lookback(self) -> Tensor:
        """``(B, T)`` ``‖∂h_T/∂u_t‖_F²`` (:func:`~gatescope.inspection.sampled.
        output_lookback`), Gaussian directions drawn with ``sampling_seed``."""
        gen = torch.Generator().manual_seed(self.sampling_seed)
        return output_lookback(self.cell, self.trajectory, self.lookback_probes, gen,
                               self.progress)


def _inspect_context(ctx: ProbeContext) -> InspectContext:
    if not isinstance(ctx, InspectContext):
        raise SkipQuantity("needs the inspection's sampling settings (gatescope.inspect)")
    return ctx


@_quantity("time_scale_spectrum", cost=0, metrics=[TAU_QUANTILES, TAU_INFINITE_FRACTION],
                   description="distribution of τ = −1/log r over neurons and time")
def time_scale_spectrum(ctx: ProbeContext) -> dict[str, Tensor]:
    """Quantiles (at the ``level`` axis' levels) of the instantaneous time scales, and the
    fraction that is infinite. Skipped for a cell without retention.

    The quantiles are ``τ(quantile of r)``: ``τ = -1/log r`` increases with ``r``, so the
    order statistics are the same, and interpolating ``r`` between them stays finite where
    some ``τ`` are infinite.
    """
    if not bool(ctx.trajectory.retention.ne(0).any()):
        raise SkipQuantity("the cell has no retention (r = 0, τ = 0)")
    r = neuron_retention(ctx.cell, ctx.trajectory)[ctx.trajectory.step_mask].flatten()
    levels = torch.tensor(DEFAULT_LEVELS, dtype=torch.float64)
    return {TAU_QUANTILES.name: tau_of(quantile(r, levels)),
            TAU_INFINITE_FRACTION.name: (r >= 1).double().mean()}


@_quantity("gate_saturation", cost=0, metrics=[GATE_SATURATED, TANH_SATURATED],
                   description="fraction of saturated gate and tanh entries")
def gate_saturation(ctx: ProbeContext) -> dict[str, float]:
    """Entry-weighted saturation over every sigmoid gate and every tanh output."""
    traj = ctx.trajectory
    parts = saturation_fractions(traj, gate_kind=ctx.cell.gate_kind)
    inside = traj.step_mask
    weights = {label: x[inside.to(x.device)].numel()
               for label, (x, _) in saturation_sources(traj, ctx.cell.gate_kind).items()}
    out = {}
    for metric, kind in ((GATE_SATURATED, "sigmoid"), (TANH_SATURATED, "tanh")):
        chosen = {k: v for k, v in parts.items() if v["kind"] == kind}
        if chosen:
            total = sum(weights[k] for k in chosen)
            out[metric.name] = sum(weights[k] * ((v["low"] or 0.0) + v["high"])
                                   for k, v in chosen.items()) / total
    return out


@_quantity("sampled_effective_rates", cost=1, metrics=[SAMPLED_ENVELOPE, SAMPLED_RATE_CV],
                   description="envelope and neuron dispersion of μ at sampled end times")
def sampled_effective_rates(ctx: ProbeContext) -> dict[str, Tensor]:
    """The envelope at the context's ``lags`` and the CV across neurons at its rate lags,
    over the sampled end times (first-order ``μ``)."""
    ictx = _inspect_context(ctx)
    envelope, kept = ictx.sampled_rates
    return {SAMPLED_ENVELOPE.name: envelope[[lag - 1 for lag in ictx.lags]],
            SAMPLED_RATE_CV.name: neuron_cv(kept)}


@_quantity("spectrum_phase", cost=1,
           metrics=[M.FITTED_TIME_SCALES, M.TAIL_BETA, M.TAIL_BETA_LOW, M.TAIL_BETA_HIGH,
                    M.TAIL_BELOW_ONE, M.TAIL_R2, M.ENVELOPE_MODEL, *M.ENVELOPE_WEIGHTS,
                    M.PHASE],
           description="fitted time scales, their tail exponent β, the envelope's AIC law "
           "and the phase, at the sampled end times")
def sampled_spectrum_phase(ctx: ProbeContext) -> dict[str, Tensor]:
    """The probe quantity ``timescale_spectrum`` (docs/timescales.md) on the sampled rates:
    ``τ_q`` fitted over the rate lags, the envelope's law at the same lags. Skipped for a
    cell without retention and with fewer than three rate lags."""
    ictx = _inspect_context(ctx)
    lags = list(ictx.effective_rate_lags)
    if len(set(lags)) < 3 or not bool(ctx.trajectory.retention.ne(0).any()):
        raise SkipQuantity("needs a retention and at least three rate lags")
    envelope, kept = ictx.sampled_rates
    return spectrum_metrics(spectrum_phase(
        kept, lags, envelope[[lag - 1 for lag in lags]],
        torch.Generator().manual_seed(ictx.sampling_seed)))


@_quantity("output_lookback", cost=2, metrics=[OUTPUT_LOOKBACK],
                   description="how far back the output looks: ‖∂h_T/∂u_t‖ against t")
def output_lookback_norms(ctx: ProbeContext) -> dict[str, Tensor]:
    """RMS over examples of ``‖∂h_T/∂u_t‖_F`` for ``t = 1..T``; with ``traj.lengths`` each
    sequence is aligned at its own end (``h_T`` is its state at its length, held there), so
    index ``t`` is lag ``T - t`` from every sequence's end, over the sequences that long."""
    ictx = _inspect_context(ctx)
    squares, lengths = ictx.lookback, ictx.trajectory.lengths
    if lengths is not None:
        squares = aligned_at_ends(squares, lengths.to(squares.device))
    return {OUTPUT_LOOKBACK.name: squares.nanmean(0).sqrt()}


#: The matrix-free norms' tolerance and Lanczos step limit in a report (a figure's accuracy,
#: not a certificate's: entries that miss it are counted in ``transport_norm_converged``).
TRANSPORT_RTOL, TRANSPORT_MAX_ITER = 1e-3, 30


@_quantity("transport_norms", cost=2, metrics=[TRANSPORT_NORM, TRANSPORT_CONVERGED],
           description="‖M_{t,t-ℓ}‖_2 at sampled lags and end times, matrix-free")
def sampled_transport_norms(ctx: ProbeContext) -> dict[str, Tensor]:
    """:func:`~gatescope.transport_norms` at the context's transport lags and end times
    (for a structured cell :func:`~gatescope.inspection.sampled.structured_transport_norms`,
    exact: every entry converged): the median over examples and end times per lag, and the
    converged fraction."""
    ictx = _inspect_context(ctx)
    if not ictx.transport_lags:
        raise SkipQuantity("no transport lags asked for")
    lags, ends = list(ictx.transport_lags), list(ictx.transport_starts)
    if ictx.structure is not None:
        norms = structured_transport_norms(ictx.structure, ends, lags, TRANSPORT_RTOL)
        converged = torch.ones((), dtype=torch.float64)
    else:
        res = transport_norms(ictx.cell, ictx.trajectory, lags, ends, rtol=TRANSPORT_RTOL,
                              max_iter=TRANSPORT_MAX_ITER,
                              generator=torch.Generator().manual_seed(ictx.sampling_seed))
        norms, converged = res.norms, res.converged.double().mean()
    # (B, S, L); an end time past a sequence's length is left out
    if ictx.trajectory.lengths is not None:
        past = torch.tensor(ends).view(1, -1) > ictx.trajectory.lengths.cpu().view(-1, 1)
        norms = norms.masked_fill(past.to(norms.device).unsqueeze(-1), float("nan"))
    return {TRANSPORT_NORM.name: quantile(norms.transpose(0, 2).flatten(1), 0.5, dim=1),
            TRANSPORT_CONVERGED.name: converged}


@_quantity("lyapunov", cost=2, metrics=[LYAPUNOV, GATE_EXPONENTS],
           description="top Lyapunov exponents and the gates' zeroth-order prediction")
def lyapunov(ctx: ProbeContext) -> dict[str, Tensor]:
    """:func:`~gatescope.lyapunov_exponents` (the first tenth of the steps, at most 100,
    only aligning the basis) and :func:`~gatescope.gate_time_scale_exponents` over the same
    steps, each the largest ``k``, averaged over examples."""
    ictx = _inspect_context(ctx)
    traj = ictx.trajectory
    k = min(ictx.lyapunov_count, traj.states.shape[-1])
    if k < 1:
        raise SkipQuantity("no Lyapunov exponents asked for")
    discard = min(100, traj.seq_len // 10)
    exponents = lyapunov_exponents(ictx.cell, traj, k, discard=discard,
                                   generator=torch.Generator().manual_seed(ictx.sampling_seed))
    ictx.progress(traj.seq_len)
    out = {LYAPUNOV.name: exponents.nanmean(0)}
    if bool(traj.retention.ne(0).any()):
        gates = gate_time_scale_exponents(traj, discard=discard)[:, :k]
        out[GATE_EXPONENTS.name] = gates.nanmean(0)
    return out
