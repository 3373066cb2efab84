"""Finite-time Lyapunov exponents by the QR method on Jacobian-vector products, and the
zeroth-order prediction of them from the retention (docs/maths.md#lyapunov-exponents).

``Q_t R_t = J_t Q_{t-1}`` (``Q`` ``N × k`` orthonormal, ``R`` upper triangular); the ``q``-th
exponent is the mean of ``log |R_t[q, q]|`` over the steps after ``discard``. ``J_t Q`` is
:func:`~gatescope.dynamics.step_products.point_jvp` of ``k`` columns, so no Jacobian is formed.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

from ..cells.base import RecurrentCell, Trajectory
from .jacobians import check_trajectory
from .spectral import wide_dtype
from .step_products import point_jvp


def _int_in(name: str, value, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``; a clear error naming ``name`` otherwise."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int in [{low}, {high}], got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {number}")
    return number


def _start_basis(N: int, k: int, dtype: torch.dtype, generator: torch.Generator | None
                 ) -> Tensor:
    """A random orthonormal ``(N, k)`` basis (fixed seed without ``generator``)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    return torch.linalg.qr(torch.randn(N, k, generator=gen, dtype=dtype))[0]


def lyapunov_exponents(cell: RecurrentCell, traj: Trajectory, k: int, *, discard: int = 0,
                       reorthonormalize_every: int = 1,
                       generator: torch.Generator | None = None) -> Tensor:
    """The ``k`` largest finite-time Lyapunov exponents of each example's trajectory.

    The QR method: ``Q_0`` is a random orthonormal ``N × k`` basis (the same for every
    example); each step applies ``J_t`` to it (one batched JVP of ``k`` columns), and every
    ``reorthonormalize_every`` steps (and at step ``discard``) ``Q R = J_t ⋯ Q`` is factored,
    ``log |diag R|`` accumulated for the steps after ``discard``. Past a sequence's length
    the state is held (``J = I``) and those steps are not counted.

    Args:
        cell: the cell that produced ``traj``.
        traj: its trajectory (``T`` steps).
        k: how many exponents, ``1 ≤ k ≤ N``.
        discard: steps ``1..discard`` only align ``Q`` (``0 ≤ discard < T``).
        reorthonormalize_every: steps between QR factorisations (``≥ 1``); more is cheaper
            but products of many steps may under/overflow or lose the smaller exponents.
        generator: for ``Q_0`` (default: a fixed seed, so calls repeat).

    Returns:
        ``(B, k)`` float64 exponents (per step, natural log), sorted descending; ``-inf``
        where a product collapses exactly (a zero Jacobian), NaN for an example with no
        counted step (length ``≤ discard``).

    Raises:
        ValueError: for a trajectory of another cell or ``k``/``discard``/
            ``reorthonormalize_every`` out of range, before any compute.
        TypeError: when one of those is not an int.
    """
    check_trajectory(cell, traj)
    T, N = traj.seq_len, traj.states.shape[-1]
    k = _int_in("k", k, 1, N)
    discard = _int_in("discard", discard, 0, T - 1)
    every = _int_in("reorthonormalize_every", reorthonormalize_every, 1, T)

    h, u, keep = traj.previous_states.detach(), traj.inputs.detach(), traj.step_mask
    state_dtype, wide = traj.states.dtype, wide_dtype(traj.states.dtype)
    Q = _start_basis(N, k, wide, generator).to(h.device).expand(traj.batch_size, N, k)
    logs = torch.zeros(traj.batch_size, k, dtype=torch.float64, device=h.device)
    for t in range(1, T + 1):
        Q = point_jvp(cell, h[:, t - 1], u[:, t - 1], Q.to(state_dtype), keep[:, t - 1]).to(wide)
        if t % every == 0 or t in (discard, T):
            Q, R = torch.linalg.qr(Q)
            if t > discard:
                logs = logs + R.diagonal(dim1=-2, dim2=-1).abs().double().log()
    counted = keep[:, discard:].sum(-1).to(torch.float64)
    exponents = logs / counted.unsqueeze(-1)  # 0/0 = NaN for an example with no counted step
    return exponents.sort(dim=-1, descending=True).values


def gate_time_scale_exponents(traj: Trajectory, discard: int = 0) -> Tensor:
    """The zeroth-order prediction of the Lyapunov exponents: ``E_t log r_t`` per retention
    channel, sorted descending.

    ``J_t = diag(r_t) + (terms through the recurrent weights of the candidate and the
    gates)``; where those terms vanish, ``J_t = diag(r_t)`` and the exponents are exactly these
    time averages (docs/maths.md#lyapunov-exponents). The mean runs over the steps after
    ``discard`` within each sequence's length.

    Args:
        traj: a trajectory (``traj.retention`` ``(B, T, R)``, ``R = n`` or ``1`` for a
            retention shared by all neurons; an LSTM's retention is its forget gate, acting
            on ``c``).
        discard: steps ``1..discard`` are left out (``0 ≤ discard < T``).

    Returns:
        ``(B, R)`` float64, ``-inf`` for a zero retention (``plain``).
    """
    discard = _int_in("discard", discard, 0, traj.seq_len - 1)
    keep = traj.step_mask[:, discard:].unsqueeze(-1)
    logs = traj.retention.detach()[:, discard:].abs().double().log()
    total = torch.where(keep, logs, 0).sum(1)
    means = total / keep.sum(1).to(torch.float64)
    return means.sort(dim=-1, descending=True).values
