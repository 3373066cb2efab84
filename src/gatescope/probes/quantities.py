"""The built-in quantities, cheapest first (cost ranks in :mod:`gatescope.probes.registry`).

Each is a thin reduction of :mod:`gatescope.measures` functions to the arrays of its declared
metrics (:mod:`gatescope.metrics`); the metric's axes give each array's shape. The same
functions serve a :class:`~gatescope.Probe` and the paper's experiments.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import metrics as M
from ..measures._quantile import quantile
from ..measures.anisotropy import propagation_anisotropy, transport_alignment, update_anisotropy
from ..measures.envelopes import envelope_agreement, exact_envelope, first_order_envelope
from ..measures.matched import readout_reads_retention
from ..measures.optimizer_steps import step_size_dispersion
from ..measures.profiles import profile_fit
from ..measures.rates import (
    effective_learning_rates,
    envelope,
    neuron_cv,
    neuron_retention,
    permuted_neuron_cv,
    time_scales,
    times_beyond_length,
)
from .context import ProbeContext
from .registry import SkipQuantity, register_quantity

#: The scale-invariant spectrum statistics (fields of ``SpectrumStats``/``Dispersion``).
SPECTRUM_FIELDS = ("ai", "ce", "participation_ratio", "effective_rank")


def _spectrum(stats: object, metrics: tuple[M.Metric, ...], reduce=None) -> dict[str, Tensor]:
    """``{metric name: field of stats}`` for the four :data:`SPECTRUM_FIELDS`, each reduced."""
    return {m.name: getattr(stats, f) if reduce is None else reduce(getattr(stats, f))
            for f, m in zip(SPECTRUM_FIELDS, metrics, strict=True)}


@register_quantity("loss", cost=0, metrics=[M.PROBE_LOSS], description="loss on the probe batch")
def loss(ctx: ProbeContext) -> dict[str, Tensor]:
    """``probe_loss``: the model's loss on the probe batch."""
    return {M.PROBE_LOSS.name: ctx.model.loss_from_states(ctx.trajectory.states, ctx.y,
                                                          ctx.mask)}


@register_quantity("gates", cost=0, metrics=[M.GATE_PER_NEURON, M.RETENTION_PER_NEURON],
                   description="mean update gate and retention per neuron")
def gates(ctx: ProbeContext) -> dict[str, Tensor]:
    """``gate_per_neuron`` (absent for cells without a learned gate) and
    ``retention_per_neuron``, means over the batch and time. A scalar gate is repeated
    across the ``hidden_size`` neurons; a gate of another width (a minGRU's inner channels,
    Mamba's ``Δ`` per inner channel) keeps its own."""
    traj, n = ctx.trajectory, ctx.cell.hidden_size
    mean_gate = None if traj.gates is None else traj.gates.double().mean((0, 1))
    out = {} if mean_gate is None else {
        M.GATE_PER_NEURON.name: mean_gate.expand(n) if mean_gate.shape[-1] == 1 else mean_gate}
    out[M.RETENTION_PER_NEURON.name] = neuron_retention(ctx.cell, traj).mean((0, 1))
    return out


STEP_METRICS = (M.STEP_AI, M.STEP_CE, M.STEP_PARTICIPATION_RATIO, M.STEP_EFFECTIVE_RANK)


@register_quantity("optimizer_steps", cost=0,
                   metrics=[M.STEP_CV, *STEP_METRICS, M.STEP_QUANTILES],
                   description="dispersion of the optimizer's per-parameter step sizes")
