"""Lag- and neuron-resolved effective learning rates (docs/maths.md#effective-learning-rates).

Per neuron ``q`` and window ``j = t-ℓ+1..t`` (the ``ℓ`` steps a lag-``ℓ`` gradient
contribution to ``h_t`` is transported through), with retention ``r_j`` and the rest of the
Jacobian's diagonal ``d_j = diag(J_j) - r_j``::

    μ⁰_{t,ℓ,q} = ∏_j r_{j,q}                               (μ_{t,0} = 1)
    μ¹_{t,ℓ,q} = Σ_j (∏_{i≠j} r_{i,q}) d_{j,q}
    μ = μ⁰ + μ¹  (order 1)   or   μ⁰  (order 0)

``μ⁰ + μ¹`` is the first-order expansion of ``∏_j (r_j + d_j)_q = ∏_j diag(J_j)_q`` in ``d``.
Under SGD with step ``η`` the lag-``ℓ`` contribution along neuron ``q`` moves with step
``η μ_{t,ℓ,q}``.

Both orders come from one pass over the lags that treats ``(μ⁰, μ¹)`` as a dual number and
extends every window by one step to the left at once (``p, s -> p·r_j, s·r_j + p·d_j``),
vectorised over batch, end time and neuron. Nothing divides by ``r``, so plain cells
(``r = 0``) are exact. The pass runs in float64: a product of ``ℓ`` positive factors taken
one multiplication at a time has relative error at most ``ℓ·2⁻⁵³``, which ``exp(Σ log r)``
cannot beat (its error grows with ``|Σ log r|``), and float64 keeps ``0.2^120 ≈ 10⁻⁸⁴`` that
float32 would flush to zero.

What the retention means per cell (the state entries it acts on are the **last** ``n`` of
the ``N``-dimensional state):

* ``plain``: ``r = 0``, so ``μ⁰ = 0`` and ``μ¹ = 0`` for ``ℓ ≥ 2`` (``μ¹_{t,1} = diag(J_t)``).
* ``leaky``: ``r = 1-α``, ``μ⁰ = (1-α)^ℓ``.
* ``scalar_gate``: the one gate's ``r = 1-g`` is broadcast to all ``n`` neurons (``μ⁰`` is the
  same for every neuron; ``μ¹`` is not, since ``d`` is per neuron).
* ``multi_gate``: ``r = 1-g`` per neuron.
* ``gru``: ``r = z`` (torch's ``z`` keeps the old state), ``d = diag(J) - z``.
* ``lstm``: the retention is the forget gate ``f`` acting on the cell state ``c``, the last
  ``n`` entries of ``[h; c]``; ``d`` is read from the ``c``–``c`` diagonal block of ``J``.
  That block is exactly ``diag(f)`` (the gates see ``c`` only through ``h``), so ``μ¹ = 0``
  and ``μ = μ⁰ = ∏ f`` along the constant-error carousel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cells.base import RecurrentCell, Trajectory
from ..cells.structure import JacobianStructure
from ..dynamics.jacobians import jacobians
from ..dynamics.structured import (
    CHUNK_ELEMENTS,
    PRECISIONS,
    CumulativeLogs,
    channel_blocks,
    retention_structure_of,
    window_moments,
)
from ..memory import check_dense, dense_budget, describe, tensor_bytes
from ._integers import integer_lags
from ._quantile import quantile
from .anisotropy import abs_std_mean, coefficient_of_variation


def neuron_retention(cell: RecurrentCell, traj: Trajectory) -> Tensor:
    """The retention broadcast to one value per neuron: ``(B, T, n)`` float64.

    A scalar-gate retention ``(B, T, 1)`` is repeated across the ``n = cell.retention_size``
    neurons (``hidden_size`` except for an LSTM with ``proj_size``, whose ``c`` has
    ``cell_size`` entries, and stacks, whose retention is layer 0's).
    """
    r = traj.retention.detach()
    if r.is_complex():
        raise TypeError(f"traj.retention must be real for effective learning rates, got {r.dtype}")
    n = cell.retention_size
    if r.shape[-1] not in (1, n):
        raise ValueError(f"retention must have 1 or retention_size={n} columns, got {r.shape}")
    return r.double().expand(*r.shape[:-1], n)


def retained_diagonal(cell: RecurrentCell, traj: Trajectory, J: Tensor | None = None
                      ) -> Tensor:
    """``diag(J_t)`` on the ``n`` state entries the retention acts on: ``(B, T, n)`` float64.

    Those are the last ``n`` of the ``N`` state entries: the whole state when ``N = n``, the
    cell state ``c`` of an LSTM's ``[h; c]``. ``J`` (``(B, T, N, N)``) is computed when not
    given.
    """
    J = jacobians(cell, traj) if J is None else J
    if J.is_complex():
        raise TypeError(f"J must be real for effective learning rates, got {J.dtype}")
    N, n = J.shape[-1], cell.retention_size
    return J.diagonal(dim1=-2, dim2=-1)[..., N - n:].double()


def window_products(r: Tensor, d: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield, for ``ℓ = 0, 1, …, T``, the window sums of the dual number ``(μ⁰, μ¹)``.

    Args:
        r: ``(B, T, n)`` per-step factors, step ``j`` at index ``j - 1``.
        d: ``(B, T, n)`` per-step first-order parts, or ``None`` for the products only.

    Yields:
        ``(p, s)`` with ``p[:, i] = ∏_{j=t-ℓ+1..t} r_j`` and ``s[:, i] = Σ_j (∏_{i'≠j} r_{i'}) d_j``
        for end times ``t = ℓ + i`` (``i = 0..T-ℓ``), each ``(B, T-ℓ+1, n)``; ``s`` is
        ``None`` when ``d`` is. At ``ℓ = 0`` the empty window gives ``p = 1``, ``s = 0``.
    """
    B, T, n = r.shape
    p = r.new_ones(B, T + 1, n)
    s = None if d is None else r.new_zeros(B, T + 1, n)
    yield p, s
    for lag in range(1, T + 1):
        # the window ending at t = lag + i gains step j = t - lag + 1 = i + 1 (index i)
        new_r = r[:, : T - lag + 1]
        if s is not None:
            s = s[:, 1:] * new_r + p[:, 1:] * d[:, : T - lag + 1]
        p = p[:, 1:] * new_r
        yield p, s


#: Float64 tensors of ``(c, T+1, n)`` the lag pass holds at once per chunk of ``c`` examples
#: (``r``, ``d``, the dual number and the temporaries of one update).
_WINDOW_TENSORS = 10

#: Copies of one example's ``(T, N, N)`` Jacobians the analytic path may hold while forming
#: them (the stack and its intermediates).
_JACOBIAN_COPIES = 3


@dataclass
class RateSummary:
    """The reductions of the effective rates that the envelope and dispersion plots need.

    Attributes:
        lags: ``(L,)`` int64, the lags in the order asked.
        envelope: ``(L,)`` float64, :func:`envelope` of the full tensor.
        neuron_cv: ``(L,)`` float64, :func:`neuron_cv` of the full tensor.
        chunk_size: the examples processed at once.
    """

    lags: Tensor
    envelope: Tensor
    neuron_cv: Tensor
    chunk_size: int


def chunk_bytes(traj: Trajectory, n: int, order: int, with_jacobians: bool, chunk: int) -> int:
    """Estimated bytes one chunk of ``chunk`` examples holds in the lag pass: the window
    tensors, and the chunk's Jacobians when order 1 computes them."""
    T, N = traj.seq_len, traj.states.shape[-1]
    per_example = _WINDOW_TENSORS * (T + 1) * n * 8
    if order == 1 and with_jacobians:
        per_example += _JACOBIAN_COPIES * T * N * N * traj.states.element_size()
    return chunk * per_example


def auto_chunk_size(traj: Trajectory, n: int, order: int, with_jacobians: bool,
                    budget: int | None = None) -> int:
    """The most examples per chunk whose lag pass fits in half the dense budget (at least
    one; the other half is left for what the caller holds)."""
    budget = dense_budget() if budget is None else budget
    one = chunk_bytes(traj, n, order, with_jacobians, 1)
    return max(1, min(traj.batch_size, budget // 2 // max(1, one)))


def times_beyond_length(traj: Trajectory) -> Tensor:
    """``(B, T+1)`` bool: ``True`` at times ``t`` past the sequence's length (``t = 0`` is
    always within it), from :attr:`Trajectory.step_mask`."""
    inside = traj.step_mask
    return torch.cat([inside.new_zeros(inside.shape[0], 1), ~inside], dim=1)


def rate_windows(cell: RecurrentCell, traj: Trajectory, lags: list[int], order: int,
                 J: Tensor | None, chunk_size: int
                 ) -> Iterator[tuple[slice, int, list[int], Tensor]]:
    """Stream the effective rates chunk of examples by chunk, lag by lag.

    Yields:
        ``(rows, lag, positions, times, mu)``: ``mu`` ``(c, len(times), n)`` float64 holds
        ``μ_{t,lag,q}`` of the examples ``rows`` for the end times ``t`` in the slice
        ``times`` (within ``lag..T``; NaN at times past a sequence's length), for the entries
        ``positions`` of ``lags``. The dense pass yields all of ``lag..T`` at once, the
        structured one cache-sized blocks of end times. Lags longer than the sequence are
        not yielded. Only one chunk's tensors are held at a time.
    """
    T = traj.seq_len
    wanted: dict[int, list[int]] = {}
    for i, lag in enumerate(lags):
        if lag <= T:
            wanted.setdefault(lag, []).append(i)
    for start in range(0, traj.batch_size, chunk_size):
        rows = slice(start, min(start + chunk_size, traj.batch_size))
        sub = traj.examples(rows)
        beyond = times_beyond_length(sub)
        for lag, times, mu in _lag_rates(cell, sub, sorted(wanted), order,
                                         None if J is None else J[rows]):
            past = beyond[:, times, None]
            yield (rows, lag, wanted[lag], times,
                   mu.masked_fill(past, math.nan) if past.any() else mu)


def _lag_rates(cell: RecurrentCell, traj: Trajectory, lags: list[int], order: int,
               J: Tensor | None) -> Iterator[tuple[int, slice, Tensor]]:
    """``(lag, times, μ (B, len(times), n))`` for the sorted ``lags``: from the cumulative
    log-sums of the cell's :meth:`~gatescope.RecurrentCell.retention_structure` when it
    declares one (docs/maths.md#structured-jacobians; ``J`` is not needed), in blocks of end
    times of :data:`~gatescope.dynamics.structured.CHUNK_ELEMENTS` values (cache-sized: each
    lag is a few passes over them); else by the dual-number pass over every lag up to the
    last, all end times at once."""
    T = traj.seq_len
    structure = retention_structure_of(cell, traj)
    if structure is not None:
        cumulative = CumulativeLogs.of(structure)
        step = max(1, CHUNK_ELEMENTS // max(1, traj.batch_size * cell.retention_size))
        for lag in lags:
            for t0 in range(lag, T + 1, step):
                times = slice(t0, min(T + 1, t0 + step))
                yield lag, times, cumulative.rates(lag, order, times)
        return
    r = neuron_retention(cell, traj)
    d = None if order == 0 else retained_diagonal(cell, traj, J) - r
    wanted, last = set(lags), max(lags, default=-1)
    for lag, (p, s) in enumerate(window_products(r, d)):
        if lag > last:
            break
        if lag in wanted:
            yield lag, slice(lag, T + 1), p if s is None else p + s


def _needs_jacobians(cell: RecurrentCell, traj: Trajectory, J: Tensor | None) -> bool:
    """Whether order 1 builds the Jacobians: not given, and no structure declared."""
    return J is None and cell.retention_structure(traj) is None


def check_chunk_size(chunk_size) -> None:
    """Refuse a ``chunk_size`` (examples per chunk) that is neither ``None`` nor an int
    ``>= 1``, before any compute."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(
            chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1 (examples per chunk), "
                         f"got {chunk_size!r}")


def _rate_arguments(traj: Trajectory, lags, order: int,
                    chunk_size: int | None) -> tuple[list[int], int | None]:
    """Validate the arguments the rate functions share, before any compute."""
    if order not in (0, 1):
        raise ValueError(f"order must be 0 or 1, got {order!r}")
    check_chunk_size(chunk_size)
    lags = list(range(traj.seq_len + 1)) if lags is None else integer_lags(lags)
    return lags, chunk_size


def effective_learning_rates(cell: RecurrentCell, traj: Trajectory,
                             lags: Sequence[int] | None = None, order: int = 1,
                             J: Tensor | None = None, chunk_size: int | None = None) -> Tensor:
    """Lag- and neuron-resolved effective learning rates ``μ_{t,ℓ,q}``.

    Args:
        cell: the cell that produced ``traj``.
        traj: its trajectory (``cell.unroll(u)``); only detached values are read. With
            ``traj.lengths`` set, times past a sequence's length are NaN (excluded by
            :func:`envelope` and :func:`neuron_cv`).
        lags: the lags ``ℓ ≥ 0`` to report, in the order given (ints, or integer tensors
            of one element); ``None`` for ``0..T``.
        order: ``0`` for ``μ⁰`` (retention products only, no Jacobians), ``1`` for
            ``μ⁰ + μ¹``.
        J: the trajectory's Jacobians ``(B, T, N, N)`` if already computed (order 1 reads
            their diagonal); computed when needed otherwise, one chunk of examples at a time.
            A cell that declares its :meth:`~gatescope.RecurrentCell.jacobian_structure`
            needs none: its rates come from cumulative log-sums in ``O(B·T·n)`` per lag
            (docs/maths.md#structured-jacobians), and ``J`` is ignored.
        chunk_size: examples processed at once (bounds the Jacobians and window tensors held
            besides the result); ``None`` for the whole batch. For the envelope and the
            neuron dispersion without the full result use :func:`effective_rate_summary`.

    Returns:
        ``(B, T+1, L, n)`` float64: ``mu[b, t, i, q] = μ_{t, lags[i], q}`` for the window
        ``j = t-ℓ+1..t``, ``t = 0..T`` (tensor index = time); NaN where ``ℓ > t`` and at
        times past the sequence's length; ``μ_{t,0} = 1``. ``n = cell.retention_size`` (see the
        module notes for the LSTM).

    Raises:
        TypeError: for a lag that is not an integer (a float such as ``1.7``, a bool).
        ValueError: for a negative lag, an ``order`` other than 0 and 1, or a bad
            ``chunk_size``.
        DenseBudgetExceeded: before any compute, when the result and one chunk's work exceed
            :func:`gatescope.dense_budget`.
    """
    lags, chunk_size = _rate_arguments(traj, lags, order, chunk_size)
    B, T, n = traj.batch_size, traj.seq_len, cell.retention_size
    chunk = B if chunk_size is None else min(chunk_size, B)
    shape = (B, T + 1, len(lags), n)
    work = chunk_bytes(traj, n, order, _needs_jacobians(cell, traj, J), chunk)
    check_dense(tensor_bytes(shape, 8) + work,
                f"gs.effective_learning_rates: mu of {describe(shape, torch.float64)} "
                f"(and {chunk} examples' work at once)",
                "gs.effective_rate_summary(cell, traj, lags, chunk_size=) for the envelope and "
                "the neuron CV without the full tensor; chunk_size= bounds the work besides "
                "the result; or pass fewer lags")
    out = torch.full(shape, math.nan, dtype=torch.float64, device=traj.states.device)
    for rows, _, positions, times, mu in rate_windows(cell, traj, lags, order, J,
                                                      max(1, chunk)):
        out[rows, times, positions] = mu.unsqueeze(2)
    return out


def effective_rate_summary(cell: RecurrentCell, traj: Trajectory,
                           lags: Sequence[int] | None = None, order: int = 1,
                           J: Tensor | None = None, chunk_size: int | None = None,
                           precision: str = "float64") -> RateSummary:
    """:func:`envelope` and :func:`neuron_cv` of the effective rates, streamed.

    Equal to ``envelope(mu)`` and ``neuron_cv(mu)`` of ``mu = effective_learning_rates(...)``
    (to rounding), without holding ``mu``: the rates are formed ``chunk_size`` examples and
    one lag at a time; the envelope is accumulated as a running sum and count, and the
    per-``(b, t)`` coefficients of variation ``(B, T+1, L)`` (``n`` times smaller than
    ``mu``) are kept for their exact median. Peak memory is that ``(B, T+1, L)`` tensor
    plus one chunk's work (``O(chunk_size · T · (n + N²))`` with Jacobians,
    ``O(chunk_size · T · n)`` without). Times past a sequence's length are excluded.

    A cell that declares its structure takes a cache-blocked path instead
    (:func:`_structured_summary`): channel block by channel block, all lags, the blocks'
    means and squared deviations pooled exactly; memory is then a few ``(L, B, T+1)``
    tensors and one cache-sized block.

    Args:
        cell, traj, lags, order, J: as for :func:`effective_learning_rates`.
        chunk_size: examples per chunk; ``None`` picks the most whose work fits in half the
            dense budget (:func:`gatescope.dense_budget`).
        precision: ``"float64"`` (the default), or ``"float32"`` for the rates of a
            structured cell: the anchored products and their per-block moments in float32
            (the log-sums, scales, pooling and results stay float64) at ~1e-7 relative
            error per entry (1e-5 on the results). It can save time only where most
            windows stay within float32's range (retentions near 1); for fast-decaying
            channels, whose windows leave that range and then take one ``exp`` per entry,
            it is slower (a Mamba layer: 13.0 s against 11.1 s for float64, one thread;
            ``bench_structured.py``).
            Cells without a structure always compute in float64.

    Returns:
        A :class:`RateSummary`.

    Raises:
        ValueError: as :func:`effective_learning_rates`, and for a ``precision`` other than
            ``"float64"`` and ``"float32"``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    lags, chunk_size = _rate_arguments(traj, lags, order, chunk_size)
    B, T, n = traj.batch_size, traj.seq_len, cell.retention_size
    if chunk_size is None:
        chunk_size = auto_chunk_size(traj, n, order, _needs_jacobians(cell, traj, J))
    structure = retention_structure_of(cell, traj)
    if structure is not None:
        mean, cv = _structured_summary(structure, traj, lags, order, chunk_size, precision)
        return RateSummary(torch.tensor(lags, dtype=torch.long), mean,
                           quantile(cv.flatten(0, 1), 0.5, dim=0), chunk_size)
    L = len(lags)
    device = traj.states.device
    cv = torch.full((B, T + 1, L), math.nan, dtype=torch.float64, device=device)
    total = torch.zeros(L, dtype=torch.float64, device=device)
    count = torch.zeros(L, dtype=torch.float64, device=device)
    for rows, _, positions, times, mu in rate_windows(cell, traj, lags, order, J, chunk_size):
        # a time past its length is NaN for all n neurons, so each (b, t) row is valid or
        # NaN as a whole: the row means carry the envelope's sum and count (one pass)
        std, mean = abs_std_mean(mu)
        total[positions] += mean.nansum() * n
        count[positions] += (~mean.isnan()).sum() * n
        cv[rows, times, positions] = (std / mean).unsqueeze(-1)
    mean = torch.where(count > 0, total / count.clamp_min(1), math.nan)
    return RateSummary(torch.tensor(lags, dtype=torch.long), mean,
                       quantile(cv.flatten(0, 1), 0.5, dim=0), chunk_size)


def _structured_summary(structure: JacobianStructure, traj: Trajectory, lags: list[int],
                        order: int, chunk_size: int, precision: str
                        ) -> tuple[Tensor, Tensor]:
    """The envelope ``(L,)`` and the per-``(b, t)`` CVs ``(B, T+1, L)`` of a structured cell
    (docs/maths.md#structured-jacobians), channel block by channel block.

    :func:`~gatescope.dynamics.structured.window_moments` gives each block's mean and sum of
    squared deviations of ``|μ|`` per ``(lag, b, t)`` over all lags while the block's
    prefix sums sit in cache; :func:`merge_moments` pools the blocks exactly, so the CV
    ``√(M2/n)/mean`` is the two-pass value over all ``n`` entries. ``precision`` is that of
    the blocks' anchored tiles; the pooling is float64. Times past a sequence's length are
    then NaN (left out of the envelope's mean and the CV's median), lags past ``T`` NaN.
    """
    T = traj.seq_len
    unique = sorted({lag for lag in lags if lag <= T})
    B = traj.batch_size
    shape = (len(unique), B, T + 1)
    mean = torch.full(shape, math.nan, dtype=torch.float64, device=structure.modulus.device)
    m2 = torch.full_like(mean, math.nan)
    for start in range(0, B, chunk_size):
        rows = slice(start, min(start + chunk_size, B))
        part = JacobianStructure(structure.modulus[rows],
                                 None if structure.angle is None else structure.angle[rows])
        pooled = None
        for logs in channel_blocks(part):
            block = window_moments(logs, unique, order, precision)
            pooled = block if pooled is None else merge_moments(pooled, block)
        mean[:, rows], m2[:, rows], n = pooled
    cv = (m2 / n).sqrt_().div_(mean)
    beyond = times_beyond_length(traj).to(mean.device)
    mean.masked_fill_(beyond, math.nan)
    cv.masked_fill_(beyond, math.nan)
    at = [unique.index(lag) if lag <= T else len(unique) for lag in lags]
    envelope = torch.cat([mean.nanmean((1, 2)), mean.new_full((1,), math.nan)])[at]
    cv = torch.cat([cv, cv.new_full((1, B, T + 1), math.nan)])[at]
    return envelope, cv.permute(1, 2, 0)


def merge_moments(a: tuple[Tensor, Tensor, int], b: tuple[Tensor, Tensor, int]
                  ) -> tuple[Tensor, Tensor, int]:
    """The ``(mean, M2, n)`` of the union of two disjoint sets of entries from each one's
    (Chan, Golub & LeVeque's pairwise update, elementwise over the leading shape):
    ``δ = mean_b - mean_a``, ``mean = mean_a + δ n_b/n``, ``M2 = M2_a + M2_b + δ² n_a n_b/n``
    with ``n = n_a + n_b``. Exact up to rounding even where the spread is tiny against the
    mean (unlike ``Σx² - (Σx)²/n``)."""
    mean_a, m2_a, n_a = a
    mean_b, m2_b, n_b = b
    n = n_a + n_b
    delta = mean_b - mean_a
    return mean_a + delta * (n_b / n), m2_a + m2_b + delta.square() * (n_a * n_b / n), n


def envelope(mu: Tensor) -> Tensor:
    """The lag envelope ``f(ℓ) = mean_{b, t ≥ ℓ, q} |μ_{t,ℓ,q}|``.

    Args:
        mu: ``(B, T+1, L, n)`` from :func:`effective_learning_rates` (NaN where ``ℓ > t``
            and past a sequence's length: NaN entries are excluded from the mean).

    Returns:
        ``(L,)``; NaN for a lag longer than the sequence.
    """
    return mu.abs().nanmean((0, 1, 3))


def neuron_cv(mu: Tensor) -> Tensor:
    """How unequal the effective rates are across neurons: the coefficient of variation of
    ``|μ_{t,ℓ,·}|`` over the ``n`` neurons, median over examples and end times ``t ≥ ℓ``.

    Args:
        mu: ``(B, T+1, L, n)`` from :func:`effective_learning_rates` (NaN where ``ℓ > t``
            and past a sequence's length: those ``(b, t)`` are excluded from the median).

    Returns:
        ``(L,)`` float64.
    """
    cv = coefficient_of_variation(mu)  # (B, T+1, L), NaN where ℓ > t
    return quantile(cv.flatten(0, 1), 0.5, dim=0)


def permuted_neuron_cv(r: Tensor, lags: Sequence[int], generator: torch.Generator,
                       beyond: Tensor | None = None) -> Tensor:
    """The null of neuron-specific rates: :func:`neuron_cv` of ``μ⁰`` after the neuron index
    of the retention is permuted at random, independently at every (example, time) step.

    Each step keeps its gate values (so the rates' mean and every step's spread across
    neurons are those of the gates), but a neuron no longer keeps its own gate from one step
    to the next: ``μ⁰_{t,ℓ,q} = ∏_j r_{j,π_j(q)}``. Dispersion of the real ``μ⁰`` beyond this
    null comes from persistent per-neuron time scales. At ``ℓ = 1`` the window is one step,
    whose CV a permutation leaves unchanged, so the null equals the real CV there.

    Args:
        r: ``(B, T, n)`` retention, one value per neuron (:func:`neuron_retention`).
        lags: the lags ``ℓ ≥ 0`` (ints), in the order wanted.
        generator: a CPU generator drawing the permutations (seeded: reruns give the same
            numbers).
        beyond: ``(B, T+1)`` bool, ``True`` at times past a sequence's length
            (:func:`times_beyond_length`; those times are left out), or ``None``.

    Returns:
        ``(L,)`` float64; NaN for a lag longer than the sequence.
    """
    lags = integer_lags(lags)
    if r.dim() != 3:
        raise ValueError(f"r must be (B, T, n) retention, got shape {tuple(r.shape)}")
    B, T, n = r.shape
    keys = torch.rand(B, T, n, generator=generator, dtype=torch.float64)
    shuffled = r.double().gather(-1, keys.argsort(-1).to(r.device))
    mu = r.new_full((B, T + 1, len(lags), n), math.nan, dtype=torch.float64)
    wanted = {lag: [i for i, x in enumerate(lags) if x == lag] for lag in lags if lag <= T}
    for lag, (p, _) in enumerate(window_products(shuffled)):
        if lag > max(wanted, default=-1):
            break
        if lag in wanted:
            p = p if beyond is None else p.masked_fill(beyond[:, lag:, None], math.nan)
            mu[:, lag:, wanted[lag]] = p.unsqueeze(2)
    return neuron_cv(mu)


def time_scales(cell: RecurrentCell, traj: Trajectory) -> Tensor:
    """Per-neuron time scales ``τ_q = -1 / log r̄_q``, ``r̄_q`` the mean retention.

    ``r̄_q`` averages over the batch and all steps within each sequence's length; ``τ_q`` is
    the lag at which the geometric kernel ``r̄_q^ℓ`` (the zeroth-order rate with the retention
    frozen at its mean) falls by ``e``. ``τ = 0`` for ``r̄ = 0`` (plain), ``∞`` for ``r̄ = 1``;
    leaky: ``-1/log(1-α)``.

    Returns:
        ``(n,)`` float64 (a scalar gate's value repeated across neurons).
    """
    T = traj.seq_len
    # cache-sized blocks of steps, so a float32 retention is never copied whole to float64
    block = max(1, CHUNK_ELEMENTS // max(1, traj.batch_size * cell.retention_size))
    total = count = 0
    for t0 in range(0, T, block):
        part = traj.steps(t0, min(T, t0 + block))
        r = neuron_retention(cell, part)
        inside = part.step_mask.to(r.device).unsqueeze(-1).double()  # steps within lengths
        total = total + (r * inside).sum((0, 1))
        count = count + inside.sum((0, 1))
    r = total / count
    return torch.where(r >= 1, torch.inf, -1.0 / torch.log(r))
