"""The paper's §VII-A sensitivity profile and its gate-product predictors
(docs/maths.md#sensitivity-profile).

With ``S_{t,k} = ‖M_{t,k}‖_2`` from :func:`gatescope.sensitivities` (``(B, T+1, T+1)``,
NaN above the diagonal) and lag ``ℓ = t - k``:

* profile ``μ̃_eff(ℓ) = median_{t-k=ℓ} S_{t,k} / median_{t-k=1} S_{t,k}``, the median over
  the probe batch and every ``t`` (linear interpolation between the middle values);
* gate product ``P_{t,k} = mean_q ∏_{j=k+1..t} x_{j,q}`` with ``x = g`` ("update", what the
  paper's code uses) or ``x = r`` ("retention", what the theory suggests);
* zeroth-order prediction ``P̄(ℓ)/P̄(1)``, ``P̄`` the lag median of ``P``;
* power fit: least squares ``log S = c + s log P`` over the pairs ``k < t`` whose ``P`` lies in
  its central ``[trim, 1-trim]`` quantiles, with its ``R²``; fitted prediction
  ``(P̄(ℓ)/P̄(1))^s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cells.base import Trajectory
from ._quantile import quantile
from .rates import window_products

PREDICTORS = ("update", "retention")


def beyond_lengths(X: Tensor, lengths: Tensor | None) -> Tensor:
    """``X`` ``(B, T+1, T+1)`` with the pairs ``(t, k)`` whose later time ``t`` lies past
    example ``b``'s length set to NaN (they are then excluded like the pairs ``k > t``);
    ``X`` itself when ``lengths`` is ``None``.

    Args:
        X: ``(B, T+1, T+1)`` pairs, ``X[:, t, k]``.
        lengths: ``(B,)`` valid lengths (:attr:`gatescope.Trajectory.lengths`) or ``None``.
    """
    if lengths is None:
        return X
    if lengths.shape != X.shape[:1]:
        raise ValueError(f"lengths must have shape ({X.shape[0]},) (one per example), got "
                         f"{tuple(lengths.shape)}")
    times = torch.arange(X.shape[1], device=X.device)
    past = times > lengths.to(X.device).unsqueeze(-1)  # (B, T+1)
    return X.masked_fill(past.unsqueeze(-1), math.nan)


def lag_medians(X: Tensor, lengths: Tensor | None = None) -> Tensor:
    """``median_{t-k=ℓ} X_{t,k}`` over the batch and all ``t``, for ``ℓ = 1..T``.

    Args:
        X: ``(B, T+1, T+1)`` with ``X[:, t, k]`` for ``k ≤ t``; NaN entries are skipped.
        lengths: optional ``(B,)`` valid lengths: pairs whose ``t`` lies past example
            ``b``'s length are skipped (:func:`beyond_lengths`).

    Returns:
        ``(T,)`` float64, lag ``ℓ`` at index ``ℓ - 1`` (NaN for a lag no pair has).
    """
    X = beyond_lengths(X, lengths)
    T = X.shape[-1] - 1
    return torch.stack([quantile(X.diagonal(-lag, 1, 2).flatten().double(), 0.5)
                        for lag in range(1, T + 1)])


def sensitivity_profile(S: Tensor, lengths: Tensor | None = None) -> Tensor:
    """``μ̃_eff(ℓ) = median_{t-k=ℓ} S / median_{t-k=1} S`` for ``ℓ = 1..T-1``.

    Args:
        S: ``(B, T+1, T+1)`` sensitivities.
        lengths: optional ``(B,)`` valid lengths (pairs past a length are skipped).

    Returns:
        ``(T-1,)`` float64, lag ``ℓ`` at index ``ℓ - 1`` (so the first entry is 1).
    """
    med = lag_medians(S, lengths)
    return med[:-1] / med[0]


def gate_product(traj: Trajectory, kind: str = "update") -> Tensor:
    """``P_{t,k} = mean_q ∏_{j=k+1..t} x_{j,q}`` for every pair, laid out like ``S``.

    Args:
        traj: a trajectory.
        kind: ``"update"`` for ``x = g`` (``traj.gates``; ``α`` for leaky and ``1`` for plain,
            which have none) or ``"retention"`` for ``x = r``.

    Returns:
        ``(B, T+1, T+1)`` float64 with ``P[:, t, k]`` for ``k ≤ t`` (``P[:, t, t] = 1``) and
        NaN above the diagonal and where ``t`` lies past the sequence's length
        (``traj.lengths``). A scalar gate gives the same product for every neuron.
    """
    if kind not in PREDICTORS:
        raise ValueError(f"kind must be one of {PREDICTORS}, got {kind!r}")
    if kind == "retention":
        x = traj.retention
    else:
        x = 1 - traj.retention if traj.gates is None else traj.gates
    x = x.detach().double()
    B, T = x.shape[:2]
    P = x.new_full((B, T + 1, T + 1), math.nan)
    for lag, (p, _) in enumerate(window_products(x)):
        P.diagonal(-lag, 1, 2).copy_(p.mean(-1))
    return beyond_lengths(P, traj.lengths)


@dataclass
class PowerFit:
    """Least squares ``log S = intercept + slope · log P``.

    Attributes:
        slope: ``s``.
        intercept: ``c``.
        r2: coefficient of determination.
        pairs: number of ``(b, t, k)`` pairs fitted.
    """

    slope: float
    intercept: float
    r2: float
    pairs: int


def fit_power(S: Tensor, P: Tensor, trim: float = 0.01) -> PowerFit:
    """Fit ``S ≈ e^c P^s`` over the pairs ``k < t``.

    Pairs with a non-finite or non-positive ``S`` or ``P`` are dropped first (their logs do
    not exist); of the rest, those whose ``P`` lies in ``[q_trim, q_{1-trim}]`` of ``P``'s
    quantiles are fitted. NaN slope and ``R²`` when fewer than two pairs remain or ``log P``
    does not vary (e.g. the update predictor of a plain cell, ``P = 1``).

    Args:
        S: ``(B, T+1, T+1)`` sensitivities.
        P: same layout, from :func:`gate_product`.
        trim: the quantile cut on each side, in ``[0, 0.5)``.
    """
    if S.shape != P.shape:
        raise ValueError(f"S and P must have the same shape, got {S.shape}, {P.shape}")
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must lie in [0, 0.5), got {trim}")
    below = torch.ones(S.shape[-2:], dtype=torch.bool, device=S.device).tril(-1)
    s, p = S[:, below].flatten().double(), P[:, below].flatten().double()
    keep = s.isfinite() & p.isfinite() & (s > 0) & (p > 0)
    s, p = s[keep], p[keep]
    if p.numel():
        lo, hi = quantile(p, torch.tensor([trim, 1 - trim]))
        inside = (p >= lo) & (p <= hi)
        s, p = s[inside], p[inside]
    x, y = p.log(), s.log()
    xc, yc = x - x.mean(), y - y.mean()
    sxx, syy = (xc**2).sum(), (yc**2).sum()
    if x.numel() < 2 or sxx == 0:
        return PowerFit(math.nan, math.nan, math.nan, x.numel())
    slope = (xc * yc).sum() / sxx
    residual = ((yc - slope * xc) ** 2).sum()
    r2 = 1 - residual / syy if syy > 0 else torch.tensor(1.0)
    return PowerFit(slope.item(), (y.mean() - slope * x.mean()).item(), r2.item(), x.numel())


@dataclass
class PredictorFit:
    """One gate-product predictor of the sensitivity profile.

    Attributes:
        kind: ``"update"`` or ``"retention"``.
        fit: the power fit of ``S`` on ``P``.
        zeroth_order: ``(T-1,)`` ``P̄(ℓ)/P̄(1)`` for ``ℓ = 1..T-1``.
        fitted: ``(T-1,)`` ``(P̄(ℓ)/P̄(1))^s``.
    """

    kind: str
    fit: PowerFit
    zeroth_order: Tensor
    fitted: Tensor


@dataclass
class ProfileFit:
    """The sensitivity profile beside both gate-product predictions.

    Attributes:
        lags: ``(T-1,)`` the lags ``1..T-1``.
        sensitivity: ``(T-1,)`` ``μ̃_eff(ℓ)``.
        predictors: ``{"update": PredictorFit, "retention": PredictorFit}``.
    """

    lags: Tensor
    sensitivity: Tensor
    predictors: dict[str, PredictorFit]


def profile_fit(traj: Trajectory, S: Tensor, trim: float = 0.01) -> ProfileFit:
    """The §VII-A analysis in one call: profile, both predictors, power fits, predictions.

    Pairs whose later time lies past a sequence's length (``traj.lengths``) are left out of
    the profiles, the predictors and the fits.

    Args:
        traj: the probe batch's trajectory.
        S: its sensitivities ``(B, T+1, T+1)`` (``gs.sensitivities(gs.jacobians(cell, traj))``).
        trim: the quantile cut of :func:`fit_power`.
    """
    T = traj.seq_len
    S = beyond_lengths(S, traj.lengths)
    predictors = {}
    for kind in PREDICTORS:
        P = gate_product(traj, kind)
        fit = fit_power(S, P, trim)
        zeroth = sensitivity_profile(P)
        predictors[kind] = PredictorFit(kind, fit, zeroth, zeroth**fit.slope)
    return ProfileFit(torch.arange(1, T), sensitivity_profile(S), predictors)
