"""The exact-transport envelope beside the first-order one (arXiv 2512.05790's own diagnostic;
docs/matched-statistic.md#exact-against-first-order).

Over the matched window ``j = t-ℓ+1..t`` (that of the effective rates ``μ``), with
``M_{t,t-ℓ} = J_t ⋯ J_{t-ℓ+1}`` the exact transport and ``q`` the ``n`` retention entries
(the last ``n`` of the state)::

    exact:        f_M(ℓ) = mean_{b,t} Σ_q |[M_{t,t-ℓ}]_{qq}|
    first order:  f_μ(ℓ) = mean_{b,t} Σ_q |μ_{t,ℓ,q}|

both averaged over the **same** ``(b, t)`` (times past a sequence's length left out), so the
comparison is like for like. These are sums over ``q`` (the follow-up's ``‖μ‖₁``), ``n`` times
:func:`gatescope.envelope`, which averages over ``q``. At ``ℓ = 0`` both are ``n``.

* A cell that declares its :meth:`~gatescope.RecurrentCell.jacobian_structure` (a diagonal
  or rotation-block recurrence) gets the exact diagonal from cumulative log-sums in
  ``O(B·T·n)`` per lag (docs/maths.md#structured-jacobians): ``|Φ_q(t, t-ℓ)|``, times
  ``|cos(Θ_t - Θ_{t-ℓ})|`` for a rotation block (both entries of a pair). Every end time
  ``t ≥ ℓ`` is used unless ``ends`` are given. For a diagonal block ``μ = μ⁰`` is exact, so
  the two envelopes agree; for rotation blocks (LRU) they do not.
* Any other cell gets ``M_{t,t-ℓ}`` from products of its per-step Jacobians
  (:func:`gatescope.jacobians`), every window extended by one step to the left at a time
  (``M_{t,t-ℓ-1} = M_{t,t-ℓ} J_{t-ℓ}``), all end times of a chunk of examples in one batched
  matmul per lag. All ``(t, ℓ)`` pairs would cost ``O(B·T·L·N³)``, so the end times are a
  subsample: ``ends``, by default :data:`DEFAULT_ENDS` evenly spaced times in
  ``[max(lags), T]`` (:func:`envelope_ends`). The products are float64, not renormalised: a
  diagonal below ``1e-308`` reads 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cells.base import RecurrentCell, Trajectory
from ..cells.structure import JacobianStructure
from ..dynamics.jacobians import check_trajectory, jacobians
from ..dynamics.matrix_free import _check_times, _int_list, default_starts
from ..dynamics.structured import CHUNK_ELEMENTS, CumulativeLogs, retention_structure_of
from ..memory import dense_budget
from ._integers import integer_lags
from .rates import (
    _needs_jacobians,
    auto_chunk_size,
    check_chunk_size,
    rate_windows,
    times_beyond_length,
)

#: End times of a dense cell's exact envelope when none are given.
DEFAULT_ENDS = 5


@dataclass(frozen=True)
class EnvelopeAgreement:
    """How the first-order envelope follows the exact one across lags.

    Attributes:
        rank_correlation: Spearman's ρ of the two envelopes over the lags (ties ranked by
            their mean rank); 1 when they order the lags alike.
        slope_ratio: ``first_order_slope / exact_slope``; above 1 when the first-order
            envelope decays faster (the follow-up found 1.2–6).
        exact_slope, first_order_slope: least-squares slopes of ``log f`` against ``ℓ``.
        lags: how many lags entered (both envelopes finite and positive there).
    """

    rank_correlation: float
    slope_ratio: float
    exact_slope: float
    first_order_slope: float
    lags: int


def _envelope_lags(traj: Trajectory, lags: Sequence[int]) -> list[int]:
    """``lags`` as ints in ``0..T``; a clear error otherwise."""
    out = integer_lags(lags)
    if not out:
        raise ValueError("lags must hold at least one lag")
    _check_times("lags", out, 0, traj.seq_len, f"0 <= lag <= T={traj.seq_len}")
    return out


def envelope_ends(cell: RecurrentCell, traj: Trajectory, lags: Sequence[int],
                  ends: Sequence[int] | None = None) -> list[int] | None:
    """The end times both envelopes average over.

    Args:
        cell, traj: the cell and its trajectory.
        lags: the lags (ints in ``0..T``).
        ends: end times ``t`` with ``max(lags) ≤ t ≤ T`` (checked), or ``None``.

    Returns:
        ``ends`` as a sorted list of distinct ints; for ``ends=None``, ``None`` (every
        ``t ≥ ℓ`` at each lag) for a cell with a Jacobian structure, else
        :data:`DEFAULT_ENDS` evenly spaced times in ``[max(lags), T]``
        (:func:`~gatescope.dynamics.matrix_free.default_starts`).
    """
    lags = _envelope_lags(traj, lags)
    T, top = traj.seq_len, max(lags)
    if ends is None:
        return None if retention_structure_of(cell, traj) is not None else default_starts(
            T, top, DEFAULT_ENDS)
    allowed = f"max(lags)={top} <= t <= T={T}"
    out = _int_list("ends", ends, allowed)
    _check_times("ends", out, top, T, allowed)
    return sorted(set(out))


class _Mean:
    """Running sums and counts of per-``(b, t)`` values, one slot per entry of ``lags``."""

    def __init__(self, size: int, device) -> None:
        self.total = torch.zeros(size, dtype=torch.float64, device=device)
        self.count = torch.zeros(size, dtype=torch.float64, device=device)

    def add(self, positions: list[int], values: Tensor, keep: Tensor) -> None:
        """Add the ``values`` where ``keep`` (same shape) to the slots ``positions``."""
        self.total[positions] += values.masked_fill(~keep, 0).sum()
        self.count[positions] += keep.sum()

    def mean(self) -> Tensor:
        return torch.where(self.count > 0, self.total / self.count.clamp_min(1), math.nan)


def _positions(lags: list[int]) -> dict[int, list[int]]:
    """``{lag: the entries of lags equal to it}``, in ascending lag order."""
    out: dict[int, list[int]] = {}
    for i, lag in enumerate(lags):
        out.setdefault(lag, []).append(i)
    return dict(sorted(out.items()))


def exact_envelope(cell: RecurrentCell, traj: Trajectory, lags: Sequence[int],
                   ends: Sequence[int] | None = None, J: Tensor | None = None,
                   chunk_size: int | None = None) -> Tensor:
    """``f_M(ℓ) = mean_{b,t} Σ_q |[M_{t,t-ℓ}]_{qq}|``, the exact transport's diagonal on the
    retention entries (module notes).

    Args:
        cell: the cell that produced ``traj``.
        traj: its trajectory (detached values are read); times past a sequence's length are
            left out of the mean.
        lags: lags ``0 ≤ ℓ ≤ T``, in the order wanted.
        ends: end times ``t`` with ``max(lags) ≤ t ≤ T``; ``None`` for
            :func:`envelope_ends`' default.
        J: a dense cell's ``(B, T, N, N)`` Jacobians if already computed (only the windows'
            steps are read); computed per chunk otherwise. Ignored for a structured cell.
        chunk_size: examples at once (dense cells); ``None`` for the most whose window
            Jacobians and products fit in half the dense budget.

    Returns:
        ``(L,)`` float64.

    Raises:
        TypeError, ValueError: for lags or ends that are not ints in range, a trajectory of
            another cell, a bad ``chunk_size``, or complex dense Jacobians, before any
            compute.
    """
    check_trajectory(cell, traj)
    lags = _envelope_lags(traj, lags)
    ends = envelope_ends(cell, traj, lags, ends)
    check_chunk_size(chunk_size)
    structure = retention_structure_of(cell, traj)
    if structure is not None:
        return _structured_exact(structure, traj, lags, ends)
    if traj.states.is_complex() or (J is not None and J.is_complex()):
        raise TypeError("exact_envelope needs real Jacobians for a cell without a "
                        f"jacobian_structure; got {(traj.states if J is None else J).dtype}")
    return _dense_exact(cell, traj, lags, ends, J, chunk_size)


def _structured_exact(structure: JacobianStructure, traj: Trajectory, lags: list[int],
                      ends: list[int] | None) -> Tensor:
    """:func:`exact_envelope` of a structured cell, one chunk of examples' cumulative sums
    at a time, in cache-sized blocks of end times."""
    Bsz, T, K = structure.modulus.shape
    device = structure.modulus.device
    beyond = times_beyond_length(traj).to(device)
    per_example = (T + 1) * K * (1 if structure.angle is None else 3)
    rows_per_chunk = max(1, min(Bsz, CHUNK_ELEMENTS // max(1, per_example)))
    acc = _Mean(len(lags), device)
    for b0 in range(0, Bsz, rows_per_chunk):
        rows = slice(b0, min(Bsz, b0 + rows_per_chunk))
        cum = CumulativeLogs.of(JacobianStructure(
            structure.modulus[rows], None if structure.angle is None else structure.angle[rows],
            structure.output_map))
        step = max(1, CHUNK_ELEMENTS // max(1, (rows.stop - rows.start) * K))
        for lag, positions in _positions(lags).items():
            if ends is None:
                blocks = [slice(t0, min(T + 1, t0 + step)) for t0 in range(lag, T + 1, step)]
            else:
                at = torch.tensor(ends, dtype=torch.int64, device=device)
                blocks = [at[i:i + step] for i in range(0, len(ends), step)]
            for times in blocks:
                starts = (slice(times.start - lag, times.stop - lag)
                          if isinstance(times, slice) else times - lag)
                log_m, angle = cum.window(times, starts)
                diagonal = log_m.exp()
                if angle is not None:  # m R(θ) has m cos θ on both diagonal entries
                    diagonal = 2 * diagonal * torch.cos(angle).abs()
                acc.add(positions, diagonal.sum(-1), ~beyond[rows, times])
    return acc.mean()


def _window_jacobians(cell: RecurrentCell, traj: Trajectory, rows: slice, ends: Tensor,
                      depth: int, J: Tensor | None) -> Tensor:
    """``J_{t-depth+1..t}`` of the examples ``rows`` for every end ``t``:
    ``(c, S, depth, N, N)`` in the Jacobians' dtype, step ``t-depth+i+1`` at index ``i``."""
    if J is not None:
        steps = ends.view(-1, 1) - depth + torch.arange(depth)  # step k+1 sits at index k
        return J[rows][:, steps.to(J.device)]
    sub = traj.examples(rows)
    return torch.stack([jacobians(cell, sub.steps(t - depth, t)) for t in ends.tolist()], 1)


