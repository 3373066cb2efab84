"""The paper code's known defects, reproducible on request (fidelity switches).

gatescope fixes these by default (docs/fidelity.md#switches); experiments call these functions
only when a
setting asks for the paper code's behaviour, so a report can say how much each one moves the
numbers.

* ``product_order="reversed"``: the code multiplies ``J_{k+1} ⋯ J_t`` (earlier factors on the
  left) instead of the chain-rule ``J_t ⋯ J_{k+1}``.
* ``gate_term="updated"``: the gate-induced part uses ``φ(a_t) - h_t`` (the state after the
  update) instead of ``φ(a_t) - h_{t-1}``.
* ``fixed_batch=True`` (§VII-B): training on one fixed batch instead of fresh batches.
"""

from __future__ import annotations

from torch import Tensor

from ..cells.base import RecurrentCell, Trajectory, scale_rows
from ..dynamics.jacobians import jacobian_split
from ..dynamics.transport import sensitivities

PRODUCT_ORDERS = ("chain", "reversed")
GATE_TERMS = ("previous", "updated")


def ordered_sensitivities(J: Tensor, order: str = "chain") -> Tensor:
    """:func:`~gatescope.sensitivities` of chain-rule or reversed products.

    The reversed product ``J_{k+1} ⋯ J_t`` is the chain-rule product of the time-reversed
    stack ``J'_s = J_{T+1-s}`` over the window ``(T-t, T-k]``, so
    ``S_rev[:, t, k] = S'[:, T-k, T-t]``.

    Returns:
        ``(B, T+1, T+1)`` as :func:`~gatescope.sensitivities`.
    """
    if order == "chain":
        return sensitivities(J)
    if order != "reversed":
        raise ValueError(f"product order must be one of {PRODUCT_ORDERS}, got {order!r}")
    return sensitivities(J.flip(1)).flip(1, 2).transpose(1, 2)


def gate_split(cell: RecurrentCell, traj: Trajectory, gate_term: str = "previous"
               ) -> tuple[Tensor, Tensor]:
    """``(A, B)`` of :func:`~gatescope.jacobian_split`, or with the paper code's post-update
    gate term ``B_t = diag((φ(a_t) - h_t) ⊙ g_t(1-g_t)) W_rg`` (gated tanh cells only)."""
    A, B = jacobian_split(cell, traj)
    if gate_term == "previous":
        return A, B
    if gate_term != "updated" or not hasattr(cell, "gate_recurrent"):
        raise ValueError(f"gate_term must be one of {GATE_TERMS} (\"updated\" only for "
                         f"scalar_gate/multi_gate), got {gate_term!r} for {cell.name}")
    g, phi = traj.gates.detach(), traj.cache["phi"].detach()
    h_next = traj.states[:, 1:].detach()
    return A, scale_rows((phi - h_next) * g * (1 - g), cell.gate_recurrent.weight.detach())
