"""Symmetric α-stable samples (docs/tail-index.md).

The learnability window of Livi's follow-up (arXiv 2512.05790) models the matched gradient
statistic as α-stable with tail index ``α ∈ (1, 2]``; this module draws such samples, for the
estimators' validation and for the heavy-tailed forcing of the ``timescales`` experiment.

Chambers–Mallows–Stuck (skewness 0, location 0, scale ``σ``)::

    X = σ · sin(αU) / cos(U)^{1/α} · (cos((1-α)U) / W)^{(1-α)/α},
    U ~ Unif(-π/2, π/2),  W ~ Exp(1)

``α = 2`` gives ``N(0, 2σ²)`` (the stable scale of a Gaussian is ``std/√2``), ``α = 1`` the
Cauchy distribution with scale ``σ``. The characteristic function is
``E exp(iθX) = exp(-|σθ|^α)``, scipy's ``levy_stable(α, 0, scale=σ)`` (parametrisation S1).

Two estimators of ``(α, σ)`` and the location from such samples, both for the symmetric law
(the skewness is not estimated), vectorised over every dimension but the sample one:

* :func:`mcculloch`: McCulloch's (1986) quantile ratios ``ν_α = (x_95 - x_05)/(x_75 - x_25)``
  → ``α`` and ``σ = (x_75 - x_25)/φ(α)``, interpolated in a table this repository computes
  (``tools/make_mcculloch_table.py``).
* :func:`koutrouvelis`: Koutrouvelis's (1980) regression of ``log(-log|φ̂(t)|²)`` on
  ``log t``, on the data standardised by the McCulloch fit.

The reliability flag and the choices are in docs/tail-index.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._mcculloch_table import MCCULLOCH_TABLE
from ._quantile import quantile

#: The sample size below which a fit is flagged unreliable: at ``n = 200`` either
#: estimator's ``α̂`` has a standard deviation of about 0.1-0.2 for ``α`` in ``[1.2, 1.8]``
#: (docs/tail-index.md; it shrinks as ``1/√n``): below it, one fit's ``±2`` standard
#: deviations span well over a third of the range ``(1, 2]`` the estimate is for.
MIN_SAMPLES = 200

#: The range the estimates of ``α`` are clipped to: the McCulloch table's.
ALPHA_RANGE = (MCCULLOCH_TABLE[0][0], MCCULLOCH_TABLE[-1][0])

#: Koutrouvelis's frequencies, on the data standardised to unit scale: ``t = 0.1, 0.2, …, 1``
#: (Kogon & Williams' 1998 choice; for ``α ∈ [1, 2]``, ``|φ(t)|² = e^{-2t^α}`` stays in
#: ``[0.13, 0.99]``, well above the ``1/n`` noise floor of ``|φ̂|²``).
KOUTROUVELIS_T = tuple(k / 10 for k in range(1, 11))


def stable_samples(alpha: float | Tensor, shape: tuple[int, ...], generator: torch.Generator,
                   scale: float | Tensor = 1.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """Symmetric α-stable samples by the Chambers–Mallows–Stuck method.

    Args:
        alpha: the tail index in ``(0, 2]``: a float, or a tensor broadcastable to ``shape``
            (one ``α`` per row, e.g. ``(R, 1)`` against ``shape = (R, n)``).
        shape: the shape of the samples.
        generator: a CPU generator (seeded: the same seed gives the same samples).
        scale: ``σ > 0``, a float or a tensor broadcastable to ``shape``.
        dtype: the samples' floating dtype.

    Returns:
        ``shape`` samples on the CPU.

    Raises:
        ValueError: ``alpha`` outside ``(0, 2]`` or ``scale`` not positive.
    """
    a = torch.as_tensor(alpha, dtype=torch.float64)
    s = torch.as_tensor(scale, dtype=torch.float64)
    if not bool(((a > 0) & (a <= 2)).all()):
        raise ValueError(f"alpha must lie in (0, 2], got {alpha}")
    if not bool((s > 0).all()):
        raise ValueError(f"scale must be > 0, got {scale}")
    u = (torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5) * math.pi
    w = -torch.log1p(-torch.rand(shape, generator=generator, dtype=torch.float64))
    x = (torch.sin(a * u) / torch.cos(u) ** (1 / a)
         * (torch.cos((1 - a) * u) / w) ** ((1 - a) / a))
    return (s * x).to(dtype)


@dataclass(frozen=True)
class StableFit:
    """A fit of a symmetric α-stable law, one entry per row (``x``'s shape without ``dim``).

    Attributes:
        alpha: ``α̂`` clipped to :data:`ALPHA_RANGE` ``= [0.5, 2]``, float64.
        scale: ``σ̂`` of the characteristic function ``exp(-|σθ|^α)`` (a Gaussian's is
            ``std/√2``), float64.
        location: the centre ``δ̂``, float64.
        reliable: bool; ``False`` where the row has fewer than ``min_samples`` finite values,
            ``α̂ ≤ 1`` (the learnability window's ``N^{1-1/α}`` and ``κ_α = α/(α-1)`` need
            ``α > 1``), or a non-finite or non-positive estimate (e.g. a row whose
            interquartile range is zero). ``α̂`` at or above 2 (clipped to 2) stays
            reliable: Gaussian tails are the boundary of the model, not a failure.
        count: int64, the finite values of the row that were used.
    """

    alpha: Tensor
    scale: Tensor
    location: Tensor
    reliable: Tensor
    count: Tensor


def mcculloch(x: Tensor, dim: int = -1, min_samples: int = MIN_SAMPLES) -> StableFit:
    """McCulloch's quantile estimator of a symmetric α-stable law.

    With the sample quantiles ``x_p`` (linear interpolation, numpy's default)::

        ν̂ = (x_95 - x_05) / (x_75 - x_25),   α̂ = ν_α^{-1}(ν̂),
        σ̂ = (x_75 - x_25) / φ(α̂),             δ̂ = x_50

    where ``ν_α`` (decreasing from 44.6 at ``α = 0.5`` to 2.439 at ``α = 2``) and
    ``φ(α) = (x_75 - x_25)/σ`` are the standard law's, interpolated linearly in the table of
    :mod:`gatescope.measures._mcculloch_table` (step 0.02 in ``α``; interpolation error
    below ``6·10⁻⁴`` in ``α`` and ``4·10⁻⁴`` relative in ``φ``). ``ν̂`` outside the table
    gives ``α̂ = 2`` (tails lighter than Gaussian) or ``0.5``. The skewness is not
    estimated (``β = 0``: McCulloch's ``ν_β`` is not used).

    Args:
        x: samples along ``dim`` (any real floating dtype; computed in float64). NaN and
            ``±inf`` entries are dropped, row by row; a row with none left gives NaN.
        dim: the sample dimension.
        min_samples: the finite values a row needs to be reliable (``>= 2``).

    Returns:
        :class:`StableFit` with ``x.shape`` without ``dim``, on ``x``'s device.

    Raises:
        TypeError: ``x`` is not a real floating tensor.
        ValueError: ``dim`` out of range, ``min_samples`` below 2, or ``x.shape[dim]`` below
            ``min_samples`` (no row could be reliable).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> fit = mcculloch(stable_samples(1.5, (3, 20_000), g, scale=2.0))
        >>> fit.alpha.shape, bool(((fit.alpha - 1.5).abs() < 0.1).all())
        (torch.Size([3]), True)
    """
    rows, shape = _sample_rows(x, dim, min_samples)
    return _reshaped(_mcculloch_rows(rows, min_samples), shape)


def koutrouvelis(x: Tensor, dim: int = -1, t: Sequence[float] | Tensor = KOUTROUVELIS_T,
                 iterations: int = 1, min_samples: int = MIN_SAMPLES) -> StableFit:
    """Koutrouvelis's characteristic-function regression for a symmetric α-stable law.

    The data are standardised by the current fit, ``z = (x - δ)/σ`` (the first from
    :func:`mcculloch`), and at each frequency ``t_k`` of ``t`` the empirical characteristic
    function ``φ̂(t) = mean_j e^{i t z_j}`` gives, since ``|φ(t)|² = exp(-2 s^α t^α)`` for
    ``z`` of scale ``s``::

        y_k = log(-log ĝ(t_k)) = log(2 s^α) + α log t_k,
        ĝ(t) = (n |φ̂(t)|² - 1) / (n - 1)

    (``ĝ`` is the unbiased estimate of ``|φ(t)|²``: ``E|φ̂|² = 1/n + (1 - 1/n)|φ|²``). Ordinary
    least squares of ``y`` on ``log t`` gives the slope ``α̂`` (clipped to
    :data:`ALPHA_RANGE`) and, with the intercept refitted at the clipped slope,
    ``s = exp((ȳ - α̂ mean(log t) - log 2)/α̂)``. With ``β = 0`` the phase is
    ``arg φ(t) = d·t`` for ``z`` of location ``d``, so ``d̂ = Σ t_k arg φ̂(t_k) / Σ t_k²``.
    Each iteration updates ``δ ← δ + σ d̂``, ``σ ← σ s``. The skewness is not estimated.

    The reliability flag reads the last iteration's slope before clipping.

    Args:
        x: samples along ``dim`` (any real floating dtype; computed in float64). NaN and
            ``±inf`` entries are dropped, row by row; a row with none left gives NaN.
        dim: the sample dimension.
        t: the frequencies on the standardised scale, 1-D, at least two, positive and
            distinct (default ``0.1, 0.2, …, 1``).
        iterations: passes of the regression (``>= 1``).
        min_samples: the finite values a row needs to be reliable (``>= 2``).

    Returns:
        :class:`StableFit` with ``x.shape`` without ``dim``, on ``x``'s device.

    Raises:
        TypeError: ``x`` is not a real floating tensor.
        ValueError: bad ``dim``, ``t``, ``iterations`` or ``min_samples``, or ``x.shape[dim]``
            below ``min_samples``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> fit = koutrouvelis(stable_samples(1.5, (3, 20_000), g, scale=2.0))
        >>> bool(((fit.alpha - 1.5).abs() < 0.1).all()), bool(fit.reliable.all())
        (True, True)
    """
    rows, shape = _sample_rows(x, dim, min_samples)
    freqs = torch.as_tensor(t, dtype=torch.float64).to(rows.device)
    if (freqs.dim() != 1 or freqs.numel() < 2 or not bool(freqs.isfinite().all())
            or not bool((freqs > 0).all()) or freqs.unique().numel() < freqs.numel()):
        raise ValueError(f"t must be a 1-D sequence of at least two distinct positive "
                         f"frequencies, got {t}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    start = _mcculloch_rows(rows, min_samples)
    valid = rows.isfinite()
    count = start.count.double()
    location, scale = start.location, start.scale
    log_t = freqs.log()
    centred_log_t = log_t - log_t.mean()
    for _ in range(iterations):
        z = torch.where(valid, (rows - location[:, None]) / scale[:, None], 0.0)
        ecf = _empirical_cf(z, count, freqs)  # (R, K) complex
        g = (count[:, None] * ecf.abs() ** 2 - 1) / (count[:, None] - 1)
        y = torch.log(-torch.log(g))
        raw = (y - y.mean(-1, keepdim=True)) @ centred_log_t / (centred_log_t ** 2).sum()
        alpha = raw.clamp(*ALPHA_RANGE)
        s = torch.exp((y.mean(-1) - alpha * log_t.mean() - math.log(2)) / alpha)
        d = ecf.angle() @ freqs / (freqs ** 2).sum()
        location, scale = location + scale * d, scale * s
    reliable = _reliable(raw, scale, location, start.count, min_samples)
    return _reshaped(StableFit(alpha, scale, location, reliable, start.count), shape)


#: McCulloch's table as float64 tensors: α and φ(α) by ascending α, ν_α and α by ascending ν_α.
_ALPHA, _NU, _PHI = torch.tensor(MCCULLOCH_TABLE, dtype=torch.float64).T.contiguous()
_NU_ASCENDING, _ALPHA_BY_NU = _NU.flip(0), _ALPHA.flip(0)

#: The quantile levels McCulloch's estimator reads.
_LEVELS = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)


def _sample_rows(x: Tensor, dim: int, min_samples: int) -> tuple[Tensor, torch.Size]:
    """``x`` as float64 rows ``(R, n)`` (``dim`` last, the other dimensions flattened) with
    non-finite entries set to NaN, and the shape of one value per row; checks the inputs."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"x must be a real floating tensor, got {kind}")
    if x.dim() == 0 or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must lie in [{-x.dim()}, {x.dim() - 1}] for x of shape "
                         f"{tuple(x.shape)}, got {dim}")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 2:
        raise ValueError(f"min_samples must be an int >= 2, got {min_samples!r}")
    if x.shape[dim] < min_samples:
        raise ValueError(f"x has {x.shape[dim]} samples along dim={dim}, fewer than "
                         f"min_samples={min_samples}: no row could be reliable (pass a "
                         f"smaller min_samples to fit anyway)")
    rows = x.movedim(dim, -1).double()
    shape = rows.shape[:-1]
    rows = rows.reshape(-1, rows.shape[-1])
    return rows.masked_fill(~rows.isfinite(), math.nan), shape


def _reshaped(fit: StableFit, shape: torch.Size) -> StableFit:
    """``fit`` of ``(R,)`` rows as ``shape``."""
    return StableFit(*(getattr(fit, f).reshape(shape) for f in StableFit.__dataclass_fields__))


def _mcculloch_rows(rows: Tensor, min_samples: int) -> StableFit:
    """:func:`mcculloch` on ``(R, n)`` rows whose non-finite entries are NaN."""
    q05, q25, q50, q75, q95 = quantile(rows, _LEVELS.to(rows.device), dim=-1)
    device = rows.device
    iqr = q75 - q25
    alpha = _interpolate((q95 - q05) / iqr, _NU_ASCENDING.to(device), _ALPHA_BY_NU.to(device))
    scale = iqr / _interpolate(alpha, _ALPHA.to(device), _PHI.to(device))
    count = (~rows.isnan()).sum(-1)
    return StableFit(alpha, scale, q50, _reliable(alpha, scale, q50, count, min_samples), count)


def _interpolate(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Linear interpolation of ``(xp, fp)`` (``xp`` ascending) at ``x``, constant beyond the
    ends; NaN at NaN."""
    hi = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.numel() - 1)
    lo = hi - 1
    w = ((x - xp[lo]) / (xp[hi] - xp[lo])).clamp(0, 1)
    return fp[lo] + w * (fp[hi] - fp[lo])


def _empirical_cf(z: Tensor, count: Tensor, freqs: Tensor) -> Tensor:
    """``(R, K)`` ``mean_j e^{i t_k z_j}`` over the ``count`` valid entries of each row of
    ``z``, the others set to 0; one frequency at a time (an ``(R, n)`` temporary rather
    than ``(R, K, n)``)."""
    missing = (z.shape[-1] - count)[:, None]  # their z = 0 adds cos 0 = 1 and sin 0 = 0
    parts = []
    for f in freqs:
        tz = f * z
        parts.append(torch.complex(tz.cos().sum(-1), tz.sin().sum(-1)))
    return (torch.stack(parts, -1) - missing) / count[:, None]


def _reliable(alpha: Tensor, scale: Tensor, location: Tensor, count: Tensor,
              min_samples: int) -> Tensor:
    """The :class:`StableFit` flag, from the estimate of ``α`` before clipping above."""
    return ((count >= min_samples) & (alpha > 1) & alpha.isfinite() & (scale > 0)
            & scale.isfinite() & location.isfinite())
