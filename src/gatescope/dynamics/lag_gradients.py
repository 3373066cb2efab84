"""Lag-resolved BPTT: the gradient split into the contributions of each lag.

With ``δ_t = ∂L/∂h_t`` (the direct dependence of the loss on ``h_t``), transport
``M_{t,k} = J_t ⋯ J_{k+1}`` and ``∂⁺h_k/∂θ`` the immediate (one-step) derivative,

    ``∇_θ L = Σ_{ℓ=0}^{T-1} G_ℓ``,  ``G_ℓ = Σ_t δ_t M_{t,t-ℓ} ∂⁺h_{t-ℓ}/∂θ``.

The adjoints ``δ_t M_{t,k}`` come from the analytic Jacobians; the immediate derivatives are
vector-Jacobian products of one cell step, vectorised with ``torch.func``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call, vjp, vmap

from ..cells.base import RecurrentCell, Trajectory
from ..model import SequenceModel
from .jacobians import jacobians

#: Elements of the cotangent block handed to one vectorised VJP (bounds memory).
_CHUNK_ELEMENTS = 2**24


def vec_mat(v: Tensor, M: Tensor) -> Tensor:
    """Row vector times matrix, batched: ``(..., n) x (..., n, k) -> (..., k)``."""
    return (v.unsqueeze(-2) @ M).squeeze(-2)


def last_state_adjoints(delta_T: Tensor, J: Tensor) -> Tensor:
    """``λ_k = δ_T M_{T,k}`` for ``k = 1..T`` (one backward sweep).

    Args:
        delta_T: ``(B, N)``.
        J: ``(B, T, N, N)``.

    Returns:
        ``(B, T, N)`` with ``λ_k`` at index ``k - 1``.
    """
    lam = [delta_T]
    for k in range(J.shape[1] - 1, 0, -1):  # λ_{k} = λ_{k+1} J_{k+1}, J_{k+1} at index k
        lam.append(vec_mat(lam[-1], J[:, k]))
    return torch.stack(lam[::-1], dim=1)


def lag_cotangents(delta: Tensor, J: Tensor):
    """Yield, for ``ℓ = 0..T-1``, the cotangents ``c_ℓ[k] = δ_{k+ℓ} M_{k+ℓ,k}``.

    Uses ``c_0 = δ`` and ``c_ℓ[k] = c_{ℓ-1}[k+1] J_{k+1}``, vectorised over ``k``.

    Args:
        delta: ``(B, T, N)``, ``δ_t`` at index ``t - 1``.
        J: ``(B, T, N, N)``.

    Yields:
        ``(B, T, N)`` with ``c_ℓ[k]`` at index ``k - 1`` (zero where ``k + ℓ > T``).
    """
    T = delta.shape[1]
    c = delta
    yield c
    for lag in range(1, T):
        nxt = torch.zeros_like(c)
        nxt[:, : T - lag] = vec_mat(c[:, 1 : T - lag + 1], J[:, 1 : T - lag + 1])
        c = nxt
        yield c


def _step_function(cell: RecurrentCell):
    def step(params: dict[str, Tensor], h: Tensor, u: Tensor) -> Tensor:
        return functional_call(cell, params, (h, u))

    return step


def per_step_parameter_vjps(cell: RecurrentCell, traj: Trajectory,
                            cotangents: Tensor) -> dict[str, Tensor]:
    """``c_k ∂⁺h_k/∂θ`` for every step ``k`` separately, summed over the batch.

    Args:
        cotangents: ``(B, T, N)``, ``c_k`` at index ``k - 1``.

    Returns:
        ``{name: (T, *shape)}`` with step ``k`` at index ``k - 1``.
    """
    params = {k: v.detach() for k, v in cell.named_parameters()}
    step = _step_function(cell)

    def one(h, u, c):
        return vjp(lambda p: step(p, h, u), params)[1](c)[0]

    return vmap(one)(traj.previous_states.transpose(0, 1), traj.inputs.transpose(0, 1),
                     cotangents.transpose(0, 1))


def time_summed_parameter_vjps(cell: RecurrentCell, traj: Trajectory,
                               cotangents) -> dict[str, Tensor]:
    """``Σ_k c_ℓ[k] ∂⁺h_k/∂θ`` for a sequence of cotangent sets ``c_ℓ``.

    Args:
        cotangents: iterable of ``(B, T, N)`` tensors (one per ``ℓ``).

    Returns:
        ``{name: (L, *shape)}``, one row per cotangent set, computed in chunks of ``ℓ`` with
        one vectorised VJP per chunk.
    """
    params = {k: v.detach() for k, v in cell.named_parameters()}
    N = traj.states.shape[-1]
    h = traj.previous_states.reshape(-1, N)
    u = traj.inputs.reshape(-1, traj.inputs.shape[-1])
    _, pull = vjp(lambda p: _step_function(cell)(p, h, u), params)
    batched_pull = vmap(lambda c: pull(c)[0])
    chunk = max(1, _CHUNK_ELEMENTS // max(1, h.numel()))
    out: dict[str, list[Tensor]] = {k: [] for k in params}
    block: list[Tensor] = []

    def flush():
        grads = batched_pull(torch.stack(block).reshape(len(block), -1, N))
        for k, g in grads.items():
            out[k].append(g)
        block.clear()

    for c in cotangents:
        block.append(c)
        if len(block) == chunk:
            flush()
    if block:
        flush()
    return {k: torch.cat(v) for k, v in out.items()}


def lag_gradients(model: SequenceModel, u: Tensor, y: Tensor, mask: Tensor | None = None,
                  h0: Tensor | None = None) -> dict[str, Tensor]:
    """The gradient of ``model.loss(u, y, mask)`` split by lag.

    Args:
        model: a :class:`~gatescope.SequenceModel`.
        u: ``(B, T, m)`` inputs.
        y: targets as for :meth:`SequenceModel.loss`.
        mask: optional ``(B, T)`` step weights.
        h0: optional ``(B, N)`` initial state.

    Returns:
        ``{name: (T, *shape)}`` for every parameter of ``model`` (names as in
        ``model.named_parameters()``); row ``ℓ`` is ``G_ℓ``; the rows sum to autograd's
        gradient. Readout parameters are attributed to lag 0.
    """
    cell = model.cell
    with torch.no_grad():
        traj = cell.unroll(u, h0)
    states = traj.states.detach().requires_grad_()
    readout = dict(model.readout.named_parameters())
    loss = model.loss_from_states(states, y, mask)
    d_states, *d_readout = torch.autograd.grad(loss, [states, *readout.values()])
    delta = d_states[:, 1:]
    J = jacobians(cell, traj)
    T = traj.seq_len

    if model.readout_kind == "last":
        lam = last_state_adjoints(delta[:, -1], J)
        cell_parts = {k: g.flip(0) for k, g in per_step_parameter_vjps(cell, traj, lam).items()}
    else:
        cell_parts = time_summed_parameter_vjps(cell, traj, lag_cotangents(delta, J))

    parts = {f"cell.{k}": v for k, v in cell_parts.items()}
    for (name, p), g in zip(readout.items(), d_readout, strict=True):
        lagged = p.new_zeros(T, *p.shape)
        lagged[0] = g
        parts[f"readout.{name}"] = lagged
    return {name: parts[name] for name, _ in model.named_parameters()}
