"""The paper code's post-update gate term, reproducible on request (docs/fidelity.md#gate-term).

For a gated tanh cell ``h_t = (1-g_t) ⊙ h_{t-1} + g_t ⊙ φ(a_t)`` the gate-induced part of
the Jacobian is ``B_t = diag((φ(a_t) - h_{t-1}) ⊙ g_t(1-g_t)) W_rg``: the derivative of the
update with respect to the gate holds the state *before* it (docs/maths.md#jacobian-split).
The paper's code, in each of its three experiments, reads the state list one step late and
uses ``φ(a_t) - h_t``, the state after the update; then ``A + B`` is no longer the Jacobian.
``gate_term="updated"`` reproduces it; ``"previous"`` (the default) is the chain rule.
"""

from __future__ import annotations

from torch import Tensor

from ..cells.base import RecurrentCell, Trajectory, scale_rows
from .jacobians import jacobian_split

GATE_TERMS = ("previous", "updated")


def check_gate_term(cell: RecurrentCell, gate_term: str) -> None:
    """Refuse a ``gate_term`` that is not one of :data:`GATE_TERMS`, or ``"updated"`` for a
    cell without a gated tanh update (only ``scalar_gate`` and ``multi_gate`` have one)."""
    if gate_term not in GATE_TERMS or (gate_term == "updated"
                                       and not hasattr(cell, "gate_recurrent")):
        raise ValueError(f"gate_term must be one of {GATE_TERMS} (\"updated\" only for "
                         f"scalar_gate/multi_gate), got {gate_term!r} for {cell.name}")


def gate_split(cell: RecurrentCell, traj: Trajectory, gate_term: str = "previous"
               ) -> tuple[Tensor, Tensor]:
    """``(A, B)`` of :func:`~gatescope.jacobian_split`, or with the paper code's post-update
    gate term ``B_t = diag((φ(a_t) - h_t) ⊙ g_t(1-g_t)) W_rg`` (gated tanh cells only).

    Args:
        cell: the cell that unrolled ``traj``.
        traj: its trajectory.
        gate_term: ``"previous"`` (chain rule) or ``"updated"`` (the paper's code).

    Returns:
        ``A, B`` each ``(B, T, N, N)``, step ``t`` at index ``t - 1``.

    Raises:
        ValueError: for a bad ``gate_term`` (:func:`check_gate_term`), before any compute.
    """
    check_gate_term(cell, gate_term)
    A, B = jacobian_split(cell, traj)
    if gate_term == "previous":
        return A, B
    g, phi = traj.gates.detach(), traj.cache["phi"].detach()
    h_next = traj.states[:, 1:].detach()
    return A, scale_rows((phi - h_next) * g * (1 - g), cell.gate_recurrent.weight.detach())


def applicable_gate_term(cell: RecurrentCell, gate_term: str) -> str:
    """``gate_term`` for a cell with a gated tanh update, ``"previous"`` for any other (which
    has no such term, so an experiment's setting leaves it alone)."""
    return gate_term if hasattr(cell, "gate_recurrent") else "previous"
