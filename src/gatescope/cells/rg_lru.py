"""The real-gated linear recurrent unit of Griffin (De et al. 2024), written from the paper.

``x_t = u_t`` (or ``W_in u_t`` with ``input_proj``), ``r_t = σ(W_a x_t + b_a)``,
``i_t = σ(W_x x_t + b_x)``, ``a_t = a^{c r_t}`` with ``a = σ(Λ)`` and ``c = 8`` (computed in
log space, ``log a_t = -c r_t softplus(-Λ)``),
``h_t = a_t ⊙ h_{t-1} + √(1 - a_t²) ⊙ (i_t ⊙ x_t)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import eye_like, scale_rows
from .diagonal import DiagonalCell
from .registry import register_cell


@register_cell("rg_lru")
class RGLRUCell(DiagonalCell):
    """RG-LRU: retention ``a_t``, update gate ``√(1 - a_t²) ⊙ i_t`` (the weight of ``x_t``),
    both read from the input only.

    Jacobian split: the recurrence and input gates read only ``x_t``, so ``B_t = 0`` and
    ``J_t = A_t = diag(a_t)`` (docs/maths.md#rg-lru).

    Args:
        input_size: ``m``.
        hidden_size: ``n``, the width of ``h`` (and of ``x_t``).
        bias: whether the gates have the biases ``b_a``, ``b_x`` (the paper's; default on).
        c: the constant ``c`` of ``a_t = a^{c r_t}`` (the paper's 8).
        input_proj: ``x_t = W_in u_t`` (``(n, m)``, no bias; the linear layer before the
            RG-LRU in Griffin's recurrent block); default: only when ``m != n``.
    """

    description = "RG-LRU (Griffin): h = a^(c r) h + sqrt(1 - a^(2 c r)) (i x); retention a_t"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, c: float = 8.0,
                 input_proj: bool | None = None) -> None:
        super().__init__(input_size, hidden_size)
        if isinstance(c, bool) or not isinstance(c, int | float) or not (
                math.isfinite(c) and c > 0):
            raise ValueError(f"c must be a finite number > 0, got {c!r}")
        if input_proj is None:
            input_proj = self.input_size != self.hidden_size
        elif not isinstance(input_proj, bool):
            raise TypeError(f"input_proj must be True, False or None, got {input_proj!r}")
        if not input_proj and self.input_size != self.hidden_size:
            raise ValueError(f"input_proj=False needs input_size == hidden_size (x_t enters "
                             f"i_t ⊙ x_t), got {self.input_size} and {self.hidden_size}")
        self.c = float(c)
        self.inner_size, self.to_out = self.hidden_size, None
        n = self.hidden_size
        self.input_proj = nn.Linear(self.input_size, n, bias=False) if input_proj else None
        self.gate_a = nn.Linear(n, n, bias=bias)   # W_a, b_a
        self.gate_x = nn.Linear(n, n, bias=bias)   # W_x, b_x
        # the paper's initialisation: a^c uniform in [0.9, 0.999]
        a = torch.empty(n).uniform_(0.9, 0.999) ** (1 / self.c)
        self.Lambda = nn.Parameter(torch.log(a) - torch.log1p(-a))

    def extra_repr(self) -> str:
        return f"c={self.c}, input_proj={self.input_proj is not None}"

    def recurrence(self, s, u, held):
        x = u if self.input_proj is None else self.input_proj(u)
        r, i = held if held is not None else (torch.sigmoid(self.gate_a(x)),
                                              torch.sigmoid(self.gate_x(x)))
        log_a = -self.c * r * F.softplus(-self.Lambda)
        a = torch.exp(log_a)
        norm = torch.sqrt(1 - a**2)
        return {"inner": a * s + norm * (i * x), "held": (r, i), "gate": norm * i,
                "retention": a, "recurrence_gate": r, "input_gate": i, "x": x,
                "log_a": log_a}

    def inner_input_jacobian(self, traj):
        """``∂h_t/∂x_t = diag(√(1-a²) i) + diag(√(1-a²) x i(1-i)) W_x
        + diag((h_{t-1} - a i x / √(1-a²)) a log(a_t)/r_t · r(1-r)) W_a``
        (``∂a_t/∂r_t = a_t c log σ(Λ) = a_t log(a_t) / r_t``), times ``W_in`` with a
        projection: ``(B, T, n, m)``."""
        a, r = traj.retention, traj.cache["recurrence_gate"]
        i, x = traj.cache["input_gate"], traj.cache["x"]
        norm = torch.sqrt(1 - a**2)
        da_dr = -self.c * F.softplus(-self.Lambda) * a
        ds_da = self.inner_previous(traj) - a / norm * i * x
        E = (eye_like(norm * i) + scale_rows(norm * x * i * (1 - i), self.gate_x.weight)
             + scale_rows(ds_da * da_dr * r * (1 - r), self.gate_a.weight))
        return E if self.input_proj is None else E @ self.input_proj.weight
