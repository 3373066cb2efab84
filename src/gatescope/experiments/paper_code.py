"""The paper code's known defects, reproducible on request (fidelity switches).

gatescope fixes these by default (docs/fidelity.md#switches); experiments call these functions
only when a
setting asks for the paper code's behaviour, so a report can say how much each one moves the
numbers.

* ``product_order="reversed"``: the code multiplies ``J_{k+1} ⋯ J_t`` (earlier factors on the
  left) instead of the chain-rule ``J_t ⋯ J_{k+1}``
  (:func:`gatescope.dynamics.transport.ordered_sensitivities`).
* ``gate_term="updated"``: the gate-induced part uses ``φ(a_t) - h_t`` (the state after the
  update) instead of ``φ(a_t) - h_{t-1}``.
* ``fixed_batch=True`` (§VII-B): training on one fixed batch instead of fresh batches.
"""

from __future__ import annotations

from torch import Tensor

from ..cells.base import RecurrentCell, Trajectory, scale_rows
from ..dynamics.jacobians import jacobian_split

GATE_TERMS = ("previous", "updated")


def gate_split(cell: RecurrentCell, traj: Trajectory, gate_term: str = "previous"
               ) -> tuple[Tensor, Tensor]:
    """``(A, B)`` of :func:`~gatescope.jacobian_split`, or with the paper code's post-update
    gate term ``B_t = diag((φ(a_t) - h_t) ⊙ g_t(1-g_t)) W_rg`` (gated tanh cells only)."""
    if gate_term not in GATE_TERMS or (gate_term == "updated"
                                       and not hasattr(cell, "gate_recurrent")):
        raise ValueError(f"gate_term must be one of {GATE_TERMS} (\"updated\" only for "
                         f"scalar_gate/multi_gate), got {gate_term!r} for {cell.name}")
    A, B = jacobian_split(cell, traj)  # after the check: bad settings fail before compute
    if gate_term == "previous":
        return A, B
    g, phi = traj.gates.detach(), traj.cache["phi"].detach()
    h_next = traj.states[:, 1:].detach()
    return A, scale_rows((phi - h_next) * g * (1 - g), cell.gate_recurrent.weight.detach())