def optimizer_steps(ctx: ProbeContext) -> dict[str, Tensor]:
    """:func:`~gatescope.step_size_dispersion` of the optimizer's step sizes.

    Skipped without an optimizer, for an unsupported one, and before its first step (Adam
    has no step size then).
    """
    if ctx.optimizer is None and ctx.step_sizes is None:
        raise SkipQuantity("no optimizer given")
    try:
        steps = ctx.optimizer_steps
    except TypeError as err:
        raise SkipQuantity(str(err)) from None
    count = sum(int((~s.isnan()).sum()) for s in steps.values())
    if count == 0:
        raise SkipQuantity("the optimizer has not taken a step yet")
    d = step_size_dispersion(steps, r=ctx.spectrum_rank(count))
    return {M.STEP_CV.name: d.cv, **_spectrum(d, STEP_METRICS),
            M.STEP_QUANTILES.name: d.quantiles}


@register_quantity("zeroth_order_rates", cost=0, metrics=[M.RATE_CV_ORDER0],
                   description="across-neuron dispersion of the gates' rates μ⁰")
def zeroth_order_rates(ctx: ProbeContext) -> dict[str, Tensor]:
    """``rate_cv_order0`` at the rate lags (:func:`~gatescope.measures.neuron_cv` of
    ``μ⁰``). Skipped for a cell without retention (``r = 0``: ``μ⁰ = 0``, no dispersion)."""
    traj = ctx.trajectory
    if not bool(traj.retention.ne(0).any()):
        raise SkipQuantity("the cell has no retention (μ⁰ = 0)")
    mu0 = effective_learning_rates(ctx.cell, traj, lags=ctx.effective_rate_lags, order=0)
    return {M.RATE_CV_ORDER0.name: neuron_cv(mu0)}


@register_quantity("zeroth_order_rates_null", cost=0, metrics=[M.RATE_CV_ORDER0_NULL],
                   description="μ⁰'s across-neuron dispersion with neuron identity removed "
                   "(the null of neuron-specific rates)")
def zeroth_order_rates_null(ctx: ProbeContext) -> dict[str, Tensor]:
    """``rate_cv_order0_null`` at the rate lags: :func:`~gatescope.measures.rates.
    permuted_neuron_cv` of the retention, the permutations drawn from a generator seeded
    with ``ctx.sampling_seed``. Skipped for a cell without retention and for one whose
    retention has one value for every neuron (leaky, scalar_gate: nothing to permute)."""
    traj = ctx.trajectory
    if not bool(traj.retention.ne(0).any()) or traj.retention.shape[-1] == 1:
        raise SkipQuantity("the retention has no per-neuron values to permute")
    generator = torch.Generator().manual_seed(ctx.sampling_seed)
    return {M.RATE_CV_ORDER0_NULL.name: permuted_neuron_cv(
        neuron_retention(ctx.cell, traj), ctx.effective_rate_lags, generator,
        times_beyond_length(traj))}


@register_quantity("schedule", cost=0, metrics=[M.SCHEDULE_MULTIPLIER, M.RETENTION_MEAN],
                   description="the global step the gates imply along time, mean retention")
def schedule(ctx: ProbeContext) -> dict[str, Tensor]:
    """``schedule_multiplier``: ``(L_s, T)`` ``η μ⁰`` averaged over examples and neurons at
    the schedule lags and ``t = 1..T`` (NaN where ``ℓ > t``; measured only with schedule
    lags and a step size); ``retention_mean``: ``(T,)`` the mean retention ``β_t = r_t``."""
    traj = ctx.trajectory
    out = {M.RETENTION_MEAN.name: traj.retention.double().mean((0, 2))}
    lr = ctx.lr if ctx.lr is not None or ctx.optimizer is None else \
        float(ctx.optimizer.param_groups[0]["lr"])
    if ctx.schedule_lags and lr is not None:
        mu0 = effective_learning_rates(ctx.cell, traj, lags=ctx.schedule_lags, order=0)
        out[M.SCHEDULE_MULTIPLIER.name] = (lr * mu0.mean((0, 3)))[1:].T  # (L_s, T)
    return out


@register_quantity("effective_rates", cost=1,
                   metrics=[M.ENVELOPE, M.RATE_CV_ORDER1, M.TIME_SCALES],
                   description="first-order effective learning rates μ at the rate lags")
