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

Cache blocking (the sums ``L`` of a layer, ``(B, T+1, K)`` float64, are far larger than the
caches: 1 GiB at ``B, T, K = 4, 4096, 8192``; reading them once per start time or lag is
what bounded the time, not the arithmetic):

* :func:`channel_blocks` forms ``L`` (and the zero counts, angles) for ``w`` channels at a
  time, ``(b, T+1, w)`` with ``b·(T+1)·w ≤`` :data:`BLOCK_ELEMENTS` (a last-level-cache
  share), straight from the modulus; the full ``L`` is never held.
* Sensitivities without output rows (:func:`_raise_window_maxima`): per block, tiles of
  ``R`` end times × the ``S`` start times ``k ≤`` the tile's last × ``w`` channels
  (``b·R·S·w ≤`` :data:`CHUNK_ELEMENTS`), ``top[b, t, i] = max(top, max_q (L_{t,q} -
  L_{k_i,q}))`` ``(B, T+1, S)``; the starts' rows ``(b, S, w)`` stay in cache. Then
  ``‖M_{k+ℓ,k}‖ = exp(top[b, k+ℓ, i])``. One subtraction and one max per entry.
* Rate moments (:func:`window_moments`): per block, for every lag, tiles of ``R`` end times
  × ``w`` channels give ``μ`` and, per ``(b, t)``, its mean and ``Σ (μ - mean)²`` over the
  block (two passes over a tile in cache); the caller pools the blocks exactly
  (``gatescope.measures.rates.merge_moments``). ``μ⁰ = exp(L_t - L_{t-ℓ})`` is formed as
  ``E_t · F_{t-ℓ} · A`` by :class:`AnchoredProducts` (two multiplications per entry, the
  ``exp`` only per anchor cell) wherever that is exact to a few ulps, else by one ``exp``.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cells.base import RecurrentCell, Trajectory
from ..cells.structure import JacobianStructure
from .jacobians import check_trajectory
from .matrix_free import _check_times, _int_list, lanczos_top
from .spectral import RTOL

#: Float64 elements of window tensors one chunk (a tile) holds: cache-sized, since each
#: chunk is a few elementwise passes (and it bounds peak memory).
CHUNK_ELEMENTS = 2**18

#: Float64 prefix-sum values one channel block holds (:func:`channel_blocks`): sized for the
#: last-level cache, which every tile of the block then reads instead of memory.
BLOCK_ELEMENTS = 2**20

#: The largest ``|L_t - L_{g(t)}|`` (log of an anchored factor) :class:`AnchoredProducts`
#: allows: with ``e^{±64}`` factors every product ``≥ e^{-580}`` is formed from normal floats.
#: A larger bound allows wider spacings (fewer ``A`` factors) for fast-decaying channels
#: (Mamba's ``exp(Δ A)`` reaches ``e^{-2}`` per step).
ANCHOR_LOG_BOUND = 64.0

#: The bound for float32 tiles, whose products ``E F A'`` must stay within ``e^{±2D}`` of
#: float32's range (``e^{±87}``).
FLOAT32_ANCHOR_LOG_BOUND = 32.0

#: The anchor spacings :class:`AnchoredProducts` may take, smallest first: below 8 the ``A``
#: factors (one ``exp`` per cell, lag and channel) would cost a fair part of the ``exp`` per
#: entry they replace.
ANCHOR_SPACINGS = (8, 16, 32, 64, 128)

#: ``-log`` of float64's smallest normal (``2^-1022``), rounded down: a product ``≥ e^-708``
#: of normal factors is a normal float.
_NORMAL_LOG = 708.0

#: ``exp(x)`` rounds to 0 in float64 for ``x < -745.14`` (half the smallest subnormal); the
#: tiles known to lie below are filled with zeros, not an ``exp`` (which is slow there).
_ZERO_LOG = 745.2


def structure_of(cell: RecurrentCell, traj: Trajectory) -> JacobianStructure | None:
    """``cell.jacobian_structure(traj)`` checked against the cell, detached (in its own dtype:
    :class:`CumulativeLogs` sums in float64 one chunk at a time), with the steps past each
    sequence's length held (``m = 1``, ``θ = 0``); ``None`` when the cell declares no
    structure (a :class:`~gatescope.StackedCell` never does: its layers couple).

    Raises:
        ValueError: for a trajectory of another cell, or a structure whose sizes do not
            match the cell's ``retention_size`` and ``state_size``.
    """
    s = _checked_jacobian_structure(cell, traj)
    return None if s is None else _held_past_lengths(s, traj)


