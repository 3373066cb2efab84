"""Which decay law the lag envelope follows: exponential, power law or tempered power law,
chosen by AIC (docs/timescales.md#envelope-model-selection; arXiv 2606.29519).

Each model is linear in its parameters on ``log f`` and is fitted by least squares over the lags
``ℓ ≥ 1`` whose envelope value is finite and positive::

    exponential          log f = a + b ℓ                    k = 2
    power law            log f = c + d log ℓ                k = 2
    tempered power law   log f = a - β log ℓ - ℓ / τ_max    k = 3

    AIC = n log(RSS / n) + 2k,   Akaike weight w_i = exp(-Δ_i / 2) / Σ_j exp(-Δ_j / 2)

with ``n`` the lags fitted and ``Δ_i = AIC_i - min_j AIC_j``. The tempered law contains the
other two (``β = 0``; ``τ_max = ∞``), so on a noiseless envelope of either it fits exactly as
well and only its extra parameter tells them apart; an ``RSS`` at rounding level would make
``log RSS`` arbitrary, so ``RSS`` is floored at ``n · resolution²`` (a residual of
``resolution`` in ``log f`` counts as an exact fit). Ties go to the earlier model of
:data:`ENVELOPE_MODELS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..metrics import ENVELOPE_MODEL_LABELS
from ._integers import integer_lags
from ._least_squares import masked_least_squares

#: The models, in the order of the AIC columns and of tie-breaking (fewest parameters first).
ENVELOPE_MODELS = ENVELOPE_MODEL_LABELS

#: Parameters of each model (the number is its ``k``).
MODEL_PARAMETERS = {"exponential": ("a", "b"), "power law": ("c", "d"),
                    "tempered power law": ("a", "beta", "tau_max")}


@dataclass
class EnvelopeModel:
    """One model's fit, over the batch of envelopes.

    Attributes:
        name: one of :data:`ENVELOPE_MODELS`.
        parameters: ``{name: (...)}`` as in :data:`MODEL_PARAMETERS` (``tau_max = ∞`` where
            the fitted coefficient of ``ℓ`` is not negative: no cut-off).
        rss: ``(...)`` residual sum of squares of ``log f``.
        aic: ``(...)`` its AIC (from the floored RSS).
        weight: ``(...)`` its Akaike weight.
    """

    name: str
    parameters: dict[str, Tensor]
    rss: Tensor
    aic: Tensor
    weight: Tensor


@dataclass
class EnvelopeSelection:
    """The three fits of :func:`select_envelope_model` and the AIC choice.

    Attributes:
        lags: ``(L,)`` float64, the lags given.
        fitted: ``(..., L)`` bool, the lags each envelope's fits used.
        models: ``{name: EnvelopeModel}`` in the order of :data:`ENVELOPE_MODELS`.
        best: ``(...)`` int64 index into :data:`ENVELOPE_MODELS` of the least AIC; ``-1``
            where no model could be fitted (fewer than three usable lags).
    """

    lags: Tensor
    fitted: Tensor
    models: dict[str, EnvelopeModel]
    best: Tensor

    @property
    def chosen(self) -> str | list:
        """The chosen model's name (``""`` where none), nested like the batch."""
        names = ENVELOPE_MODELS + ("",)
        best = self.best.tolist()
        return names[best] if isinstance(best, int) else _names(best, names)


def _names(index: list, names: tuple[str, ...]) -> list:
    """The names of a nested list of indices."""
    return [names[i] if isinstance(i, int) else _names(i, names) for i in index]


def select_envelope_model(lags: Sequence[int], f: Tensor, resolution: float = 1e-8
                          ) -> EnvelopeSelection:
    """Fit the three decay laws to ``log f`` and pick one by AIC.

    Args:
        lags: the ``L`` lags of the envelope (ints ``>= 0``; lag 0 is not fitted, since
            ``log ℓ`` does not exist there).
        f: ``(..., L)`` envelopes (e.g. :func:`gatescope.measures.envelope` of several seeds or
            checkpoints, stacked); per row, entries that are NaN, infinite or ``<= 0`` are left
            out of all three fits.
        resolution: ``> 0``, the residual (in ``log f``) below which a fit counts as exact:
            the RSS entering AIC is floored at ``n · resolution²``. Raise it to the noise
            level of ``log f`` when known.

    Returns:
        An :class:`EnvelopeSelection`.

    Raises:
        TypeError: for a lag that is not an integer.
        ValueError: for a negative lag, ``f`` whose last dimension is not ``len(lags)``, or a
            ``resolution`` that is not a positive finite number.
    """
    lags = integer_lags(lags)
    if not isinstance(f, Tensor) or f.dim() < 1 or f.shape[-1] != len(lags):
        raise ValueError(f"f must be a tensor (..., L) with L = len(lags) = {len(lags)}, got "
                         f"{tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__}")
    if f.is_complex():
        raise ValueError(f"f must be real, got {f.dtype}")
    if not (isinstance(resolution, (int, float)) and 0 < resolution < math.inf):
        raise ValueError(f"resolution must be a positive finite number, got {resolution!r}")
    f = f.double()
    lag = torch.tensor(lags, dtype=torch.float64, device=f.device)
    fitted = f.isfinite() & (f > 0) & (lag > 0)
    log_f = torch.where(fitted, f, 1.0).log()
    log_lag = lag.clamp_min(1).log()
    one = torch.ones_like(lag)
    designs = {"exponential": (one, lag), "power law": (one, log_lag),
               "tempered power law": (one, -log_lag, -lag)}
    n = fitted.sum(-1)
    fits, aic = {}, []
    for name, columns in designs.items():  # three fixed models, each batched over envelopes
        fit = masked_least_squares(torch.stack(columns, -1), log_f, fitted)
        k = len(columns)
        floor = n * resolution**2
        score = n * (torch.maximum(fit.rss, floor) / n.clamp_min(1)).log() + 2 * k
        # with n <= k points every model fits exactly: no evidence to choose by
        aic.append(score.masked_fill(n <= k, math.nan))
        fits[name] = fit
    aic = torch.stack(aic, -1)  # (..., 3)
    ranked = aic.nan_to_num(math.inf)
    best = ranked.argmin(-1).masked_fill(aic.isnan().all(-1), -1)
    delta = ranked - ranked.min(-1, keepdim=True).values
    weight = torch.exp(-delta / 2)
    weight = weight / weight.sum(-1, keepdim=True)
    models = {}
    for i, (name, fit) in enumerate(fits.items()):
        coef = fit.coef.unbind(-1)
        if name == "tempered power law":
            inverse = coef[2]
            tau_max = torch.where(inverse > 0, 1 / inverse, math.inf).masked_fill(
                inverse.isnan(), math.nan)
            coef = (coef[0], coef[1], tau_max)
        models[name] = EnvelopeModel(name, dict(zip(MODEL_PARAMETERS[name], coef, strict=True)),
                                     fit.rss, aic[..., i], weight[..., i])
    return EnvelopeSelection(lag, fitted, models, best)
