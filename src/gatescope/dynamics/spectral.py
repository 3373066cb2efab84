"""Exact, batched spectral norms of many small matrices.

``‖M‖_2 = σ_1(M)``. One LAPACK eigensolve per matrix costs tens of microseconds, which
dominates when there are tens of thousands of matrices. Instead, per matrix:

1. ``Z = (MᴴM)^{2^s}`` by ``s`` squarings (``λ_max(Z) = σ_1^{2^{s+1}}``). Squaring widens
   the relative gaps of flat spectra, so few iterations are needed, and it is made of
   batched matmuls, which run at full speed; decaying spectra need none (``s = 0``).
2. Block subspace iteration on ``Z`` (``r`` columns, warm-startable) gives an orthonormal
   ``Q`` and the Ritz value ``θ = λ_max(H) ≤ λ_max(Z)``, ``H = QᵀZQ``.
3. A certificate: in the basis ``[Q, Q⊥]``, ``Z = [[H, Cᵀ], [C, W]]`` with
   ``‖C‖ ≤ ‖ZQ - QH‖_F`` and ``λ_max(W) ≤ tr W = tr Z - tr H =: τ``. When ``θ > τ`` the
   Schur complement gives ``λ_max(Z) - θ ≤ ‖C‖² / (θ - τ)``; below ``rtol·θ`` the Ritz
   value is certified.
4. What stays uncertified is checked by a Cholesky factorisation of
   ``θ(1 + rtol) I - Z`` (success proves ``λ_max(Z) < θ(1 + rtol)``), and what fails that
   gets a full symmetric eigensolve of ``MᵀM``.

So every value returned is exact to the tolerance whatever the spectrum; the cheap steps
only decide how much work a matrix needs.

Complex matrices are supported throughout: ``ᴴ`` is the conjugate transpose (``.mH``), the
Gram matrices are Hermitian, and the float64 steps run in complex128 for them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

#: Relative tolerance on ``σ_1`` of the certificate.
RTOL = 1e-6

#: Default subspace size of the certified iteration.
RANK = 4


def wide_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """complex128 when any of ``dtypes`` is complex, float64 otherwise."""
    return torch.complex128 if any(d.is_complex for d in dtypes) else torch.float64


def widen(x: Tensor) -> Tensor:
    """``x`` in float64, or in complex128 when it is complex (``.double()`` would drop the
    imaginary part)."""
    return x.to(wide_dtype(x.dtype))


def real_trace(Z: Tensor) -> Tensor:
    """``tr Z`` of each Hermitian ``(c, q, q)`` matrix: ``(c,)`` float64 (real by symmetry)."""
    return Z.diagonal(dim1=-2, dim2=-1).real.double().sum(-1)


def squared_singular_values(M: Tensor) -> Tensor:
    """All ``σ_i²`` of each matrix of ``(c, p, q)``, descending: ``(c, min(p, q))`` float64.

    One Hermitian eigensolve of the smaller Gram matrix per matrix (LAPACK); ``M`` may be
    real or complex.
    """
    gram = M @ M.mH if M.shape[-2] <= M.shape[-1] else M.mH @ M
    return torch.linalg.eigvalsh(gram).double().flip(-1).clamp_min(0)


def _start_basis(Z: Tensor, rank: int) -> Tensor:
    gen = torch.Generator(device="cpu").manual_seed(0)
    Q = torch.randn(Z.shape[-1], rank, generator=gen, dtype=torch.float64)
    return torch.linalg.qr(Q)[0].to(Z).expand(Z.shape[0], -1, -1)


def _ritz_certificate(Z: Tensor, Q: Tensor, rtol: float) -> tuple[Tensor, Tensor, Tensor]:
    """Ritz value ``θ`` of Hermitian ``Z`` on ``span Q``, whether it is certified, and ``ZQ``."""
    Y = Z @ Q
    H = Q.mH @ Y
    theta = torch.linalg.eigvalsh(widen((H + H.mH) / 2))[:, -1]
    coupling = torch.linalg.vector_norm(Y - Q @ H, dim=(-2, -1)).double() ** 2
    gap = theta - (real_trace(Z) - real_trace(H))
    return theta, (gap > 0) & (coupling <= rtol * theta * gap), Y


def _cholesky_certified(Z: Tensor, theta: Tensor, rtol: float) -> Tensor:
    """Whether ``θ(1 + rtol) I - Z`` is positive definite, i.e. ``λ_max(Z) < θ(1 + rtol)``."""
    shift = (theta * (1 + rtol)).unsqueeze(-1).expand(-1, Z.shape[-1])
    info = torch.linalg.cholesky_ex(torch.diag_embed(shift) - widen(Z)).info
    return (theta > 0) & (info == 0)


class TopSingular(NamedTuple):
    """Result of :func:`top_singular_values`.

    Attributes:
        values: ``(c,)`` float64, ``σ_1`` of each matrix.
        basis: ``(c, q, r)`` approximate top right singular subspaces (a warm start for a
            related batch).
        frobenius_sq: ``(c,)`` float64, ``‖M‖_F²`` (a by-product, for callers that keep
            products in range).
        iterated_share: the fraction certified by the subspace iteration alone (without
            the Cholesky check or an eigensolve): how well the number of squarings suited
            the batch.
    """

    values: Tensor
    basis: Tensor
    frobenius_sq: Tensor
    iterated_share: float


#: Range of ``‖M‖_F²`` within which the Gram matrix is formed without rescaling ``M``.
_GRAM_RANGE = (1e-30, 1e30)


def _gram(M: Tensor) -> tuple[Tensor, Tensor]:
    """``(MᴴM / f, f)`` with ``f = 1`` unless ``‖M‖_F²`` leaves :data:`_GRAM_RANGE`
    (then ``f = ‖M‖_F²``, computed in float64 from ``M`` itself, so nothing under- or
    overflows); ``f`` is ``(c,)`` float64."""
    Z = M.mH @ M
    factor = torch.ones(M.shape[0], dtype=torch.float64, device=M.device)
    trace = real_trace(Z)
    bad = ~((trace > _GRAM_RANGE[0]) & (trace < _GRAM_RANGE[1]))
    if bad.any():
        Mw = widen(M[bad])
        norm = torch.linalg.vector_norm(Mw, dim=(-2, -1))
        Mb = (Mw / torch.where(norm > 0, norm, 1.0).view(-1, 1, 1)).to(M)
        Z[bad] = Mb.mH @ Mb
        factor[bad] = norm**2
    return Z, factor


def top_singular_values(M: Tensor, start: Tensor | None = None, rank: int = RANK,
                        iterations: int = 3, squarings: int = 3, rtol: float = RTOL
                        ) -> TopSingular:
    """Exact largest singular values of a batch of matrices.

    Args:
        M: ``(c, p, q)`` batch of real or complex matrices.
        start: optional ``(c, q, rank)`` orthonormal basis to warm-start the subspace
            iteration (for example the basis returned for a related batch).
        rank: subspace size ``r`` (clipped to ``q``).
        iterations: most subspace-iteration steps before the Cholesky check; each step
            only touches the matrices not yet certified.
        squarings: ``s``, the number of squarings of ``MᴴM`` (each preceded by scaling to
            unit trace, so nothing overflows).
        rtol: relative tolerance on ``σ_1``.

    Returns:
        A :class:`TopSingular`.
    """
    rank = min(rank, M.shape[-1])
    Z, factor = _gram(M)
    trace = real_trace(Z)
    frobenius_sq = trace * factor
    if squarings:
        unit = torch.where(trace > 0, trace, 1.0)
        Z = Z / unit.to(Z).view(-1, 1, 1)
        factor = factor * unit
        for _ in range(squarings):
            Z = Z @ Z
    power = 2 ** (squarings + 1)  # λ_max(Z) = (σ_1² / factor)^(power / 2)
    ztol = rtol * power
    Q = (_start_basis(Z, rank) if start is None else start).clone()
    theta, ok, Y = _ritz_certificate(Z, Q, ztol)
    todo = (~ok).nonzero().squeeze(-1)
    Y = Y[todo]
    for _ in range(iterations - 1):
        if todo.numel() == 0:
            break
        Q[todo] = torch.linalg.qr(Y)[0]
        if 2 * todo.numel() > Z.shape[0]:  # most are left: a full pass beats gathering Z
            th, now_ok, Y = (x[todo] for x in _ritz_certificate(Z, Q, ztol))
        else:
            th, now_ok, Y = _ritz_certificate(Z[todo], Q[todo], ztol)
        theta[todo] = th
        todo, Y = todo[~now_ok], Y[~now_ok]
    sigma = (theta.clamp_min(0) ** (2 / power) * factor).sqrt()
    iterated_share = 1 - todo.numel() / max(1, M.shape[0])
    if todo.numel():
        failed = todo[~_cholesky_certified(Z[todo], theta[todo], ztol)]
        sigma[failed] = squared_singular_values(widen(M[failed]))[:, 0].sqrt()
    return TopSingular(sigma, Q, frobenius_sq, iterated_share)
