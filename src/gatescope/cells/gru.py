"""The GRU cell, step for step the maths of ``torch.nn.GRUCell``.

``r = σ(W_ir u + b_ir + W_hr h + b_hr)``, ``z = σ(W_iz u + b_iz + W_hz h + b_hz)``,
``c = tanh(W_in u + b_in + r ⊙ (W_hn h + b_hn))``, ``h' = (1-z) ⊙ c + z ⊙ h``.
torch's ``z`` keeps the old state, so the update gate is ``g = 1 - z`` and the retention
is ``z``. Parameter names and layouts (gate order r, z, n) are torch's, so a ``GRUCell``'s
``state_dict`` loads directly.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import RecurrentCell, add_diagonal_, eye_like, scale_rows
from .registry import register_cell


class TorchLayoutCell(RecurrentCell):
    """Parameters ``weight_ih (k n, m)``, ``weight_hh (k n, n)``, ``bias_ih``, ``bias_hh``
    (``k`` stacked blocks), initialised as torch's RNN cells: ``U(-1/√n, 1/√n)``."""

    blocks: int

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__(input_size, hidden_size)
        k = self.blocks * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(k, input_size))
        self.weight_hh = nn.Parameter(torch.empty(k, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(k))
            self.bias_hh = nn.Parameter(torch.empty(k))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        bound = 1 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def pre_activations(self, h, u):
        """``(W_ih u + b_ih, W_hh h + b_hh)``, each ``(..., k n)``."""
        return F.linear(u, self.weight_ih, self.bias_ih), F.linear(h, self.weight_hh, self.bias_hh)

    def recurrent_block(self, i: int):
        """Rows of ``weight_hh`` for block ``i``: ``(n, n)`` (``(n, p)`` for a projected LSTM)."""
        n = self.weight_hh.shape[0] // self.blocks
        return self.weight_hh[i * n:(i + 1) * n]

    def scaled_recurrent_blocks(self, coefficients: Tensor) -> Tensor:
        """``Σ_k diag(a_k) W_hk`` over the first ``k`` blocks of ``weight_hh``, in one
        product rather than one full-size tensor per block.

        Args:
            coefficients: ``(..., k, n)``, ``a_k`` for blocks ``0..k-1``.

        Returns:
            ``(..., n, n)``.
        """
        return scaled_blocks(self.weight_hh, coefficients)

    def scaled_input_blocks(self, coefficients: Tensor) -> Tensor:
        """``Σ_k diag(a_k) W_ik`` over the first ``k`` blocks of ``weight_ih``:
        ``(..., k, n) -> (..., n, m)``."""
        return scaled_blocks(self.weight_ih, coefficients)


def scaled_blocks(weight: Tensor, coefficients: Tensor) -> Tensor:
    """``Σ_k diag(a_k) W_k`` over the first ``k`` row blocks ``W_k`` (``(n, j)`` each) of a
    torch-layout ``weight`` (``(blocks n, j)``), in one product.

    Args:
        weight: ``(blocks * n, j)``.
        coefficients: ``(..., k, n)``, ``a_k`` for blocks ``0..k-1``.

    Returns:
        ``(..., n, j)``.
    """
    k, n = coefficients.shape[-2:]
    W = weight[: k * n].reshape(k, n, weight.shape[-1])
    return torch.einsum("...kn,knj->...nj", coefficients, W)


@register_cell("gru")
class GRUCell(TorchLayoutCell):
    """Jacobian split with both gates (``r``, ``z``) held for ``A``:
    ``A = diag(z) + diag((1-z)(1-c²) r) W_hn``,
    ``B = diag((1-z)(1-c²) hn r(1-r)) W_hr + diag((h-c) z(1-z)) W_hz``,
    where ``hn = W_hn h + b_hn``.
    """

    description = "torch.nn.GRUCell (update gate 1 - z, retention z)"
    #: Whether the cell has a learned, state-dependent update gate (docs/maths.md#cells).
    gated: ClassVar[bool] = True

    blocks = 3

    def compute(self, h, u, held=None):
        state, r, z, c, h_n = self._step(h, u, held)
        return {"state": state, "held": (r, z), "gate": 1 - z, "retention": z,
                "reset": r, "candidate": c, "hn": h_n}

    def forward(self, h, u):
        """The next state alone (what an unroll with autograd records: none of the extra
        outputs of :meth:`compute`); a subclass that redefines :meth:`compute` gets its
        own step."""
        if type(self).compute is not GRUCell.compute:
            return self.compute(h, u)["state"]
        return self._step(h, u, None)[0]

    step = forward

    def _step(self, h, u, held):
        """``(h', r, z, c, hn)`` of one step (gates ``held`` when given)."""
        xi, hh = self.pre_activations(h, u)
        two_n = 2 * self.hidden_size
        # both gates from one sum and one sigmoid; h' = (1-z) c + z h as c + z (h - c)
        r, z = (held if held is not None
                else torch.sigmoid(xi[..., :two_n] + hh[..., :two_n]).chunk(2, -1))
        h_n = hh[..., two_n:]
        c = torch.tanh(xi[..., two_n:] + r * h_n)
        return c + z * (h - c), r, z, c, h_n

    @staticmethod
    def _coefficients(traj):
        """``(z, r, (1-z)(1-c²), a_r, a_z)`` of every step: the row scalings through the
        candidate, the reset gate (``a_r = (1-z)(1-c²) hn r(1-r)``) and the update gate
        (``a_z = (h-c) z(1-z)``) shared by the Jacobians below."""
        z, r = traj.retention, traj.cache["reset"]
        c, hn, h = traj.cache["candidate"], traj.cache["hn"], traj.previous_states
        through_c = (1 - z) * (1 - c**2)
        return z, r, through_c, through_c * hn * r * (1 - r), (h - c) * z * (1 - z)

    def analytic_jacobian_split(self, traj):
        z, r, through_c, a_r, a_z = self._coefficients(traj)
        A = eye_like(z) + scale_rows(through_c * r, self.recurrent_block(2))
        B = scale_rows(a_r, self.recurrent_block(0)) + scale_rows(a_z, self.recurrent_block(1))
        return A, B

    def analytic_jacobian(self, traj):
        """``J = A + B`` in one pass: ``diag(z) + Σ_k diag(a_k) W_hk`` over the three blocks,
        with ``a_r = (1-z)(1-c²) hn r(1-r)``, ``a_z = (h-c) z(1-z)``, ``a_n = (1-z)(1-c²) r``.

        Returns:
            ``(B, T, n, n)``.
        """
        z, r, through_c, a_r, a_z = self._coefficients(traj)
        coefficients = torch.stack([a_r, a_z, through_c * r], dim=-2)
        return add_diagonal_(self.scaled_recurrent_blocks(coefficients), z)

    def analytic_input_jacobian(self, traj):
        """``∂h'/∂u = Σ_k diag(a_k) W_ik`` over the blocks r, z, n of ``weight_ih``, with
        ``a_r = (1-z)(1-c²) hn r(1-r)``, ``a_z = (h-c) z(1-z)``, ``a_n = (1-z)(1-c²)``
        (the input enters ``c`` outside ``r``).

        Returns:
            ``(B, T, n, m)``.
        """
        _, _, through_c, a_r, a_z = self._coefficients(traj)
        return self.scaled_input_blocks(torch.stack([a_r, a_z, through_c], dim=-2))
