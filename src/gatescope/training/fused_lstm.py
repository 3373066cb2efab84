"""A fused LSTM recurrence for seed ensembles: one ``autograd.Function`` for all E seeds.

The ``"batched"`` ensemble mode unrolls a cell step by step with autograd recording every
operation. For the LSTM, whose step is fixed, :func:`fused_lstm_states` runs the whole
recurrence of E stacked models as one :class:`torch.autograd.Function` instead:

* the input projection ``W_ih u_t + b_ih + b_hh`` of all T steps is one batched product
  before the loop; inside it, one ``baddbmm`` per step adds ``W_hh h_{t-1}``, for the
  four gates at once (E seeds as the batch of the product);
* ``tanh`` is evaluated as ``2 σ(2x) - 1`` (torch's CPU ``tanh`` is several times slower
  than its ``sigmoid``): the rows of the candidate ``g`` in the weights and bias are
  doubled (exact in floating point), so one ``sigmoid`` gives all four gates;
* the backward pass is the hand-written BPTT of the LSTM (below), one ``bmm`` by ``W_hh``
  per step, and the weight gradients of all steps as one product at the end.

It computes the maths of :class:`~gatescope.cells.lstm.LSTMCell` (torch's gate order
i, f, g, o; ``h_0 = c_0 = 0``), so every seed gets the numbers of the cell run alone, up to
floating-point rounding. Per step, with ``a = W_ih u + b_ih + W_hh h + b_hh``::

    i, f, o = σ(a_i), σ(a_f), σ(a_o);  g = tanh(a_g);  c' = f c + i g;  h' = o tanh(c')

and, with ``δh``, ``δc`` the gradients reaching ``h'``, ``c'``::

    δc  += δh o (1 - tanh²c')
    δa_i = δc g i(1-i),  δa_f = δc c f(1-f),  δa_g = δc i (1-g²),  δa_o = δh tanh(c') o(1-o)
    δh_prev = W_hhᵀ δa (+ the loss's gradient at h),  δc_prev = δc f

Nothing mixes seeds: a seed whose numbers are not finite affects only its own slices.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..cells.lstm import LSTMCell


def fused_lstm_applies(cell) -> bool:
    """Whether :func:`fused_lstm_states` computes ``cell`` 's recurrence: a plain
    :class:`~gatescope.cells.lstm.LSTMCell` (not a subclass, which may change the step)
    without a projection."""
    return type(cell) is LSTMCell and not cell.proj_size


def fused_lstm_states(u: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                      bias_ih: Tensor | None, bias_hh: Tensor | None,
                      last_only: bool = False) -> Tensor:
    """The hidden states of E stacked LSTMs (zero initial state), differentiable.

    Args:
        u: ``(E, B, T, m)`` inputs, one batch per seed.
        weight_ih: ``(E, 4n, m)``, torch's layout (gate order i, f, g, o).
        weight_hh: ``(E, 4n, n)``.
        bias_ih, bias_hh: ``(E, 4n)`` each, or both ``None``.
        last_only: return only the last state (what readout ``"last"`` reads).

    Returns:
        ``(E, T+1, B, n)`` the states ``h_0 = 0, h_1, ..., h_T`` (time on dim 1, as the
        batched mode hands them to the readout), or ``(E, B, n)`` ``h_T`` with
        ``last_only``.

    Raises:
        ValueError: shapes that do not fit together, or only one of the biases.
    """
    _check_shapes(u, weight_ih, weight_hh, bias_ih, bias_hh)
    if bias_ih is None:
        bias_ih = bias_hh = weight_hh.new_zeros(weight_hh.shape[:2])
    return _FusedLSTM.apply(u, weight_ih, weight_hh, bias_ih, bias_hh, last_only)


def _check_shapes(u, weight_ih, weight_hh, bias_ih, bias_hh) -> None:
    """Refuse inputs the fused recurrence cannot run, naming the argument."""
    if weight_hh.dim() != 3 or weight_hh.shape[1] != 4 * weight_hh.shape[2]:
        raise ValueError(f"weight_hh must be (E, 4n, n); got {tuple(weight_hh.shape)}")
    E, four_n, _ = weight_hh.shape
    if u.dim() != 4 or u.shape[0] != E or u.shape[2] < 1:
        raise ValueError(f"u must be (E={E}, B, T >= 1, m); got {tuple(u.shape)}")
    if tuple(weight_ih.shape) != (E, four_n, u.shape[-1]):
        raise ValueError(f"weight_ih must be (E={E}, 4n={four_n}, m={u.shape[-1]}); got "
                         f"{tuple(weight_ih.shape)}")
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError("bias_ih and bias_hh must both be tensors or both be None")
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b is not None and tuple(b.shape) != (E, four_n):
            raise ValueError(f"{name} must be (E={E}, 4n={four_n}); got {tuple(b.shape)}")


def _candidate_doubled(x: Tensor) -> Tensor:
    """``x`` (``(..., 4n, ...)`` on dim 1, torch's gate order) with the candidate block
    ``g`` (the third) multiplied by 2, so ``σ`` of the result gives ``σ(2 a_g)``."""
    n = x.shape[1] // 4
    scale = x.new_ones(4 * n)
    scale[2 * n:3 * n] = 2
    return x * scale.reshape(-1, *([1] * (x.dim() - 2)))


class _FusedLSTM(torch.autograd.Function):
    """``(u, W_ih, W_hh, b_ih, b_hh, last_only) -> states``; see the module docstring."""

    @staticmethod
    def forward(ctx, u, weight_ih, weight_hh, bias_ih, bias_hh, last_only):
        E, B, T, m = u.shape
        # (E, T B, m), time major inside each seed, so step t is rows t B .. (t+1) B
        u_steps = u.transpose(1, 2).reshape(E, T * B, m)
        bias = _candidate_doubled(bias_ih + bias_hh).unsqueeze(1)
        projected = torch.baddbmm(bias, u_steps, _candidate_doubled(weight_ih).mT)
        sigmoids, memory, states = _forward_scan(
            projected.view(E, T, B, -1), _candidate_doubled(weight_hh).mT)
        ctx.save_for_backward(u_steps, weight_ih, weight_hh, sigmoids, memory, states)
        ctx.last_only = last_only
        ctx.input_shape = u.shape
        return states[:, -1].clone() if last_only else states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        u_steps, weight_ih, weight_hh, sigmoids, memory, states = ctx.saved_tensors
        E, B, T, m = ctx.input_shape
        grad_pre = _backward_scan(grad_states, ctx.last_only, weight_hh, sigmoids, memory,
                                  states)
        flat = grad_pre.view(E, T * B, -1)  # (E, T B, 4n): δa of every step
        grad_u = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.bmm(flat, weight_ih).view(E, T, B, m).transpose(1, 2)
        grad_ih = torch.bmm(flat.mT, u_steps) if ctx.needs_input_grad[1] else None
        grad_hh = (torch.bmm(flat.mT, states[:, :T].reshape(E, T * B, -1))
                   if ctx.needs_input_grad[2] else None)
        grad_bias = flat.sum(1) if any(ctx.needs_input_grad[3:5]) else None
        return grad_u, grad_ih, grad_hh, grad_bias, grad_bias, None


def _forward_scan(projected: Tensor, weight_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Run the recurrence over time.

    Args:
        projected: ``(E, T, B, 4n)`` input projections plus biases (``g`` rows doubled).
        weight_t: ``(E, n, 4n)``, ``W_hhᵀ`` with the ``g`` columns doubled.

    Returns:
        ``sigmoids`` ``(T, E, B, 4n)``: ``[σ(a_i), σ(a_f), σ(2 a_g), σ(a_o)]`` per step;
        ``memory`` ``(T+1, E, B, 4n)``: per step the blocks ``[g, c_{t-1}, 4 i, tanh(c_t)]``
        (row ``T`` holds only ``c_T``), laid out so that one product with
        ``σ(1-σ)`` of the four sigmoids gives the backward pass's coefficients;
        ``states`` ``(E, T+1, B, n)``: ``h_0 = 0, ..., h_T``.
    """
    E, T, B, four_n = projected.shape
    n = four_n // 4
    sigmoids = projected.new_empty(T, E, B, four_n)
    memory = projected.new_zeros(T + 1, E, B, four_n)
    states = projected.new_zeros(E, T + 1, B, n)
    minus_one = projected.new_full((), -1.0)
    doubled_cell = projected.new_empty(E, B, n)
    for t in range(T):
        s = torch.baddbmm(projected[:, t], states[:, t], weight_t, out=sigmoids[t])
        s.sigmoid_()
        i, f, o = s[..., :n], s[..., n:2 * n], s[..., 3 * n:]
        g = torch.add(minus_one, s[..., 2 * n:3 * n], alpha=2, out=memory[t, ..., :n])
        c = torch.mul(f, memory[t, ..., n:2 * n], out=memory[t + 1, ..., n:2 * n])
        c.addcmul_(i, g)
        torch.mul(c, 2, out=doubled_cell).sigmoid_()
        tanh_c = torch.add(minus_one, doubled_cell, alpha=2, out=memory[t, ..., 3 * n:])
        torch.mul(o, tanh_c, out=states[:, t + 1])
        torch.mul(i, 4, out=memory[t, ..., 2 * n:3 * n])
    return sigmoids, memory, states


def _backward_scan(grad_states: Tensor, last_only: bool, weight_hh: Tensor,
                   sigmoids: Tensor, memory: Tensor, states: Tensor) -> Tensor:
    """BPTT of :func:`_forward_scan`: the gradient of every step's pre-activation ``a``.

    Args:
        grad_states: ``(E, B, n)`` the gradient at ``h_T`` (``last_only``) or
            ``(E, T+1, B, n)`` at every state.
        last_only: which of the two ``grad_states`` is.
        weight_hh: ``(E, 4n, n)`` (not doubled: ``δa`` is the gradient at the true ``a``).
        sigmoids, memory, states: what :func:`_forward_scan` returned.

    Returns:
        ``(E, T, B, 4n)``: ``δa`` of step ``t`` at index ``t - 1``, torch's gate order.
    """
    T, E, B, four_n = sigmoids.shape
    n = four_n // 4
    grad_pre = sigmoids.new_empty(E, T, B, four_n)
    coefficients = sigmoids.new_empty(E, B, four_n)
    out_scale = sigmoids.new_empty(E, B, n)
    grad_cell = None
    for t in range(T - 1, -1, -1):
        s, mem = sigmoids[t], memory[t]
        grad_h = _grad_at_state(grad_states, last_only, t, grad_pre, weight_hh)
        # δc = δc_next f_next + δh o (1 - tanh²c), with o tanh²c = h tanh c
        torch.addcmul(s[..., 3 * n:], states[:, t + 1], mem[..., 3 * n:], value=-1,
                      out=out_scale)
        grad_cell = (grad_h * out_scale if grad_cell is None
                     else grad_cell.addcmul_(grad_h, out_scale))
        # [g i(1-i), c f(1-f), 4i σ(1-σ) = i(1-g²), tanh(c) o(1-o)]
        torch.addcmul(s, s, s, value=-1, out=coefficients).mul_(mem)
        step = grad_pre[:, t]
        torch.mul(coefficients[..., :3 * n].view(E, B, 3, n), grad_cell.unsqueeze(2),
                  out=step[..., :3 * n].view(E, B, 3, n))
        torch.mul(coefficients[..., 3 * n:], grad_h, out=step[..., 3 * n:])
        grad_cell.mul_(s[..., n:2 * n])
    return grad_pre


def _grad_at_state(grad_states: Tensor, last_only: bool, t: int, grad_pre: Tensor,
                   weight_hh: Tensor) -> Tensor:
    """``δh`` at ``h_{t+1}``: the loss's gradient there plus ``W_hhᵀ δa`` of step ``t+2``."""
    T = grad_pre.shape[1]
    if t == T - 1:
        return grad_states if last_only else grad_states[:, T]
    if last_only:
        return torch.bmm(grad_pre[:, t + 1], weight_hh)
    return torch.baddbmm(grad_states[:, t + 1], grad_pre[:, t + 1], weight_hh)
