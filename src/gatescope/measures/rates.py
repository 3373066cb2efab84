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
import operator
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from ..cells.base import RecurrentCell, Trajectory
from ..dynamics.jacobians import jacobians
from ._quantile import quantile
from .anisotropy import coefficient_of_variation


def neuron_retention(cell: RecurrentCell, traj: Trajectory) -> Tensor:
    """The retention broadcast to one value per neuron: ``(B, T, n)`` float64.

    A scalar-gate retention ``(B, T, 1)`` is repeated across the ``n = hidden_size`` neurons.
    """
    r = traj.retention.detach()
    if r.is_complex():
        raise TypeError(f"traj.retention must be real for effective learning rates, got {r.dtype}")
    n = cell.hidden_size
    if r.shape[-1] not in (1, n):
        raise ValueError(f"retention must have 1 or hidden_size={n} columns, got {r.shape}")
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
    N, n = J.shape[-1], cell.hidden_size
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


def effective_learning_rates(cell: RecurrentCell, traj: Trajectory,
                             lags: Sequence[int] | None = None, order: int = 1,
                             J: Tensor | None = None) -> Tensor:
    """Lag- and neuron-resolved effective learning rates ``μ_{t,ℓ,q}``.

    Args:
        cell: the cell that produced ``traj``.
        traj: its trajectory (``cell.unroll(u)``); only detached values are read.
        lags: the lags ``ℓ ≥ 0`` to report, in the order given (ints, or integer tensors
            of one element); ``None`` for ``0..T``.
        order: ``0`` for ``μ⁰`` (retention products only, no Jacobians), ``1`` for
            ``μ⁰ + μ¹``.
        J: the trajectory's Jacobians ``(B, T, N, N)`` if already computed (order 1 reads
            their diagonal); computed when needed otherwise.

    Returns:
        ``(B, T+1, L, n)`` float64: ``mu[b, t, i, q] = μ_{t, lags[i], q}`` for the window
        ``j = t-ℓ+1..t``, ``t = 0..T`` (tensor index = time); NaN where ``ℓ > t``;
        ``μ_{t,0} = 1``. ``n = hidden_size`` (see the module notes for the LSTM).

    Raises:
        TypeError: for a lag that is not an integer (a float such as ``1.7``, a bool).
        ValueError: for a negative lag or an ``order`` other than 0 and 1.
    """
    if order not in (0, 1):
        raise ValueError(f"order must be 0 or 1, got {order!r}")
    T = traj.seq_len
    lags = list(range(T + 1)) if lags is None else integer_lags(lags)
    r = neuron_retention(cell, traj)
    d = retained_diagonal(cell, traj, J) - r if order == 1 else None
    B, n = r.shape[0], r.shape[-1]
    out = r.new_full((B, T + 1, len(lags), n), math.nan)
    wanted: dict[int, list[int]] = {}
    for i, lag in enumerate(lags):
        wanted.setdefault(lag, []).append(i)
    last = max((x for x in wanted if x <= T), default=-1)
    for lag, (p, s) in enumerate(window_products(r, d)):
        if lag > last:
            break
        if lag in wanted:
            out[:, lag:, wanted[lag]] = (p if s is None else p + s).unsqueeze(2)
    return out


def integer_lags(lags: Sequence[int]) -> list[int]:
    """``lags`` as a list of ints ``>= 0``, refusing rather than truncating non-integers.

    Accepts Python and NumPy ints and integer-dtype tensors of one element (so an integer
    tensor of lags works too); refuses floats (``1.7`` is not lag 1), float tensors and bools.
    """
    try:
        out = [_integer(x) for x in lags]
    except TypeError as err:
        raise TypeError(f"lags must be a sequence of ints, got {lags!r}: {err}") from None
    if any(x < 0 for x in out):
        raise ValueError(f"lags must be >= 0, got {out}")
    return out


def _integer(x) -> int:
    """``x`` as an int; ``TypeError`` for a bool or anything that is not an integer."""
    if isinstance(x, bool) or (isinstance(x, Tensor) and x.dtype == torch.bool):
        raise TypeError(f"{x!r} is a bool, not an integer lag")
    try:
        return operator.index(x)
    except TypeError:
        raise TypeError(f"{x!r} ({type(x).__name__}) is not an integer lag") from None


def envelope(mu: Tensor) -> Tensor:
    """The lag envelope ``f(ℓ) = mean_{b, t ≥ ℓ, q} |μ_{t,ℓ,q}|``.

    Args:
        mu: ``(B, T+1, L, n)`` from :func:`effective_learning_rates` (NaN where ``ℓ > t``).

    Returns:
        ``(L,)``; NaN for a lag longer than the sequence.
    """
    return mu.abs().nanmean((0, 1, 3))


def neuron_cv(mu: Tensor) -> Tensor:
    """How unequal the effective rates are across neurons: the coefficient of variation of
    ``|μ_{t,ℓ,·}|`` over the ``n`` neurons, median over examples and end times ``t ≥ ℓ``.

    Args:
        mu: ``(B, T+1, L, n)`` from :func:`effective_learning_rates` (NaN where ``ℓ > t``).

    Returns:
        ``(L,)`` float64.
    """
    cv = coefficient_of_variation(mu)  # (B, T+1, L), NaN where ℓ > t
    return quantile(cv.flatten(0, 1), 0.5, dim=0)


def time_scales(cell: RecurrentCell, traj: Trajectory) -> Tensor:
    """Per-neuron time scales ``τ_q = -1 / log r̄_q``, ``r̄_q`` the mean retention.

    ``r̄_q`` averages over the batch and all steps; ``τ_q`` is the lag at which the geometric
    kernel ``r̄_q^ℓ`` (the zeroth-order rate with the retention frozen at its mean) falls by
    ``e``. ``τ = 0`` for ``r̄ = 0`` (plain), ``∞`` for ``r̄ = 1``; leaky: ``-1/log(1-α)``.

    Returns:
        ``(n,)`` float64 (a scalar gate's value repeated across neurons).
    """
    r = neuron_retention(cell, traj).mean((0, 1))
    return torch.where(r >= 1, torch.inf, -1.0 / torch.log(r))
