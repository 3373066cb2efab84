"""Detection of a lag's gradient signal, the learnability window and the scaling law
(docs/learnability.md).

Livi's follow-up (arXiv 2512.05790) models the matched statistic ``ψ(ℓ)`` of lag ``ℓ`` as
α-stable with mean ``m(ℓ)``, stable scale ``σ(ℓ)`` and tail index ``α(ℓ) ∈ (1, 2]``. A mean
of ``N`` such samples has scale ``σ N^{1/α - 1}``, so with ``κ_α = α/(α-1)``::

    SNR(ℓ, N)    = |m(ℓ)| · N^{1-1/α} / σ = |m(ℓ)| · N^{1/κ_α} / σ
    N_required   = min{N ∈ grid : SNR(ℓ, N) > ε}        (+inf where no N of the grid does)
    N_continuous = (ε σ / |m(ℓ)|)^{κ_α}                 (SNR > ε  ⇔  N > N_continuous)
    H_N          = max{ℓ : N_required(ℓ) ≤ N}            (0 where no lag qualifies)

and, with ``|m(ℓ)| ∝ f(ℓ)`` (the envelope) at constant ``σ, α``, the scaling law
``N(ℓ) ∝ f(ℓ)^{-κ_α}``. These are pure functions of per-lag summaries: every lag argument is
``(..., L)`` (leading dimensions for replicates), every ``N`` grid ``(G,)``; NaN in a mean,
scale or α marks a lag that was not measured, which is never detected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: The sample sizes at which probes and experiments evaluate the learnability window:
#: ``N = 10^{k/4}`` for ``k = 4..40`` (10 to 10¹⁰, four per decade).
DETECTION_GRID = tuple(10 ** (k / 4) for k in range(4, 41))


def _float64(x, name: str) -> Tensor:
    try:
        return torch.as_tensor(x, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a tensor or number, got {x!r}: {err}") from None


def _checked_alpha(alpha) -> Tensor:
    a = _float64(alpha, "alpha")
    measured = a[~a.isnan()]
    if not bool(((measured > 1) & (measured <= 2)).all()):
        raise ValueError(f"alpha must lie in (1, 2] (NaN for an unmeasured lag), got {alpha}")
    return a


def _checked_grid(grid, name: str = "grid") -> Tensor:
    g = _float64(grid, name)
    if g.dim() != 1 or g.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor of sample sizes, got shape "
                         f"{tuple(g.shape)}")
    if not bool((g.isfinite() & (g > 0)).all()) or not bool((g.diff() > 0).all()):
        raise ValueError(f"{name} must be finite, > 0 and strictly increasing, got {grid}")
    return g


def _checked_lags(lags) -> Tensor:
    ell = _float64(lags, "lags")
    if ell.dim() != 1 or not bool((ell > 0).all() & (ell.diff() > 0).all()):
        raise ValueError(f"lags must be a 1-D, strictly increasing tensor of lags > 0, got {lags}")
    return ell


def _checked_eps(eps: float) -> float:
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return eps


def _broadcast(x: Tensor, name: str, shape: torch.Size, others: str) -> torch.Size:
    """The broadcast of ``x``'s shape with ``shape`` (of ``others``), or a ValueError."""
    try:
        return torch.broadcast_shapes(x.shape, shape)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(x.shape)} does not broadcast with {others} "
                         f"of shape {tuple(shape)}") from None


def _per_lag(mean, scale, alpha) -> tuple[Tensor, Tensor, Tensor]:
    """``mean, scale, alpha`` as float64, checked and broadcast to one shape."""
    m, s, a = _float64(mean, "mean"), _float64(scale, "scale"), _checked_alpha(alpha)
    shape = _broadcast(s, "scale", m.shape, "mean")
    shape = _broadcast(a, "alpha", shape, "mean and scale")
    if not bool((s[~s.isnan()] > 0).all()):
        raise ValueError(f"scale must be > 0 (NaN for an unmeasured lag), got {scale}")
    return m.expand(shape), s.expand(shape), a.expand(shape)


