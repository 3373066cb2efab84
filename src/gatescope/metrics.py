"""The catalogue of every measured number gatescope writes: one declaration per metric name.

A :class:`Metric` says what a number is (a one-line definition), its unit, and the axes of
its per-measurement array. The same declaration serves every road a number travels: a probe
records the array under the metric's name, an experiment turns it into rows of
``results.csv`` (each axis filling the column :data:`AXIS_COLUMNS` names), ``gatescope list
metrics`` prints it, and figures and verdicts select rows by the declared object, never by a
retyped string. Each name means one thing: declaring a name again with a different meaning
is an error.

This module is a leaf (standard library only), so every layer, reporting included, may read
it. See ``docs/adding-a-quantity.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Axis name -> the ``results.csv`` column that carries its coordinate. ``lag``:
#: the lags a quantity is asked for; ``rate_lag``/``schedule_lag``: the lags of the
#: effective-rate and schedule quantities; ``profile_lag``: ``1..T-1``; ``time``: ``1..T``;
#: ``predictor``: a gate-product predictor; ``neuron``: ``0..n-1``; ``level``: quantile
#: levels; ``eps``: the expansion's bookkeeping parameter; ``samples``: the sample sizes ``N``
#: of the learnability window.
AXIS_COLUMNS = {
    "lag": "lag", "rate_lag": "lag", "schedule_lag": "lag", "profile_lag": "lag",
    "transport_lag": "lag",
    "time": "time", "predictor": "predictor", "neuron": "neuron", "level": "level",
    "eps": "eps",
    # the sample sizes N at which the learnability window is evaluated
    "samples": "samples",
    # the k-th largest of a spectrum over the state's directions (Lyapunov exponents)
    "exponent": "neuron",
}


@dataclass(frozen=True)
class Metric:
    """One measured number (or array of numbers) with one meaning.

    Attributes:
        name: the name in ``results.csv``'s ``metric`` column and a probe's record.
        definition: one line: what is measured, and how it is reduced.
        axes: the axis of each dimension of one measurement (keys of :data:`AXIS_COLUMNS`);
            ``()`` for a scalar.
        unit: ``"1"`` for a dimensionless number, else what it is measured in.
        omit_undefined: entries that are NaN by definition (a lag longer than the elapsed
            time) are not written as rows.
    """

    name: str
    definition: str
    axes: tuple[str, ...] = ()
    unit: str = "1"
    omit_undefined: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name.isidentifier()):
            raise ValueError(f"metric name must be an identifier, got {self.name!r}")
        if not (isinstance(self.definition, str) and self.definition.strip()):
            raise ValueError(f"metric {self.name!r} needs a one-line definition")
        unknown = [a for a in self.axes if a not in AXIS_COLUMNS]
        if unknown:
            raise ValueError(f"metric {self.name!r}: unknown axes {unknown}; choose from "
                             f"{sorted(AXIS_COLUMNS)}")
        columns = [AXIS_COLUMNS[a] for a in self.axes]
        if len(set(columns)) != len(columns):
            raise ValueError(f"metric {self.name!r}: axes {self.axes} share a results column")

    def __str__(self) -> str:
        return self.name


_CATALOGUE: dict[str, Metric] = {}


def declare_metric(name: str, definition: str, axes: tuple[str, ...] = (), unit: str = "1",
                   omit_undefined: bool = False) -> Metric:
    """Declare a metric (or return the identical earlier declaration).

    Raises:
        ValueError: if ``name`` is already declared with another definition, axes or unit:
            one name means one thing.
    """
    metric = Metric(name, definition, tuple(axes), unit, omit_undefined)
    known = _CATALOGUE.get(name)
    if known is not None and known != metric:
        raise ValueError(f"metric {name!r} is already declared as {known}; a name means one "
                         "thing — choose another name")
    _CATALOGUE[name] = metric
    return metric


def get_metric(name: str) -> Metric:
    """The metric declared as ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return _CATALOGUE[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown metric {name!r}; declared: {sorted(_CATALOGUE)}") from None


def list_metrics() -> list[Metric]:
    """Every declared metric, in declaration order."""
    return list(_CATALOGUE.values())


# --------------------------------------------------------------- training and runs
LOSS = declare_metric("loss", "training-batch loss before the update of this step", unit="loss")
DIVERGED = declare_metric("diverged", "the step at which a seed's loss became NaN/Inf "
                          "(its later rows are absent)", unit="step")
EVAL_LOSS = declare_metric("eval_loss", "loss on the seed's fixed evaluation batch",
                           unit="loss")
PROBE_LOSS = declare_metric("probe_loss", "loss on the fixed probe batch", unit="loss")

# --------------------------------------------------------------- first-order expansion
TRUNCATION_ERROR = declare_metric(
    "truncation_error", "E(ε) = ‖F(ε) − F(0) − εL‖_F of the whole-sequence transport product",
    axes=("eps",))
REMAINDER_C2 = declare_metric("remainder_c2", "normalised remainder C₂(ε) = E(ε)/ε²",
                              axes=("eps",))
ERROR_SLOPE = declare_metric("error_slope", "log-log slope of E(ε) over the smallest ε "
                             "(2 for a first-order-exact expansion)")
CORRECTION_RATIO = declare_metric("correction_ratio", "per-step correction size "
                                  "ρ_j = ‖B_j‖₂/‖A_j‖₂", axes=("time",))
CORRECTION_RATIO_MEDIAN = declare_metric("correction_ratio_median",
                                         "median over steps of ρ_j = ‖B_j‖₂/‖A_j‖₂ "
                                         "(interpolated between the middle two)")

# --------------------------------------------------------------- §VII-A sensitivity profile
SENSITIVITY_PROFILE = declare_metric(
    "sensitivity_profile", "μ̃_eff(ℓ) = median over (b, t−k=ℓ) of ‖M_{t,k}‖₂ divided by its "
    "value at ℓ = 1", axes=("profile_lag",))
PREDICTED_PROFILE = declare_metric(
    "predicted_profile", "fitted gate-product prediction (P̄(ℓ)/P̄(1))^s of the sensitivity "
    "profile", axes=("predictor", "profile_lag"))
ZEROTH_ORDER_PROFILE = declare_metric(
    "zeroth_order_profile", "zeroth-order gate-product prediction P̄(ℓ)/P̄(1), P̄ the lag "
    "median of mean_q ∏ x_{j,q}", axes=("predictor", "profile_lag"))
FIT_SLOPE = declare_metric("fit_slope", "power s of the least-squares fit of log S on log P "
                           "over the central [trim, 1−trim] quantiles of P", axes=("predictor",))
FIT_R2 = declare_metric("fit_r2", "R² of the power fit of log S on log P", axes=("predictor",))

# --------------------------------------------------------------- effective learning rates
ENVELOPE = declare_metric("envelope", "f(ℓ) = mean over (b, t ≥ ℓ, q) of |μ_{t,ℓ,q}|, first "
                          "order", axes=("rate_lag",))
RATE_CV_ORDER1 = declare_metric(
    "rate_cv_order1", "across-neuron CV of |μ_{t,ℓ,·}| (first order μ⁰ + μ¹), median over "
    "examples and t ≥ ℓ", axes=("rate_lag",))
RATE_CV_ORDER0 = declare_metric(
    "rate_cv_order0", "across-neuron CV of μ⁰_{t,ℓ,·} = ∏ r_j (zeroth order: the gates alone), "
    "median over examples and t ≥ ℓ", axes=("rate_lag",))
RATE_CV_ORDER0_NULL = declare_metric(
    "rate_cv_order0_null", "rate_cv_order0 with the retention's neuron index permuted at "
    "random, independently at every (example, time) step: each step's gate values kept, "
    "neuron identity removed (the null of neuron-specific rates)", axes=("rate_lag",))
TIME_SCALES = declare_metric("time_scales", "τ_q = −1/log r̄_q, r̄_q the mean retention of "
                             "neuron q", axes=("neuron",), unit="step")
SCHEDULE_MULTIPLIER = declare_metric(
    "schedule_multiplier", "implied global step η·mean_{b,q} μ⁰_{t,ℓ,q} along time",
    axes=("schedule_lag", "time"), unit="lr", omit_undefined=True)
RETENTION_MEAN = declare_metric("retention_mean", "mean retention r_t over examples and "
                                "neurons, along time", axes=("time",))
GATE_PER_NEURON = declare_metric("gate_per_neuron", "mean update gate per neuron over "
                                 "examples and time (a scalar gate repeated)", axes=("neuron",))
RETENTION_PER_NEURON = declare_metric("retention_per_neuron", "mean retention per neuron "
                                      "over examples and time", axes=("neuron",))


# --------------------------------------------------------------- anisotropy
def _spectrum(prefix: str, of: str, axes: tuple[str, ...] = ()) -> tuple[Metric, ...]:
    """The four scale-invariant spectrum statistics of ``of``, named ``prefix_*``."""
    return (
        declare_metric(f"{prefix}_ai", f"AI_r = σ₁/σ_r of {of}", axes),
        declare_metric(f"{prefix}_ce", f"CE_r = Σ_{{i≤r}} σ_i² / Σ σ_i² of {of}", axes),
        declare_metric(f"{prefix}_participation_ratio", f"(Σσ²)²/Σσ⁴ of {of}", axes),
        declare_metric(f"{prefix}_effective_rank", f"exp(−Σ p log p), p = σ/Σσ, of {of}", axes),
    )


(JACOBIAN_AI, JACOBIAN_CE, JACOBIAN_PARTICIPATION_RATIO, JACOBIAN_EFFECTIVE_RANK) = _spectrum(
    "jacobian", "sampled transport products M_{t,t−ℓ}, median over the samples", ("lag",))
(GRADCOV_AI, GRADCOV_CE, GRADCOV_PARTICIPATION_RATIO, GRADCOV_EFFECTIVE_RANK) = _spectrum(
    "gradcov", "the per-example gradient matrix (rows unit length, columns centred)")
(STEP_AI, STEP_CE, STEP_PARTICIPATION_RATIO, STEP_EFFECTIVE_RANK) = _spectrum(
    "step", "the optimizer's per-parameter step sizes as a diagonal preconditioner")
STEP_CV = declare_metric("step_cv", "CV (population std / mean) of the optimizer's "
                         "per-parameter step sizes")
STEP_QUANTILES = declare_metric("step_quantiles", "quantiles of the optimizer's per-parameter "
                                "step sizes", axes=("level",), unit="lr")
ALIGNMENT = declare_metric("alignment", "a_r = ‖U_rᵀ δ_T‖²/‖δ_T‖², U_r the top-r left "
                           "singular vectors of M_{T,T−ℓ}, mean over examples", axes=("lag",))
ALIGNMENT_BASELINE = declare_metric("alignment_baseline", "r/N, the alignment of a random "
                                    "direction")


# --------------------------------------------------------------- learnability window
MATCHED_MEAN = declare_metric(
    "matched_mean", "mean over examples and loss-bearing steps t ≥ ℓ of the matched statistic "
    "ψ_t(ℓ) = Σ_q μ_t^{(q)}(ℓ) δ_t^{(q)} v_{t−ℓ}^{(q)} (its own sign; docs/matched-statistic.md)",
    axes=("rate_lag",))
MATCHED_STD = declare_metric(
    "matched_std", "population standard deviation of ψ_t(ℓ) over the same samples",
    axes=("rate_lag",))
MATCHED_POSITIVE_FRACTION = declare_metric(
    "matched_positive_fraction", "fraction of the ψ_t(ℓ) samples above zero",
    axes=("rate_lag",))
EXACT_ENVELOPE = declare_metric(
    "exact_envelope", "mean over (b, t) of Σ_q |[M_{t,t−ℓ}]_qq|, the exact transport's "
    "diagonal on the retention entries (dense cells: a few sampled end times t)",
    axes=("rate_lag",))
FIRST_ORDER_ENVELOPE = declare_metric(
    "first_order_envelope", "mean over the same (b, t) as exact_envelope of Σ_q |μ_{t,ℓ,q}| "
    "(first order; n times envelope)", axes=("rate_lag",))
ENVELOPE_RANK_CORRELATION = declare_metric(
    "envelope_rank_correlation", "Spearman's ρ of first_order_envelope against exact_envelope "
    "across the rate lags")
ENVELOPE_SLOPE_RATIO = declare_metric(
    "envelope_slope_ratio", "slope of log first_order_envelope over that of log "
    "exact_envelope, each least squares against ℓ (> 1: the approximation decays faster)")
MATCHED_ALPHA = declare_metric(
    "matched_alpha", "tail index α̂ of the oriented ψ_t(ℓ) samples (McCulloch's quantile "
    "estimator; docs/tail-index.md)", axes=("rate_lag",))
MATCHED_SCALE = declare_metric(
    "matched_scale", "stable scale σ̂ of the oriented ψ_t(ℓ) samples (McCulloch)",
    axes=("rate_lag",))
MATCHED_RELIABLE = declare_metric(
    "matched_reliable", "1 where the tail fit of ψ_t(ℓ) is reliable (enough samples, α̂ > 1), "
    "else 0", axes=("rate_lag",))
MATCHED_SAMPLE_SNR = declare_metric(
    "matched_sample_snr", "|mean ψ| · S^(1-1/α̂) / σ̂ at the S samples measured: below a few, "
    "the mean is not resolved and N_required is noise", axes=("rate_lag",))
REQUIRED_SAMPLES = declare_metric(
    "required_samples", "N_required(ℓ) = (ε σ̂ / |mean ψ|)^κ_α̂, the samples at which the "
    "detection SNR reaches ε (continuous form; docs/learnability.md)", axes=("rate_lag",),
    unit="samples")
LEARNABILITY_WINDOW = declare_metric(
    "learnability_window", "H_N: the longest lag ℓ with every rate lag ≤ ℓ detected at N "
    "samples (contiguous window; 0: none)", axes=("samples",), unit="steps")
LEARNABILITY_WINDOW_MAX = declare_metric(
    "learnability_window_max", "the follow-up's H_N = max{ℓ : N_required(ℓ) ≤ N} (0: none)",
    axes=("samples",), unit="steps")
SCALING_SLOPE = declare_metric(
    "scaling_slope", "slope of log N_required(ℓ) on -κ_α̂ log f(ℓ) over the detected rate lags "
    "(the scaling law N ∝ f^(-κ_α) predicts 1)")
SCALING_R2 = declare_metric("scaling_r2", "R² of the scaling-law regression")
SCALING_LAGS = declare_metric("scaling_lags", "rate lags the scaling-law regression used",
                              unit="lags")

# ---------------------------------------------------------------- time-scale spectrum
#: The phases a ``phase`` value indexes (docs/timescales.md#the-phase).
PHASE_LABELS = ("collapsed", "unresolved", "concentrated", "broad", "boundary")
#: The envelope models an ``envelope_model`` value indexes (docs/timescales.md).
ENVELOPE_MODEL_LABELS = ("exponential", "power law", "tempered power law")


def label_of(labels: tuple[str, ...], code: float) -> str:
    """The label a recorded index ``code`` stands for (:data:`PHASE_LABELS`,
    :data:`ENVELOPE_MODEL_LABELS`): ``"none"`` for ``-1``, NaN or an index out of range."""
    code = float(code)
    return labels[int(code)] if code == code and 0 <= code < len(labels) else "none"

FITTED_TIME_SCALES = declare_metric(
    "fitted_time_scale", "τ_q from E log|μ_{t,ℓ,q}| ≈ a_q - ℓ/τ_q over the rate lags (inf: no "
    "decay)", axes=("neuron",), unit="steps")
TAIL_BETA = declare_metric("tail_beta", "β: the CCDF tail exponent of the fitted τ across "
                           "neurons, log P(τ > x) ≈ c - β log x")
TAIL_BETA_LOW = declare_metric("tail_beta_low", "lower end of β's 90% bootstrap interval")
TAIL_BETA_HIGH = declare_metric("tail_beta_high", "upper end of β's 90% bootstrap interval")
TAIL_BELOW_ONE = declare_metric("tail_prob_below_one", "P(β < 1) over the bootstrap resamples")
TAIL_R2 = declare_metric("tail_r2", "R² of the CCDF tail fit")
ENVELOPE_MODEL = declare_metric(
    "envelope_model", "the envelope's AIC choice: an index into ENVELOPE_MODEL_LABELS "
    "(0 exponential, 1 power law, 2 tempered power law; -1 none)")
ENVELOPE_WEIGHTS = tuple(
    declare_metric(f"envelope_weight_{key}", f"Akaike weight of the {label} envelope model")
    for key, label in zip(("exponential", "power", "tempered"), ENVELOPE_MODEL_LABELS,
                          strict=True))
PHASE = declare_metric(
    "phase", "the phase: an index into PHASE_LABELS (0 collapsed, 1 unresolved, "
    "2 concentrated, 3 broad, 4 boundary)")
