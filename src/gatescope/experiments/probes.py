"""Measurements the paper's experiments take at each checkpoint, for every seed of a group.

Each function reads per-seed models and fixed probe batches and appends tidy rows to a
:class:`~gatescope.experiments.rows.RowWriter`; nothing here trains. Seeds are measured one
after another: each seed's probe batch is already a large batched computation (tens of
thousands of transport products), and holding every seed's Jacobians at once would dominate
the memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..dynamics.jacobians import jacobians
from ..measures import (
    dispersion,
    effective_learning_rates,
    envelope,
    final_state_gradient,
    per_example_gradients,
    profile_fit,
    propagation_anisotropy,
    step_size_dispersion,
    transport_alignment,
    update_anisotropy,
)
from ..model import SequenceModel
from .paper_code import ordered_sensitivities
from .rows import RowWriter


def _trajectory(model: SequenceModel, u: Tensor):
    """The probe batch's trajectory and Jacobians ``(B, T, N, N)``."""
    with torch.no_grad():
        traj = model.cell.unroll(u)
        return traj, jacobians(model.cell, traj)


def nan_median(x: Tensor) -> Tensor:
    """Median over the first dimension ignoring NaN, interpolated between the middle values
    (as numpy; ``torch.nanmedian`` takes the lower one)."""
    return torch.from_numpy(np.nanmedian(x.double().cpu().numpy(), axis=0))


def neuron_dispersion(mu: Tensor, r: int) -> Tensor:
    """Median over examples and end times of the across-neuron CV of ``|μ_{t,ℓ,·}|``: ``(L,)``."""
    cv = dispersion(mu, r=min(r, mu.shape[-1])).cv  # (B, T+1, L), NaN where ℓ > t
    return nan_median(cv.flatten(0, 1))


def record_profiles(writer: RowWriter, seeds: Sequence[int], step: int,
                    models: Sequence[SequenceModel], probes: Sequence[Tensor], *,
                    lr: float, trim: float, rate_lags: Sequence[int],
                    schedule_lags: Sequence[int], product_order: str = "chain") -> None:
    """§VII-A at one checkpoint: the sensitivity profile with both gate-product predictors
    (``sensitivity_profile``, ``predicted_profile``/``zeroth_order_profile`` per predictor,
    ``fit_slope``, ``fit_r2``), the effective rates' envelope and across-neuron dispersion
    (``envelope``, ``rate_cv``, ``rate_cv_order0``), and for the analogies the implied
    global step ``η μ⁰`` along time at a few lags (``schedule_multiplier``) and the mean
    retention ``β_t = r_t`` along time (``retention_mean``).

    Args:
        probes: per-seed probe inputs ``(B, T, m)``.
    """
    for seed, model, u in zip(seeds, models, probes, strict=True):
        # one seed at a time: its probe batch alone gives tens of thousands of products, and
        # the Jacobians of every seed at once would dominate the memory
        traj, J = _trajectory(model, u)
        S = ordered_sensitivities(J, product_order)
        mu = effective_learning_rates(model.cell, traj, lags=rate_lags, order=1, J=J)
        del J
        fit = profile_fit(traj, S, trim)
        lags = fit.lags.tolist()
        writer.add_series(seed, step, "sensitivity_profile", lags, fit.sensitivity.tolist())
        for kind, pred in fit.predictors.items():
            writer.add_series(seed, step, "predicted_profile", lags, pred.fitted.tolist(),
                              predictor=kind)
            writer.add_series(seed, step, "zeroth_order_profile", lags,
                              pred.zeroth_order.tolist(), predictor=kind)
            writer.add(seed, step, "fit_slope", pred.fit.slope, predictor=kind)
            writer.add(seed, step, "fit_r2", pred.fit.r2, predictor=kind)
        cell = model.cell
        mu0 = effective_learning_rates(cell, traj, lags=sorted(set(rate_lags) |
                                                                set(schedule_lags)), order=0)
        writer.add_series(seed, step, "envelope", rate_lags, envelope(mu).tolist())
        writer.add_series(seed, step, "rate_cv", rate_lags, neuron_dispersion(mu, 10).tolist())
        lag_index = {lag: i for i, lag in enumerate(sorted(set(rate_lags) | set(schedule_lags)))}
        writer.add_series(seed, step, "rate_cv_order0", rate_lags, neuron_dispersion(
            mu0[:, :, [lag_index[x] for x in rate_lags]], 10).tolist())
        implied = lr * mu0.mean((0, 3))  # (T+1, L): η μ⁰ averaged over examples and neurons
        for lag in schedule_lags:
            for t in range(lag, traj.seq_len + 1):
                writer.add(seed, step, "schedule_multiplier", implied[t, lag_index[lag]].item(),
                           lag=lag, time=t)
        retention = traj.retention.double().mean((0, 2))
        for t, value in enumerate(retention.tolist(), start=1):
            writer.add(seed, step, "retention_mean", value, time=t)


