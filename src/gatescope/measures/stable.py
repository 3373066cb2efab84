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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


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
