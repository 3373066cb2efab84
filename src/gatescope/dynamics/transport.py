"""Transport ``M_{t,k} = J_t J_{t-1} ⋯ J_{k+1}`` and sensitivities ``S_{t,k} = ‖M_{t,k}‖_2``.

Later factors multiply on the **left** (chain-rule order); ``M_{t,t} = I``. ``J`` is the
``(B, T, N, N)`` stack of :func:`gatescope.jacobians` with ``J[:, t-1] = ∂h_t/∂h_{t-1}``;
it may be real or complex (norms use the conjugate transpose).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..memory import check_dense, describe, tensor_bytes
from .spectral import RTOL, top_singular_values

#: Elements of the products held at once by :func:`sensitivities` (bounds peak memory).
_PRODUCT_ELEMENTS = 2**23

#: Products are renormalised once ``‖M‖_F²`` leaves ``[x, 1/x]``.
_RENORMALISE_BELOW = 1e-12

#: Squarings of ``MᵀM`` used for the flat spectra of short lags (fewer for longer lags).
MAX_SQUARINGS = 3


#: Where all-pairs transport is too big: norms at sampled lags and start times.
SAMPLED_NORMS = ("gs.transport_norms(cell, traj, lags, starts) (matrix-free spectral norms at "
                 "sampled lags and start times)")


def check_sensitivities_budget(J: Tensor, what: str, copies_of_J: int = 0) -> None:
    """Refuse, before any compute, an all-pairs ``(B, T+1, T+1)`` float64 result (with the
    products held per chunk and ``copies_of_J`` copies of ``J``) over the dense budget."""
    Bsz, T, N = J.shape[0], J.shape[1], J.shape[-1]
    out = (Bsz, T + 1, T + 1)
    # the products of one chunk of start times, their Gram matrices and squarings
    products = 4 * min(_PRODUCT_ELEMENTS, Bsz * T * N * N) * J.element_size()
    nbytes = tensor_bytes(out, 8) + products + copies_of_J * J.numel() * J.element_size()
    check_dense(nbytes, f"{what}: S of {describe(out, torch.float64)}", SAMPLED_NORMS)


def ordered_product(factors: Tensor) -> Tensor:
    """``X_ℓ ⋯ X_2 X_1`` of a stack ``(..., ℓ, N, N)``, ``ℓ ≥ 1`` (later factors on the left,
    chain-rule order): ``(..., N, N)``.

    The product helper :func:`transport` and the first-order expansion
    (:mod:`gatescope.dynamics.expansion`) share.
    """
    out = factors[..., 0, :, :]
    for j in range(1, factors.shape[-3]):
        out = factors[..., j, :, :] @ out
    return out


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
    shape = (J.shape[0], *J.shape[-2:])
    check_dense(3 * tensor_bytes(shape, J.element_size()),
                f"gs.transport: M_{{t,k}} of {describe(shape, J.dtype)}", SAMPLED_NORMS)
    if t == k:
        return torch.eye(J.shape[-1], dtype=J.dtype, device=J.device).repeat(J.shape[0], 1, 1)
    return ordered_product(J[:, k:t]).clone()


def sensitivities(J: Tensor, rtol: float = RTOL, power_iterations: int | None = None,
                  generator: torch.Generator | None = None) -> Tensor:
    """Exact spectral norms of every transport product (or the paper code's estimate).

    Products are formed lag by lag (``M_{k+ℓ,k} = J_{k+ℓ} M_{k+ℓ-1,k}``, one batched matmul
    per lag), renormalised whenever their size drifts so long windows neither underflow nor
    overflow, and
    their norms computed exactly by :func:`~gatescope.dynamics.spectral.top_singular_values`,
    whose certified subspace iteration is warm-started from the previous lag (``M_{t,k}``
    and ``M_{t-1,k}`` share their input space) and whose number of squarings follows how
    flat the previous lag's spectra were. Start times are processed in chunks so peak
    memory stays bounded for long sequences.

    A product that becomes exactly zero (a saturated tanh step has ``J_t = 0``) stays zero:
    its norm and those of all longer products through it are ``0``.

    Args:
        J: ``(B, T, N, N)`` real (float32/float64) or complex (complex64/complex128) finite
            Jacobians, ``N ≥ 1``. An empty batch (``B = 0``) gives an empty result.
        rtol: relative tolerance of each norm.
        power_iterations: ``None`` for the exact norms; an int ``p ≥ 1`` for the paper
            code's estimate instead: ``p`` steps of ``v ← Mv/‖Mv‖`` from a Gaussian ``v``,
            then ``‖Mv‖`` (a lower bound of ``‖M‖_2``, docs/fidelity.md#power-iteration).
        generator: CPU generator of the starting vectors of ``power_iterations`` (``None``:
            one seeded with 0).

    Returns:
        ``(B, T+1, T+1)`` float64 with ``S[:, t, k] = ‖M_{t,k}‖_2`` for ``k ≤ t``
        (``S[:, t, t] = 1``) and NaN above the diagonal.

    Raises:
        ValueError: when ``J`` is not a ``(B, T, N, N)`` stack or contains NaN/Inf.
        TypeError: when ``J`` is neither floating point nor complex.
        DenseBudgetExceeded: before any compute, when ``S`` and the products held at once
            exceed :func:`gatescope.dense_budget` (use ``gs.transport_norms``).
    """
    _check_jacobians(J)
    _check_power_iterations(power_iterations)
    check_sensitivities_budget(J, "gs.sensitivities")
    if power_iterations is not None and generator is None:
        generator = torch.Generator().manual_seed(0)
    Bsz, T, N, _ = J.shape
    S = torch.full((Bsz, T + 1, T + 1), math.nan, dtype=torch.float64, device=J.device)
    S.diagonal(dim1=1, dim2=2).fill_(1.0)
    if Bsz == 0:
        return S
    tiny = torch.finfo(J.dtype).tiny  # the smallest normal number of J's (real) precision
    chunk = max(1, _PRODUCT_ELEMENTS // (Bsz * N * N))
    Jt = J.transpose(0, 1)  # (T, B, N, N) view: start times lead, so prefixes of P are views
    for k0 in range(0, T, chunk):
        k1 = min(k0 + chunk, T)
        P = Jt[k0:k1]  # P[i] = M_{k+1,k} for k = k0 + i, shape (count, B, N, N)
        log_scale = torch.zeros(k1 - k0, Bsz, dtype=torch.float64, device=J.device)
        norms = (_ExactNorms(rtol) if power_iterations is None
                 else _PowerIterationNorms(power_iterations, generator))
        for lag in range(1, T - k0 + 1):
            count = min(k1, T - lag + 1) - k0  # start times k with k + lag <= T
            if lag > 1:
                P = Jt[k0 + lag - 1 : k0 + lag - 1 + count] @ P[:count]
                log_scale = log_scale[:count]
            sigma, frobenius_sq = norms(P.flatten(0, 1), log_scale.flatten())
            ks = torch.arange(k0, k0 + count, device=J.device)
            S[:, ks + lag, ks] = (sigma.view(count, Bsz) * log_scale.exp()).T
            frobenius_sq = frobenius_sq.view(count, Bsz)
            if not ((frobenius_sq > _RENORMALISE_BELOW) & (frobenius_sq < 1 / _RENORMALISE_BELOW)
                    ).all():  # keep the products representable for the next lags
                # floored at J's own precision: a zero product must stay 0, not become 0/0
                norm = frobenius_sq.sqrt().clamp_min(tiny)
                P = P / norm.to(P.dtype).view(count, Bsz, 1, 1)
                log_scale = log_scale + norm.log()
    return S


class _ExactNorms:
    """Certified ``‖M‖_2`` of the products of one chunk of start times, lag after lag:
    :func:`~gatescope.dynamics.spectral.top_singular_values` warm-started from the previous
    lag's basis (``M_{t,k}`` and ``M_{t-1,k}`` share their input space), with as many
    squarings as the previous lag's spectra needed."""

    def __init__(self, rtol: float) -> None:
        self.rtol, self.basis, self.squarings = rtol, None, MAX_SQUARINGS

    def __call__(self, P: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
        """``(σ_1 (c,), ‖P‖_F² (c,))`` of ``P`` ``(c, N, N)``, the first ``c`` products of
        the previous call's (start times drop out from the end as the lag grows); the
        products' scale ``log_scale`` plays no part in exact norms."""
        basis = None if self.basis is None else self.basis[: P.shape[0]]
        sigma, self.basis, frobenius_sq, share = top_singular_values(
            P, basis, rtol=self.rtol, squarings=self.squarings)
        # spectra decay with the lag: square less while the iteration certifies nearly all
        if share > 0.95:
            self.squarings = max(0, self.squarings - 1)
        elif share < 0.5:
            self.squarings = min(MAX_SQUARINGS, self.squarings + 1)
        return sigma, frobenius_sq


class _PowerIterationNorms:
    """The paper code's estimate of ``‖M‖_2``: ``p`` steps of ``v ← Mv/(‖Mv‖ + 1e-12)`` from
    a fresh Gaussian ``v`` (normalised), then ``‖Mv‖``.

    The ``1e-12`` acts at the product's true scale, as in the code, which never renormalises:
    once ``‖M‖`` falls to ``1e-12`` and below (long lags of a contracting cell) each step
    shrinks ``v`` too, and the estimate falls far below the norm."""

    def __init__(self, iterations: int, generator: torch.Generator) -> None:
        self.iterations, self.generator = iterations, generator

    def __call__(self, P: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
        """``(estimate (c,), ‖P‖_F² (c,))`` of ``P`` ``(c, N, N)``, whose true scale is
        ``exp(log_scale)`` ``(c,)`` times its own."""
        v = torch.randn(P.shape[0], P.shape[-1], 1, generator=self.generator,
                        dtype=torch.float64).to(device=P.device, dtype=P.dtype)
        v = v / (torch.linalg.vector_norm(v, dim=1, keepdim=True) + 1e-12)
        # 1e-12 in P's units (inf when the true scale underflows: the estimate is then 0)
        eps = (1e-12 * torch.exp(-log_scale)).to(P.dtype).view(-1, 1, 1)
        for _ in range(self.iterations):
            v = P @ v
            v = v / (torch.linalg.vector_norm(v, dim=1, keepdim=True) + eps)
        sigma = torch.linalg.vector_norm(P @ v, dim=(1, 2)).double()
        return sigma, P.abs().square().sum((-2, -1)).double()


def _check_power_iterations(power_iterations) -> None:
    if power_iterations is not None and (isinstance(power_iterations, bool) or not isinstance(
            power_iterations, int) or power_iterations < 1):
        raise ValueError(f"power_iterations must be None (exact norms) or an int >= 1 (the "
                         f"paper's code: 5), got {power_iterations!r}")


#: Transport product orders: the chain rule, or the paper code's reversed products.
PRODUCT_ORDERS = ("chain", "reversed")


def chain_ordered(factors: Tensor, order: str = "chain") -> Tensor:
    """The stack whose chain-rule products are the products in ``order``.

    The reversed product ``X_1 X_2 ⋯ X_ℓ`` (earlier factors on the left) is the chain-rule
    product ``X'_ℓ ⋯ X'_1`` of the time-reversed stack ``X'_j = X_{ℓ+1-j}``; this is the one
    place the paper code's order is implemented (:func:`ordered_sensitivities` and the
    ``expansion`` experiment use it).

    Args:
        factors: ``(..., ℓ, N, N)`` in time order.
        order: one of :data:`PRODUCT_ORDERS`.

    Returns:
        ``factors`` itself for ``"chain"``, ``factors`` reversed in time for ``"reversed"``.
    """
    _check_order(order)
    return factors if order == "chain" else factors.flip(-3)


def ordered_sensitivities(J: Tensor, order: str = "chain",
                          power_iterations: int | None = None,
                          generator: torch.Generator | None = None) -> Tensor:
    """:func:`~gatescope.sensitivities` of chain-rule or reversed products.

    The reversed product ``J_{k+1} ⋯ J_t`` is the chain-rule product of the time-reversed
    stack ``J'_s = J_{T+1-s}`` (:func:`chain_ordered`) over the window ``(T-t, T-k]``, so
    ``S_rev[:, t, k] = S'[:, T-k, T-t]``.

    Returns:
        ``(B, T+1, T+1)`` as :func:`~gatescope.sensitivities`.
    """
    _check_order(order)
    _check_jacobians(J)
    _check_power_iterations(power_iterations)
    check_sensitivities_budget(J, "gs.ordered_sensitivities",
                               copies_of_J=int(order == "reversed"))
    S = sensitivities(chain_ordered(J, order), power_iterations=power_iterations,
                      generator=generator)
    return S if order == "chain" else S.flip(1, 2).transpose(1, 2)


def _check_order(order: str) -> None:
    if order not in PRODUCT_ORDERS:
        raise ValueError(f"product order must be one of {PRODUCT_ORDERS}, got {order!r}")


def _check_jacobians(J: Tensor) -> None:
    """Refuse, before any compute, what :func:`sensitivities` cannot give exact norms of."""
    if J.dim() != 4 or J.shape[-1] != J.shape[-2] or J.shape[-1] < 1:
        raise ValueError(f"J must be a (B, T, N, N) stack of Jacobians with N >= 1; "
                         f"got shape {tuple(J.shape)}")
    if not (J.is_floating_point() or J.is_complex()):
        raise TypeError(f"J must be a floating point or complex tensor (float32, float64, "
                        f"complex64, complex128); got {J.dtype}")
    # aminmax propagates NaN and keeps ±Inf, without a temporary the size of J
    lo, hi = torch.aminmax(torch.view_as_real(J) if J.is_complex() else J) if J.numel() else (0, 0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = (~torch.isfinite(J)).nonzero()[0].tolist()
        raise ValueError(f"J contains NaN/Inf (first at index {tuple(bad)}); spectral norms "
                         "need finite Jacobians: check the trajectory (e.g. an overflowing "
                         "input or state)")
