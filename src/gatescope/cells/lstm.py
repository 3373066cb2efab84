"""The LSTM cell, step for step the maths of ``torch.nn.LSTMCell``; the state is ``[h; c]``.

``i, f, o = σ(·)``, ``g = tanh(·)`` from ``W_ih u + b_ih + W_hh h + b_hh`` (torch's order
i, f, g, o); ``c' = f ⊙ c + i ⊙ g``, ``h' = o ⊙ tanh(c')``. The update gate is ``i``; the
retention is the forget gate ``f`` (acting on ``c``).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import add_diagonal_, eye_like, scale_rows
from .gru import TorchLayoutCell
from .registry import register_cell


@register_cell("lstm")
class LSTMCell(TorchLayoutCell):
    """Jacobian of ``[h'; c']`` with respect to ``[h; c]`` (``2n × 2n``), gates ``i, f, o``
    held for ``A``::

        ∂c'/∂c = diag(f)                       (A)
        ∂c'/∂h = diag(i(1-g²)) W_hg            (A)
               + diag(c f(1-f)) W_hf + diag(g i(1-i)) W_hi      (B)
        ∂h'/∂c = diag(o(1-tanh²c') f)          (A)
        ∂h'/∂h = diag(o(1-tanh²c')) ∂c'/∂h     (A and B parts as above)
               + diag(tanh(c') o(1-o)) W_ho    (B)
    """

    description = "torch.nn.LSTMCell, state [h; c] (retention: forget gate)"
    #: Whether the cell has a learned, state-dependent update gate (docs/maths.md#cells).
    gated: ClassVar[bool] = True

    blocks = 4

    @property
    def state_size(self) -> int:
        return 2 * self.hidden_size

    def compute(self, h, u, held=None):
        n = self.hidden_size
        hid, cell = h[..., :n], h[..., n:]
        xi, hh = self.pre_activations(hid, u)
        a_i, a_f, a_g, a_o = (xi + hh).chunk(4, -1)
        i, f, o = held if held is not None else (
            torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o))
        g = torch.tanh(a_g)
        c_new = f * cell + i * g
        tc = torch.tanh(c_new)
        state = torch.cat([o * tc, c_new], -1)
        return {"state": state, "held": (i, f, o), "gate": i, "retention": f,
                "candidate": g, "output_gate": o, "tanh_cell": tc}

    def analytic_jacobian_split(self, traj):
        n = self.hidden_size
        i, f = traj.gates, traj.retention
        g, o, tc = traj.cache["candidate"], traj.cache["output_gate"], traj.cache["tanh_cell"]
        c = traj.previous_states[..., n:]
        W_i, W_f, W_g, W_o = (self.recurrent_block(k) for k in range(4))
        out = o * (1 - tc**2)

        dc_dh_A = scale_rows(i * (1 - g**2), W_g)
        dc_dh_B = scale_rows(c * f * (1 - f), W_f) + scale_rows(g * i * (1 - i), W_i)
        zeros = torch.zeros_like(dc_dh_A)
        A = _blocks(scale_rows(out, dc_dh_A), eye_like(out * f), dc_dh_A, eye_like(f))
        B = _blocks(scale_rows(out, dc_dh_B) + scale_rows(tc * o * (1 - o), W_o), zeros,
                    dc_dh_B, zeros)
        return A, B

    def analytic_jacobian(self, traj):
        """``J = A + B`` written block by block into one ``(B, T, 2n, 2n)`` tensor:
        ``∂c'/∂h = Σ_k diag(a_k) W_hk`` over the blocks i, f, g (one product),
        ``∂h'/∂h = diag(o(1-tanh²c')) ∂c'/∂h + diag(tanh(c') o(1-o)) W_ho`` and the
        diagonal blocks ``diag(o(1-tanh²c') f)``, ``diag(f)``.

        Returns:
            ``(B, T, 2n, 2n)``.
        """
        n = self.hidden_size
        i, f = traj.gates, traj.retention
        g, o, tc = traj.cache["candidate"], traj.cache["output_gate"], traj.cache["tanh_cell"]
        c = traj.previous_states[..., n:]
        out = o * (1 - tc**2)
        coefficients = torch.stack([g * i * (1 - i), c * f * (1 - f), i * (1 - g**2)], dim=-2)
        dc_dh = self.scaled_recurrent_blocks(coefficients)
        J = dc_dh.new_zeros(*dc_dh.shape[:-2], 2 * n, 2 * n)
        J[..., n:, :n] = dc_dh
        J[..., :n, :n] = scale_rows(out, dc_dh) + scale_rows(tc * o * (1 - o),
                                                             self.recurrent_block(3))
        add_diagonal_(J[..., :n, n:], out * f)
        add_diagonal_(J[..., n:, n:], f)
        return J


def _blocks(hh, hc, ch, cc):
    """Assemble ``[[∂h'/∂h, ∂h'/∂c], [∂c'/∂h, ∂c'/∂c]]`` from ``(..., n, n)`` blocks."""
    return torch.cat([torch.cat([hh, hc], -1), torch.cat([ch, cc], -1)], -2)