def retention_structure_of(cell: RecurrentCell, traj: Trajectory
                           ) -> JacobianStructure | None:
    """:func:`structure_of` for ``cell.retention_structure(traj)``: the structure of the
    transport products' block on the retention entries (docs/maths.md#retention-structure),
    all the effective learning rates and their envelopes read; ``None`` when the cell
    declares none.

    Raises:
        ValueError: for a trajectory of another cell, a structure with output rows or whose
            size is not the cell's ``retention_size``, or a declared ``jacobian_structure``
            that does not fit the cell (:func:`structure_of`).
    """
    _checked_jacobian_structure(cell, traj)  # the trajectory, and any full structure declared
    s = cell.retention_structure(traj)
    if s is None:
        return None
    _check_structure(cell, traj, s, "retention_structure", s.output_map is None,
                     "no output map")
    return _held_past_lengths(s, traj)


def _checked_jacobian_structure(cell: RecurrentCell, traj: Trajectory
                                ) -> JacobianStructure | None:
    """``cell.jacobian_structure(traj)`` as declared (not detached, not held), after
    checking the trajectory and the structure's sizes against the cell."""
    check_trajectory(cell, traj)
    s = cell.jacobian_structure(traj)
    if s is not None:
        _check_structure(cell, traj, s, "jacobian_structure",
                         s.output_size + s.inner_size == cell.state_size,
                         f"output rows + block·K = state_size={cell.state_size}")
    return s


def _check_structure(cell: RecurrentCell, traj: Trajectory, s: JacobianStructure,
                     method: str, fits: bool, requirement: str) -> None:
    """Refuse a declared structure whose shape does not fit the cell and trajectory."""
    shape = (traj.batch_size, traj.seq_len)
    if (tuple(s.modulus.shape[:2]) != shape or s.inner_size != cell.retention_size
            or not fits):
        raise ValueError(
            f"{type(cell).__name__}.{method} gives modulus {tuple(s.modulus.shape)}, "
            f"block {s.block}, {s.output_size} output rows; the cell needs (B, T)={shape}, "
            f"block·K = retention_size={cell.retention_size} and {requirement}")


def _held_past_lengths(s: JacobianStructure, traj: Trajectory) -> JacobianStructure:
    """``s`` detached, with the steps past each sequence's length held (``m = 1``,
    ``θ = 0``)."""
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

    def products(self, lag: int, ends: slice) -> Tensor:
        """``μ⁰ = |Φ_q(t, t-ℓ)| = exp(L_t - L_{t-ℓ})`` per channel for the end times ``ends``
        (a slice within ``lag..T``): ``(B, len(ends), K)`` float64, one ``exp`` per entry."""
        log_m, _ = self.window(ends, slice(ends.start - lag, ends.stop - lag))
        return log_m.exp_()

    def first_order(self, mu: Tensor, lag: int, ends: slice) -> Tensor:
        """``μ = μ⁰ (1 + Σ_j (cos θ_j - 1))`` from ``mu = μ⁰`` ``(B, len(ends), K)``, in
        place (block 1: ``μ = μ⁰``): ``diag(Λ_j) - m_j = m_j (cos θ_j - 1)``, so
        ``Σ_j (∏_{i≠j} m_i) d_j = μ⁰ Σ_j (cos θ_j - 1)`` exactly."""
        if self.cos_defect is None:
            return mu
        x = self.cos_defect
        return mu.mul_(1 + x[:, ends] - x[:, ends.start - lag: ends.stop - lag])

    def rates(self, lag: int, order: int, ends: slice | None = None) -> Tensor:
        """The effective rates at ``lag`` for the end times ``ends`` (a slice within
        ``lag..T``; default all of them): ``(B, len(ends), b·K)`` float64, each channel's
        value repeated over its block's ``b`` entries: :meth:`products` at order 0, then
        :meth:`first_order` at order 1."""
        T = self.log_modulus.shape[1] - 1
        ends = slice(lag, T + 1) if ends is None else ends
        mu = self.products(lag, ends)
        if order == 1:
            mu = self.first_order(mu, lag, ends)
        return mu if self.angle is None else mu.repeat_interleave(2, -1)


