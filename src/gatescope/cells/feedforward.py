"""The feedforward half of a language-model layer, ``FF(x) = W_2 GELU(W_1 x + b_1) + b_2``
(``minGRU_pytorch``'s ``FeedForward``: ``Linear(n, int(n · mult))``, exact GELU,
``Linear(·, n)``), and its Jacobian (docs/maths.md#residual-blocks)::

    ∂FF(x)/∂x = W_2 diag(GELU'(W_1 x + b_1)) W_1,    GELU'(a) = Φ(a) + a φ(a)

with ``Φ``, ``φ`` the standard normal distribution and density.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import scale_rows


def make_feedforward(size: int, mult: float) -> nn.Sequential:
    """``nn.Sequential(Linear(n, int(n · mult)), GELU(), Linear(int(n · mult), n))``, the
    reference's layout (so its ``state_dict`` loads).

    Raises:
        ValueError: when ``mult`` is not a finite number ``> 0`` with ``int(n · mult) >= 1``.
    """
    if (isinstance(mult, bool) or not isinstance(mult, int | float) or not math.isfinite(mult)
            or int(size * mult) < 1):
        raise ValueError(f"feedforward must be None or a number > 0 with int(hidden_size * "
                         f"feedforward) >= 1 (hidden_size={size}), got {mult!r}")
    inner = int(size * mult)
    return nn.Sequential(nn.Linear(size, inner), nn.GELU(), nn.Linear(inner, size))


def feedforward_jacobian(ff: nn.Sequential, x: Tensor) -> Tensor:
    """``∂FF(x)/∂x`` (see the module docstring): ``(..., n) -> (..., n, n)``."""
    first, last = ff[0], ff[2]
    a = first(x)
    slope = torch.special.ndtr(a) + a * torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    return last.weight @ scale_rows(slope, first.weight)
