"""Measures built on the dynamics: effective learning rates, sensitivity profiles,
anisotropy of transport and updates, optimizer step sizes
(docs/maths.md#effective-learning-rates and the sections after it), the detection of lags
and the learnability window (docs/learnability.md), and the spectrum of time scales, the
envelope's decay law and the phase they give (docs/timescales.md).

A functional core: plain functions of trajectories, Jacobians, sensitivities, models and
optimizers, returning tensors or small dataclasses.
"""

from .anisotropy import (
    Alignment,
    PropagationAnisotropy,
    SpectrumStats,
    coefficient_of_variation,
    final_state_gradient,
    per_example_gradients,
    propagation_anisotropy,
    spectrum_stats,
    transport_alignment,
    update_anisotropy,
)
from .detection import (
    ScalingLaw,
    detection_snr,
    kappa,
    learnability_window,
    required_samples,
    required_samples_continuous,
    scaling_law,
)
from .envelope_models import (
    ENVELOPE_MODELS,
    EnvelopeModel,
    EnvelopeSelection,
    select_envelope_model,
)
from .learnability import LearnabilityWindow, PsiSummary, learnability_window_from, psi_summary
from .optimizer_steps import (
    Dispersion,
    GatesVsOptimizer,
    dispersion,
    gates_vs_optimizer,
    optimizer_step_sizes,
    step_size_dispersion,
)
from .profiles import (
    PowerFit,
    PredictorFit,
    ProfileFit,
    fit_power,
    gate_product,
    lag_medians,
    profile_fit,
    sensitivity_profile,
)
from .rates import (
    RateSummary,
    effective_learning_rates,
    effective_rate_summary,
    envelope,
    neuron_cv,
    time_scales,
)
from .stable import StableFit, koutrouvelis, mcculloch, stable_samples
from .timescale_spectrum import (
    PHASES,
    PowerLawWindow,
    TailExponent,
    TimeScaleFit,
    fitted_time_scales,
    phase,
    power_law_window,
    tail_exponent,
)

__all__ = [
    "Alignment",
    "Dispersion",
    "ENVELOPE_MODELS",
    "EnvelopeModel",
    "EnvelopeSelection",
    "GatesVsOptimizer",
    "LearnabilityWindow",
    "PHASES",
    "PowerFit",
    "PowerLawWindow",
    "PredictorFit",
    "ProfileFit",
    "PropagationAnisotropy",
    "PsiSummary",
    "RateSummary",
    "ScalingLaw",
    "SpectrumStats",
    "StableFit",
    "TailExponent",
    "TimeScaleFit",
    "coefficient_of_variation",
    "detection_snr",
    "dispersion",
    "effective_learning_rates",
    "effective_rate_summary",
    "envelope",
    "final_state_gradient",
    "fit_power",
    "fitted_time_scales",
    "gate_product",
    "gates_vs_optimizer",
    "kappa",
    "koutrouvelis",
    "lag_medians",
    "learnability_window",
    "learnability_window_from",
    "mcculloch",
    "neuron_cv",
    "optimizer_step_sizes",
    "per_example_gradients",
    "phase",
    "power_law_window",
    "profile_fit",
    "propagation_anisotropy",
    "psi_summary",
    "required_samples",
    "required_samples_continuous",
    "scaling_law",
    "select_envelope_model",
    "sensitivity_profile",
    "spectrum_stats",
    "stable_samples",
    "step_size_dispersion",
    "tail_exponent",
    "time_scales",
    "transport_alignment",
    "update_anisotropy",
]
