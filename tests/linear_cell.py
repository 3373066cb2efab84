"""An exactly linear recurrence ``h_t = A h_{t-1} + B_in u_t`` (``J_t = A`` at every step),
the reference system of the matrix-free and Lyapunov tests (test_matrix_free.py,
test_lyapunov.py)."""

from __future__ import annotations

import torch
from torch import nn

import gatescope as gs


class LinearCell(gs.RecurrentCell):
    """``h_t = A h_{t-1} + B_in u_t`` with a given ``A`` ``(N, N)``; real or complex."""

    name = "linear (tests)"

    def __init__(self, A: torch.Tensor, input_size: int = 1) -> None:
        super().__init__(input_size, A.shape[0])
        self.A = nn.Parameter(A.clone())
        gen = torch.Generator().manual_seed(0)
        self.B_in = nn.Parameter(0.1 * torch.randn(A.shape[0], input_size, generator=gen,
                                                   dtype=A.dtype))

    def initial_state(self, batch_size, like):
        return self.A.new_zeros(batch_size, self.state_size).detach()

    def compute(self, h, u, held=None):
        state = h @ self.A.mT + u.to(self.A.dtype) @ self.B_in.mT
        return {"state": state, "held": (), "gate": None,
                "retention": torch.zeros_like(state[..., :1].real)}

    def analytic_jacobian(self, traj):
        return self.A.detach().expand(traj.batch_size, traj.seq_len, -1, -1).clone()


def with_eigenvalues(eigenvalues, seed: int = 0) -> torch.Tensor:
    """A non-normal ``A = S diag(eigenvalues) S⁻¹`` (float64) with a random well-conditioned
    ``S``."""
    gen = torch.Generator().manual_seed(seed)
    N = len(eigenvalues)
    S = torch.eye(N, dtype=torch.float64) + 0.3 * torch.randn(N, N, generator=gen,
                                                              dtype=torch.float64)
    return S @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ torch.linalg.inv(S)
