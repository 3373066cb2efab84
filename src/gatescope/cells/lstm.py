"""The LSTM cell, step for step the maths of ``torch.nn.LSTM``'s layers; the state is ``[h; c]``.

``i, f, o = σ(·)``, ``g = tanh(·)`` from ``W_ih u + b_ih + W_hh h + b_hh`` (torch's order
i, f, g, o); ``c' = f ⊙ c + i ⊙ g``, ``h' = o ⊙ tanh(c')``, or ``h' = W_hr (o ⊙ tanh(c'))``
with an output projection (``proj_size = p > 0``, as ``nn.LSTM(proj_size=p)``). The update
gate is ``i``; the retention is the forget gate ``f`` (acting on ``c``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from .base import _positive_size, add_diagonal_, eye_like, scale_rows
from .gru import TorchLayoutCell
from .registry import register_cell


@register_cell("lstm")
class LSTMCell(TorchLayoutCell):
    """Jacobian of ``[h'; c']`` with respect to ``[h; c]``, gates ``i, f, o`` held for ``A``::

        ∂c'/∂c = diag(f)                       (A)
        ∂c'/∂h = diag(i(1-g²)) W_hg            (A)
               + diag(c f(1-f)) W_hf + diag(g i(1-i)) W_hi      (B)
        ∂h'/∂c = P diag(o(1-tanh²c') f)        (A)
        ∂h'/∂h = P diag(o(1-tanh²c')) ∂c'/∂h   (A and B parts as above)
               + P diag(tanh(c') o(1-o)) W_ho  (B)

    ``P = I`` without a projection and ``P = W_hr`` (``(p, n)``) with one: the projection is
    a fixed linear map (no gate), so it is part of both ``A`` and ``B`` as written; ``A`` is
    what flows with ``i, f, o`` held, through ``g`` and the carousel ``c``.

    Args:
        input_size: ``m``.
        hidden_size: torch's ``hidden_size``, the cell size ``n`` of ``c`` and the gates.
        bias: whether the cell has ``bias_ih`` and ``bias_hh``.
        proj_size: ``p``; ``0`` (default) for no projection. With ``p > 0`` the cell has
            ``weight_hr`` ``(p, n)``, ``weight_hh`` is ``(4n, p)``, ``h`` has ``p`` entries
            and the state is ``[h (p); c (n)]``: the cell's :attr:`hidden_size` (what a
            readout sees, ``state[..., :p]``) is ``p`` and :attr:`cell_size` is ``n``.
    """

    description = "torch.nn.LSTMCell, state [h; c] (retention: forget gate); proj_size option"
    #: Whether the cell has a learned, state-dependent update gate (docs/maths.md#cells).
    gated: ClassVar[bool] = True

    blocks = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 proj_size: int = 0) -> None:
        super().__init__(input_size, hidden_size, bias=bias)
        #: ``n``, the size of ``c`` and of every gate.
        self.cell_size = self.hidden_size
        #: ``p``, the size of the projected ``h`` (``0``: no projection).
        self.proj_size = 0 if proj_size == 0 else _positive_size("proj_size", proj_size)
        if self.proj_size:
            n, p = self.cell_size, self.proj_size
            bound = 1 / math.sqrt(n)
            self.weight_hh = nn.Parameter(torch.empty(4 * n, p).uniform_(-bound, bound))
            self.weight_hr = nn.Parameter(torch.empty(p, n).uniform_(-bound, bound))
            self.hidden_size = p
        else:
            self.register_parameter("weight_hr", None)

    def extra_repr(self) -> str:
        return f"proj_size={self.proj_size}" if self.proj_size else ""

    @property
    def state_size(self) -> int:
        return self.hidden_size + self.cell_size

    @property
    def retention_size(self) -> int:
        """The forget gate acts on the cell state ``c``: ``cell_size`` entries, last."""
        return self.cell_size

    def compute(self, h, u, held=None):
        p = self.hidden_size
        hid, cell = h[..., :p], h[..., p:]
        xi, hh = self.pre_activations(hid, u)
        a_i, a_f, a_g, a_o = (xi + hh).chunk(4, -1)
        i, f, o = held if held is not None else (
            torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o))
        g = torch.tanh(a_g)
        c_new = f * cell + i * g
        tc = torch.tanh(c_new)
        h_new = o * tc if self.weight_hr is None else (o * tc) @ self.weight_hr.T
        state = torch.cat([h_new, c_new], -1)
        return {"state": state, "held": (i, f, o), "gate": i, "retention": f,
                "candidate": g, "output_gate": o, "tanh_cell": tc}

    def _project(self, X: Tensor) -> Tensor:
        """``P X``: ``X`` itself without a projection, ``W_hr X`` with one; ``(..., n, k)``."""
        return X if self.weight_hr is None else self.weight_hr @ X

    def _gate_terms(self, traj, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For ``x`` entering the pre-activations through ``weight`` (``W_hh``: ``x = h``,
        ``W_ih``: ``x = u``), the parts of ``∂c'/∂x`` and of ``o ⊙ tanh(c')``'s derivative:
        ``(∂c'/∂x with i, f, o held, the rest of ∂c'/∂x, diag(tanh(c') o(1-o)) W_o)``,
        each ``(B, T, n, k)``."""
        n = self.cell_size
        i, f = traj.gates, traj.retention
        g, o, tc = traj.cache["candidate"], traj.cache["output_gate"], traj.cache["tanh_cell"]
        c = traj.previous_states[..., self.hidden_size:]
        W_i, W_f, W_g, W_o = (weight[k * n:(k + 1) * n] for k in range(4))
        held = scale_rows(i * (1 - g**2), W_g)
        through_gates = scale_rows(c * f * (1 - f), W_f) + scale_rows(g * i * (1 - i), W_i)
        return held, through_gates, scale_rows(tc * o * (1 - o), W_o)

    def _carousel(self, traj) -> tuple[Tensor, Tensor]:
        """``(o(1-tanh²c'), f)``, the row scale of ``∂h'/∂c'`` (before ``P``) and
        ``∂c'/∂c``: each ``(B, T, n)``."""
        o, tc = traj.cache["output_gate"], traj.cache["tanh_cell"]
        return o * (1 - tc**2), traj.retention

    def analytic_jacobian_split(self, traj):
        dc_A, dc_B, d_out = self._gate_terms(traj, self.weight_hh)
        out, f = self._carousel(traj)
        hc = self._project(eye_like(out * f))
        A = _blocks(self._project(scale_rows(out, dc_A)), hc, dc_A, eye_like(f))
        B = _blocks(self._project(scale_rows(out, dc_B) + d_out), torch.zeros_like(hc),
                    dc_B, torch.zeros_like(eye_like(f)))
        return A, B

    def analytic_jacobian(self, traj):
        """``J = A + B`` written block by block into one ``(B, T, N, N)`` tensor:
        ``∂c'/∂h = Σ_k diag(a_k) W_hk`` over the blocks i, f, g (one product),
        ``∂h'/∂h = P (diag(o(1-tanh²c')) ∂c'/∂h + diag(tanh(c') o(1-o)) W_ho)`` and the
        blocks ``P diag(o(1-tanh²c') f)``, ``diag(f)``.

        Returns:
            ``(B, T, N, N)``, ``N = p + n`` (``2n`` without a projection).
        """
        p = self.hidden_size
        dh, dc = self._state_derivative(traj, self.weight_hh, self.scaled_recurrent_blocks)
        out, f = self._carousel(traj)
        J = dc.new_zeros(*dc.shape[:-2], self.state_size, self.state_size)
        J[..., p:, :p] = dc
        J[..., :p, :p] = dh
        if self.weight_hr is None:
            add_diagonal_(J[..., :p, p:], out * f)
        else:
            J[..., :p, p:] = self.weight_hr * (out * f).unsqueeze(-2)
        add_diagonal_(J[..., p:, p:], f)
        return J

    def analytic_input_jacobian(self, traj):
        """``∂[h'; c']/∂u``: ``∂c'/∂u = Σ_k diag(a_k) W_ik`` over the blocks i, f, g and
        ``∂h'/∂u = P (diag(o(1-tanh²c')) ∂c'/∂u + diag(tanh(c') o(1-o)) W_io)``.

        Returns:
            ``(B, T, N, m)``.
        """
        dh, dc = self._state_derivative(traj, self.weight_ih, self.scaled_input_blocks)
        return torch.cat([dh, dc], -2)

    def _state_derivative(self, traj, weight: Tensor, scaled_blocks) -> tuple[Tensor, Tensor]:
        """``(∂h'/∂x, ∂c'/∂x)`` for ``x`` entering through ``weight`` (all gates free), with
        ``∂c'/∂x`` in one product of ``scaled_blocks``: ``(B, T, p, k)``, ``(B, T, n, k)``."""
        n = self.cell_size
        i, f = traj.gates, traj.retention
        g, o, tc = traj.cache["candidate"], traj.cache["output_gate"], traj.cache["tanh_cell"]
        c = traj.previous_states[..., self.hidden_size:]
        out = o * (1 - tc**2)
        coefficients = torch.stack([g * i * (1 - i), c * f * (1 - f), i * (1 - g**2)], dim=-2)
        dc = scaled_blocks(coefficients)
        dh = scale_rows(out, dc) + scale_rows(tc * o * (1 - o), weight[3 * n:])
        return self._project(dh), dc


def _blocks(hh, hc, ch, cc):
    """Assemble ``[[∂h'/∂h, ∂h'/∂c], [∂c'/∂h, ∂c'/∂c]]`` from ``(..., ·, ·)`` blocks."""
    return torch.cat([torch.cat([hh, hc], -1), torch.cat([ch, cc], -1)], -2)