def record_anisotropy(writer: RowWriter, seeds: Sequence[int], step: int,
                      models: Sequence[SequenceModel], probes: Sequence[tuple[Tensor, Tensor]],
                      gradient_batches: Sequence[tuple[Tensor, Tensor]], steps_per_seed,
                      *, lags: Sequence[int], samples_per_lag: int, r: int,
                      ce_denominator: str | int, rate_lags: Sequence[int]) -> None:
    """§VII-B at one checkpoint: propagation anisotropy per lag (``jacobian_ai``,
    ``jacobian_ce``: medians over sampled products), transport–loss alignment per lag
    (``alignment``, mean over examples, with ``alignment_baseline`` = r/N), update anisotropy
    of the per-example gradients (``gradcov_ai``, ``gradcov_ce``), the optimizer's
    per-parameter step sizes (``step_cv``, ``step_ai``) and the gate-induced rates'
    across-neuron dispersion (``rate_cv``).

    Args:
        probes: per-seed ``(u, y)`` probe batches.
        gradient_batches: per-seed ``(u, y)`` batches of ``M`` examples for per-example
            gradients.
        steps_per_seed: per-seed dicts of step sizes (from ``optimizer_step_sizes``; NaN
            where an adaptive optimizer has not stepped yet, then no step rows).
    """
    for i, (seed, model) in enumerate(zip(seeds, models, strict=True)):
        # one seed at a time: a probe batch's Jacobians (B, T, N, N) are large
        traj, J = _trajectory(model, probes[i][0])
        gen = torch.Generator().manual_seed(seed)
        prop = propagation_anisotropy(J, lags, samples_per_lag, gen, r, ce_denominator)
        writer.add_series(seed, step, "jacobian_ai", lags,
                          nan_median(prop.stats.ai.T).tolist())
        writer.add_series(seed, step, "jacobian_ce", lags,
                          nan_median(prop.stats.ce.T).tolist())
        T = traj.seq_len
        delta_T = final_state_gradient(model, traj.states, probes[i][1])
        align = transport_alignment(J, delta_T, [T - lag for lag in lags], r)
        writer.add_series(seed, step, "alignment", lags, align.alignment.nanmean(0).tolist())
        writer.add(seed, step, "alignment_baseline", align.baseline)
        u_m, y_m = gradient_batches[i]
        upd = update_anisotropy(per_example_gradients(model, u_m, y_m), r, ce_denominator)
        writer.add(seed, step, "gradcov_ai", upd.ai.item())
        writer.add(seed, step, "gradcov_ce", upd.ce.item())
        if not all(v.isnan().all() for v in steps_per_seed[i].values()):  # Adam at step 0
            disp = step_size_dispersion(steps_per_seed[i], r)
            writer.add(seed, step, "step_cv", disp.cv.item())
            writer.add(seed, step, "step_ai", disp.ai.item())
        if traj.gates is not None:
            mu = effective_learning_rates(model.cell, traj, lags=rate_lags, order=0)
            writer.add_series(seed, step, "rate_cv", rate_lags,
                              neuron_dispersion(mu, r).tolist())
