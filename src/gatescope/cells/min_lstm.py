"""minLSTM (Feng et al. 2024), step for step ``minGRU_pytorch.minLSTM``'s sequential step.

``[a_t; k_t; j_t] = W u_t`` (``to_hidden_and_f_i_gate``), ``f_t = σ(k_t)``, ``i_t = σ(j_t)``,
normalised ``f'_t = f_t / (f_t + i_t)``, ``i'_t = i_t / (f_t + i_t)``, ``h̃_t = g(a_t)`` (the
positive candidate of the log-space variant), ``s_t = f'_t ⊙ s_{t-1} + i'_t ⊙ h̃_t``, output
``y_t = W_out s_t`` (``to_out``) with ``proj_out``. Parameter names are the reference's.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import scale_rows
from .diagonal import DiagonalCell, inner_width, positive_candidate
from .registry import register_cell


@register_cell("min_lstm")
class MinLSTMCell(DiagonalCell):
    """minLSTM: retention ``f'_t``, update gate ``i'_t`` (``f' + i' = 1``), read from ``u_t``.

    Jacobian split: the gates read only the input, so ``B_t = 0`` and
    ``J_t = A_t = diag(f'_t)`` on ``s`` (``W_out diag(f'_t)`` on the output rows of a
    projected cell; docs/maths.md#mingru-and-minlstm).

    Args:
        input_size: ``m``.
        hidden_size: ``n``, the output width.
        bias: whether ``to_hidden_and_f_i_gate`` has a bias (the reference has none; default).
        expansion_factor: the inner width is ``d = int(n * expansion_factor)``.
        proj_out: whether ``y_t = W_out s_t`` is the output; default ``expansion_factor != 1``.
    """

    description = "minLSTM (minGRU_pytorch): s = f' s + i' g(W_h u), f' + i' = 1; retention f'"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = False,
                 expansion_factor: float = 1.0, proj_out: bool | None = None) -> None:
        super().__init__(input_size, hidden_size)
        self.inner_size, proj = inner_width(self.hidden_size, expansion_factor, proj_out)
        self.expansion_factor = expansion_factor
        self.to_hidden_and_f_i_gate = nn.Linear(input_size, 3 * self.inner_size, bias=bias)
        self.to_out = nn.Linear(self.inner_size, self.hidden_size, bias=False) if proj else None

    def extra_repr(self) -> str:
        return f"inner_size={self.inner_size}, proj_out={self.to_out is not None}"

    def recurrence(self, s, u, held):
        hidden, f_pre, i_pre = self.to_hidden_and_f_i_gate(u).chunk(3, -1)
        f, i = held if held is not None else (torch.sigmoid(f_pre), torch.sigmoid(i_pre))
        total = f + i
        f_norm, i_norm = f / total, i / total
        candidate, slope = positive_candidate(hidden)
        return {"inner": s * f_norm + candidate * i_norm, "held": (f, i), "gate": i_norm,
                "retention": f_norm, "forget": f, "input": i, "candidate": candidate,
                "candidate_slope": slope}

    def inner_input_jacobian(self, traj):
        """``∂s_t/∂u_t = diag(i' g'(a)) W_a + diag(c_f) W_k + diag(c_i) W_j`` with
        ``c_f = f' i' (1 - f)(s_{t-1} - h̃)`` and ``c_i = f' i' (1 - i)(h̃ - s_{t-1})``
        (``∂f'/∂f = -∂i'/∂f = i / (f + i)²``, ``∂f'/∂i = -∂i'/∂i = -f / (f + i)²``):
        ``(B, T, d, m)``."""
        f_norm, i_norm = traj.retention, traj.gates
        f, i, c = traj.cache["forget"], traj.cache["input"], traj.cache["candidate"]
        d = self.inner_size
        W = self.to_hidden_and_f_i_gate.weight
        diff = (self.inner_previous(traj) - c) * f_norm * i_norm
        return (scale_rows(i_norm * traj.cache["candidate_slope"], W[:d])
                + scale_rows(diff * (1 - f), W[d:2 * d])
                + scale_rows(-diff * (1 - i), W[2 * d:]))
