"""The paper's §VII-A sensitivity profile and its gate-product predictors
(docs/maths.md#sensitivity-profile).

With ``S_{t,k} = ‖M_{t,k}‖_2`` from :func:`gatescope.sensitivities` (``(B, T+1, T+1)``,
NaN above the diagonal) and lag ``ℓ = t - k``:

* profile ``μ̃_eff(ℓ) = median_{t-k=ℓ} S_{t,k} / median_{t-k=1} S_{t,k}``, the median over
  the probe batch and every ``t`` (linear interpolation between the middle values);
* gate product ``P_{t,k} = mean_q ∏_{j=k+1..t} x_{j,q}`` (the ``ℓ`` factors of the window)
  with ``x = g`` ("update", the paper code's gate) or ``x = r`` ("retention", what the theory
  suggests);
* zeroth-order prediction ``P̄(ℓ)/P̄(1)``, ``P̄`` the lag median of ``P``;
* power fit: least squares ``log S = c + s log P`` over the pairs ``k < t`` whose ``P`` lies in
  its central ``[trim, 1-trim]`` quantiles, with its ``R²``; fitted prediction
  ``(P̄(ℓ)/P̄(1))^s``.

Three options reproduce the paper's code (docs/fidelity.md#profile-protocol): its gate
product has ``ℓ + 1`` factors (``∏_{j=k..t}``, ``factors="lag+1"``), it never forms the pairs
that start at ``k = 0`` (``pairs="paper"``), and its lag medians are ``torch.median``'s lower
middle value (``median="lower"``).
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
#: Factors of the gate product: the window's ``ℓ``, or the paper code's ``ℓ + 1``.
GATE_FACTORS = ("lag", "lag+1")
#: Pairs of the profile and the fit: all ``k < t``, or the paper code's ``1 ≤ k < t``.
PROFILE_PAIRS = ("all", "paper")
#: Lag medians: interpolated between the middle values, or the paper code's lower one.
MEDIANS = ("interpolated", "lower")


def check_profile_options(factors: str = "lag", pairs: str = "all",
                          median: str = "interpolated") -> None:
    """Refuse a ``factors``, ``pairs`` or ``median`` outside :data:`GATE_FACTORS`,
    :data:`PROFILE_PAIRS` or :data:`MEDIANS`, naming the argument and the allowed values."""
    for name, value, allowed in (("factors", factors, GATE_FACTORS),
                                 ("pairs", pairs, PROFILE_PAIRS), ("median", median, MEDIANS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


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


def lag_medians(X: Tensor, lengths: Tensor | None = None, median: str = "interpolated"
                ) -> Tensor:
    """``median_{t-k=ℓ} X_{t,k}`` over the batch and all ``t``, for ``ℓ = 1..T``.

    Args:
        X: ``(B, T+1, T+1)`` with ``X[:, t, k]`` for ``k ≤ t``; NaN entries are skipped.
        lengths: optional ``(B,)`` valid lengths: pairs whose ``t`` lies past example
            ``b``'s length are skipped (:func:`beyond_lengths`).
        median: ``"interpolated"`` (numpy's) or ``"lower"`` (``torch.median``'s).

    Returns:
        ``(T,)`` float64, lag ``ℓ`` at index ``ℓ - 1`` (NaN for a lag no pair has).
    """
    check_profile_options(median=median)
    X = beyond_lengths(X, lengths)
    T = X.shape[-1] - 1
    middle = (lambda x: quantile(x, 0.5)) if median == "interpolated" else torch.nanmedian
    return torch.stack([middle(X.diagonal(-lag, 1, 2).flatten().double())
                        for lag in range(1, T + 1)])


def sensitivity_profile(S: Tensor, lengths: Tensor | None = None,
                        median: str = "interpolated") -> Tensor:
    """``μ̃_eff(ℓ) = median_{t-k=ℓ} S / median_{t-k=1} S`` for ``ℓ = 1..T-1``.

    Args:
        S: ``(B, T+1, T+1)`` sensitivities.
        lengths: optional ``(B,)`` valid lengths (pairs past a length are skipped).
        median: as in :func:`lag_medians`.

    Returns:
        ``(T-1,)`` float64, lag ``ℓ`` at index ``ℓ - 1`` (so the first entry is 1).
    """
    med = lag_medians(S, lengths, median)
    return med[:-1] / med[0]


def gate_product(traj: Trajectory, kind: str = "update", factors: str = "lag") -> Tensor:
    """``P_{t,k} = mean_q ∏_{j=k+1..t} x_{j,q}`` for every pair, laid out like ``S``.

    Args:
        traj: a trajectory.
        kind: ``"update"`` for ``x = g`` (``traj.gates``; ``α`` for leaky and ``1`` for plain,
            which have none) or ``"retention"`` for ``x = r``.
        factors: ``"lag"``, or ``"lag+1"`` for the paper code's ``mean_q ∏_{j=k..t} x_{j,q}``
            (the gate of the start step too; undefined, so NaN, at ``k = 0``).

    Returns:
        ``(B, T+1, T+1)`` float64 with ``P[:, t, k]`` for ``k ≤ t`` (``P[:, t, t] = 1`` with
        ``ℓ`` factors) and NaN above the diagonal and where ``t`` lies past the sequence's
        length (``traj.lengths``). A scalar gate gives the same product for every neuron.
    """
    if kind not in PREDICTORS:
        raise ValueError(f"kind must be one of {PREDICTORS}, got {kind!r}")
    check_profile_options(factors=factors)
    if kind == "retention":
        x = traj.retention
    else:
        x = 1 - traj.retention if traj.gates is None else traj.gates
    x = x.detach().double()
    B, T = x.shape[:2]
    P = x.new_full((B, T + 1, T + 1), math.nan)
    extra = int(factors == "lag+1")  # a window of ℓ + extra steps ends at t, starts at k
    for width, (p, _) in enumerate(window_products(x)):
        if width >= extra:
            P.diagonal(extra - width, 1, 2)[..., extra:].copy_(p.mean(-1))
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


def profile_fit(traj: Trajectory, S: Tensor, trim: float = 0.01, factors: str = "lag",
                pairs: str = "all", median: str = "interpolated") -> ProfileFit:
    """The §VII-A analysis in one call: profile, both predictors, power fits, predictions.

    Pairs whose later time lies past a sequence's length (``traj.lengths``) are left out of
    the profiles, the predictors and the fits.

    Args:
        traj: the probe batch's trajectory.
        S: its sensitivities ``(B, T+1, T+1)`` (``gs.sensitivities(gs.jacobians(cell, traj))``).
        trim: the quantile cut of :func:`fit_power`.
        factors: the gate product's factors (:func:`gate_product`).
        pairs: ``"all"``, or ``"paper"`` to leave out the pairs starting at ``k = 0`` (the
            paper's code has no ``h_0`` in its state list).
        median: the lag medians (:func:`lag_medians`).
    """
    check_profile_options(factors, pairs, median)
    T = traj.seq_len
    S = _from_pairs(beyond_lengths(S, traj.lengths), pairs)
    predictors = {}
    for kind in PREDICTORS:
        P = _from_pairs(gate_product(traj, kind, factors), pairs)
        fit = fit_power(S, P, trim)
        zeroth = sensitivity_profile(P, median=median)
        predictors[kind] = PredictorFit(kind, fit, zeroth, zeroth**fit.slope)
    return ProfileFit(torch.arange(1, T), sensitivity_profile(S, median=median), predictors)


def _from_pairs(X: Tensor, pairs: str) -> Tensor:
    """``X`` with the pairs ``(t, 0)`` set to NaN for ``pairs="paper"``."""
    return X if pairs == "all" else X.index_fill(-1, torch.tensor([0], device=X.device),
                                                 math.nan)
