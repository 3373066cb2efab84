"""Shared layout of the diagonal recurrences (minGRU, minLSTM, RG-LRU): an inner recurrence
``s_t = r_t ⊙ s_{t-1} + v_t`` whose coefficients read only the input, with an optional output
projection ``y_t = W_out s_t`` kept at the front of the state (docs/maths.md#diagonal-recurrences).

State layout: ``[y_t (n); s_t (d)]`` with a projection, ``s_t`` (``n = d``) without one, so a
readout and the next layer of a stack (``state[..., :hidden_size]``) see the cell's output.
The retention acts on ``s``, the last ``d`` entries (:attr:`RecurrentCell.retention_size`).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from .base import RecurrentCell, Trajectory, eye_like
from .structure import JacobianStructure


def output_rows(inner_rows: Tensor, out_weight: Tensor | None,
                direct: Tensor | None = None) -> Tensor:
    """Rows of ``∂[y; s]/∂x`` from the rows of ``∂s/∂x`` when ``y = W_out s (+ D u)``.

    Args:
        inner_rows: ``(..., d, k)``, ``∂s_t/∂x``.
        out_weight: ``W_out`` ``(n, d)``, or ``None`` (no output rows: the state is ``s``).
        direct: ``(..., n, k)`` added to the output rows (a direct input term), or ``None``.

    Returns:
        ``(..., n + d, k)`` (``(..., d, k)`` without ``out_weight``).
    """
    if out_weight is None:
        return inner_rows
    top = out_weight @ inner_rows
    return torch.cat([top if direct is None else top + direct, inner_rows], -2)


def with_output_columns(inner_rows: Tensor, n_out: int) -> Tensor:
    """``∂state_t/∂state_{t-1}`` from ``∂state_t/∂s_{t-1}``: the output ``y_{t-1}`` (the first
    ``n_out`` state entries) does not feed the step, so its columns are zero.

    Args:
        inner_rows: ``(..., N, d)``.
        n_out: how many output entries lead the state (``0``: none).

    Returns:
        ``(..., N, n_out + d)``.
    """
    if n_out == 0:
        return inner_rows
    return torch.cat([inner_rows.new_zeros(*inner_rows.shape[:-1], n_out), inner_rows], -1)


def inner_width(hidden_size: int, expansion_factor: float, proj_out: bool | None
                ) -> tuple[int, bool]:
    """``(d, proj_out)`` from the options of minGRU_pytorch: ``d = int(n * expansion_factor)``
    and ``proj_out`` defaulting to ``expansion_factor != 1``.

    Raises:
        TypeError: for a non-numeric ``expansion_factor`` or a non-bool ``proj_out``.
        ValueError: for ``expansion_factor <= 0`` (or one giving ``d < 1``), or
            ``proj_out=False`` with ``expansion_factor != 1`` (the output would be ``d`` wide,
            not ``hidden_size``: pass ``hidden_size=d, expansion_factor=1`` instead).
    """
    if isinstance(expansion_factor, bool) or not isinstance(expansion_factor, int | float):
        raise TypeError(f"expansion_factor must be a number > 0, got {expansion_factor!r}")
    if not (math.isfinite(expansion_factor) and expansion_factor > 0):
        raise ValueError(f"expansion_factor must be a finite number > 0, got {expansion_factor}")
    d = int(hidden_size * expansion_factor)
    if d < 1:
        raise ValueError(f"expansion_factor={expansion_factor} gives an inner width "
                         f"int(hidden_size * expansion_factor) = {d}; it must be >= 1")
    if proj_out is not None and not isinstance(proj_out, bool):
        raise TypeError(f"proj_out must be True, False or None, got {proj_out!r}")
    proj = expansion_factor != 1 if proj_out is None else proj_out
    if not proj and d != hidden_size:
        raise ValueError(
            f"proj_out=False needs expansion_factor=1 (got {expansion_factor}): without an "
            f"output projection the output is the inner state of width {d}; build the cell "
            f"with hidden_size={d}, expansion_factor=1 instead")
    return d, proj


class DiagonalCell(RecurrentCell):
    """Base of the cells ``s_t = r_t ⊙ s_{t-1} + v_t`` whose ``r_t`` and ``v_t`` read only the
    input, with an optional output projection ``y_t = W_out s_t`` (``to_out``).

    Jacobian split: the gates read only ``u_t``, so holding them changes nothing:
    ``B_t = 0`` and ``J_t = A_t``; on ``s`` it is ``diag(r_t)``, and with a projection the
    output rows are ``W_out diag(r_t)`` (the columns of ``y_{t-1}`` are zero).

    A subclass sets :attr:`inner_size` and ``to_out`` (``nn.Linear(d, n, bias=False)`` or
    ``None``) in ``__init__``, implements :meth:`recurrence` and :meth:`inner_input_jacobian`.
    """

    #: Whether the cell has a learned, data-dependent update gate (docs/maths.md#cells).
    gated: ClassVar[bool] = True

    inner_size: int
    to_out: nn.Linear | None

    @property
    def output_size(self) -> int:
        """How many output entries lead the state: ``n`` with a projection, ``0`` without."""
        return 0 if self.to_out is None else self.hidden_size

    @property
    def state_size(self) -> int:
        return self.output_size + self.inner_size

    @property
    def retention_size(self) -> int:
        """The retention acts on the inner state ``s``, the last ``d`` entries."""
        return self.inner_size

    def recurrence(self, s: Tensor, u: Tensor, held: tuple[Tensor, ...] | None) -> dict:
        """One step of the inner recurrence: a dict with ``"inner"`` (``s_t``, ``(..., d)``),
        ``"held"``, ``"gate"``, ``"retention"`` and the intermediates to cache."""
        raise NotImplementedError

    def inner_input_jacobian(self, traj: Trajectory) -> Tensor:
        """``∂s_t/∂u_t``: ``(B, T, d, m)``."""
        raise NotImplementedError

    def inner_previous(self, traj: Trajectory) -> Tensor:
        """``s_{t-1}`` at index ``t - 1``: ``(B, T, d)``."""
        return traj.previous_states[..., self.output_size:]

    def compute(self, h, u, held=None):
        out = self.recurrence(h[..., self.output_size:], u, held)
        s = out.pop("inner")
        out["state"] = s if self.to_out is None else torch.cat([self.to_out(s), s], -1)
        return out

    def _weight_out(self) -> Tensor | None:
        return None if self.to_out is None else self.to_out.weight

    def analytic_jacobian(self, traj):
        """``J_t``: ``diag(r_t)`` on ``s``, ``W_out diag(r_t)`` on the output rows.

        Returns:
            ``(B, T, N, N)``.
        """
        inner = eye_like(traj.retention.expand(*traj.retention.shape[:-1], self.inner_size))
        return with_output_columns(output_rows(inner, self._weight_out()), self.output_size)

    def jacobian_structure(self, traj):
        """``Λ_t = diag(r_t)`` on ``s`` with the output map ``W_out`` (or none): the
        :class:`~gatescope.cells.structure.JacobianStructure` of :meth:`analytic_jacobian`."""
        r = traj.retention
        return JacobianStructure(r.expand(*r.shape[:-1], self.inner_size),
                                 output_map=self._weight_out())

    def analytic_jacobian_split(self, traj):
        """``(A, B) = (J, 0)``: the gates read only the input (see the class docstring)."""
        J = self.analytic_jacobian(traj)
        return J, torch.zeros_like(J)

    def analytic_input_jacobian(self, traj):
        """``∂state_t/∂u_t``: :meth:`inner_input_jacobian` with the output rows
        ``W_out ∂s_t/∂u_t`` in front; ``(B, T, N, m)``."""
        return output_rows(self.inner_input_jacobian(traj), self._weight_out())


def positive_candidate(x: Tensor) -> tuple[Tensor, Tensor]:
    """minGRU's positive candidate ``g(x) = x + 0.5`` for ``x >= 0``, ``σ(x)`` otherwise, and
    its derivative ``g'(x)`` (``1`` and ``σ(x)(1 - σ(x))``); each ``(..., d)``."""
    s = torch.sigmoid(x)
    positive = x >= 0
    return torch.where(positive, x + 0.5, s), torch.where(positive, torch.ones_like(s),
                                                           s * (1 - s))
