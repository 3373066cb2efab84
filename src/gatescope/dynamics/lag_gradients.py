"""Lag-resolved BPTT: the gradient split into the contributions of each lag.

With ``δ_t = ∂L/∂h_t`` (the direct dependence of the loss on ``h_t``), transport
``M_{t,k} = J_t ⋯ J_{k+1}`` and ``∂⁺h_k/∂θ`` the immediate (one-step) derivative,

    ``∇_θ L = Σ_{ℓ=0}^{T-1} G_ℓ``,  ``G_ℓ = Σ_t δ_t M_{t,t-ℓ} ∂⁺h_{t-ℓ}/∂θ``.

:func:`lag_gradients` never forms a Jacobian: the adjoints ``δ_t M_{t,k}`` are swept
backwards with vector-Jacobian products of the cell step. For readout "last" ``G_ℓ`` is the
gradient with respect to the parameters of step ``T - ℓ`` alone, so one backward pass
through an unroll whose steps each read their own row of a ``(T, *shape)`` parameter view
gives every lag (:func:`last_readout_lag_terms`); for readout "all" each lag takes one VJP
of the step, vectorised over batch and time (:func:`lag_cotangents_by_vjp`), and the
immediate derivatives are VJPs of one cell step vectorised with ``torch.func``.
:func:`lag_gradients_dense` is the twin that builds the dense ``J`` (analytic where the
cell has it) and multiplies by it; the two agree to rounding.
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


def last_readout_lag_terms(model: SequenceModel, u: Tensor, y: Tensor,
                           mask: Tensor | None, h0: Tensor | None
                           ) -> tuple[dict[str, Tensor], tuple[Tensor, ...]]:
    """Readout "last": every lag term from one backward pass, without a Jacobian.

    With readout "last", ``G_ℓ`` is the gradient with respect to a copy of ``θ`` used only
    at step ``T - ℓ`` (``δ_t = 0`` for ``t < T``, so ``G_ℓ = λ_{T-ℓ} ∂⁺h_{T-ℓ}/∂θ``). Each
    parameter enters the unrolled graph as a ``(T, *shape)`` leaf ``Θ`` (an expanded view:
    no copy in the forward) whose row ``ℓ`` is the parameter of step ``T - ℓ``; one backward
    pass gives ``∂L/∂Θ``, row ``ℓ`` being ``G_ℓ`` (``unbind``'s backward stacks the rows, so
    the per-step gradients cost one ``(T, *shape)`` tensor each, already in lag order).

    Args:
        model: the :class:`~gatescope.SequenceModel` (``readout_kind == "last"``).
        u: ``(B, T, m)``; ``y``, ``mask`` as for :meth:`SequenceModel.loss`.
        h0: ``(B, N)`` or ``None`` (zeros).

    Returns:
        ``({name: (T, *shape)} with lag ℓ at index ℓ, readout gradients)``; the readout's
        in ``model.readout.named_parameters()`` order.
    """
    cell, T = model.cell, u.shape[1]
    per_step = {k: v.detach().unsqueeze(0).expand(T, *v.shape).requires_grad_()
                for k, v in cell.named_parameters()}
    rows = {k: v.unbind(0) for k, v in per_step.items()}
    # untying is only needed (and costs a map per step) when one tensor has two names
    tied = len(list(cell.named_parameters(remove_duplicate=False))) != len(per_step)
    readout = [p for _, p in model.readout.named_parameters()]
    h = cell.initial_state(u.shape[0], u) if h0 is None else h0.detach()
    states = [h]
    with torch.enable_grad():
        for t in range(T):
            params = {k: r[T - 1 - t] for k, r in rows.items()}
            states.append(functional_call(cell, params, (states[-1], u[:, t]),
                                          tie_weights=tied))
        loss = model.loss_from_states(torch.stack(states, dim=1), y, mask)
        grads = torch.autograd.grad(loss, [*per_step.values(), *readout])
    cell_grads, readout_grads = grads[:len(per_step)], grads[len(per_step):]
    return dict(zip(per_step, cell_grads, strict=True)), tuple(readout_grads)


def lag_cotangents_by_vjp(cell: RecurrentCell, traj: Trajectory, delta: Tensor):
    """:func:`lag_cotangents` without Jacobians: ``c_ℓ[k] = c_{ℓ-1}[k+1] J_{k+1}`` as one
    VJP of the cell step at every ``(b, t)`` at once.

    Args:
        traj: the trajectory (``previous_states`` and ``inputs`` are read).
        delta: ``(B, T, N)``, ``δ_t`` at index ``t - 1``.

    Yields:
        ``(B, T, N)`` with ``c_ℓ[k]`` at index ``k - 1`` (zero where ``k + ℓ > T``).
    """
    params = _detached_parameters(cell)
    step = _step_function(cell)
    u = traj.inputs.detach()
    _, pull = vjp(lambda h: step(params, h, u), traj.previous_states.detach())
    pad = delta.new_zeros(delta.shape[0], 1, delta.shape[-1])
    c = delta
    yield c
    for _ in range(1, delta.shape[1]):
        back = pull(c)[0]  # back[:, j] = c[:, j] J_{j+1}: step j+1 is at index j
        c = torch.cat([back[:, 1:], pad], dim=1)
        yield c


def _detached_parameters(cell: RecurrentCell) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in cell.named_parameters()}


def _step_function(cell: RecurrentCell):
    def step(params: dict[str, Tensor], h: Tensor, u: Tensor) -> Tensor:
        return functional_call(cell, params, (h, u))

    return step


def per_step_parameter_vjps(cell: RecurrentCell, previous_states: Tensor, inputs: Tensor,
                            cotangents: Tensor) -> dict[str, Tensor]:
    """``c_k ∂⁺h_k/∂θ`` for every step ``k`` separately, summed over the batch.

    Args:
        previous_states: ``(B, T, N)``, ``h_{k-1}`` at index ``k - 1``.
        inputs: ``(B, T, m)``.
        cotangents: ``(B, T, N)``, ``c_k`` at index ``k - 1``.

    Returns:
        ``{name: (T, *shape)}`` with step ``k`` at index ``k - 1``.
    """
    params = _detached_parameters(cell)
    step = _step_function(cell)

    def one(h, u, c):
        return vjp(lambda p: step(p, h, u), params)[1](c)[0]

    return vmap(one)(previous_states.detach().transpose(0, 1),
                     inputs.detach().transpose(0, 1), cotangents.transpose(0, 1))


def time_summed_parameter_vjps(cell: RecurrentCell, traj: Trajectory,
                               cotangents) -> dict[str, Tensor]:
    """``Σ_k c_ℓ[k] ∂⁺h_k/∂θ`` for a sequence of cotangent sets ``c_ℓ``.

    Args:
        cotangents: iterable of ``(B, T, N)`` tensors (one per ``ℓ``).

    Returns:
        ``{name: (L, *shape)}``, one row per cotangent set, computed in chunks of ``ℓ`` with
        one vectorised VJP per chunk.
    """
    params = _detached_parameters(cell)
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
    """The gradient of ``model.loss(u, y, mask)`` split by lag, without forming a Jacobian.

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
    if model.readout_kind == "last":
        cell_parts, d_readout = last_readout_lag_terms(model, u, y, mask, h0)
    else:
        with torch.no_grad():
            traj = cell.unroll(u, h0)
        delta, d_readout = _direct_adjoints(model, traj.states, y, mask)
        cell_parts = time_summed_parameter_vjps(cell, traj,
                                                lag_cotangents_by_vjp(cell, traj, delta))
    return _by_model_name(model, cell_parts, d_readout, u.shape[1])