def channel_blocks(structure: JacobianStructure) -> Iterator[CumulativeLogs]:
    """The :class:`CumulativeLogs` of ``structure`` one block of channels at a time (all its
    examples; its output map is dropped): ``(B, T+1, w)`` with ``w`` the largest power of two
    whose block holds at most :data:`BLOCK_ELEMENTS` values (at least 1 channel), so a block
    stays in the last-level cache while its tiles are read, and the sums of all ``K``
    channels are never held at once."""
    B, T, K = structure.modulus.shape
    fit = max(1, BLOCK_ELEMENTS // max(1, B * (T + 1)))
    width = min(K, 1 << (fit.bit_length() - 1))
    for q0 in range(0, K, width):
        ch = slice(q0, q0 + width)
        angle = None if structure.angle is None else structure.angle[:, :, ch]
        yield CumulativeLogs.of(JacobianStructure(structure.modulus[:, :, ch], angle))


#: A tile of rates: its end times, and ``μ⁰`` ``(b, R, w)`` with the scale of each row
#: ``(b, R)`` float64 (``μ⁰ = scale · tile``; ``None``: 1), or ``(ends, None, None)`` where
#: the caller takes one ``exp`` per entry.
Tile = tuple[slice, Tensor | None, Tensor | None]

#: The precisions of :func:`window_moments`.
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def end_time_tiles(lag: int, T: int, rows: int) -> Iterator[Tile]:
    """The end times ``lag..T`` in tiles of ``rows``, without anchored products
    (:meth:`AnchoredProducts.tiles`' fallback)."""
    for t0 in range(lag, T + 1, rows):
        yield slice(t0, min(T + 1, t0 + rows)), None, None


@dataclass(frozen=True)
class AnchoredProducts:
    """``μ⁰_{t,ℓ,q} = exp(L_t - L_{t-ℓ})`` by two multiplications per entry instead of an
    ``exp``, from factors computed once per block.

    With anchors ``g(t) = G⌊t/G⌋`` every ``G`` steps and ``k = t - ℓ``,

        exp(L_t - L_k) = E_t · F_k · A_{g(t), g(k)},
        E_t = exp(L_t - L_{g(t)}),  F_k = exp(L_{g(k)} - L_k),  A = exp(L_{g(t)} - L_{g(k)}),

    ``E`` and ``F`` once per block. For end times ``t = cG + j`` of a cell
    (``j < G``) and ``ℓ = pG + r``, ``g(k) = (c-p-1)G`` for ``j < r`` and ``(c-p)G`` for
    ``j ≥ r``: two ``A`` per cell and lag ``(b, w)``, applied to the tile viewed as
    ``(b, cells, G, w)``. ``G`` is the largest of :data:`ANCHOR_SPACINGS` whose
    ``D = max |L_t - L_{g(t)}|`` is at most :data:`ANCHOR_LOG_BOUND` (float32:
    :data:`FLOAT32_ANCHOR_LOG_BOUND`), so
    ``e^{-2D} ≤ E_t F_k ≤ e^{2D}``. A cell is used only where its ``log A`` lies in
    ``[-708 + 2D, 708 - 2D]`` (``A`` and ``μ⁰`` normal floats, so the result is exact to a
    few ulps); a cell whose every ``log A`` is below ``-745.2 - 2D`` is zeros (what ``exp``
    gives there). The partial cells at either end are formed as whole ones (``E`` padded
    with ones past ``T``, ``F`` before step 0) and cut to ``lag..T``. In float64 the other
    cells are scaled: ``A' = A / max_q A`` per row, the tile carries ``max_q A`` as its row
    scale, and channels whose ``A'`` falls below ``e^{-(708 - 2D)}`` are 0 (below float64's
    resolution in the row's moments; no entry is subnormal, whose arithmetic is ~10× slower).
    In float32 the other cells, and every block with a zero step or whose ``D`` exceeds the
    bound even at the smallest spacing, take one ``exp`` per entry.

    In float32 (``up``, ``down`` float32: half the memory traffic) each cell's ``A`` is
    divided by its largest channel's, ``A' = A / max_q A ≤ 1``, and the tile carries the
    row scale ``max_q A`` in float64: ``E F A'`` then lies within ``e^{±2D}`` (float32's
    range) and a channel that ``A'`` flushes to 0 is ``< e^{-87+2D}`` of its row's largest;
    entries are exact to float32 rounding (``~1e-7``).

    Attributes:
        logs: the block's prefix sums.
        spacing: ``G``.
        up, down: ``E`` ``(b, T', w)`` (``T' ≥ T+1`` a multiple of ``G``) and ``F``
            ``(b, G + T', w)`` (``F_k`` at row ``G + k``) in the tiles' dtype.
        bound: ``D``.
    """

    logs: CumulativeLogs
    spacing: int
    up: Tensor
    down: Tensor
    bound: float

    @classmethod
    def of(cls, logs: CumulativeLogs, dtype: torch.dtype = torch.float64
           ) -> AnchoredProducts | None:
        """The factors of a block in ``dtype`` (float64 or float32; formed in float64), or
        ``None`` when it has a zero step or ``D`` exceeds the bound at the smallest
        spacing. ``up`` is padded with ones to whole cells after ``T`` and ``down`` by one
        cell before step 0 (:attr:`down` row ``k + G`` is ``F_k``), so the partial cells at
        either end are read as whole ones."""
        L = logs.log_modulus
        if logs.zeros is not None:
            return None
        b, T1, w = L.shape
        limit = ANCHOR_LOG_BOUND if dtype == torch.float64 else FLOAT32_ANCHOR_LOG_BOUND
        for spacing in reversed(ANCHOR_SPACINGS):
            anchors = torch.arange(T1, device=L.device) // spacing * spacing
            offset = L - L[:, anchors]
            low, high = torch.aminmax(offset)
            bound = max(-float(low), float(high))
            if bound <= limit:
                padded = -(-T1 // spacing) * spacing
                up = offset.new_ones(b, padded, w, dtype=dtype)
                down = offset.new_ones(b, spacing + padded, w, dtype=dtype)
                factor = offset.exp_()
                up[:, :T1] = factor
                # F = 1 / E: a division costs a fraction of an exp (one more rounding)
                down[:, spacing: spacing + T1] = factor.reciprocal_()
                return cls(logs, spacing, up, down, bound)
        return None

    def tiles(self, lag: int, rows: int) -> Iterator[Tile]:
        """The :data:`Tile` s covering the end times ``lag..T`` in order: runs of cells of one
        kind (anchored, all zero, or one ``exp`` each) in tiles of about ``rows`` end times;
        the partial cells at either end are anchored as whole ones and cut. The ``A`` of all
        cells of the lag are formed at once."""
        L, G = self.logs.log_modulus, self.spacing
        T1 = L.shape[1]
        p, r = divmod(lag, G)
        cells = torch.arange(p * G, T1, G, device=L.device)  # the cells holding lag..T
        sources = torch.stack([cells - (p + 1) * G, cells - p * G], 1).clamp_min(0)
        log_a = L[:, cells].unsqueeze(2) - L[:, sources]  # (b, n, 2, w): j < r, j ≥ r
        log_a[:, 0, 0] = 0.0  # the first cell's rows j < r end before lag
        if r == 0:
            log_a[:, :, 0] = 0.0  # no end time has j < 0
        top, normal = log_a.amax((0, 2, 3)), _NORMAL_LOG - 2 * self.bound
        exact = (log_a.amin((0, 2, 3)) >= -normal) & (top <= normal)
        zero = top < -_ZERO_LOG - 2 * self.bound
        kinds = exact.long() + 2 * (zero & ~exact).long()
        if self.up.dtype == torch.float64:  # the other cells: scaled by their largest A
            kinds.masked_fill_(kinds == 0, 3)
            factors, scales = self._factors(log_a, kinds == 3, normal)
        else:
            log_a.masked_fill_(~exact[None, :, None, None], 0.0)
            factors, scales = self._factors(log_a)
        per_tile = max(1, rows // G)
        for c0, c1, kind in _runs(kinds.tolist(), per_tile):
            cut = slice(max(lag, (p + c0) * G), min(T1, (p + c1) * G))
            if kind in (1, 3):
                mu, scale = self._cells(lag, slice((p + c0) * G, (p + c1) * G),
                                        factors[:, c0:c1],
                                        None if scales is None or kind == 1 and
                                        self.up.dtype == torch.float64
                                        else scales[:, c0:c1])
                inner = slice(cut.start - (p + c0) * G, cut.stop - (p + c0) * G)
                yield cut, mu[:, inner], None if scale is None else scale[:, inner]
            elif kind == 2:  # every exp(L_t - L_k) rounds to 0
                yield cut, L.new_zeros(L.shape[0], cut.stop - cut.start, L.shape[2]), None
            else:
                yield cut, None, None

    def _factors(self, log_a: Tensor, scaled: Tensor | None = None, normal: float = 0.0
                 ) -> tuple[Tensor, Tensor | None]:
        """The cells' factors from ``log A`` ``(b, n, 2, w)`` (overwritten).

        float32: ``A' = A / max_q A`` and the scales ``max_q A`` ``(b, n, 2)`` float64.
        float64: ``A`` itself in the exact cells; in the cells flagged ``scaled`` ``(n,)``
        (outside the normal range), ``A' = A / s`` with ``s = max_q A`` clamped to
        ``e^{±normal}`` (a normal float), the channels whose ``A'`` is below ``e^{-normal}``
        set to 0, and the scales ``s`` (1 elsewhere). A dropped entry is at most
        ``e^{2D - normal} = e^{4D - 708}``, and the row's largest entry at least
        ``e^{-2D}`` when ``s = max_q A`` (so the dropped ones are below ``e^{6D - 708}`` of
        it, far below float64's resolution in the row's mean and squared deviations); when
        ``s`` is clamped from below every dropped entry is below ``e^{-745}`` in absolute
        terms, 0 for an ``exp`` too. Kept entries are at least ``e^{-708}``: none is
        subnormal, so every pass over the tile runs at full speed (one with subnormal values
        is ~10× slower); the row's moments are scaled back exactly (they are homogeneous).
        """
        if self.up.dtype == torch.float64:
            if scaled is None or not bool(scaled.any()):
                return log_a.exp_(), None
            # the scale e^top must be a normal float: outside e^{±normal} part of it stays in
            # A' (an entry E F A' may still be a normal float there, within e^{±2D} of A)
            top = log_a.amax(-1, keepdim=True).clamp_(-normal, normal)
            top.masked_fill_(~scaled[None, :, None, None], 0.0)
            log_a.sub_(top).masked_fill_(log_a < -normal, -math.inf)
            return log_a.exp_(), top.squeeze(-1).exp_()
        top = log_a.amax(-1, keepdim=True)
        return (log_a - top).exp_().to(self.up.dtype), top.squeeze(-1).exp_()

    def _cells(self, lag: int, ends: slice, factors: Tensor, scales: Tensor | None
               ) -> tuple[Tensor, Tensor | None]:
        """``E_t F_k A`` for the whole cells ``ends`` and their factors ``(b, cells, 2, w)``
        (and with ``scales`` ``(b, cells, 2)`` the row scales ``(b, len(ends))``)."""
        G, r = self.spacing, lag % self.spacing
        mu = self.up[:, ends] * self.down[:, ends.start - lag + G: ends.stop - lag + G]
        cells = mu.view(mu.shape[0], -1, G, mu.shape[-1])
        cells[:, :, :r] *= factors[:, :, 0].unsqueeze(2)
        cells[:, :, r:] *= factors[:, :, 1].unsqueeze(2)
        if scales is None:
            return mu, None
        low = torch.arange(G, device=mu.device) < r  # (G,): the rows j < r
        rows = torch.where(low, scales[:, :, :1], scales[:, :, 1:])  # (b, cells, G)
        return mu, rows.flatten(1)


def _runs(kinds: list[int], longest: int) -> Iterator[tuple[int, int, int]]:
    """``(start, stop, kind)`` for the runs of equal ``kinds``, cut to ``longest``."""
    start = 0
    for kind, run in itertools.groupby(kinds):
        stop = start + len(list(run))
        for c0 in range(start, stop, longest):
            yield c0, min(stop, c0 + longest), kind
        start = stop


def window_moments(logs: CumulativeLogs, lags: Sequence[int], order: int,
                   precision: str = "float64") -> tuple[Tensor, Tensor, int]:
    """The mean and the sum of squared deviations of ``|μ_{t,ℓ,·}|`` over a block's inner
    entries, per example, lag and end time.

    ``μ`` is that of :meth:`CumulativeLogs.rates` (each channel's value on its block's ``b``
    entries), formed in tiles of :data:`CHUNK_ELEMENTS` values (``R`` end times × the
    block's ``w`` channels, cache-sized), by :class:`AnchoredProducts` where exact and one
    ``exp`` per entry elsewhere (and at ``ℓ = 0``, where ``μ = 1`` exactly). ``μ ≥ 0`` except
    at order 1 with rotations, the only case that takes ``|μ|``.

    Args:
        logs: one block's prefix sums (:func:`channel_blocks`), ``(b, T+1, w)``.
        lags: ``(U,)`` lags within ``0..T``.
        order: 0 or 1.
        precision: ``"float64"``, or ``"float32"`` for the anchored tiles and their moments
            (the logs, the scales, the ``exp`` tiles and the results stay float64): about
            ``1e-7`` relative error per entry, half the memory traffic.

    Returns:
        ``(mean, m2, count)``: ``mean[u, i, t]`` and ``m2[u, i, t] = Σ (|μ| - mean)²`` each
        ``(U, b, T+1)`` float64 (NaN where ``t < ℓ``), over the ``count`` inner entries of
        each row (``w`` channels × their block size).
    """
    b, T1, w = logs.log_modulus.shape
    rows = max(1, CHUNK_ELEMENTS // (b * w))
    anchored = AnchoredProducts.of(logs, PRECISIONS[precision])
    mean = torch.full((len(lags), b, T1), math.nan, dtype=torch.float64,
                      device=logs.log_modulus.device)
    m2 = torch.full_like(mean, math.nan)
    for u, lag in enumerate(lags):
        tiles = (anchored.tiles(lag, rows) if anchored is not None and lag > 0 else
                 end_time_tiles(lag, T1 - 1, rows))
        for ends, mu, scale in tiles:
            mu = logs.products(lag, ends) if mu is None else mu
            if order == 1 and logs.angle is not None:
                mu = logs.first_order(mu, lag, ends).abs_()
            centre = mu.mean(-1, keepdim=True)
            spread = torch.linalg.vector_norm(mu.sub_(centre), dim=-1).double().square_()
            centre = centre.squeeze(-1).double()
            if scale is not None:
                centre, spread = centre * scale, spread * scale.square()
            mean[u, :, ends], m2[u, :, ends] = centre, spread
    block = 1 if logs.angle is None else 2
    return mean, m2 * block, block * w


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
        where ``k_i + ℓ > T``. Memory besides the result: without output rows one channel
        block of :data:`BLOCK_ELEMENTS` prefix sums and one tile of :data:`CHUNK_ELEMENTS`
        (:func:`_diagonal_norms`); with them one chunk of :data:`CHUNK_ELEMENTS` and the
        cumulative sums of one chunk of examples.
    """
    Bsz, T, K = structure.modulus.shape
    start_list = _int_list("starts", starts, f"0 <= k <= T={T}")
    _check_times("starts", start_list, 0, T, f"0 <= k <= T={T}")
    device = structure.modulus.device
    ks = torch.tensor(start_list, dtype=torch.int64, device=device)
    out = (_diagonal_norms(structure, ks) if structure.output_map is None
           else _pair_norms_by_chunk(structure, ks, rtol))
    out[:, :, 0] = 1.0
    if lengths is not None:  # all-held windows: M = I
        held = ks.view(1, -1) >= lengths.to(device).view(-1, 1)
        out[:, :, 1:] = torch.where(held.unsqueeze(-1) & ~out[:, :, 1:].isnan(), 1.0,
                                    out[:, :, 1:])
    return out


def _diagonal_norms(structure: JacobianStructure, ks: Tensor) -> Tensor:
    """``max_q |Φ_q(k+ℓ, k)|`` (no output rows): ``(B, S, T+1)``, NaN past ``T``.

    The max is taken on the log-moduli, ``top[b, t, i] = max_q (L_{t,q} - L_{k_i,q})``
    ``(B, T+1, S)`` by end time, raised block by block of examples and channels
    (:func:`channel_blocks`), so each prefix sum is formed once in cache and read from
    there for all the start times; then read at ``t = k_i + ℓ``.
    """
    B, T, K = structure.modulus.shape
    ks_sorted, order = ks.sort()
    top = torch.full((B, T + 1, len(ks)), -math.inf, dtype=torch.float64, device=ks.device)
    per_chunk = max(1, min(B, BLOCK_ELEMENTS // ((T + 1) * K)))
    for b0 in range(0, B, per_chunk):
        rows = slice(b0, min(B, b0 + per_chunk))
        part = JacobianStructure(structure.modulus[rows],
                                 None if structure.angle is None else structure.angle[rows])
        for logs in channel_blocks(part):
            _raise_window_maxima(logs, ks_sorted, top[rows])
    ends = ks_sorted.unsqueeze(1) + torch.arange(T + 1, device=ks.device)  # (S, T+1)
    by_lag = top[:, ends.clamp_max(T), torch.arange(len(ks), device=ks.device).unsqueeze(1)]
    out = torch.empty_like(by_lag)
    out[:, order] = by_lag.exp_().masked_fill_(ends > T, math.nan)
    return out


def _raise_window_maxima(logs: CumulativeLogs, ks: Tensor, top: Tensor) -> None:
    """``top[:, t, i] = max(top[:, t, i], max_q log |Φ_q(t, k_i)|)`` over one block's
    channels, for every end time ``t ≥ k_i`` (entries with ``t < k_i`` are left undefined:
    they are never read). Tiles of ``R`` end times × the starts ``k ≤`` the tile's last ×
    the block's channels, :data:`CHUNK_ELEMENTS` values each.

    Args:
        logs: one block's prefix sums ``(b, T+1, w)``.
        ks: ``(S,)`` sorted start times.
        top: ``(b, T+1, S)``, raised in place.
    """
    L, Z = logs.log_modulus, logs.zeros
    b, T1, w = L.shape
    rows = max(1, CHUNK_ELEMENTS // (b * len(ks) * w))
    at_start = L[:, ks].unsqueeze(1)  # (b, 1, S, w)
    zeros_at_start = None if Z is None else Z[:, ks].unsqueeze(1)
    starts = ks.tolist()
    for t0 in range(0, T1, rows):
        t1 = min(T1, t0 + rows)
        active = bisect.bisect_right(starts, t1 - 1)
        if active == 0:
            continue
        log_m = L[:, t0:t1].unsqueeze(2) - at_start[:, :, :active]  # (b, R, active, w)
        if Z is not None:
            log_m.masked_fill_(Z[:, t0:t1].unsqueeze(2) > zeros_at_start[:, :, :active],
                               -math.inf)
        window = top[:, t0:t1, :active]
        torch.maximum(window, log_m.amax(-1), out=window)


def _pair_norms_by_chunk(structure: JacobianStructure, ks: Tensor, rtol: float) -> Tensor:
    """:func:`_pair_norms` over chunks of examples whose prefix sums hold
    :data:`CHUNK_ELEMENTS` values (at least one example): ``(B, S, T+1)``."""
    Bsz, T, K = structure.modulus.shape
    out = torch.full((Bsz, len(ks), T + 1), math.nan, dtype=torch.float64, device=ks.device)
    per_example = (T + 1) * K * (3 if structure.angle is not None else 1)
    rows_per_chunk = max(1, min(Bsz, CHUNK_ELEMENTS // max(1, per_example)))
    for b0 in range(0, Bsz, rows_per_chunk):
        rows = slice(b0, min(Bsz, b0 + rows_per_chunk))
        part = JacobianStructure(structure.modulus[rows],
                                 None if structure.angle is None else structure.angle[rows],
                                 structure.output_map)
        out[rows] = _pair_norms(CumulativeLogs.of(part), ks, rtol)
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
