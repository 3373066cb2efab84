"""Matrix-free transport norms ``‖M_{t,t-ℓ}‖_2`` at sampled end times and lags.

``M_{t,k} = J_t ⋯ J_{k+1}`` is never formed: ``M v`` is a chain of ``ℓ`` one-step JVPs and
``Mᴴ w`` a chain of VJPs (:mod:`gatescope.dynamics.step_products`), and ``σ_1(M)²`` is the top
eigenvalue of ``MᴴM``, found by Lanczos iteration with full reorthogonalisation, for every
example and every (end time, lag) pair at once (docs/maths.md#matrix-free-transport).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cells.base import RecurrentCell, Trajectory
from .jacobians import check_trajectory
from .spectral import RTOL, wide_dtype
from .step_products import point_jvp, point_vjp

#: End times drawn when none are given.
DEFAULT_STARTS = 5

#: Lanczos steps at most when ``max_iter`` is not given (and never more than ``N``).
DEFAULT_MAX_ITER = 300


@dataclass(frozen=True)
class TransportNorms:
    """Spectral norms of sampled transports, with their certificate.

    ``σ = ‖M_{t,t-ℓ}‖_2`` for every example, end time ``t = starts[s]`` and lag
    ``ℓ = lags[l]``. ``lower ≤ σ`` always (a Rayleigh quotient of ``MᴴM``); ``residual``
    brackets the eigenvalue of ``MᴴM`` nearest ``θ = lower²`` in ``[θ - r, θ + r]``, so
    ``σ ≤ upper`` once Lanczos has found the top eigenvalue (it does from a random start
    unless that start is orthogonal to the top singular vector; it is exact when the Krylov
    space is exhausted). ``converged`` entries have ``upper ≤ lower·sqrt(1 + rtol)``.

    Attributes:
        norms: ``(B, S, L)`` float64, ``‖M_{t,t-ℓ}‖_2`` (equal to ``lower``).
        starts: ``(S,)`` int64 end times ``t``.
        lags: ``(L,)`` int64 lags ``ℓ``.
        lower: ``(B, S, L)`` float64 certified lower bound.
        upper: ``(B, S, L)`` float64 upper bound ``sqrt(θ + residual)``.
        residual: ``(B, S, L)`` float64 ``‖MᴴM v - θ v‖`` of the unit vector ``v``.
        vectors: ``(B, S, L, N)`` the unit ``v`` (float64, complex128 for complex states),
            the estimate of the top right singular vector.
        converged: ``(B, S, L)`` bool, ``residual ≤ rtol·θ`` within ``max_iter`` steps.
        iterations: ``(B, S, L)`` int64 Lanczos steps taken by each entry.
    """

    norms: Tensor
    starts: Tensor
    lags: Tensor
    lower: Tensor
    upper: Tensor
    residual: Tensor
    vectors: Tensor
    converged: Tensor
    iterations: Tensor


def _int_list(name: str, values, allowed: str) -> list[int]:
    """``values`` (an int, a sequence of ints or a 1-D integer tensor) as a non-empty list of
    ints; a clear error naming ``name`` and the ``allowed`` range otherwise."""
    if isinstance(values, Tensor) and (values.dim() > 1 or values.is_floating_point()
                                       or values.is_complex() or values.dtype == torch.bool):
        raise TypeError(f"{name} must be ints with {allowed}; got a tensor of dtype "
                        f"{values.dtype} and shape {tuple(values.shape)}")
    if hasattr(values, "tolist") and getattr(values, "ndim", 0) == 1:  # tensors, arrays
        values = values.tolist()
    elif not isinstance(values, Sequence) or isinstance(values, str):
        values = [values]
    try:
        out = [operator.index(v) for v in values if not isinstance(v, bool)]
    except TypeError:
        out = []
    if len(out) != len(values) or not out:
        raise TypeError(f"{name} must be a non-empty list of ints with {allowed}; "
                        f"got {values!r}")
    return out


def _check_times(name: str, values: list[int], low: int, high: int, allowed: str) -> None:
    bad = [v for v in values if not low <= v <= high]
    if bad:
        raise ValueError(f"{name} must be ints with {allowed}; got {bad}")


def default_starts(T: int, max_lag: int, count: int = DEFAULT_STARTS) -> list[int]:
    """``count`` evenly spaced end times in ``[max_lag, T]`` (fewer when there are fewer)."""
    points = torch.linspace(max_lag, T, min(count, T - max_lag + 1), dtype=torch.float64)
    return sorted(set(points.round().long().tolist()))


def _check_settings(rtol, max_iter, N: int) -> int:
    """Validate ``rtol`` and ``max_iter``; the number of Lanczos steps to allow."""
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    if max_iter is None:
        return min(N, DEFAULT_MAX_ITER)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    return min(N, max_iter)


class _Windows:
    """The pairs' windows ``(t-ℓ, t]``, sorted by descending lag so that the pairs still
    running at chain step ``j`` (those with ``ℓ > j``) are a prefix; each chain step's points
    ``(h_{k+j}, u_{k+j+1})`` are gathered once."""

    def __init__(self, cell: RecurrentCell, traj: Trajectory, ends: Tensor, lags: Tensor):
        self.cell = cell
        self.order = torch.argsort(lags, descending=True, stable=True)
        ends, lags = ends[self.order], lags[self.order]
        h, u = traj.previous_states.detach(), traj.inputs.detach()
        keep = traj.step_mask
        self.points = []
        for j in range(int(lags.max())):
            count = int((lags > j).sum())
            index = (ends[:count] - lags[:count] + j).to(h.device)  # step k+j+1 at index k+j
            self.points.append((h[:, index], u[:, index], keep[:, index]))
        self.pairs = torch.arange(len(lags), device=h.device)

    def select(self, active: Tensor) -> _Windows:
        """The windows of the pairs ``active`` (``(P,)`` bool over this object's pairs)."""
        out = object.__new__(_Windows)
        out.cell, out.order, out.pairs = self.cell, self.order, self.pairs[active]
        out.points = []
        for h, u, keep in self.points:
            chosen = active[: h.shape[1]]
            if chosen.any():
                out.points.append((h[:, chosen], u[:, chosen], keep[:, chosen]))
        return out

    def transport(self, X: Tensor) -> Tensor:
        """``M X`` for each pair: ``X`` ``(B, P, N)`` in the sorted pair order."""
        for h, u, keep in self.points:
            c = h.shape[1]
            X = torch.cat([point_jvp(self.cell, h, u, X[:, :c], keep), X[:, c:]], 1)
        return X

    def adjoint(self, X: Tensor) -> Tensor:
        """``Mᴴ X`` for each pair."""
        for h, u, keep in reversed(self.points):
            c = h.shape[1]
            X = torch.cat([point_vjp(self.cell, h, u, X[:, :c], keep), X[:, c:]], 1)
        return X


class _Gram:
    """``X ↦ MᴴM X`` for every pair, computed only for the pairs some example still iterates
    on (zeros for the others, whose values are frozen); the windows shrink with them."""

    def __init__(self, windows: _Windows, state_dtype: torch.dtype) -> None:
        self.all = self.part = windows
        self.state_dtype = state_dtype

    def __call__(self, X: Tensor, running: Tensor) -> Tensor:
        active = running.any(0)
        if active.sum() < self.part.pairs.numel():
            self.part = self.all.select(active)
        pairs = self.part.pairs
        Y = torch.zeros_like(X)
        Y[:, pairs] = self.part.adjoint(self.part.transport(X[:, pairs].to(self.state_dtype))
                                        ).to(X.dtype)
        return Y


def _inner(a: Tensor, b: Tensor) -> Tensor:
    """``Re ⟨a, b⟩`` over the last dimension (conjugating ``a``)."""
    return (a.conj() * b).real.sum(-1)


def _top_eigenpairs(T_diag: list[Tensor], T_off: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Top eigenvalue and its eigenvector of each ``(…, j, j)`` tridiagonal Lanczos matrix."""
    alphas, j = torch.stack(T_diag, -1), len(T_diag)
    Tm = torch.diag_embed(alphas)
    if j > 1:
        off = torch.stack(T_off, -1)
        Tm = Tm + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    values, vectors = torch.linalg.eigh(Tm)
    return values[..., -1], vectors[..., -1]


def lanczos_top(gram, start: Tensor, rtol: float, max_iter: int) -> dict[str, Tensor]:
    """Top eigenpair of each Hermitian operator ``gram(X, running)`` acting on ``(B, P, N)``
    vectors, by Lanczos with full reorthogonalisation from the unit vectors ``start``; an
    entry stops (its values frozen) once its residual ``β_j |s_j| ≤ rtol·θ``."""
    q = start
    basis = [q]
    diag, off = [], []
    shape = start.shape[:-1]
    theta = start.new_zeros(shape, dtype=torch.float64)
    residual = torch.full_like(theta, math.inf)
    iterations = torch.zeros(shape, dtype=torch.int64, device=start.device)
    done = torch.zeros(shape, dtype=torch.bool, device=start.device)
    ritz = start
    for j in range(max_iter):
        w = gram(q, ~done)
        alpha = _inner(q, w)
        w = w - alpha.unsqueeze(-1) * q
        Q = torch.stack(basis, -1)
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - (Q @ (Q.mH @ w.unsqueeze(-1))).squeeze(-1)
        beta = torch.linalg.vector_norm(w, dim=-1)
        diag.append(alpha)
        top, s = _top_eigenpairs(diag, off)
        running = ~done
        theta = torch.where(running, top, theta)
        residual = torch.where(running, beta * s[..., -1].abs(), residual)
        iterations = torch.where(running, j + 1, iterations)
        ritz = torch.where(running.unsqueeze(-1), (Q @ s.to(Q.dtype).unsqueeze(-1)).squeeze(-1),
                           ritz)
        done = done | (residual <= rtol * theta)
        if bool(done.all()) or j + 1 == max_iter:
            break
        off.append(beta)
        q = torch.where(beta.unsqueeze(-1) > 0, w / beta.clamp_min(1e-300).unsqueeze(-1), 0)
        basis.append(q)
    return {"theta": theta.clamp_min(0), "residual": residual, "vectors": ritz,
            "converged": done, "iterations": iterations}


def transport_norms(cell: RecurrentCell, traj: Trajectory, lags, starts=None, *,
                    rtol: float = RTOL, max_iter: int | None = None,
                    generator: torch.Generator | None = None) -> TransportNorms:
    """``‖M_{t,t-ℓ}‖_2`` at the end times ``starts`` and the lags ``lags``, matrix-free.

    Every (end time, lag) pair of every example runs one Lanczos iteration on ``MᴴM``, all at
    once: ``M v`` chains ``ℓ`` step JVPs (one step's Jacobian applied at each time, over all
    examples and pairs together) and ``Mᴴ w`` chains the VJPs. Memory is
    ``O(B·S·L·N)`` per Lanczos step (plus the Krylov basis, ``max_iter`` such vectors); no
    Jacobian is formed.

    Args:
        cell: the cell that produced ``traj``.
        traj: its trajectory; past a sequence's length the steps are held (``J = I``).
        lags: ``(L,)`` ints ``0 ≤ ℓ ≤ T`` (an int, a list or a 1-D integer tensor).
        starts: ``(S,)`` end times ``t`` with ``max(lags) ≤ t ≤ T``; default
            :data:`DEFAULT_STARTS` evenly spaced ones (:func:`default_starts`).
        rtol: relative tolerance: an entry converges once ``upper ≤ lower·sqrt(1 + rtol)``.
        max_iter: Lanczos steps at most (default ``min(N, 300)``; never more than ``N``, at
            which the Krylov space is exhausted and the value exact).
        generator: for the random start vectors (default: a fixed seed, so calls repeat).

    Returns:
        :class:`TransportNorms` with ``norms`` ``(B, S, L)``; entries that did not converge
        within ``max_iter`` are flagged in ``converged``, not hidden.

    Raises:
        ValueError: for a trajectory of another cell, ``lags``/``starts`` out of range, or a
            bad ``rtol``/``max_iter``, before any compute.
        TypeError: for ``lags``/``starts`` that are not ints.
    """
    check_trajectory(cell, traj)
    T, N = traj.seq_len, traj.states.shape[-1]
    lag_list = _int_list("lags", lags, f"0 <= lag <= T={T}")
    _check_times("lags", lag_list, 0, T, f"0 <= lag <= T={T}")
    max_lag = max(lag_list)
    allowed = f"max(lags)={max_lag} <= t <= T={T}"
    start_list = default_starts(T, max_lag) if starts is None else _int_list("starts", starts,
                                                                             allowed)
    _check_times("starts", start_list, max_lag, T, allowed)
    steps = _check_settings(rtol, max_iter, N)

    device = traj.states.device
    starts_t = torch.tensor(start_list, dtype=torch.int64)
    lags_t = torch.tensor(lag_list, dtype=torch.int64)
    S, L, Bsz = len(start_list), len(lag_list), traj.batch_size
    ends = starts_t.repeat_interleave(L)  # pair p = s * L + l
    windows = _Windows(cell, traj, ends, lags_t.repeat(S))

    state_dtype = traj.states.dtype
    dtype = wide_dtype(state_dtype)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    start = torch.randn(Bsz, S * L, N, generator=gen, dtype=dtype).to(device)
    start = start / torch.linalg.vector_norm(start, dim=-1, keepdim=True)

    result = lanczos_top(_Gram(windows, state_dtype), start, float(rtol), steps)
    unsort = torch.argsort(windows.order)

    def per_pair(x: Tensor) -> Tensor:
        x = x[:, unsort.to(x.device)]
        return x.reshape(Bsz, S, L, *x.shape[2:])

    theta, residual = per_pair(result["theta"]), per_pair(result["residual"])
    lower = theta.sqrt()
    return TransportNorms(
        norms=lower, starts=starts_t, lags=lags_t, lower=lower,
        upper=(theta + residual).sqrt(), residual=residual,
        vectors=per_pair(result["vectors"]), converged=per_pair(result["converged"]),
        iterations=per_pair(result["iterations"]))