def effective_rates(ctx: ProbeContext) -> dict[str, Tensor]:
    """First-order ``μ`` (:func:`~gatescope.effective_learning_rates`) at the rate lags:
    ``envelope`` and ``rate_cv_order1`` per lag, ``time_scales`` per neuron."""
    return {M.ENVELOPE.name: envelope(ctx.rates), M.RATE_CV_ORDER1.name: neuron_cv(ctx.rates),
            M.TIME_SCALES.name: time_scales(ctx.cell, ctx.trajectory)}


@register_quantity("matched_statistic", cost=2,
                   metrics=[M.MATCHED_MEAN, M.MATCHED_STD, M.MATCHED_POSITIVE_FRACTION],
                   description="the matched statistic ψ_t(ℓ) at the rate lags (learnability "
                   "window)")
def matched(ctx: ProbeContext) -> dict[str, Tensor]:
    """:func:`~gatescope.measures.matched.matched_statistic` at the rate lags, its direction
    ``w`` drawn from a generator seeded with ``ctx.sampling_seed``: mean, standard deviation
    and fraction positive per lag over the examples and the steps that carry a loss term
    (:func:`~gatescope.measures.matched.loss_steps`). Always from the cell's own Jacobians
    (``gate_term`` does not apply). Skipped where ``ψ ≡ 0``: a readout that does not read the
    retention entries (an LSTM, an output projection)."""
    if not readout_reads_retention(ctx.model):
        raise SkipQuantity("the readout does not read the retention entries: δ_t = 0 there, "
                           "so ψ ≡ 0")
    samples = ctx.matched_samples.T  # (S, L)
    mean = samples.nanmean(0)
    defined = ~samples.isnan()
    return {M.MATCHED_MEAN.name: mean,
            M.MATCHED_STD.name: (samples - mean).square().nanmean(0).sqrt(),
            M.MATCHED_POSITIVE_FRACTION.name: (samples > 0).sum(0) / defined.sum(0)}


@register_quantity("exact_envelope", cost=2,
                   metrics=[M.EXACT_ENVELOPE, M.FIRST_ORDER_ENVELOPE,
                            M.ENVELOPE_RANK_CORRELATION, M.ENVELOPE_SLOPE_RATIO],
                   description="envelope of the exact transport's diagonal beside the "
                   "first-order one")
def exact_and_first_order_envelopes(ctx: ProbeContext) -> dict[str, Tensor | float]:
    """:func:`~gatescope.measures.envelopes.exact_envelope` and
    :func:`~gatescope.measures.envelopes.first_order_envelope` at the rate lags on the same
    ``(b, t)`` (every ``t ≥ ℓ`` for a structured cell, the default sampled end times for a
    dense one, whose Jacobians are the context's), and their
    :func:`~gatescope.measures.envelopes.envelope_agreement`."""
    lags = ctx.effective_rate_lags
    J = None if ctx.retention_structured else ctx.jacobians
    exact = exact_envelope(ctx.cell, ctx.trajectory, lags, J=J)
    first = first_order_envelope(ctx.cell, ctx.trajectory, lags, J=J)
    agreement = envelope_agreement(exact, first, lags)
    return {M.EXACT_ENVELOPE.name: exact, M.FIRST_ORDER_ENVELOPE.name: first,
            M.ENVELOPE_RANK_CORRELATION.name: agreement.rank_correlation,
            M.ENVELOPE_SLOPE_RATIO.name: agreement.slope_ratio}


JACOBIAN_METRICS = (M.JACOBIAN_AI, M.JACOBIAN_CE, M.JACOBIAN_PARTICIPATION_RATIO,
                    M.JACOBIAN_EFFECTIVE_RANK)


@register_quantity("propagation_anisotropy", cost=2, metrics=JACOBIAN_METRICS,
                   description="anisotropy of sampled transport products per lag")
