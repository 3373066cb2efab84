"""The normalisations residual blocks put before their mixer, and their Jacobians
(docs/maths.md#residual-blocks).

``"rms"`` is ``torch.nn.RMSNorm`` (what ``minGRU_pytorch``'s language models use; mambapy's
``RMSNorm`` computes the same, ``x · (mean(x²) + ε)^{-1/2} · w``), ``"layer"`` is
``torch.nn.LayerNorm``, ``None`` no normalisation (``nn.Identity``). With ``x̂`` the
normalised input and ``r = (mean(c²) + ε)^{-1/2}`` (``c = x``, or ``x - mean(x)`` for
``"layer"``), both have

    ∂norm(x)/∂x = diag(w) · r · (I - P - x̂ x̂ᵀ / n)

with ``P = 0`` for ``"rms"`` and ``P = 11ᵀ / n`` for ``"layer"``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: The normalisations a residual block offers.
NORMS = ("rms", "layer", None)


def make_norm(kind: str | None, size: int, eps: float | None, affine: bool) -> nn.Module:
    """The ``kind`` normalisation over the last dimension of width ``size``.

    Args:
        kind: one of :data:`NORMS`.
        size: ``n``.
        eps: ``ε``; ``None`` takes torch's default (``torch.finfo(dtype).eps`` for RMSNorm,
            ``1e-5`` for LayerNorm).
        affine: whether the norm has a learned gain ``weight`` (and, for ``"layer"``, a
            ``bias``).

    Raises:
        ValueError: for another ``kind`` (naming the allowed values) or ``eps <= 0``.
    """
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
    if eps is not None and not eps > 0:
        raise ValueError(f"eps must be > 0 or None (torch's default), got {eps!r}")
    if kind is None:
        return nn.Identity()
    if kind == "rms":
        return nn.RMSNorm(size, eps=eps, elementwise_affine=affine)
    return nn.LayerNorm(size, eps=1e-5 if eps is None else eps, elementwise_affine=affine)


def norm_jacobian(norm: nn.Module, x: Tensor) -> Tensor:
    """``∂norm(x)/∂x`` (see the module docstring): ``(..., n) -> (..., n, n)``.

    Args:
        norm: a module :func:`make_norm` built.
        x: ``(..., n)`` the norm's input.
    """
    n = x.shape[-1]
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    if isinstance(norm, nn.Identity):
        return eye.expand(*x.shape, n)
    centred = isinstance(norm, nn.LayerNorm)
    c = x - x.mean(-1, keepdim=True) if centred else x
    eps = torch.finfo(x.dtype).eps if norm.eps is None else norm.eps
    r = torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps).unsqueeze(-1)  # (..., 1, 1)
    xhat = c * r.squeeze(-1)
    J = r * (eye - (1 / n if centred else 0) - xhat.unsqueeze(-1) * xhat.unsqueeze(-2) / n)
    return J if norm.weight is None else norm.weight.unsqueeze(-1) * J