def lag_gradients_dense(model: SequenceModel, u: Tensor, y: Tensor,
                        mask: Tensor | None = None, h0: Tensor | None = None
                        ) -> dict[str, Tensor]:
    """:func:`lag_gradients` by dense Jacobians ``J`` (``(B, T, N, N)``): the twin the
    Jacobian-free sweep is checked against. Same arguments and result."""
    cell = model.cell
    with torch.no_grad():
        traj = cell.unroll(u, h0)
    delta, d_readout = _direct_adjoints(model, traj.states, y, mask)
    J = jacobians(cell, traj)
    if model.readout_kind == "last":
        lam = last_state_adjoints(delta[:, -1], J)
        per_step = per_step_parameter_vjps(cell, traj.previous_states, traj.inputs, lam)
        cell_parts = {k: g.flip(0) for k, g in per_step.items()}
    else:
        cell_parts = time_summed_parameter_vjps(cell, traj, lag_cotangents(delta, J))
    return _by_model_name(model, cell_parts, d_readout, traj.seq_len)


def _direct_adjoints(model: SequenceModel, states: Tensor, y: Tensor, mask: Tensor | None
                     ) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``δ_t = ∂L/∂h_t`` (direct dependence only) ``(B, T, N)`` and the readout's gradients."""
    states = states.detach().requires_grad_()
    readout = [p for _, p in model.readout.named_parameters()]
    with torch.enable_grad():
        loss = model.loss_from_states(states, y, mask)
        d_states, *d_readout = torch.autograd.grad(loss, [states, *readout])
    return d_states[:, 1:], tuple(d_readout)


def _by_model_name(model: SequenceModel, cell_parts: dict[str, Tensor],
                   d_readout: tuple[Tensor, ...], T: int) -> dict[str, Tensor]:
    """``{name: (T, *shape)}`` in ``model.named_parameters()`` order; the readout's
    gradients sit at lag 0."""
    parts = {f"cell.{k}": v for k, v in cell_parts.items()}
    for (name, p), g in zip(model.readout.named_parameters(), d_readout, strict=True):
        lagged = p.new_zeros(T, *p.shape)
        lagged[0] = g
        parts[f"readout.{name}"] = lagged
    return {name: parts[name] for name, _ in model.named_parameters()}
