"""Batched least squares over masked rows (a leaf of :mod:`gatescope.measures`, shared by the
time-scale fits, the CCDF tail regression and the envelope models; docs/timescales.md).

Every row ``r`` of a batch solves its own problem ``min_c Σ_{i ∈ mask_r} (y_{r,i} - X_{r,i}·c)²``
over the points its mask keeps, all rows in one batched SVD: masked points become zero rows of
the design (they add nothing to the normal equations), the columns are scaled to unit norm (so
the rank cut is relative to each column's size, e.g. ``ℓ`` in the hundreds beside a constant),
and singular values below ``max(m, k) · eps · σ_max`` are cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LeastSquares:
    """Row-wise least-squares fits.

    Attributes:
        coef: ``(..., k)`` the coefficients of the design's columns; NaN for a row whose kept
            points do not determine them (fewer than ``k``, or a rank-deficient design).
        rss: ``(...)`` residual sum of squares over the kept points (NaN with ``coef``).
        r2: ``(...)`` ``1 - RSS/TSS`` about the row's mean; 1 when ``y`` does not vary.
        count: ``(...)`` int64, the points kept.
    """

    coef: Tensor
    rss: Tensor
    r2: Tensor
    count: Tensor


def masked_least_squares(design: Tensor, y: Tensor, mask: Tensor) -> LeastSquares:
    """Fit ``y ≈ design · coef`` row by row over the points ``mask`` keeps.

    Args:
        design: ``(..., m, k)`` float; entries at masked-out points are ignored (they may be
            infinite or NaN).
        y: ``(..., m)``; entries at masked-out points are ignored.
        mask: ``(..., m)`` bool, ``True`` at the points fitted. The three broadcast together.

    Returns:
        A :class:`LeastSquares` over the broadcast leading shape, in float64.
    """
    shape = torch.broadcast_shapes(design.shape[:-1], y.shape, mask.shape)
    k = design.shape[-1]
    keep = mask.expand(shape)
    X = torch.where(keep.unsqueeze(-1), design.double(), 0.0).expand(*shape, k)
    z = torch.where(keep, y.double(), 0.0)
    norm = X.norm(dim=-2, keepdim=True)
    norm = torch.where(norm > 0, norm, 1.0)
    U, S, Vh = torch.linalg.svd(X / norm, full_matrices=False)
    cut = S[..., :1] * max(shape[-1], k) * torch.finfo(torch.float64).eps
    kept = cut < S
    projected = (U.mT @ z.unsqueeze(-1)).squeeze(-1)
    scaled = (Vh.mT @ torch.where(kept, projected / S, 0.0).unsqueeze(-1)).squeeze(-1)
    coef = scaled / norm.squeeze(-2)
    count = keep.sum(-1)
    residual = torch.where(keep, z - (X @ coef.unsqueeze(-1)).squeeze(-1), 0.0)
    rss = (residual**2).sum(-1)
    mean = z.sum(-1, keepdim=True) / count.clamp_min(1).unsqueeze(-1)
    tss = (torch.where(keep, z - mean, 0.0) ** 2).sum(-1)
    r2 = torch.where(tss > 0, 1 - rss / tss.clamp_min(torch.finfo(torch.float64).tiny), 1.0)
    solved = kept.all(-1) & (count >= k)
    return LeastSquares(coef.masked_fill(~solved.unsqueeze(-1), math.nan),
                        rss.masked_fill(~solved, math.nan), r2.masked_fill(~solved, math.nan),
                        count)