def _dense_exact(cell: RecurrentCell, traj: Trajectory, lags: list[int], ends: list[int],
                 J: Tensor | None, chunk_size: int | None) -> Tensor:
    """:func:`exact_envelope` by window products of the Jacobians, all ends at once."""
    Bsz, N, n = traj.batch_size, traj.states.shape[-1], cell.retention_size
    depth, S = max(lags), len(ends)
    device = traj.states.device
    at = torch.tensor(ends, dtype=torch.int64)
    keep = ~times_beyond_length(traj)[:, at.to(device)]  # (B, S)
    if chunk_size is None:  # the window Jacobians (twice while stacked) and 4 products
        per_example = S * N * N * (2 * depth * traj.states.element_size() + 4 * 8)
        chunk_size = max(1, min(Bsz, dense_budget() // 2 // max(1, per_example)))
    positions = _positions(lags)
    acc = _Mean(len(lags), device)
    if 0 in positions:  # M_{t,t} = I
        acc.add(positions[0], torch.full((Bsz, S), float(n), dtype=torch.float64,
                                         device=device), keep)
    if depth == 0:
        return acc.mean()
    for b0 in range(0, Bsz, chunk_size):
        rows = slice(b0, min(Bsz, b0 + chunk_size))
        windows = _window_jacobians(cell, traj, rows, at, depth, J)
        P = windows[:, :, depth - 1].double()  # M_{t,t-1} = J_t
        for lag in range(1, depth + 1):
            if lag > 1:  # the window gains step t-lag+1 on the right
                P = P @ windows[:, :, depth - lag].double()
            if lag in positions:
                diagonal = P.diagonal(dim1=-2, dim2=-1)[..., N - n:].abs().sum(-1)
                acc.add(positions[lag], diagonal, keep[rows])
    return acc.mean()


def first_order_envelope(cell: RecurrentCell, traj: Trajectory, lags: Sequence[int],
                         ends: Sequence[int] | None = None, J: Tensor | None = None,
                         chunk_size: int | None = None) -> Tensor:
    """``f_μ(ℓ) = mean_{b,t} Σ_q |μ_{t,ℓ,q}|`` over the same ``(b, t)`` as
    :func:`exact_envelope` with the same arguments; ``μ`` first order, streamed
    (:func:`~gatescope.measures.rates.rate_windows`).

    Args:
        cell, traj, lags, ends, chunk_size: as for :func:`exact_envelope` (``chunk_size``
            as for :func:`gatescope.effective_rate_summary`).
        J: the ``(B, T, N, N)`` Jacobians if already computed (order 1 reads their
            diagonal); ignored for a structured cell.

    Returns:
        ``(L,)`` float64.
    """
    check_trajectory(cell, traj)
    lags = _envelope_lags(traj, lags)
    ends = envelope_ends(cell, traj, lags, ends)
    check_chunk_size(chunk_size)
    n = cell.retention_size
    if chunk_size is None:
        chunk_size = auto_chunk_size(traj, n, 1, _needs_jacobians(cell, traj, J))
    at = None if ends is None else torch.tensor(ends, dtype=torch.int64,
                                                device=traj.states.device)
    acc = _Mean(len(lags), traj.states.device)
    for _, _, positions, times, mu in rate_windows(cell, traj, lags, 1, J, chunk_size):
        values = mu.abs().sum(-1)  # (c, len(times)), NaN past a sequence's length
        if at is not None:
            values = values[:, at[(at >= times.start) & (at < times.stop)] - times.start]
        acc.add(positions, values, ~values.isnan())
    return acc.mean()


def _ranks(x: Tensor) -> Tensor:
    """Ranks ``0..k-1`` of ``x`` ``(k,)``, tied values sharing their mean rank."""
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    mean_rank = torch.cumsum(counts, 0) - (counts + 1) / 2  # of each distinct value, sorted
    return mean_rank.double()[inverse]


def _correlation(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    scale = float(torch.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / scale if scale > 0 else math.nan


def _slope(x: Tensor, y: Tensor) -> float:
    """Least-squares slope of ``y`` on ``x``."""
    x = x - x.mean()
    spread = float((x * x).sum())
    return float((x * (y - y.mean())).sum()) / spread if spread > 0 else math.nan


def envelope_agreement(exact: Tensor, first_order: Tensor,
                       lags: Sequence[int]) -> EnvelopeAgreement:
    """Spearman's rank correlation of two envelopes across lags, and the ratio of their
    log-slopes (``d log f / dℓ`` by least squares, first order over exact).

    Args:
        exact: ``(L,)`` :func:`exact_envelope`.
        first_order: ``(L,)`` :func:`first_order_envelope` at the same lags.
        lags: the ``L`` lags.

    Returns:
        An :class:`EnvelopeAgreement` over the lags where both envelopes are finite and
        positive (NaN values where fewer than two are, or the slope is undefined).
    """
    lags = integer_lags(lags)
    exact, first_order = torch.as_tensor(exact).double(), torch.as_tensor(first_order).double()
    if exact.shape != (len(lags),) or first_order.shape != (len(lags),):
        raise ValueError(f"exact and first_order must both have shape (L={len(lags)},) like "
                         f"lags; got {tuple(exact.shape)} and {tuple(first_order.shape)}")
    ell = torch.tensor(lags, dtype=torch.float64)
    ok = exact.isfinite() & first_order.isfinite() & (exact > 0) & (first_order > 0)
    count = int(ok.sum())
    if count < 2:
        return EnvelopeAgreement(math.nan, math.nan, math.nan, math.nan, count)
    e, f, ell = exact[ok], first_order[ok], ell[ok]
    exact_slope, first_slope = _slope(ell, e.log()), _slope(ell, f.log())
    ratio = first_slope / exact_slope if exact_slope != 0 else math.nan
    return EnvelopeAgreement(_correlation(_ranks(e), _ranks(f)), ratio, exact_slope,
                             first_slope, count)
