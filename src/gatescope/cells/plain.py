"""The plain (Elman) tanh cell: ``h_t = tanh(W_r h_{t-1} + W_i u_t + b)``."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from .base import RecurrentCell, Trajectory, scale_rows
from .registry import register_cell


class ElmanCore(RecurrentCell):
    """Shared parameters of the tanh cells: ``recurrent`` (``W_r``) and ``input`` (``W_i, b``).

    Initialised as PyTorch's ``nn.Linear`` (the paper's default).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = False) -> None:
        super().__init__(input_size, hidden_size)
        self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)
        self.input = nn.Linear(input_size, hidden_size, bias=bias)

    def candidate(self, h: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, φ(a))`` with ``a = W_r h + W_i u + b``; shapes ``(..., n)``."""
        a = self.recurrent(h) + self.input(u)
        return a, torch.tanh(a)

    def candidate_jacobian(self, traj: Trajectory, scale: Tensor) -> Tensor:
        """``diag(scale ⊙ φ'(a_t)) W_r`` for every step: ``(B, T, n, n)``."""
        phi = traj.cache["phi"]
        return scale_rows(scale * (1 - phi**2), self.recurrent.weight)


class GateFreeJacobian:
    """Mixin for cells whose ``J`` has no gate-induced part: ``B = 0`` and ``A = J``.

    The cell defines ``_jacobian(traj)``, ``(B, T, n, n)``. The split calls it rather than
    ``self.analytic_jacobian``, since a subclass that redefines the split gets a ``J`` built
    from that split (see ``RecurrentCell.__init_subclass__``).
    """

    def analytic_jacobian_split(self, traj: Trajectory) -> tuple[Tensor, Tensor]:
        A = self._jacobian(traj)
        return A, torch.zeros_like(A)

    def analytic_jacobian(self, traj: Trajectory) -> Tensor:
        return self._jacobian(traj)


@register_cell("plain")
class PlainCell(GateFreeJacobian, ElmanCore):
    """``h_t = φ(a_t)``; ``J_t = D_t W_r``, no gate (``B = 0``), retention 0."""

    description = "tanh(W_r h + W_i u + b); no gate"
    #: Whether the cell has a learned, state-dependent update gate (docs/maths.md#cells).
    gated: ClassVar[bool] = False

    def compute(self, h, u, held=None):
        _, phi = self.candidate(h, u)
        return {"state": phi, "held": (), "gate": None, "retention": torch.zeros_like(phi[..., :1]),
                "phi": phi}

    def _jacobian(self, traj):
        return self.candidate_jacobian(traj, torch.ones_like(traj.cache["phi"]))
