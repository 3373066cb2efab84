"""The plain (Elman) cell: ``h_t = φ(W_r h_{t-1} + W_i u_t + b)``, ``φ = tanh`` (or relu)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from .base import RecurrentCell, Trajectory, scale_rows
from .registry import register_cell

#: The candidate nonlinearities ``φ`` a tanh-family cell accepts.
NONLINEARITIES = ("tanh", "relu")


class ElmanCore(RecurrentCell):
    """Shared parameters of the tanh cells: ``recurrent`` (``W_r``) and ``input`` (``W_i, b``).

    Initialised as PyTorch's ``nn.Linear`` (the paper's default). ``φ`` is ``tanh`` unless a
    subclass sets :attr:`nonlinearity` to ``"relu"`` (``φ'(a) = 1[a > 0]``, read from
    ``φ(a) > 0``).
    """

    #: ``φ``: one of :data:`NONLINEARITIES`.
    nonlinearity: str = "tanh"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = False) -> None:
        super().__init__(input_size, hidden_size)
        self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)
        self.input = nn.Linear(input_size, hidden_size, bias=bias)

    def candidate(self, h: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, φ(a))`` with ``a = W_r h + W_i u + b``; shapes ``(..., n)``."""
        a = self.recurrent(h) + self.input(u)
        return a, torch.relu(a) if self.nonlinearity == "relu" else torch.tanh(a)

    def derivative(self, phi: Tensor) -> Tensor:
        """``φ'(a)`` from ``φ(a)``: ``1 - φ²`` for tanh, ``1[φ > 0]`` for relu; ``(..., n)``."""
        return (phi > 0).to(phi.dtype) if self.nonlinearity == "relu" else 1 - phi**2

    def candidate_jacobian(self, traj: Trajectory, scale: Tensor) -> Tensor:
        """``diag(scale ⊙ φ'(a_t)) W_r`` for every step: ``(B, T, n, n)``."""
        return scale_rows(scale * self.derivative(traj.cache["phi"]), self.recurrent.weight)

    def candidate_input_jacobian(self, traj: Trajectory, scale: Tensor) -> Tensor:
        """``diag(scale ⊙ φ'(a_t)) W_i`` for every step: ``(B, T, n, m)``."""
        return scale_rows(scale * self.derivative(traj.cache["phi"]), self.input.weight)


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
    """``h_t = φ(a_t)``; ``J_t = D_t W_r``, no gate (``B = 0``), retention 0.

    Args:
        input_size: ``m``.
        hidden_size: ``n``.
        bias: whether ``W_i`` has a bias ``b``.
        nonlinearity: ``φ``, ``"tanh"`` (default) or ``"relu"`` (torch's
            ``nn.RNN(nonlinearity="relu")``; ``D_t = diag(1[a_t > 0])``).
    """

    description = "tanh(W_r h + W_i u + b) (or relu); no gate"
    #: Whether the cell has a learned, state-dependent update gate (docs/maths.md#cells).
    gated: ClassVar[bool] = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = False,
                 nonlinearity: str = "tanh") -> None:
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias=bias)
        self.nonlinearity = nonlinearity

    def extra_repr(self) -> str:
        return "" if self.nonlinearity == "tanh" else f"nonlinearity={self.nonlinearity!r}"

    def compute(self, h, u, held=None):
        _, phi = self.candidate(h, u)
        return {"state": phi, "held": (), "gate": None, "retention": torch.zeros_like(phi[..., :1]),
                "phi": phi}

    def _jacobian(self, traj):
        return self.candidate_jacobian(traj, torch.ones_like(traj.cache["phi"]))

    def analytic_input_jacobian(self, traj):
        """``∂h_t/∂u_t = D_t W_i``: ``(B, T, n, m)``."""
        return self.candidate_input_jacobian(traj, torch.ones_like(traj.cache["phi"]))
