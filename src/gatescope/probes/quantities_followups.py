"""The follow-ups' quantities (docs/learnability.md, docs/timescales.md): the learnability
window from the matched statistic, and the time-scale spectrum with its phase.

Thin reductions of :mod:`gatescope.measures` to the arrays of their declared metrics, like
:mod:`.quantities`; both read the context's first-order rates at the rate lags.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import metrics as M
from ..measures.detection import DETECTION_GRID
from ..measures.envelope_models import ENVELOPE_MODELS
from ..measures.learnability import learnability_window_from
from ..measures.matched import readout_reads_retention
from ..measures.rates import envelope
from ..measures.stable import MIN_SAMPLES, mcculloch
from ..measures.timescale_spectrum import SpectrumPhase, spectrum_phase
from .context import ProbeContext
from .registry import SkipQuantity, register_quantity


@register_quantity("learnability_window", cost=2,
                   metrics=[M.MATCHED_ALPHA, M.MATCHED_SCALE, M.MATCHED_RELIABLE,
                            M.MATCHED_SAMPLE_SNR, M.REQUIRED_SAMPLES, M.LEARNABILITY_WINDOW,
                            M.LEARNABILITY_WINDOW_MAX, M.SCALING_SLOPE, M.SCALING_R2,
                            M.SCALING_LAGS],
                   description="tail fit of the matched statistic, N_required per rate lag, "
                   "the learnability window H_N and the scaling law")
def learnability_window(ctx: ProbeContext) -> dict[str, Tensor]:
    """:func:`~gatescope.measures.learnability.learnability_window_from` of the context's
    ψ samples (one row per rate lag) with McCulloch's tail fit, on
    :data:`~gatescope.measures.detection.DETECTION_GRID`, the scaling law against the
    first-order envelope ``f(ℓ)`` of the same rates. Skipped where ``ψ ≡ 0`` (a readout that
    does not read the retention entries), with fewer than two positive rate lags, and with
    fewer than :data:`~gatescope.measures.stable.MIN_SAMPLES` samples per lag."""
    if not readout_reads_retention(ctx.model):
        raise SkipQuantity("the readout does not read the retention entries: ψ ≡ 0")
    lags = ctx.effective_rate_lags
    if sorted(set(lags)) != list(lags) or lags[0] < 1 or len(lags) < 2:
        raise SkipQuantity(f"the learnability window needs increasing rate lags >= 1, got "
                           f"{list(lags)}")
    samples = ctx.matched_samples
    if samples.shape[-1] < MIN_SAMPLES:
        raise SkipQuantity(f"the tail fit needs at least {MIN_SAMPLES} samples of ψ per lag, "
                           f"the probe batch gives {samples.shape[-1]} (more examples or steps)")
    w = learnability_window_from(samples, lags, DETECTION_GRID, mcculloch,
                                 envelope=envelope(ctx.rates))
    s = w.summary
    return {M.MATCHED_ALPHA.name: s.alpha, M.MATCHED_SCALE.name: s.scale,
            M.MATCHED_RELIABLE.name: s.reliable.double(),
            M.MATCHED_SAMPLE_SNR.name: w.sample_snr,
            M.REQUIRED_SAMPLES.name: w.n_required_continuous,
            M.LEARNABILITY_WINDOW.name: w.contiguous_window,
            M.LEARNABILITY_WINDOW_MAX.name: w.window,
            M.SCALING_SLOPE.name: w.scaling.slope, M.SCALING_R2.name: w.scaling.r2,
            M.SCALING_LAGS.name: torch.as_tensor(w.scaling.lags_used, dtype=torch.float64)}


@register_quantity("timescale_spectrum", cost=1,
                   metrics=[M.FITTED_TIME_SCALES, M.TAIL_BETA, M.TAIL_BETA_LOW,
                            M.TAIL_BETA_HIGH, M.TAIL_BELOW_ONE, M.TAIL_R2, M.ENVELOPE_MODEL,
                            *M.ENVELOPE_WEIGHTS, M.PHASE],
                   description="fitted per-neuron time scales, their CCDF tail exponent β, "
                   "the envelope's decay law and the phase")
def timescale_spectrum(ctx: ProbeContext) -> dict[str, Tensor]:
    """:func:`~gatescope.measures.timescale_spectrum.fitted_time_scales` of the first-order
    rates at the rate lags, :func:`~gatescope.measures.timescale_spectrum.tail_exponent`
    of those ``τ`` (bootstrap drawn from a generator seeded with ``ctx.sampling_seed``),
    :func:`~gatescope.measures.envelope_models.select_envelope_model` of the envelope and
    :func:`~gatescope.measures.timescale_spectrum.phase` (an index into
    :data:`gatescope.metrics.PHASE_LABELS`). Skipped with fewer than three rate lags."""
    lags = ctx.effective_rate_lags
    if len(set(lags)) < 3:
        raise SkipQuantity(f"the time-scale fits need at least three rate lags, got {list(lags)}")
    return spectrum_metrics(spectrum_phase(
        ctx.rates, lags, envelope(ctx.rates),
        torch.Generator().manual_seed(ctx.sampling_seed)))


def spectrum_metrics(s: SpectrumPhase) -> dict[str, Tensor]:
    """The ``timescale_spectrum`` metrics of a :class:`~gatescope.measures.
    timescale_spectrum.SpectrumPhase` (float64 tensors; the phase and the envelope model as
    indices into :data:`gatescope.metrics.PHASE_LABELS` and ``ENVELOPE_MODEL_LABELS``)."""
    out = {M.FITTED_TIME_SCALES.name: s.time_scales.tau, M.TAIL_BETA.name: s.tail.beta,
           M.TAIL_BETA_LOW.name: s.tail.low, M.TAIL_BETA_HIGH.name: s.tail.high,
           M.TAIL_BELOW_ONE.name: s.tail.prob_below_one, M.TAIL_R2.name: s.tail.r2,
           M.ENVELOPE_MODEL.name: s.envelope.best.double(),
           M.PHASE.name: float(M.PHASE_LABELS.index(s.phase))}
    for metric, name in zip(M.ENVELOPE_WEIGHTS, ENVELOPE_MODELS, strict=True):
        out[metric.name] = s.envelope.models[name].weight
    return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in out.items()}
