"""First-order (Fréchet) expansion of a transport product in the gate-induced part.

With ``J_j = A_j + B_j`` and a bookkeeping parameter ``ε``::

    F(ε) = ∏_j (A_j + ε B_j)            (later factors on the left)
    F(0) = ∏_j A_j
    L    = Σ_i (A_t ⋯ A_{i+1}) B_i (A_{i-1} ⋯ A_{k+1})      (= dF/dε at 0)
    E(ε) = ‖F(ε) - F(0) - ε L‖_F,  C_2(ε) = E(ε) / ε²

``E`` is second order in ``ε``, so its small-ε log-log slope is 2. ``L`` comes from the
product rule as a forward recursion (``P_j = A_j P_{j-1}``, ``L_j = A_j L_{j-1} + B_j
P_{j-1}``), not from a sum of ``ℓ`` separate products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..memory import check_dense, describe, tensor_bytes
from .spectral import top_singular_values
from .transport import ordered_product

#: The paper's grid: {1, 3} × 10^{-5..-1} and 1.
DEFAULT_EPS = tuple(sorted({m * 10.0**e for e in range(-5, 0) for m in (1, 3)} | {1.0}))


@dataclass
class Expansion:
    """Terms and errors of the first-order expansion over one window.

    Attributes:
        exact: ``(..., N, N)`` ``F(1) = ∏ J_j``.
        zeroth: ``(..., N, N)`` ``F(0) = ∏ A_j``.
        first: ``(..., N, N)`` ``L``.
        eps: ``(E,)`` the ``ε`` grid.
        error: ``(..., E)`` ``E(ε)``.
        remainder: ``(..., E)`` ``C_2(ε) = E(ε)/ε²``.
        slope: ``(...)`` least-squares slope of ``log E`` on ``log ε`` over the
            ``fit_points`` smallest ``ε``.
        ratios: ``(..., ℓ)`` ``ρ_j = ‖B_j‖_2 / ‖A_j‖_2`` per step of the window.
    """

    exact: Tensor
    zeroth: Tensor
    first: Tensor
    eps: Tensor
    error: Tensor
    remainder: Tensor
    slope: Tensor
    ratios: Tensor


def zeroth_and_first_order(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """``(∏ A_j, L)`` for stacks ``(..., ℓ, N, N)``."""
    P, L = A[..., 0, :, :], B[..., 0, :, :]
    for j in range(1, A.shape[-3]):
        P, L = A[..., j, :, :] @ P, A[..., j, :, :] @ L + B[..., j, :, :] @ P
    return P, L


def log_log_slope(x: Tensor, y: Tensor) -> Tensor:
    """Least-squares slope of ``log y`` on ``log x`` along the last dimension."""
    lx, ly = x.log(), y.log()
    lx = lx - lx.mean(-1, keepdim=True)
    return (lx * (ly - ly.mean(-1, keepdim=True))).sum(-1) / (lx**2).sum(-1)


def first_order_expansion(A: Tensor, B: Tensor, eps=DEFAULT_EPS, fit_points: int = 5) -> Expansion:
    """Expand ``∏ (A_j + ε B_j)`` to first order and measure the truncation error.

    Args:
        A: ``(..., ℓ, N, N)`` time-scale parts of the window's Jacobians, in time order
            (e.g. ``A[:, k:t]`` from :func:`gatescope.jacobian_split` for the window
            ``k+1..t``).
        B: same shape, the gate-induced parts.
        eps: the ``ε`` grid (positive).
        fit_points: how many of the smallest ``ε`` the slope is fitted on.

    Returns:
        An :class:`Expansion`.

    Raises:
        DenseBudgetExceeded: before any compute, when the ``ε``-stack exceeds
            :func:`gatescope.dense_budget`.
    """
    if A.shape != B.shape or A.dim() < 3 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A and B must be equal stacks (..., l, N, N), got {A.shape}, {B.shape}")
    eps_t = torch.as_tensor(sorted(eps), dtype=A.dtype.to_real(), device=A.device)
    if (eps_t <= 0).any() or not 2 <= fit_points <= eps_t.numel():
        raise ValueError(f"eps must be positive and fit_points in [2, {eps_t.numel()}]")
    shape = (*A.shape[:-3], eps_t.numel(), *A.shape[-3:])
    # the ε-stack and its running product dominate; A + B for the exact product besides
    check_dense(2 * tensor_bytes(shape, A.element_size()),
                f"gs.first_order_expansion: the eps-stack A + eps*B of {describe(shape, A.dtype)}",
                "expand fewer windows at once (slice the leading dimensions of A and B) or "
                "pass a shorter eps grid")
    zeroth, first = zeroth_and_first_order(A, B)
    stacked = A.unsqueeze(-4) + eps_t.view(-1, 1, 1, 1) * B.unsqueeze(-4)  # (..., E, ℓ, N, N)
    F = ordered_product(stacked)
    error = torch.linalg.matrix_norm(
        F - zeroth.unsqueeze(-3) - eps_t.view(-1, 1, 1) * first.unsqueeze(-3)
    )
    ratios = _spectral_norms(B) / _spectral_norms(A)
    return Expansion(
        exact=ordered_product(A + B), zeroth=zeroth, first=first, eps=eps_t, error=error,
        remainder=error / eps_t**2,
        slope=log_log_slope(eps_t[:fit_points].expand_as(error[..., :fit_points]),
                            error[..., :fit_points]),
        ratios=ratios,
    )


def _spectral_norms(X: Tensor) -> Tensor:
    flat = X.reshape(-1, *X.shape[-2:])
    return top_singular_values(flat).values.to(X.real.dtype).reshape(X.shape[:-2])
