"""Transport ``M_{t,k} = J_t J_{t-1} ⋯ J_{k+1}`` and sensitivities ``S_{t,k} = ‖M_{t,k}‖_2``.

Later factors multiply on the **left** (chain-rule order); ``M_{t,t} = I``. ``J`` is the
``(B, T, N, N)`` stack of :func:`gatescope.jacobians` with ``J[:, t-1] = ∂h_t/∂h_{t-1}``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .spectral import RTOL, top_singular_values

#: Elements of the products held at once by :func:`sensitivities` (bounds peak memory).
_PRODUCT_ELEMENTS = 2**23


def transport(J: Tensor, t: int, k: int) -> Tensor:
    """``M_{t,k} = J_t ⋯ J_{k+1}``: ``(B, N, N)``; the identity when ``t == k``.

    Args:
        J: ``(B, T, N, N)``.
        t: later time, ``0 ≤ k ≤ t ≤ T``.
        k: earlier time.
    """
    T = J.shape[1]
    if not 0 <= k <= t <= T:
        raise ValueError(f"need 0 <= k <= t <= T={T}, got t={t}, k={k}")
    M = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device).expand(J.shape[0], -1, -1)
    for s in range(k + 1, t + 1):
        M = J[:, s - 1] @ M
    return M.clone()


def sensitivities(J: Tensor, rtol: float = RTOL) -> Tensor:
    """Exact spectral norms of every transport product.

    Products are formed lag by lag (``M_{k+ℓ,k} = J_{k+ℓ} M_{k+ℓ-1,k}``, one batched matmul
    per lag), renormalised at each lag so long windows neither underflow nor overflow, and
    their norms computed exactly by :func:`~gatescope.dynamics.spectral.top_singular_values`,
    whose certified subspace iteration is warm-started from the previous lag (``M_{t,k}``
    and ``M_{t-1,k}`` share their input space). Start times are processed in chunks so peak
    memory stays bounded for long sequences.

    Args:
        J: ``(B, T, N, N)``.
        rtol: relative tolerance of each norm.

    Returns:
        ``(B, T+1, T+1)`` float64 with ``S[:, t, k] = ‖M_{t,k}‖_2`` for ``k ≤ t``
        (``S[:, t, t] = 1``) and NaN above the diagonal.
    """
    Bsz, T, N, _ = J.shape
    S = torch.full((Bsz, T + 1, T + 1), math.nan, dtype=torch.float64, device=J.device)
    S.diagonal(dim1=1, dim2=2).fill_(1.0)
    chunk = max(1, _PRODUCT_ELEMENTS // (Bsz * N * N))
    for k0 in range(0, T, chunk):
        k1 = min(k0 + chunk, T)
        P = J[:, k0:k1]  # M_{k+1,k} for k = k0..k1-1
        log_scale = torch.zeros(Bsz, k1 - k0, dtype=torch.float64, device=J.device)
        basis = None
        for lag in range(1, T - k0 + 1):
            count = min(k1, T - lag + 1) - k0  # start times k with k + lag <= T
            if lag > 1:
                P = J[:, k0 + lag - 1 : k0 + lag - 1 + count] @ P[:, :count]
                log_scale = log_scale[:, :count]
                basis = basis.reshape(Bsz, -1, *basis.shape[-2:])[:, :count].flatten(0, 1)
            scale = torch.linalg.vector_norm(P, dim=(-2, -1), keepdim=True)
            P = P / torch.where(scale > 0, scale, torch.ones_like(scale))
            log_scale = log_scale + torch.log(scale.squeeze(-1).squeeze(-1).double())
            sigma, basis = top_singular_values(P.flatten(0, 1), basis, rtol=rtol)
            ks = torch.arange(k0, k0 + count, device=J.device)
            S[:, ks + lag, ks] = sigma.reshape(Bsz, count) * log_scale.exp()
    return S
