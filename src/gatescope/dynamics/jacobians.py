"""Per-step state Jacobians ``J_t = ∂h_t/∂h_{t-1}`` and their split ``J_t = A_t + B_t``.

All functions return ``(B, T, N, N)`` tensors with step ``t`` at index ``t - 1``:
``J[:, t-1] = ∂h_t/∂h_{t-1}``. The analytic path reads the cell's cached intermediates; the
``torch.func`` twin differentiates the cell's step with ``jacrev`` vectorised over batch and
time, and is what cells without a closed form fall back to (with a one-time warning).
Past a sequence's length (``traj.lengths``) every path gives ``J = A = I``, ``B = 0``: the
state is held there.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from ..cells.base import RecurrentCell, Trajectory
from ..memory import check_dense, describe, tensor_bytes

_warned: set[type] = set()


def check_trajectory(cell: RecurrentCell, traj: Trajectory) -> None:
    """Refuse a trajectory that ``cell`` did not make (another cell type, or other sizes),
    whose cached intermediates and states its Jacobians cannot read.

    Raises:
        ValueError: naming the trajectory's cell type or sizes and the cell's.
    """
    made_by = traj.cell_type
    if made_by is not None and made_by is not type(cell):
        raise ValueError(
            f"traj was made by a {made_by.__name__}, not by this {type(cell).__name__}: pass "
            f"the cell that unrolled it (traj = cell.unroll(u))"
        )
    sizes = (traj.states.shape[-1], traj.inputs.shape[-1])
    if sizes != (cell.state_size, cell.input_size):
        raise ValueError(
            f"traj has state size {sizes[0]} and input size {sizes[1]}, but the "
            f"{type(cell).__name__} has state_size={cell.state_size} and "
            f"input_size={cell.input_size}: pass the cell that unrolled it"
        )


#: Where the dense Jacobian stack is too big: the matrix-free path.
MATRIX_FREE = ("gs.transport_norms(cell, traj, lags) for transport norms (matrix-free), or "
               "gs.effective_rate_summary(..., chunk_size=) for effective rates; or pass a "
               "shorter or smaller batch")


def check_jacobian_budget(traj: Trajectory, what: str, copies: int = 1) -> None:
    """Refuse, before any compute, ``copies`` ``(B, T, N, N)`` stacks over the dense budget.

    Raises:
        DenseBudgetExceeded: naming ``what``, the stack's shape and dtype and the
            matrix-free alternative.
    """
    shape = (traj.batch_size, traj.seq_len, traj.states.shape[-1], traj.states.shape[-1])
    dtype = traj.states.dtype
    check_dense(copies * tensor_bytes(shape, dtype.itemsize),
                f"{what}: {copies} x (B, T, N, N) {describe(shape, dtype)}", MATRIX_FREE)


def _flat_steps(traj: Trajectory) -> tuple[Tensor, Tensor]:
    """``h_{t-1}`` and ``u_t`` flattened over ``(B, T)``: ``(B*T, N)``, ``(B*T, m)``."""
    h = traj.previous_states.detach()
    return h.reshape(-1, h.shape[-1]), traj.inputs.detach().reshape(-1, traj.inputs.shape[-1])


def _unflatten(J: Tensor, traj: Trajectory) -> Tensor:
    return J.reshape(traj.batch_size, traj.seq_len, *J.shape[-2:])


def held_past_lengths(J: Tensor, traj: Trajectory, value: float = 1.0) -> Tensor:
    """``J`` with ``value · I`` at the steps past each sequence's length.

    Past its length a sequence's state is held (``h_t = h_{t-1}``, packed-sequence
    semantics), so its step Jacobian is the identity (``value = 1``; a split's ``B`` takes
    ``value = 0``), whatever the cell would compute there.
    """
    if traj.lengths is None:
        return J
    beyond = ~traj.step_mask.to(J.device)
    if bool(beyond.any()):
        eye = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device) * value
        J = torch.where(beyond[..., None, None], eye, J)
    return J


def jacobians_autograd(cell: RecurrentCell, traj: Trajectory) -> Tensor:
    """``J`` by ``torch.func.jacrev`` of ``cell.step``, vectorised over batch and time.

    Returns:
        ``(B, T, N, N)``.
    """
    check_trajectory(cell, traj)
    check_jacobian_budget(traj, "gs.jacobians_autograd")
    h, u = _flat_steps(traj)
    return held_past_lengths(_unflatten(vmap(jacrev(cell.step))(h, u), traj), traj)


def jacobian_split_autograd(cell: RecurrentCell, traj: Trajectory) -> tuple[Tensor, Tensor]:
    """``(A, B)`` by ``torch.func``: ``A`` differentiates the step with every gate held at
    the value it took (``compute(..., held=...)``), ``B = J - A``.
    """
    check_trajectory(cell, traj)
    check_jacobian_budget(traj, "gs.jacobian_split_autograd", copies=3)
    h, u = _flat_steps(traj)

    def held_step(h_, u_, held):
        return cell.compute(h_, u_, held=held)["state"]

    def per_step(h_, u_):
        held = tuple(x.detach() for x in cell.compute(h_, u_)["held"])
        return jacrev(cell.step)(h_, u_), jacrev(held_step)(h_, u_, held)

    J, A = vmap(per_step)(h, u)
    return (held_past_lengths(_unflatten(A, traj), traj),
            held_past_lengths(_unflatten(J - A, traj), traj, 0.0))


def _analytic_or_fallback(cell: RecurrentCell, traj: Trajectory, analytic, fallback,
                          what: str, copies: int):
    """``analytic(traj)`` without autograd, or, when the cell has no closed form (``None``),
    ``fallback(cell, traj)`` by ``torch.func`` with a one-time warning per cell class.

    ``copies`` ``(B, T, N, N)`` stacks are checked against the dense budget first
    (:func:`check_jacobian_budget`)."""
    check_trajectory(cell, traj)
    check_jacobian_budget(traj, what, copies)
    with torch.no_grad():
        result = analytic(traj.detach())
    if isinstance(result, tuple):
        return held_past_lengths(result[0], traj), held_past_lengths(result[1], traj, 0.0)
    if result is not None:
        return held_past_lengths(result, traj)
    if type(cell) not in _warned:
        _warned.add(type(cell))
        warnings.warn(
            f"{type(cell).__name__} has no closed form for {analytic.__name__}; using "
            "torch.func (slower)",
            stacklevel=3,
        )
    return fallback(cell, traj)


def jacobian_split(cell: RecurrentCell, traj: Trajectory) -> tuple[Tensor, Tensor]:
    """The time-scale part ``A`` (gates held) and the gate-induced part ``B`` of ``J``.

    Args:
        cell: the cell that produced ``traj``.
        traj: its trajectory (``cell.unroll(u)``).

    Returns:
        ``(A, B)``, each ``(B, T, N, N)``, with ``A + B == J``.

    Raises:
        DenseBudgetExceeded: before any compute, when the two stacks exceed
            :func:`gatescope.dense_budget`.
    """
    return _analytic_or_fallback(cell, traj, cell.analytic_jacobian_split,
                                 jacobian_split_autograd, "gs.jacobian_split", copies=2)


def jacobians(cell: RecurrentCell, traj: Trajectory) -> Tensor:
    """``J[:, t-1] = ∂h_t/∂h_{t-1}``: ``(B, T, N, N)``, analytic where the cell has it; the
    identity at steps past a sequence's length (:func:`held_past_lengths`).

    Raises:
        DenseBudgetExceeded: before any compute, when the stack exceeds
            :func:`gatescope.dense_budget` (use the matrix-free ``gs.transport_norms``).
    """
    return _analytic_or_fallback(cell, traj, cell.analytic_jacobian, jacobians_autograd,
                                 "gs.jacobians", copies=1)
