"""Products with the one-step Jacobians ``J_t = ∂h_t/∂h_{t-1}`` that never form ``J``.

``J_t V`` is a forward-mode derivative (dual numbers, ``torch.autograd.forward_ad``) and
``J_tᴴ W`` a reverse-mode one (``torch.autograd.grad``) of the cell's one-step map
``h ↦ cell.step(h, u_t)`` at ``h_{t-1}``; the ``k`` columns of a block are folded in as ``k``
more points, so one call of the cell serves them all. (These are the products
``torch.func.jvp``/``vjp`` compute, at about half their per-call overhead.) Memory is that of the
vectors, ``O(B·T·N·k)``, not the ``O(B·T·N²)`` of :func:`gatescope.jacobians`
(docs/maths.md#matrix-free-transport).

A step past a sequence's length (``traj.step_mask`` false) holds the state, so its Jacobian
is the identity: the products leave those columns unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd import forward_ad

from ..cells.base import RecurrentCell, Trajectory
from .jacobians import check_trajectory

#: A product with every step's Jacobian: ``(B, T, N)`` or ``(B, T, N, k)`` in, same out.
StepProduct = Callable[[Tensor], Tensor]


def _check_vectors(name: str, V: Tensor, points: tuple[int, ...], N: int) -> None:
    """Refuse ``V`` that is neither ``(*points, N)`` nor ``(*points, N, k)``."""
    shape = tuple(V.shape)
    if shape[: len(points) + 1] != (*points, N) or V.dim() not in (len(points) + 1,
                                                                    len(points) + 2):
        raise ValueError(f"{name} must have shape {(*points, N)} or {(*points, N)} + (k,), "
                         f"got {shape}")


def _columns_as_points(h: Tensor, u: Tensor, V: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``h``, ``u`` and ``V`` with ``V``'s ``k`` columns folded in as points: a
    ``(*P, N, k)`` ``V`` becomes ``(*P, k, N)`` against ``h``, ``u`` repeated over ``k``
    (a ``(*P, N)`` ``V`` is returned as it is)."""
    if V.dim() == h.dim():
        return h, u, V
    k = V.shape[-1]
    return (h.unsqueeze(-2).expand(*h.shape[:-1], k, h.shape[-1]).contiguous(),
            u.unsqueeze(-2).expand(*u.shape[:-1], k, u.shape[-1]), V.mT)


def _unfold(out: Tensor, V: Tensor, h: Tensor) -> Tensor:
    """Undo :func:`_columns_as_points` on a result."""
    return out if V.dim() == h.dim() else out.mT


def _held(out: Tensor, V: Tensor, keep: Tensor | None) -> Tensor:
    """``out`` where the step is taken, ``V`` (the identity's product) where it is held."""
    if keep is None:
        return out
    mask = keep.reshape(*keep.shape, *([1] * (V.dim() - keep.dim())))
    return torch.where(mask, out, V)


def point_jvp(cell: RecurrentCell, h: Tensor, u: Tensor, V: Tensor,
              keep: Tensor | None = None) -> Tensor:
    """``J V`` at the points ``(h, u)``: the Jacobian of ``cell.step`` in ``h`` applied to ``V``
    by forward-mode differentiation (``k`` columns of ``V`` as ``k`` more points).

    Args:
        cell: the cell.
        h: ``(*P, N)`` previous states (any leading shape ``P``).
        u: ``(*P, m)`` inputs.
        V: ``(*P, N)`` or ``(*P, N, k)`` tangents.
        keep: optional ``(*P,)`` bool; where ``False`` the step is held (``J = I``).

    Returns:
        The shape of ``V``.
    """
    hp, up, Vp = _columns_as_points(h, u, V)
    with torch.no_grad(), forward_ad.dual_level():
        out = forward_ad.unpack_dual(cell.step(forward_ad.make_dual(hp, Vp), up)).tangent
    if out is None:  # the step does not depend on h
        out = torch.zeros_like(Vp)
    return _held(_unfold(out, V, h), V, keep)


def point_vjp(cell: RecurrentCell, h: Tensor, u: Tensor, W: Tensor,
              keep: Tensor | None = None) -> Tensor:
    """``Jᴴ W`` at the points ``(h, u)`` (the conjugate transpose for complex states), by
    reverse-mode differentiation (``k`` columns of ``W`` as ``k`` more points).

    Args:
        cell: the cell.
        h: ``(*P, N)`` previous states.
        u: ``(*P, m)`` inputs.
        W: ``(*P, N)`` or ``(*P, N, k)`` cotangents.
        keep: optional ``(*P,)`` bool; where ``False`` the step is held (``J = I``).

    Returns:
        The shape of ``W``.
    """
    hp, up, Wp = _columns_as_points(h, u, W)
    with torch.enable_grad():
        x = hp.detach().requires_grad_()
        (out,) = torch.autograd.grad(cell.step(x, up.detach()), x, Wp, allow_unused=True)
    if out is None:  # the step does not depend on h
        out = torch.zeros_like(Wp)
    return _held(_unfold(out, W, h), W, keep)


def _at_every_step(cell: RecurrentCell, traj: Trajectory, product, name: str) -> StepProduct:
    """``product`` (:func:`point_jvp` or :func:`point_vjp`) at every ``(h_{t-1}, u_t)`` of
    ``traj`` with its step mask, as a callable of the vectors (checked, called ``name``)."""
    check_trajectory(cell, traj)
    h, u, keep = traj.previous_states.detach(), traj.inputs.detach(), traj.step_mask

    def apply(V: Tensor) -> Tensor:
        _check_vectors(name, V, tuple(h.shape[:2]), h.shape[-1])
        return product(cell, h, u, V, keep)

    return apply


def step_jvp(cell: RecurrentCell, traj: Trajectory) -> StepProduct:
    """A function applying every step's Jacobian at once: ``V[:, t-1] ↦ J_t V[:, t-1]``.

    Args:
        cell: the cell that produced ``traj``.
        traj: its trajectory.

    Returns:
        A callable taking ``V`` of shape ``(B, T, N)`` or ``(B, T, N, k)`` and returning the
        same shape, step ``t`` at index ``t - 1`` (the identity past a sequence's length).

    Raises:
        ValueError: when ``traj`` was not made by ``cell``; the callable raises for a ``V``
            of another shape.
    """
    return _at_every_step(cell, traj, point_jvp, "V")


def step_vjp(cell: RecurrentCell, traj: Trajectory) -> StepProduct:
    """A function applying every step's conjugate-transposed Jacobian at once:
    ``W[:, t-1] ↦ J_tᴴ W[:, t-1]`` (``J_tᵀ`` for real states).

    Args:
        cell: the cell that produced ``traj``.
        traj: its trajectory.

    Returns:
        A callable taking ``W`` of shape ``(B, T, N)`` or ``(B, T, N, k)`` and returning the
        same shape (the identity past a sequence's length).

    Raises:
        ValueError: when ``traj`` was not made by ``cell``; the callable raises for a ``W``
            of another shape.
    """
    return _at_every_step(cell, traj, point_vjp, "W")
