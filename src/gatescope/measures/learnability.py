"""The learnability window from samples of the matched statistic ψ (docs/learnability.md).

From the ``ψ_t(ℓ)`` samples of each lag (one per sequence and end time ``t``; the matched
window ``[t-ℓ+1, t]`` of gatescope's effective rates) this module takes the per-lag mean,
oriented positive, and a tail fit ``(α̂, σ̂)``, then the detection quantities of
:mod:`gatescope.measures.detection`: ``N_required``, the window ``H_N`` on the grid of sample
sizes and, given the envelope ``f(ℓ)``, the scaling-law check ``N(ℓ) ∝ f(ℓ)^{-κ_α}``.

The tail estimator is an argument (``fit(x)`` with the samples on the last axis, returning an
object with ``.alpha``, ``.scale`` and ``.reliable`` per row, as
:func:`gatescope.measures.stable.mcculloch` and ``koutrouvelis`` do), so that any estimator,
or a stand-in with known values in a test, can be used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .detection import (
    ScalingLaw,
    _checked_eps,
    _checked_grid,
    _checked_lags,
    learnability_window,
    required_samples,
    required_samples_continuous,
    scaling_law,
)


@dataclass
class PsiSummary:
    """Per-lag summary of ``ψ`` samples (tensors of shape ``(..., L)``).

    Attributes:
        mean: ``|mean ψ(ℓ)|``, the mean after orienting the lag's sign (NaN: no samples).
        sign: ``±1``, the orientation applied (``ψ · sign`` has a non-negative mean).
        scale: the tail fit's stable scale ``σ̂``.
        alpha: the tail fit's ``α̂``.
        reliable: the tail fit's reliability flag.
        samples: the number of non-NaN samples.
    """

    mean: Tensor
    sign: Tensor
    scale: Tensor
    alpha: Tensor
    reliable: Tensor
    samples: Tensor


def psi_summary(psi: Tensor, fit: Callable[[Tensor], object]) -> PsiSummary:
    """Orient each lag's ``ψ`` so its mean is positive, then fit its tail.

    Args:
        psi: ``(..., L, S)`` samples, one row per lag, the sample axis last; NaN entries
            (e.g. end times past a sequence's length) are excluded.
        fit: the tail estimator, called once as ``fit(psi · sign)`` on the oriented
            ``(..., L, S)`` samples (NaN left in place: it must skip them) and returning
            ``.alpha``, ``.scale``, ``.reliable`` of shape ``(..., L)``.
    """
    x = torch.as_tensor(psi, dtype=torch.float64)
    if x.dim() < 2:
        raise ValueError(f"psi must be (..., L, S) with the samples last, got shape "
                         f"{tuple(x.shape)}")
    mean = x.nanmean(-1)
    sign = torch.where(mean < 0, -1.0, 1.0)
    tail = fit(x * sign[..., None])
    fitted = {name: torch.as_tensor(getattr(tail, name)) for name in ("alpha", "scale", "reliable")}
    for name, value in fitted.items():
        if value.shape != mean.shape:
            raise ValueError(f"fit must return .{name} of shape {tuple(mean.shape)} (one per "
                             f"lag), got {tuple(value.shape)}")
    return PsiSummary(mean.abs(), sign, fitted["scale"].double(), fitted["alpha"].double(),
                      fitted["reliable"].bool(), (~x.isnan()).sum(-1))


@dataclass
class LearnabilityWindow:
    """Detection per lag and the learnability window per sample size.

    Attributes:
        lags: ``(L,)`` the lags.
        summary: the per-lag mean, sign and tail fit (:class:`PsiSummary`, ``(..., L)``), as
            estimated (the detection leaves out the lags the fit flags unreliable).
        eps: the detection threshold ``ε``.
        n_required: ``(..., L)`` the first grid ``N`` with ``SNR > ε`` (``+inf``: none).
        n_required_continuous: ``(..., L)`` ``(ε σ̂ / |mean|)^{κ_α̂}``.
        sample_snr: ``(..., L)`` ``|mean| · S^{1-1/α̂} / σ̂`` at the lag's own ``S`` samples: below
            a few, the mean is not resolved from zero and ``N_required`` is noise
            (docs/learnability.md#two-windows).
        grid: ``(G,)`` the sample sizes, at which the windows are evaluated.
        window: ``(..., G)`` the paper's ``H_N = max{ℓ : N_required(ℓ) ≤ N}`` (0: empty).
        contiguous_window: ``(..., G)`` the longest ``ℓ`` with every lag ``≤ ℓ`` detected,
            the one to judge claims on (docs/learnability.md#two-windows).
        scaling: the scaling-law fit on ``n_required_continuous`` (the one to judge the law
            on), ``None`` without an envelope.
        scaling_grid: the same fit on the grid's ``n_required`` without the lags detected at
            the grid's first ``N`` (their ``N_required`` is censored), ``None`` without an
            envelope.
    """

    lags: Tensor
    summary: PsiSummary
    eps: float
    n_required: Tensor
    n_required_continuous: Tensor
    sample_snr: Tensor
    grid: Tensor
    window: Tensor
    contiguous_window: Tensor
    scaling: ScalingLaw | None
    scaling_grid: ScalingLaw | None


def learnability_window_from(psi: Tensor, lags: Sequence[float] | Tensor, grid,
                             fit: Callable[[Tensor], object], eps: float = 0.1,
                             envelope: Tensor | None = None) -> LearnabilityWindow:
    """Everything of the learnability window from ``ψ`` samples.

    Args:
        psi: ``(..., L, S)`` samples of ``ψ(ℓ)`` per lag (see :func:`psi_summary`).
        lags: ``(L,)`` strictly increasing lags ``> 0``, the rows of ``psi``.
        grid: ``(G,)`` strictly increasing sample sizes.
        fit: the tail estimator (see :func:`psi_summary`).
        eps: the detection threshold ``ε > 0``.
        envelope: the envelope ``f(ℓ)`` broadcastable to ``(..., L)``, for the scaling law.

    Lags the fit flags unreliable (too few samples; ``α̂ ≤ 1``, where a mean of ``N`` samples
    does not concentrate; a degenerate scale) count as unmeasured: never detected, left out
    of the scaling law, NaN ``sample_snr``. ``summary`` keeps their raw estimates.

    Raises:
        ValueError: bad arguments, or ``α̂`` outside ``(1, 2]`` at a lag the fit calls reliable.
    """
    lag_values, g = _checked_lags(lags), _checked_grid(grid)
    _checked_eps(eps)
    shape = torch.as_tensor(psi).shape
    if len(shape) < 2 or lag_values.shape != shape[-2:-1]:
        raise ValueError(f"psi must be (..., L, S) with L = len(lags) = {lag_values.numel()}, "
                         f"got shape {tuple(shape)}")
    s = psi_summary(psi, fit)
    outside = s.reliable & ~(s.alpha.isnan() | ((s.alpha > 1) & (s.alpha <= 2)))
    if bool(outside.any()):
        raise ValueError(f"fit returned alpha outside (1, 2] at lags "
                         f"{lag_values.expand(outside.shape)[outside].tolist()} flagged "
                         f"reliable: {s.alpha[outside].tolist()}")
    alpha, scale = (v.masked_fill(~s.reliable, math.nan) for v in (s.alpha, s.scale))
    n_grid = required_samples(s.mean, scale, alpha, g, eps)
    n_cont = required_samples_continuous(s.mean, scale, alpha, eps)
    law = law_grid = None
    if envelope is not None:
        law = scaling_law(n_cont, envelope, alpha)
        # a lag detected at the grid's first N needs "at most grid[0]": censored, left out
        law_grid = scaling_law(n_grid.masked_fill(n_grid <= g[0], math.nan), envelope, alpha)
    sample_snr = s.mean * s.samples ** (1 - 1 / alpha) / scale
    return LearnabilityWindow(
        lag_values, s, eps, n_grid, n_cont, sample_snr, g,
        learnability_window(lag_values, n_grid, g),
        learnability_window(lag_values, n_grid, g, contiguous=True), law, law_grid)
