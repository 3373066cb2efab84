"""minGRU (Feng et al. 2024, "Were RNNs all we needed?"), step for step ``minGRU_pytorch.minGRU``.

``[a_t; k_t] = W u_t`` (``to_hidden_and_gate``), ``z_t = σ(k_t)``, ``h̃_t = g(a_t)`` with the
log-space variant's positive candidate ``g(x) = x + 0.5`` (``x >= 0``), ``σ(x)`` (``x < 0``),
``s_t = (1 - z_t) ⊙ s_{t-1} + z_t ⊙ h̃_t`` (``torch.lerp``), output ``y_t = W_out s_t``
(``to_out``) with ``proj_out``. Parameter names are the reference's, so its ``state_dict``
loads directly.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import scale_rows
from .diagonal import DiagonalCell, inner_width, positive_candidate
from .registry import register_cell


@register_cell("min_gru")
class MinGRUCell(DiagonalCell):
    """minGRU: retention ``1 - z_t``, update gate ``z_t``, both read from ``u_t`` only.

    Jacobian split: ``z_t`` and ``h̃_t`` read only the input, so ``B_t = 0`` and
    ``J_t = A_t = diag(1 - z_t)`` on ``s`` (``W_out diag(1 - z_t)`` on the output rows of a
    projected cell; docs/maths.md#mingru-and-minlstm).

    Args:
        input_size: ``m``.
        hidden_size: ``n``, the output width (what a readout and the next layer see).
        bias: whether ``to_hidden_and_gate`` has a bias (the reference has none; default).
        expansion_factor: the inner width is ``d = int(n * expansion_factor)``.
        proj_out: whether ``y_t = W_out s_t`` (``(n, d)``, no bias) is the output; default
            ``expansion_factor != 1`` as the reference. Without it the state is ``s_t``.
    """

    description = "minGRU (minGRU_pytorch): s = lerp(s, g(W_h u), σ(W_z u)); retention 1 - z"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = False,
                 expansion_factor: float = 1.0, proj_out: bool | None = None) -> None:
        super().__init__(input_size, hidden_size)
        self.inner_size, proj = inner_width(self.hidden_size, expansion_factor, proj_out)
        self.expansion_factor = expansion_factor
        self.to_hidden_and_gate = nn.Linear(input_size, 2 * self.inner_size, bias=bias)
        self.to_out = nn.Linear(self.inner_size, self.hidden_size, bias=False) if proj else None

    def extra_repr(self) -> str:
        return f"inner_size={self.inner_size}, proj_out={self.to_out is not None}"

    def recurrence(self, s, u, held):
        hidden, gate = self.to_hidden_and_gate(u).chunk(2, -1)
        (z,) = held if held is not None else (torch.sigmoid(gate),)
        candidate, slope = positive_candidate(hidden)
        return {"inner": torch.lerp(s, candidate, z), "held": (z,), "gate": z,
                "retention": 1 - z, "candidate": candidate, "candidate_slope": slope}

    def inner_input_jacobian(self, traj):
        """``∂s_t/∂u_t = diag(z g'(a)) W_a + diag((h̃ - s_{t-1}) z(1 - z)) W_k``:
        ``(B, T, d, m)``."""
        z, c = traj.gates, traj.cache["candidate"]
        d = self.inner_size
        W = self.to_hidden_and_gate.weight
        through_gate = (c - self.inner_previous(traj)) * z * (1 - z)
        return (scale_rows(z * traj.cache["candidate_slope"], W[:d])
                + scale_rows(through_gate, W[d:]))