def propagation(ctx: ProbeContext) -> dict[str, Tensor]:
    """:func:`~gatescope.propagation_anisotropy` at the lags: medians over the sampled
    products (sampled with ``ctx.sampling_seed``, the same ``(b, t, k)`` at every step), in
    the context's product order, precision and sampling."""
    J = ctx.jacobians
    res = propagation_anisotropy(J, ctx.lags, ctx.samples_per_lag,
                                 torch.Generator().manual_seed(ctx.sampling_seed),
                                 ctx.spectrum_rank(J.shape[-1]), ctx.ce_denominator,
                                 ctx.spectrum_epsilon, ctx.trajectory.lengths,
                                 ctx.product_order, ctx.product_dtype, ctx.sampling)
    return _spectrum(res.stats, JACOBIAN_METRICS, lambda x: quantile(x, 0.5))


@register_quantity("alignment", cost=2, metrics=[M.ALIGNMENT, M.ALIGNMENT_BASELINE],
                   description="transport-loss alignment a_r at the lags")
def alignment(ctx: ProbeContext) -> dict[str, Tensor | float]:
    """:func:`~gatescope.transport_alignment` of ``δ_T`` with ``M_{T,T-ℓ}``: ``alignment``
    averaged over the probe batch per lag, and its random-direction ``alignment_baseline``."""
    J = ctx.jacobians
    T = J.shape[1]
    res = transport_alignment(J, ctx.final_adjoint, [T - lag for lag in ctx.lags],
                              r=ctx.spectrum_rank(J.shape[-1]))
    return {M.ALIGNMENT.name: res.alignment.nanmean(0), M.ALIGNMENT_BASELINE.name: res.baseline}


GRADCOV_METRICS = (M.GRADCOV_AI, M.GRADCOV_CE, M.GRADCOV_PARTICIPATION_RATIO,
                   M.GRADCOV_EFFECTIVE_RANK)


@register_quantity("update_anisotropy", cost=3, metrics=GRADCOV_METRICS,
                   description="anisotropy of the per-example gradients")
def update(ctx: ProbeContext) -> dict[str, Tensor]:
    """:func:`~gatescope.update_anisotropy` of the per-example gradients (of the gradient
    batch when the context has one, else of the probe batch); ``CE_r`` over all singular
    values whatever ``ctx.ce_denominator`` says (the paper's code takes its top 16 for the
    transport products only)."""
    G = ctx.per_example_gradients
    stats = update_anisotropy(G, ctx.spectrum_rank(min(G.shape)), "all", ctx.spectrum_epsilon)
    return _spectrum(stats, GRADCOV_METRICS)


@register_quantity("profile", cost=4,
                   metrics=[M.SENSITIVITY_PROFILE, M.PREDICTED_PROFILE, M.ZEROTH_ORDER_PROFILE,
                            M.FIT_SLOPE, M.FIT_R2],
                   description="sensitivity profile and both gate-product predictors")
def profile(ctx: ProbeContext) -> dict[str, Tensor]:
    """:func:`~gatescope.profile_fit` (every transport norm: the most expensive quantity):
    the profile per lag ``1..T-1``, and per predictor the fitted and zeroth-order
    predictions and the power fit's slope and ``R²``."""
    fit = profile_fit(ctx.trajectory, ctx.sensitivities, ctx.trim, ctx.gate_factors,
                      ctx.profile_pairs, ctx.profile_median)
    preds = list(fit.predictors.values())  # in PREDICTORS order

    def stack(get) -> Tensor:
        return torch.stack([torch.as_tensor(get(p), dtype=torch.float64) for p in preds])

    return {M.SENSITIVITY_PROFILE.name: fit.sensitivity,
            M.PREDICTED_PROFILE.name: stack(lambda p: p.fitted),
            M.ZEROTH_ORDER_PROFILE.name: stack(lambda p: p.zeroth_order),
            M.FIT_SLOPE.name: stack(lambda p: p.fit.slope),
            M.FIT_R2.name: stack(lambda p: p.fit.r2)}
