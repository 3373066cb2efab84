"""NaN-skipping quantiles with numpy's linear interpolation, without a size limit."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def quantile(x: Tensor, q: float | Tensor, dim: int = -1) -> Tensor:
    """Quantiles with linear interpolation (numpy's default), ignoring NaN.

    Unlike :func:`torch.quantile` there is no size limit and NaN entries are skipped;
    ``torch.median`` would return the lower of the two middle values instead.

    Args:
        x: values; ``dim`` is reduced.
        q: one level in ``[0, 1]`` or a 1-D tensor of levels (a new leading dimension).

    Returns:
        ``x`` without ``dim`` (and with the levels first when ``q`` is a tensor); NaN where
        every value along ``dim`` is NaN.
    """
    x = x.movedim(dim, -1)
    levels = torch.as_tensor(q, dtype=torch.float64).to(x.device)
    count = (~x.isnan()).sum(-1, keepdim=True)  # NaN sorts last
    xs = x.sort(-1).values
    pos = levels.reshape(-1, *([1] * x.dim())) * (count - 1).clamp_min(0)
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, (count - 1).clamp_min(0))
    xs = xs.expand(levels.numel(), *xs.shape)
    a, b = xs.gather(-1, lo), xs.gather(-1, hi)
    out = (a + (b - a) * (pos - lo)).squeeze(-1)
    out = out.masked_fill((count == 0).squeeze(-1), math.nan)
    return out if levels.dim() else out.squeeze(0)
