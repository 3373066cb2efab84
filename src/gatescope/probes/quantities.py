"""The built-in probe quantities, cheapest first (cost ranks in
:mod:`gatescope.probes.registry`). Each is a thin reduction of a :mod:`gatescope.measures`
function to a few arrays per step; the docstrings give each key's per-step shape."""

from __future__ import annotations

from torch import Tensor

from ..measures._quantile import quantile
from ..measures.anisotropy import propagation_anisotropy, transport_alignment, update_anisotropy
from ..measures.optimizer_steps import optimizer_step_sizes, step_size_dispersion
from ..measures.profiles import profile_fit
from ..measures.rates import envelope, neuron_retention, time_scales
from .context import ProbeContext
from .registry import SkipQuantity, register_quantity

#: The scale-invariant anisotropy statistics every spectrum quantity records.
SPECTRUM_FIELDS = ("ai", "ce", "participation_ratio", "effective_rank")


def _fields(stats: object, reduce=None) -> dict[str, Tensor]:
    """``{field: getattr(stats, field)}`` over :data:`SPECTRUM_FIELDS`, each reduced."""
    return {f: getattr(stats, f) if reduce is None else reduce(getattr(stats, f))
            for f in SPECTRUM_FIELDS}


@register_quantity("loss", cost=0, description="loss on the probe batch")
def loss(ctx: ProbeContext) -> dict[str, Tensor]:
    """``loss``: ``()`` the model's loss on the probe batch."""
    return {"loss": ctx.model.loss_from_states(ctx.trajectory.states, ctx.y, ctx.mask)}


@register_quantity("gates", cost=0, axes={"gate": "neuron", "retention": "neuron"},
                   description="mean update gate and retention per neuron")
def gates(ctx: ProbeContext) -> dict[str, Tensor]:
    """``gate``: ``(n,)`` mean update gate per neuron over batch and time (absent for cells
    without a learned gate; a scalar gate repeated); ``retention``: ``(n,)`` mean retention."""
    traj, n = ctx.trajectory, ctx.cell.hidden_size
    out = {} if traj.gates is None else {"gate": traj.gates.double().mean((0, 1)).expand(n)}
    out["retention"] = neuron_retention(ctx.cell, traj).mean((0, 1))
    return out


@register_quantity("optimizer_steps", cost=0, axes={"quantiles": "level"},
                   description="dispersion of the optimizer's per-parameter step sizes")
def optimizer_steps(ctx: ProbeContext) -> dict[str, Tensor]:
    """:func:`~gatescope.step_size_dispersion` of :func:`~gatescope.optimizer_step_sizes`.

    ``cv``, ``ai``, ``ce``, ``participation_ratio``, ``effective_rank``: ``()``;
    ``quantiles``: ``(Q,)`` at the levels ``DEFAULT_LEVELS`` of
    :mod:`gatescope.measures.optimizer_steps`. Skipped without an optimizer, for an
    unsupported one, and before its first step (Adam has no step size then).
    """
    if ctx.optimizer is None:
        raise SkipQuantity("no optimizer given")
    try:
        steps = optimizer_step_sizes(ctx.optimizer)
    except TypeError as err:
        raise SkipQuantity(str(err)) from None
    count = sum(int((~s.isnan()).sum()) for s in steps.values())
    if count == 0:
        raise SkipQuantity("the optimizer has not taken a step yet")
    d = step_size_dispersion(steps, r=ctx.spectrum_rank(count))
    return {"cv": d.cv, **_fields(d), "quantiles": d.quantiles}


@register_quantity("effective_rates", cost=1,
                   axes={"envelope": "lag", "neuron_cv": "lag", "time_scales": "neuron"},
                   description="effective learning rates μ at the probe lags, time scales")
