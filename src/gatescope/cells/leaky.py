"""The leaky-integrator cell: ``h_t = (1-α) h_{t-1} + α φ(a_t)`` with a constant ``α``."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import add_diagonal_
from .plain import ElmanCore, GateFreeJacobian
from .registry import register_cell


@register_cell("leaky")
class LeakyCell(GateFreeJacobian, ElmanCore):
    """Constant update weight ``α ∈ (0, 1]`` (default 0.8); ``J_t = (1-α) I + α D_t W_r``.

    Its "gate" is a constant, so ``B = 0`` and ``traj.gates`` is ``None``; the retention is
    ``1 - α`` at every step.
    """

    description = "leaky integrator with a constant update weight alpha"
    #: Whether the cell has a learned, state-dependent update gate (docs/maths.md#cells).
    gated: ClassVar[bool] = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = False,
                 alpha: float = 0.8) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
        super().__init__(input_size, hidden_size, bias=bias)
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def compute(self, h, u, held=None):
        _, phi = self.candidate(h, u)
        state = (1 - self.alpha) * h + self.alpha * phi
        return {"state": state, "held": (), "gate": None,
                "retention": torch.full_like(phi[..., :1], 1 - self.alpha), "phi": phi}

    def _jacobian(self, traj):
        J = self.candidate_jacobian(traj, torch.full_like(traj.cache["phi"], self.alpha))
        return add_diagonal_(J, 1 - self.alpha)

    def analytic_input_jacobian(self, traj):
        """``∂h_t/∂u_t = α D_t W_i``: ``(B, T, n, m)``."""
        return self.candidate_input_jacobian(traj, torch.full_like(traj.cache["phi"], self.alpha))
