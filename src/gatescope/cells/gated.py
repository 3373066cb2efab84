"""Gated tanh cells: ``h_t = (1-g_t) ⊙ h_{t-1} + g_t ⊙ φ(a_t)``.

``g_t = σ(W_rg h_{t-1} + W_ig u_t + b_g)`` is one scalar shared by all neurons
(``scalar_gate``) or one value per neuron (``multi_gate``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .base import add_diagonal_, scale_rows
from .plain import ElmanCore
from .registry import register_cell


class GatedCell(ElmanCore):
    """Update-gated tanh cell with one shared gate or one gate per neuron.

    Jacobian split (docs/maths.md#jacobian-split), with ``h_{t-1}`` the state *before* the update:
        ``A_t = diag(1-g_t) + diag(g_t ⊙ φ'(a_t)) W_r``,
        ``B_t = diag((φ(a_t) - h_{t-1}) ⊙ g_t(1-g_t)) W_rg``.
    """

    #: ``True``: one gate per neuron (``multi_gate``); ``False``: one shared gate.
    per_neuron_gate: bool

    def __init__(self, input_size: int, hidden_size: int, bias: bool = False) -> None:
        super().__init__(input_size, hidden_size, bias=bias)
        k = hidden_size if self.per_neuron_gate else 1
        self.gate_recurrent = nn.Linear(hidden_size, k, bias=False)
        self.gate_input = nn.Linear(input_size, k, bias=bias)

    def compute(self, h, u, held=None):
        _, phi = self.candidate(h, u)
        (g,) = held if held is not None else (
            torch.sigmoid(self.gate_recurrent(h) + self.gate_input(u)),)
        state = (1 - g) * h + g * phi
        return {"state": state, "held": (g,), "gate": g, "retention": 1 - g, "phi": phi}

    def analytic_jacobian_split(self, traj):
        g, phi = traj.gates, traj.cache["phi"]
        A = add_diagonal_(self.candidate_jacobian(traj, g.expand_as(phi)), 1 - g)
        # scalar gate: (B, T, n, 1) * (1, n) broadcasts to the rank-one outer product
        B = scale_rows(self._gate_sensitivity(traj), self.gate_recurrent.weight)
        return A, B

    def analytic_jacobian(self, traj):
        g, phi = traj.gates, traj.cache["phi"]
        J = add_diagonal_(self.candidate_jacobian(traj, g.expand_as(phi)), 1 - g)
        # J += B in place, without a full-size temporary
        return J.addcmul_(self._gate_sensitivity(traj).unsqueeze(-1), self.gate_recurrent.weight)

    def analytic_input_jacobian(self, traj):
        """``∂h_t/∂u_t = diag(g_t ⊙ φ'(a_t)) W_i + diag((φ(a_t) - h_{t-1}) ⊙ g_t(1-g_t)) W_ig``:
        ``(B, T, n, m)``."""
        g, phi = traj.gates, traj.cache["phi"]
        E = self.candidate_input_jacobian(traj, g.expand_as(phi))
        return E.addcmul_(self._gate_sensitivity(traj).unsqueeze(-1), self.gate_input.weight)

    @staticmethod
    def _gate_sensitivity(traj):
        """``(φ(a_t) - h_{t-1}) ⊙ g_t(1-g_t)``, the row scale of ``B_t``: ``(B, T, n)``."""
        g = traj.gates
        return (traj.cache["phi"] - traj.previous_states) * g * (1 - g)


@register_cell("scalar_gate")
class ScalarGateCell(GatedCell):
    """One update gate ``g_t ∈ R`` for all neurons; ``B_t`` has rank one."""

    description = "one learned update gate shared by all neurons"
    #: Whether the cell has a learned, state-dependent update gate (docs/maths.md#cells).
    gated: ClassVar[bool] = True

    per_neuron_gate = False


@register_cell("multi_gate")
class MultiGateCell(GatedCell):
    """One update gate per neuron, ``g_t ∈ R^n``."""

    description = "one learned update gate per neuron"
    #: Whether the cell has a learned, state-dependent update gate (docs/maths.md#cells).
    gated: ClassVar[bool] = True

    per_neuron_gate = True
