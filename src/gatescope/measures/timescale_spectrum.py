"""The spectrum of per-neuron time scales, its tail exponent β, and the phase it puts a
network in (docs/timescales.md; arXiv 2606.29519, FOLLOWUPS §2).

* **Fitted time scale** of neuron ``q``: least squares ``E_{b,t} log|μ_{t,ℓ,q}| ≈ a_q - ℓ/τ_q``
  over the lags (the mean of the log, not the log of the mean). A leaky or constant gate has
  ``μ⁰ = (1-s)^ℓ``, so ``τ = -1/log(1-s)`` exactly. This is the decay rate of the rates
  themselves; :func:`gatescope.measures.time_scales` is the other notion, ``-1/log r̄`` from
  the mean retention.
* **Tail exponent**: ``log P(τ > x) ≈ c - β log x`` on the empirical CCDF of the ``τ_q`` over a
  window of quantile levels, with a bootstrap over neurons for its interval and ``P(β < 1)``.
* **Phase**, in this order: no sustained power-law window in the envelope → ``"collapsed"``;
  CCDF-tail ``R² < 0.90`` → ``"unresolved"``; lower end of β's interval above 1 →
  ``"concentrated"``; upper end below 1 → ``"broad"``; else ``"boundary"`` (:data:`PHASES`).
  The window comes from the AIC choice of :func:`~gatescope.measures.select_envelope_model`
  (:func:`power_law_window`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._integers import integer_lags
from ._least_squares import masked_least_squares
from ._quantile import quantile
from .envelope_models import ENVELOPE_MODELS, EnvelopeSelection, select_envelope_model

#: The phases :func:`phase` returns, with what each means.
PHASES = {
    "collapsed": "collapsed: the envelope has no sustained power-law window",
    "unresolved": "anti-collapsed, β unresolved: the CCDF tail of τ is not a power law "
                  "(R² below the threshold)",
    "concentrated": "anti-collapsed, concentrated spectrum: β > 1 (its interval lies above 1)",
    "broad": "anti-collapsed, broad spectrum: β < 1 (its interval lies below 1)",
    "boundary": "anti-collapsed, at the boundary: β's interval contains 1",
}


@dataclass
class TimeScaleFit:
    """Per-neuron fits ``E_t log|μ_{t,ℓ,q}| ≈ a_q - ℓ/τ_q``.

    Attributes:
        tau: ``(n,)`` ``τ_q = -1/slope``; ``∞`` where the slope is ``>= 0`` (rates that do not
            decay); ``0`` where every positive lag's rates vanish (some ``μ`` exactly 0, e.g. a
            plain cell's ``μ⁰``) and no positive lag is left to fit; NaN where fewer than two
            lags can be fitted.
        intercept: ``(n,)`` ``a_q``.
        r2: ``(n,)`` the fit's ``R²`` over the lags (1 where the mean log does not vary).
        lags_fitted: ``(n,)`` int64, the lags each neuron's fit used.
    """

    tau: Tensor
    intercept: Tensor
    r2: Tensor
    lags_fitted: Tensor


def fitted_time_scales(mu: Tensor, lags: Sequence[int]) -> TimeScaleFit:
    """The time scale of each neuron, fitted to the decay of its effective rates.

    For each lag and neuron the log of ``|μ|`` is averaged over the batch and the end times
    (NaN entries excluded: ``ℓ > t``, times past a sequence's length), then
    ``mean log|μ|(ℓ) = a_q - ℓ/τ_q`` is fitted by least squares over the lags, all neurons in
    one batched solve. A lag where some ``μ`` of the neuron is exactly 0 (its mean log is
    ``-∞``: a vanishing retention, or an underflow at long lags) is left out of that neuron's
    fit.

    Args:
        mu: ``(B, T+1, L, n)`` from :func:`gatescope.measures.effective_learning_rates`.
        lags: the ``L`` lags ``mu`` holds, in its order (at least two distinct).

    Returns:
        A :class:`TimeScaleFit` (float64).

    Raises:
        TypeError: for a lag that is not an integer.
        ValueError: for ``mu`` that is not a real ``(B, T+1, L, n)`` tensor with
            ``L = len(lags)``, or fewer than two distinct lags.
    """
    lags = integer_lags(lags)
    if not isinstance(mu, Tensor) or mu.dim() != 4 or mu.shape[2] != len(lags) \
            or mu.is_complex():
        raise ValueError(f"mu must be a real (B, T+1, L, n) tensor with L = len(lags) = "
                         f"{len(lags)}, got "
                         f"{tuple(mu.shape) if isinstance(mu, Tensor) else type(mu).__name__}")
    if len(set(lags)) < 2:
        raise ValueError(f"lags must hold at least two distinct lags, got {lags}")
    mean_log = mu.double().abs().log().nanmean((0, 1)).T  # (n, L), NaN for a lag never seen
    lag = torch.tensor(lags, dtype=torch.float64, device=mu.device)
    usable = mean_log.isfinite()
    fit = masked_least_squares(torch.stack([torch.ones_like(lag), lag], -1), mean_log, usable)
    slope = fit.coef[:, 1]
    tau = torch.where(slope < 0, -1 / slope, math.inf).masked_fill(slope.isnan(), math.nan)
    positive = lag > 0
    vanished = ((mean_log == -math.inf) & positive).any(-1) & ~(usable & positive).any(-1)
    return TimeScaleFit(tau.masked_fill(vanished, 0.0), fit.coef[:, 0], fit.r2, fit.count)


@dataclass
class TailExponent:
    """The CCDF tail fit ``log P(τ > x) ≈ c - β log x`` and its bootstrap.

    Attributes:
        beta: ``β`` of the neurons given.
        low, high: the percentile interval of the bootstrap ``β`` at the ``level`` asked.
        prob_below_one: the fraction of resamples with ``β < 1``.
        r2: the fit's ``R²``.
        n_tail: the points of the CCDF fitted.
        intercept: ``c``.
    """

    beta: float
    low: float
    high: float
    prob_below_one: float
    r2: float
    n_tail: int
    intercept: float


def tail_exponent(tau: Tensor, quantiles: tuple[float, float] = (0.75, 0.995),
                  resamples: int = 1000, generator: torch.Generator | None = None,
                  level: float = 0.90) -> TailExponent:
    """The tail exponent β of the spectrum of time scales, with a bootstrap over neurons.

    With the ``n`` time scales sorted, ``x_(1) ≤ … ≤ x_(n)``, the empirical CCDF at ``x_(i)`` is
    the plotting position ``P̂(τ > x_(i)) = 1 - i/(n+1)`` (the mean of ``P(τ > x_(i))`` for
    continuous ``τ``, and never 0). The points whose level ``i/(n+1)`` lies in ``quantiles`` are
    fitted by least squares, ``log P̂ = c - β log x_(i)``. The bootstrap draws ``resamples``
    sets of ``n`` neurons with replacement (one ``(R, n)`` index tensor, each row sorted, all
    rows fitted in one batched solve); the interval is the percentile interval at ``level``.

    Non-finite time scales: NaN (a neuron with no fit) is dropped before ranking; ``∞`` (rates
    that do not decay) and ``0`` keep their rank (they are real neurons and count in
    ``P(τ > x)``) but have no finite ``log x``, so a window point that falls on one is not
    fitted. A resample whose fit is undetermined (its window points all equal) is left out of
    the interval and of ``P(β < 1)``.

    Args:
        tau: ``(n,)`` time scales ``>= 0`` (:func:`fitted_time_scales`), NaN allowed.
        quantiles: ``(low, high)`` levels of the window, ``0 <= low < high <= 1``.
        resamples: bootstrap resamples ``>= 1``; memory is ``O(resamples · n)``.
        generator: a CPU generator for the resamples; ``None`` uses a fresh one seeded with 0
            (reruns give the same interval).
        level: the interval's coverage, in ``(0, 1)``.

    Returns:
        A :class:`TailExponent`; its numbers are NaN when the window holds fewer than two
        distinct finite ``log τ``.

    Raises:
        ValueError: for a bad ``tau`` (not 1-D real, or negative entries), ``quantiles``,
            ``resamples``, ``generator`` or ``level``, naming it.
    """
    _check_tail_arguments(tau, quantiles, resamples, generator, level)
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    values = tau.double()[~tau.isnan()]
    n = values.numel()
    levels = torch.arange(1, n + 1, dtype=torch.float64, device=values.device) / (n + 1)
    window = (levels >= quantiles[0]) & (levels <= quantiles[1])
    log_ccdf = torch.log1p(-levels[window])
    draws = torch.randint(n, (resamples, n), generator=generator).to(values.device) \
        if n else torch.zeros(resamples, 0, dtype=torch.long, device=values.device)
    samples = torch.cat([values.unsqueeze(0), values[draws]]).sort(-1).values[:, window]
    log_x = samples.log()
    fit = masked_least_squares(torch.stack([torch.ones_like(log_x), log_x], -1), log_ccdf,
                               log_x.isfinite())
    beta = -fit.coef[:, 1]
    boot = beta[1:]
    finite = boot[~boot.isnan()]
    low, high = quantile(boot, torch.tensor([(1 - level) / 2, (1 + level) / 2])).tolist()
    below = (finite < 1).double().mean().item() if finite.numel() else math.nan
    return TailExponent(beta[0].item(), low, high, below, fit.r2[0].item(),
                        int(fit.count[0]), fit.coef[0, 0].item())


def _check_tail_arguments(tau, quantiles, resamples, generator, level) -> None:
    """Refuse bad arguments of :func:`tail_exponent` before any compute."""
    if not isinstance(tau, Tensor) or tau.dim() != 1 or tau.is_complex() \
            or not tau.is_floating_point():
        raise ValueError(f"tau must be a real floating (n,) tensor of time scales, got "
                         f"{tuple(tau.shape) if isinstance(tau, Tensor) else type(tau).__name__}")
    if (tau < 0).any():
        raise ValueError(f"tau must be >= 0 (or NaN), got min {tau.nan_to_num(0).min().item()}")
    if not (isinstance(quantiles, (tuple, list)) and len(quantiles) == 2
            and all(isinstance(q, (int, float)) and not isinstance(q, bool) for q in quantiles)
            and 0 <= quantiles[0] < quantiles[1] <= 1):
        raise ValueError(f"quantiles must be (low, high) with 0 <= low < high <= 1, got "
                         f"{quantiles!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be an int >= 1, got {resamples!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got "
                         f"{type(generator).__name__}")
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"level must lie in (0, 1), got {level!r}")


@dataclass
class PowerLawWindow:
    """The lags over which the chosen envelope model is a power law.

    Attributes:
        start, stop: ``(...)`` the first and last lag of the window (NaN where empty).
        count: ``(...)`` int64, the fitted lags inside it.
        sustained: ``(...)`` bool, at least ``min_lags`` lags spanning ``min_decades``.
    """

    start: Tensor
    stop: Tensor
    count: Tensor
    sustained: Tensor


def power_law_window(selection: EnvelopeSelection, min_decades: float = 1.0,
                     min_lags: int = 5) -> PowerLawWindow:
    """The power-law window of each envelope, from the AIC choice of model.

    The local exponent of a decay law is ``-d log f / d log ℓ``: constant (``β``) for a power
    law, ``ℓ`` itself (times ``1/τ``) for an exponential, ``β + ℓ/τ_max`` for the tempered law.
    The window is the fitted lags where the power law sets that exponent:

    * power law chosen, ``β = -d > 0``: every fitted lag;
    * tempered power law chosen, ``β > 0``: the fitted lags ``ℓ <= β τ_max``, where the
      cut-off's share ``ℓ/τ_max`` of the exponent is at most the power law's ``β``;
    * exponential chosen, a non-decaying power law, or no choice: empty.

    It is *sustained* when it holds at least ``min_lags`` fitted lags and
    ``stop/start >= 10^min_decades``.

    Args:
        selection: from :func:`gatescope.measures.select_envelope_model`.
        min_decades: ``>= 0``, the span the window must cover, in decades of lag.
        min_lags: an int ``>= 2``, the fitted lags it must hold.

    Returns:
        A :class:`PowerLawWindow` over ``selection``'s batch.
    """
    if not isinstance(selection, EnvelopeSelection):
        raise ValueError(f"selection must be an EnvelopeSelection (select_envelope_model), "
                         f"got {type(selection).__name__}")
    if not (isinstance(min_decades, (int, float)) and 0 <= min_decades < math.inf):
        raise ValueError(f"min_decades must be a finite number >= 0, got {min_decades!r}")
    if isinstance(min_lags, bool) or not isinstance(min_lags, int) or min_lags < 2:
        raise ValueError(f"min_lags must be an int >= 2, got {min_lags!r}")
    power = selection.models["power law"].parameters
    tempered = selection.models["tempered power law"].parameters
    best = selection.best
    reach = torch.zeros(best.shape, dtype=torch.float64, device=best.device)
    reach = torch.where((best == ENVELOPE_MODELS.index("power law")) & (power["d"] < 0),
                        math.inf, reach)
    tempered_reach = (tempered["beta"] * tempered["tau_max"]).nan_to_num(0.0)
    reach = torch.where((best == ENVELOPE_MODELS.index("tempered power law"))
                        & (tempered["beta"] > 0), tempered_reach, reach)
    inside = selection.fitted & (selection.lags <= reach.unsqueeze(-1))
    count = inside.sum(-1)
    start = torch.where(inside, selection.lags, math.inf).min(-1).values
    stop = torch.where(inside, selection.lags, -math.inf).max(-1).values
    empty = count == 0
    start, stop = start.masked_fill(empty, math.nan), stop.masked_fill(empty, math.nan)
    sustained = (count >= min_lags) & (stop >= start * 10**min_decades)
    return PowerLawWindow(start, stop, count, sustained)


def phase(selection: EnvelopeSelection, tail: TailExponent, min_r2: float = 0.90,
          min_decades: float = 1.0, min_lags: int = 5) -> str:
    """The phase of one network from its envelope models and its τ spectrum's tail.

    The rules, in order (FOLLOWUPS §2): no sustained power-law window
    (:func:`power_law_window`) → ``"collapsed"``; CCDF-tail ``R² < min_r2`` (or β's interval
    undefined) → ``"unresolved"``; ``tail.low > 1`` → ``"concentrated"``; ``tail.high < 1``
    → ``"broad"``; else ``"boundary"``. :data:`PHASES` describes each.

    Args:
        selection: :func:`~gatescope.measures.select_envelope_model` of one envelope
            (no batch).
        tail: :func:`tail_exponent` of the same network's time scales.
        min_r2: the CCDF fit's least ``R²``, in ``[0, 1]``.
        min_decades, min_lags: what makes the window sustained (:func:`power_law_window`).

    Returns:
        A key of :data:`PHASES`.
    """
    if isinstance(selection, EnvelopeSelection) and selection.best.dim() != 0:
        raise ValueError(f"selection must hold one envelope, got a batch of shape "
                         f"{tuple(selection.best.shape)}: call phase per envelope")
    if not isinstance(tail, TailExponent):
        raise ValueError(f"tail must be a TailExponent (tail_exponent), got "
                         f"{type(tail).__name__}")
    if not (isinstance(min_r2, (int, float)) and 0 <= min_r2 <= 1):
        raise ValueError(f"min_r2 must lie in [0, 1], got {min_r2!r}")
    if not power_law_window(selection, min_decades, min_lags).sustained.item():
        return "collapsed"
    if not (tail.r2 >= min_r2 and math.isfinite(tail.low) and math.isfinite(tail.high)):
        return "unresolved"
    if tail.low > 1:
        return "concentrated"
    if tail.high < 1:
        return "broad"
    return "boundary"


@dataclass(frozen=True)
class SpectrumPhase:
    """One network's time-scale spectrum and phase (:func:`spectrum_phase`).

    Attributes:
        time_scales: the fitted per-neuron time scales.
        tail: the CCDF tail exponent of ``time_scales.tau``.
        envelope: the envelope's model selection.
        phase: a key of :data:`PHASES`.
    """

    time_scales: TimeScaleFit
    tail: TailExponent
    envelope: EnvelopeSelection
    phase: str


def spectrum_phase(mu: Tensor, lags: Sequence[int], f: Tensor,
                   generator: torch.Generator) -> SpectrumPhase:
    """:func:`fitted_time_scales` of ``mu``, :func:`tail_exponent` of those ``τ`` (bootstrap
    from ``generator``), :func:`~gatescope.measures.select_envelope_model` of the envelope
    ``f`` at the same lags, and :func:`phase` with the default thresholds.

    Args:
        mu: ``(..., L, n)`` effective rates at ``lags`` (as for :func:`fitted_time_scales`).
        lags: the ``L`` lags.
        f: ``(L,)`` the envelope at ``lags``.
        generator: draws the bootstrap resamples.
    """
    fit = fitted_time_scales(mu, lags)
    tail = tail_exponent(fit.tau, generator=generator)
    selection = select_envelope_model(lags, f)
    return SpectrumPhase(fit, tail, selection, phase(selection, tail))