def kappa(alpha: float | Tensor) -> float | Tensor:
    """The exponent ``κ_α = α / (α - 1)`` of the scaling law: 2 for a Gaussian (``α = 2``),
    growing without bound as ``α → 1``.

    >>> kappa(2.0), kappa(1.5)
    (2.0, 3.0)

    Raises:
        ValueError: ``alpha`` outside ``(1, 2]`` (NaN entries of a tensor pass through).
    """
    a = _checked_alpha(alpha)
    k = a / (a - 1)
    return k if isinstance(alpha, Tensor) or k.dim() else k.item()


def detection_snr(mean: Tensor, scale: Tensor, alpha: float | Tensor, n) -> Tensor:
    """``SNR(ℓ, N) = |m(ℓ)| · N^{1-1/α(ℓ)} / σ(ℓ)`` for every lag and sample size.

    Args:
        mean: ``(..., L)`` the mean of ``ψ`` per lag.
        scale: the stable scale ``σ > 0`` (a Gaussian's is ``std/√2``).
        alpha: the tail index in ``(1, 2]``.
        n: ``(G,)`` sample sizes ``> 0``.

    ``mean``, ``scale`` and ``alpha`` (tensors or floats) broadcast together to ``(..., L)``,
    e.g. one envelope against a column of α values.

    Returns:
        ``(..., L, G)`` float64; NaN where the lag's mean, scale or α is NaN.
    """
    m, s, a = _per_lag(mean, scale, alpha)
    n = _float64(n, "n")
    if n.dim() != 1 or not bool((n > 0).all()):
        raise ValueError(f"n must be a 1-D tensor of sample sizes > 0, got {n}")
    return m.abs()[..., None] * n ** (1 - 1 / a[..., None]) / s[..., None]


def required_samples(mean: Tensor, scale: Tensor, alpha: float | Tensor, grid,
                     eps: float = 0.1) -> Tensor:
    """``N_required(ℓ)``: the first ``N`` of ``grid`` with ``SNR(ℓ, N) > eps``.

    Args:
        mean, scale, alpha: as in :func:`detection_snr`.
        grid: ``(G,)`` strictly increasing sample sizes.
        eps: the detection threshold ``ε > 0``.

    Returns:
        ``(..., L)`` float64, ``+inf`` where no ``N`` of the grid detects the lag (also where
        its mean is 0 or NaN), so that ``N_required ≤ N`` is false there.
    """
    _checked_eps(eps)
    g = _checked_grid(grid)
    detected = detection_snr(mean, scale, alpha, g) > eps
    first = g[detected.int().argmax(-1)]
    return torch.where(detected.any(-1), first, math.inf)


def required_samples_continuous(mean: Tensor, scale: Tensor, alpha: float | Tensor,
                                eps: float = 0.1) -> Tensor:
    """``N_continuous(ℓ) = (ε σ / |m(ℓ)|)^{κ_α}``, the threshold ``SNR > ε ⇔ N > N_continuous``
    without a grid's quantisation (``+inf`` for a zero mean and for an unmeasured lag).

    Args: as in :func:`required_samples`. Returns: ``(..., L)`` float64.
    """
    _checked_eps(eps)
    m, s, a = _per_lag(mean, scale, alpha)
    n = (eps * s / m.abs()) ** kappa(a)
    return n.masked_fill(m.isnan() | s.isnan() | a.isnan(), math.inf)