def effective_rates(ctx: ProbeContext) -> dict[str, Tensor]:
    """First-order ``μ`` (:func:`~gatescope.effective_learning_rates`) at the probe lags.

    ``envelope``: ``(L,)`` :func:`~gatescope.envelope`; ``neuron_cv``: ``(L,)`` the coefficient
    of variation of ``|μ_{t,ℓ,·}|`` across neurons, median over examples and ``t ≥ ℓ`` (the
    gates' side of :func:`~gatescope.gates_vs_optimizer`); ``time_scales``: ``(n,)``
    ``τ_q = -1/log r̄_q``.
    """
    a = ctx.rates.abs()
    cv = a.std(-1, correction=0) / a.mean(-1)  # (B, T+1, L), NaN where ℓ > t
    return {"envelope": envelope(ctx.rates), "neuron_cv": quantile(cv.flatten(0, 1), 0.5, dim=0),
            "time_scales": time_scales(ctx.cell, ctx.trajectory)}


@register_quantity("propagation_anisotropy", cost=2, axes=dict.fromkeys(SPECTRUM_FIELDS, "lag"),
                   description="anisotropy of sampled transport products per lag")
def propagation(ctx: ProbeContext) -> dict[str, Tensor]:
    """:func:`~gatescope.propagation_anisotropy` at the probe lags, with its default fixed
    sampling seed (the same ``(b, t, k)`` at every step).

    ``ai``, ``ce``, ``participation_ratio``, ``effective_rank``: ``(L,)`` medians over the
    sampled products.
    """
    J = ctx.jacobians
    res = propagation_anisotropy(J, ctx.lags, ctx.samples_per_lag,
                                 r=ctx.spectrum_rank(J.shape[-1]))
    return _fields(res.stats, lambda x: quantile(x, 0.5))


@register_quantity("alignment", cost=2, axes={"alignment": "lag"},
                   description="transport-loss alignment a_r at the probe lags")
def alignment(ctx: ProbeContext) -> dict[str, Tensor | float]:
    """:func:`~gatescope.transport_alignment` of ``δ_T`` with ``M_{T,T-ℓ}`` at the probe lags.

    ``alignment``: ``(L,)`` ``a_r`` averaged over the probe batch; ``baseline``: ``()`` ``r/N``.
    """
    J = ctx.jacobians
    T = J.shape[1]
    res = transport_alignment(J, ctx.final_adjoint, [T - lag for lag in ctx.lags],
                              r=ctx.spectrum_rank(J.shape[-1]))
    return {"alignment": res.alignment.nanmean(0), "baseline": res.baseline}


@register_quantity("update_anisotropy", cost=3,
                   description="anisotropy of the per-example gradients")
def update(ctx: ProbeContext) -> dict[str, Tensor]:
    """:func:`~gatescope.update_anisotropy` of the probe batch's per-example gradients.

    ``ai``, ``ce``, ``participation_ratio``, ``effective_rank``: ``()``.
    """
    G = ctx.per_example_gradients
    return _fields(update_anisotropy(G, r=ctx.spectrum_rank(min(G.shape))))


@register_quantity("profile", cost=4,
                   axes={"sensitivity": "profile_lag", "update_zeroth": "profile_lag",
                         "update_fitted": "profile_lag", "retention_zeroth": "profile_lag",
                         "retention_fitted": "profile_lag"},
                   description="sensitivity profile and both gate-product predictors")
def profile(ctx: ProbeContext) -> dict[str, Tensor | float]:
    """:func:`~gatescope.profile_fit` (every transport norm: the most expensive quantity).

    ``sensitivity``: ``(T-1,)`` ``μ̃_eff(ℓ)`` for ``ℓ = 1..T-1``; per predictor ``k`` in
    ``update``, ``retention``: ``k_slope``, ``k_r2``: ``()`` the power fit;
    ``k_zeroth``, ``k_fitted``: ``(T-1,)`` the zeroth-order and fitted predictions.
    """
    fit = profile_fit(ctx.trajectory, ctx.sensitivities)
    out: dict[str, Tensor | float] = {"sensitivity": fit.sensitivity}
    for kind, pred in fit.predictors.items():
        out |= {f"{kind}_slope": pred.fit.slope, f"{kind}_r2": pred.fit.r2,
                f"{kind}_zeroth": pred.zeroth_order, f"{kind}_fitted": pred.fitted}
    return out
