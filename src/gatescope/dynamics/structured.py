"""Transport of structured Jacobians: ``Φ(t, k) = Λ_t ⋯ Λ_{k+1}`` of a diagonal or
2×2-rotation-block recurrence by cumulative log-sums, in ``O(B·T·N)`` without a dense
``N × N`` matrix (docs/maths.md#structured-jacobians).

With ``Λ_j = diag(m_j)`` (block 1) or ``blockdiag(m_{j,q} R(θ_{j,q}))`` (block 2), and since
``m R(θ)`` commute, the window ``(k, t]`` gives per channel

    |Φ_q(t, k)| = exp(L_{t,q} - L_{k,q}),    L_{t,q} = Σ_{j≤t} log m_{j,q}
    angle Φ_q(t, k) = Θ_{t,q} - Θ_{k,q},     Θ_{t,q} = Σ_{j≤t} θ_{j,q}

(a step with ``m = 0`` is counted apart and zeroes every window through it). With output rows
``C`` the transport of the full state is ``M_{t,k} = [[0, C Φ], [0, Φ]]`` for ``t > k``
(``I`` for ``t = k``), whose norm is ``‖[C; I] Φ‖_2``: ``max_q |Φ_q|`` without ``C``, and with
it ``max_q |Φ_q|`` times the top singular value of ``[C; I] Φ/max_q|Φ_q|`` by Lanczos on the
inner state. The factors commute, so the paper code's reversed products are the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cells.base import RecurrentCell, Trajectory
from ..cells.structure import JacobianStructure
from .jacobians import check_trajectory
from .matrix_free import _check_times, _int_list, lanczos_top
from .spectral import RTOL

#: Float64 elements of window tensors one chunk holds: cache-sized, since each chunk is a
#: few elementwise passes (and it bounds peak memory).
CHUNK_ELEMENTS = 2**18


def structure_of(cell: RecurrentCell, traj: Trajectory) -> JacobianStructure | None:
    """``cell.jacobian_structure(traj)`` checked against the cell, detached (in its own dtype:
    :class:`CumulativeLogs` sums in float64 one chunk at a time), with the steps past each
    sequence's length held (``m = 1``, ``θ = 0``); ``None`` when the cell declares no
    structure (a :class:`~gatescope.StackedCell` never does: its layers couple).

    Raises:
        ValueError: for a trajectory of another cell, or a structure whose sizes do not
            match the cell's ``retention_size`` and ``state_size``.
    """
    check_trajectory(cell, traj)
    s = cell.jacobian_structure(traj)
    if s is None:
        return None
    shape = (traj.batch_size, traj.seq_len)
    if (tuple(s.modulus.shape[:2]) != shape or s.inner_size != cell.retention_size
            or s.output_size + s.inner_size != cell.state_size):
        raise ValueError(
            f"{type(cell).__name__}.jacobian_structure gives modulus {tuple(s.modulus.shape)}, "
            f"block {s.block}, {s.output_size} output rows; the cell needs (B, T)={shape}, "
            f"block·K = retention_size={cell.retention_size} and output rows + block·K = "
            f"state_size={cell.state_size}")
    modulus = s.modulus.detach()
    angle = None if s.angle is None else s.angle.detach()
    if traj.lengths is not None:
        beyond = ~traj.step_mask.to(modulus.device).unsqueeze(-1)
        modulus = modulus.masked_fill(beyond, 1.0)
        angle = None if angle is None else angle.masked_fill(beyond, 0.0)
    out = None if s.output_map is None else s.output_map.detach().double()
    return JacobianStructure(modulus, angle, out)


def _prefix(x: Tensor) -> Tensor:
    """``(B, T, K) -> (B, T+1, K)`` sums over steps ``1..t`` at index ``t`` (0 at ``t = 0``)."""
    out = x.new_zeros(x.shape[0], x.shape[1] + 1, x.shape[2])
    torch.cumsum(x, 1, out=out[:, 1:])
    return out


@dataclass(frozen=True)
class CumulativeLogs:
    """Prefix sums of a structure over steps ``1..t`` at index ``t``, each ``(B, T+1, K)``
    float64, from which any window's product follows by one subtraction.

    Attributes:
        log_modulus: ``L_t = Σ log m_j`` over the steps with ``m_j > 0``.
        zeros: how many steps had ``m_j = 0``, or ``None`` when none did.
        angle: ``Θ_t = Σ θ_j`` (block 2), or ``None``.
        cos_defect: ``Σ (cos θ_j - 1)`` (block 2), or ``None``: the first-order rates' sum.
        structure: the structure summed.
    """

    log_modulus: Tensor
    zeros: Tensor | None
    angle: Tensor | None
    cos_defect: Tensor | None
    structure: JacobianStructure

    @classmethod
    def of(cls, s: JacobianStructure) -> CumulativeLogs:
        log_m = s.modulus.to(torch.float64, copy=True)
        zero = log_m == 0
        any_zero = bool(zero.any())
        if any_zero:
            log_m.masked_fill_(zero, 1.0)
        log_m.log_()
        angle = None if s.angle is None else s.angle.double()
        return cls(_prefix(log_m), _prefix(zero.double()) if any_zero else None,
                   None if angle is None else _prefix(angle),
                   None if angle is None else _prefix(-2 * torch.sin(angle / 2) ** 2), s)

    def window(self, ends: Tensor, starts: Tensor, rows: slice = slice(None),
               channels: slice = slice(None)) -> tuple[Tensor, Tensor | None]:
        """``log |Φ_q(t, k)|`` (``-inf`` through a zero step) and the angle of ``Φ_q(t, k)``
        (``None`` for block 1) for the windows ``(k, t]``.

        Args:
            ends, starts: ``t`` and ``k`` (``0 ≤ k ≤ t ≤ T``) as integer index tensors
                broadcastable to one shape ``W``, or as slices of equal length (no gather).
            rows, channels: the examples and channels wanted.

        Returns:
            Each ``(b, *W, K')`` float64.
        """
        def diff(x: Tensor) -> Tensor:
            x = x[rows, :, channels]
            return x[:, ends] - x[:, starts]

        log_m = diff(self.log_modulus)
        if self.zeros is not None:
            log_m = log_m.masked_fill(diff(self.zeros) > 0, -math.inf)
        return log_m, None if self.angle is None else diff(self.angle)

    def rates(self, lag: int, order: int, ends: slice | None = None) -> Tensor:
        """The effective rates at ``lag`` for the end times ``ends`` (a slice within
        ``lag..T``; default all of them): ``(B, len(ends), b·K)`` float64.

        ``μ⁰ = |Φ(t, t-ℓ)|`` (the product of the retention ``m``) and, at order 1,
        ``μ = μ⁰ (1 + Σ_j (cos θ_j - 1))``: ``diag(Λ_j) - m_j = m_j (cos θ_j - 1)``, so
        ``Σ_j (∏_{i≠j} m_i) d_j = μ⁰ Σ_j (cos θ_j - 1)`` exactly (block 1: ``μ = μ⁰``).
        """
        T = self.log_modulus.shape[1] - 1
        ends = slice(lag, T + 1) if ends is None else ends
        starts = slice(ends.start - lag, ends.stop - lag)
        log_m, _ = self.window(ends, starts)
        mu = log_m.exp_()
        if order == 1 and self.cos_defect is not None:
            x = self.cos_defect
            mu = mu * (1 + x[:, ends] - x[:, starts])
        return mu if self.angle is None else mu.repeat_interleave(2, -1)


def _rotate(x: Tensor, angle: Tensor) -> Tensor:
    """``R(θ_q) x_q`` for the interleaved pairs of ``x`` ``(..., 2K)``, ``angle`` ``(..., K)``."""
    x = x.unflatten(-1, (-1, 2))
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([c * x[..., 0] - s * x[..., 1], s * x[..., 0] + c * x[..., 1]],
                       -1).flatten(-2)


def _output_norms(scale: Tensor, angle: Tensor | None, C: Tensor, rtol: float) -> Tensor:
    """``‖[C; I] Φ̂‖_2`` per pair, ``Φ̂`` given by ``scale`` ``(B, P, K)`` (``≤ 1``) and
    ``angle``: Lanczos on ``Φ̂ᵀ (I + CᵀC) Φ̂`` over the inner state, run to the Krylov space's
    exhaustion at most (so exact); ``(B, P)`` float64."""
    block = 1 if angle is None else 2

    def apply(x: Tensor, sign: int) -> Tensor:
        if block == 1:
            return x * scale
        return _rotate(x, sign * angle) * scale.repeat_interleave(2, -1)

    def gram(X: Tensor, running: Tensor) -> Tensor:
        w = apply(X, 1)
        return apply(w + (w @ C.T) @ C, -1)

    gen = torch.Generator().manual_seed(0)
    start = torch.randn(*scale.shape[:2], C.shape[1], generator=gen, dtype=torch.float64)
    start = start.to(scale.device)
    start = start / torch.linalg.vector_norm(start, dim=-1, keepdim=True)
    return lanczos_top(gram, start, rtol, C.shape[1])["theta"].sqrt()


def start_sensitivities(structure: JacobianStructure, starts: Sequence[int],
                        rtol: float = RTOL, lengths: Tensor | None = None) -> Tensor:
    """``‖M_{k+ℓ,k}‖_2`` for the start times ``k ∈ starts`` at every lag ``ℓ = 0..T-k``.

    Args:
        structure: from :func:`structure_of` (held past the lengths).
        starts: ``(S,)`` ints ``0 ≤ k ≤ T``.
        rtol: the Lanczos tolerance with output rows (the iteration stops at the Krylov
            space's exhaustion at the latest, where the value is exact).
        lengths: ``(B,)`` valid lengths, or ``None``: a window starting at or past a
            sequence's length is all held steps (``M = I``, norm 1).

    Returns:
        ``(B, S, T+1)`` float64: ``[b, i, ℓ] = ‖M_{k_i+ℓ, k_i}‖_2`` (``1`` at ``ℓ = 0``), NaN
        where ``k_i + ℓ > T``. Memory is one chunk of :data:`CHUNK_ELEMENTS` besides the
        result and the cumulative sums of one chunk of examples.
    """
    Bsz, T, K = structure.modulus.shape
    start_list = _int_list("starts", starts, f"0 <= k <= T={T}")
    _check_times("starts", start_list, 0, T, f"0 <= k <= T={T}")
    device = structure.modulus.device
    ks = torch.tensor(start_list, dtype=torch.int64, device=device)
    out = torch.full((Bsz, len(ks), T + 1), math.nan, dtype=torch.float64, device=device)
    per_example = (T + 1) * K * (3 if structure.angle is not None else 1)
    rows_per_chunk = max(1, min(Bsz, CHUNK_ELEMENTS // max(1, per_example)))
    for b0 in range(0, Bsz, rows_per_chunk):
        rows = slice(b0, min(Bsz, b0 + rows_per_chunk))
        part = JacobianStructure(structure.modulus[rows],
                                 None if structure.angle is None else structure.angle[rows],
                                 structure.output_map)
        cum = CumulativeLogs.of(part)
        out[rows] = (_diagonal_norms(cum, ks) if part.output_map is None
                     else _pair_norms(cum, ks, rtol))
    out[:, :, 0] = 1.0
    if lengths is not None:  # all-held windows: M = I
        held = ks.view(1, -1) >= lengths.to(device).view(-1, 1)
        out[:, :, 1:] = torch.where(held.unsqueeze(-1) & ~out[:, :, 1:].isnan(), 1.0,
                                    out[:, :, 1:])
    return out


def _diagonal_norms(cum: CumulativeLogs, ks: Tensor) -> Tensor:
    """``max_q |Φ_q(k+ℓ, k)|`` (no output rows): ``(b, S, T+1)``, NaN past ``T``; the max is
    taken on the log-moduli, one start time and chunk of channels at a time."""
    b, T1, K = cum.log_modulus.shape
    out = torch.full((b, len(ks), T1), math.nan, dtype=torch.float64, device=ks.device)
    for i, k in enumerate(ks.tolist()):
        step = max(1, CHUNK_ELEMENTS // (b * (T1 - k)))
        best = None
        for q0 in range(0, K, step):
            log_m, _ = cum.window(slice(k, T1), slice(k, k + 1), channels=slice(q0, q0 + step))
            top = log_m.amax(-1)
            best = top if best is None else torch.maximum(best, top)
        out[:, i, : T1 - k] = best.exp()
    return out


def _pair_norms(cum: CumulativeLogs, ks: Tensor, rtol: float) -> Tensor:
    """``‖[C; I] Φ(k+ℓ, k)‖_2`` (output rows ``C``) for ``ℓ ≥ 1``: ``(b, S, T+1)``, NaN past
    ``T`` and at ``ℓ = 0`` (set by the caller); pairs in chunks whose Lanczos bases fit."""
    b, T1, K = cum.log_modulus.shape
    C = cum.structure.output_map.double()
    lags = torch.arange(1, T1, device=ks.device)
    k_all, l_all = torch.meshgrid(ks, lags, indexing="ij")
    keep = (k_all + l_all) < T1
    si, li = torch.nonzero(keep, as_tuple=True)
    k_p, t_p = ks[si], ks[si] + lags[li]
    out = torch.full((b, len(ks), T1), math.nan, dtype=torch.float64, device=ks.device)
    per_pair = b * C.shape[1] * (C.shape[1] + 8)  # the Krylov basis and the work vectors
    step = max(1, CHUNK_ELEMENTS // per_pair)
    for p0 in range(0, len(k_p), step):
        p = slice(p0, p0 + step)
        log_m, angle = cum.window(t_p[p], k_p[p])
        top = log_m.amax(-1, keepdim=True)
        finite = torch.isfinite(top)
        scale = torch.where(finite, (log_m - torch.where(finite, top, 0)).exp(), 0.0)
        norms = _output_norms(scale, angle, C, rtol) * top.squeeze(-1).exp()
        out[:, si[p], li[p] + 1] = norms
    return out


def structured_sensitivities(cell: RecurrentCell, traj: Trajectory,
                             rtol: float = RTOL) -> Tensor:
    """:func:`gatescope.sensitivities` of ``gs.jacobians(cell, traj)`` for a cell that
    declares its :meth:`~gatescope.RecurrentCell.jacobian_structure`, without forming ``J``.

    Returns:
        ``(B, T+1, T+1)`` float64: ``S[:, t, k] = ‖M_{t,k}‖_2`` for ``k ≤ t`` (``1`` on the
        diagonal), NaN above it; the same for either product order.

    Raises:
        ValueError: when the cell declares no structure, or for a trajectory of another cell.
    """
    structure = structure_of(cell, traj)
    if structure is None:
        raise ValueError(f"{type(cell).__name__} declares no jacobian_structure: use "
                         "gs.sensitivities(gs.jacobians(cell, traj)) or gs.transport_norms")
    T = traj.seq_len
    by_start = start_sensitivities(structure, list(range(T + 1)), rtol, traj.lengths)
    k, lag = torch.meshgrid(torch.arange(T + 1), torch.arange(T + 1), indexing="ij")
    keep = k + lag <= T
    k, lag = k[keep].to(by_start.device), lag[keep].to(by_start.device)
    S = torch.full((traj.batch_size, T + 1, T + 1), math.nan, dtype=torch.float64,
                   device=by_start.device)
    S[:, k + lag, k] = by_start[:, k, lag]
    return S