def learnability_window(lags: Sequence[float] | Tensor, n_required: Tensor, n,
                        contiguous: bool = False) -> Tensor:
    """The learnability window ``H_N`` at each sample size ``N`` of ``n``.

    The paper's ``H_N = max{ℓ : N_required(ℓ) ≤ N}`` (``contiguous=False``) is the longest
    lag detected with ``N`` samples, even when a shorter lag is not. ``contiguous=True`` gives
    the longest ``ℓ`` such that **every** lag ``≤ ℓ`` is detected, which one spuriously
    detected long lag cannot inflate. Both agree where ``N_required`` is non-decreasing in
    ``ℓ`` (docs/learnability.md#two-windows).

    Args:
        lags: ``(L,)`` strictly increasing lags ``> 0`` (ints or reals).
        n_required: ``(..., L)`` from :func:`required_samples` (or the continuous form).
        n: ``(G,)`` sample sizes.
        contiguous: which window (above).

    Returns:
        ``(..., G)`` float64, the lag value; 0 where no lag qualifies (an empty window).
    """
    ell = _checked_lags(lags)
    nr, n = _float64(n_required, "n_required"), _float64(n, "n")
    if nr.dim() == 0 or nr.shape[-1] != ell.numel():
        raise ValueError(f"n_required must end in the {ell.numel()} lags, got shape "
                         f"{tuple(nr.shape)}")
    if n.dim() != 1:
        raise ValueError(f"n must be a 1-D tensor of sample sizes, got shape {tuple(n.shape)}")
    qualifies = nr[..., :, None] <= n  # (..., L, G)
    if contiguous:
        qualifies = qualifies.int().cumprod(-2).bool()
    return torch.where(qualifies, ell[:, None], 0.0).amax(-2)


@dataclass
class ScalingLaw:
    """Least squares ``log N(ℓ) = intercept + slope · (-κ_α log f(ℓ))`` over the lags with a
    finite ``N`` and a positive, finite ``f``; the law ``N ∝ f^{-κ_α}`` predicts slope 1.

    Attributes (tensors of the leading shape ``...``):
        slope: the fitted slope; NaN when fewer than two lags or ``f`` does not vary.
        intercept: ``log`` of the proportionality constant.
        r2: coefficient of determination (NaN where ``log N`` does not vary).
        lags_used: the number of lags fitted.
    """

    slope: Tensor
    intercept: Tensor
    r2: Tensor
    lags_used: Tensor


def scaling_law(n_required: Tensor, envelope: Tensor, alpha: float | Tensor) -> ScalingLaw:
    """Check the master proportionality ``N(ℓ) ∝ f(ℓ)^{-κ_α}`` (docs/learnability.md).

    Args:
        n_required: ``(..., L)`` required sample sizes: :func:`required_samples_continuous`
            of the estimated ``m, σ, α`` (no grid quantisation, the one to judge the law on)
            or :func:`required_samples` (quantised by the grid, reported beside it).
        envelope: the envelope ``f(ℓ)``.
        alpha: the tail index per lag (or one float).

    The three broadcast together to ``(..., L)``; the fit reduces the last axis.
    """
    y = _float64(n_required, "n_required")
    f, a = _float64(envelope, "envelope"), _checked_alpha(alpha)
    _broadcast(a, "alpha", _broadcast(f, "envelope", y.shape, "n_required"),
               "n_required and envelope")
    keep = y.isfinite() & (y > 0) & f.isfinite() & (f > 0) & a.isfinite()
    x = torch.where(keep, -kappa(a) * f.log(), 0.0)
    y = torch.where(keep, y.log(), 0.0)
    w = keep.double()
    used = w.sum(-1)
    xm, ym = (w * x).sum(-1) / used, (w * y).sum(-1) / used
    xc, yc = w * (x - xm[..., None]), w * (y - ym[..., None])
    sxx, syy = (xc**2).sum(-1), (yc**2).sum(-1)
    slope = torch.where((used >= 2) & (sxx > 0), (xc * yc).sum(-1) / sxx, math.nan)
    r2 = 1 - ((yc - slope[..., None] * xc) ** 2).sum(-1) / syy
    return ScalingLaw(slope, ym - slope * xm, torch.where(syy > 0, r2, math.nan), used.long())
