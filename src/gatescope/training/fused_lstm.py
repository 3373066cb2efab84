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
    """``x`` (``(E, 4n, ...)``, torch's gate order on dim 1) with the candidate block ``g``
    (the third) multiplied by 2 (exact), so ``σ`` of ``a`` computed from it gives
    ``σ(2 a_g)``."""
    n = x.shape[1] // 4
    scale = x.new_ones(4 * n)
    scale[2 * n:3 * n] = 2
    return x * scale.reshape(-1, *([1] * (x.dim() - 2)))


class _FusedLSTM(torch.autograd.Function):
    """``(u, W_ih, W_hh, b_ih, b_hh, last_only) -> states``; see the module docstring."""

    @staticmethod
    def forward(ctx, u, weight_ih, weight_hh, bias_ih, bias_hh, last_only):
        n = weight_hh.shape[-1]
        rows = _step_rows(u, n)
        weight = torch.cat([weight_hh, weight_ih, (bias_ih + bias_hh).unsqueeze(-1)], -1)
        sigmoids, memory = _forward_scan(rows, _candidate_doubled(weight).mT)
        ctx.save_for_backward(weight_ih, weight_hh, rows, sigmoids, memory)
        ctx.last_only = last_only
        # copies: an output must not be a tensor kept for the backward pass
        if last_only:
            return rows[-1, ..., :n].clone()
        return rows[..., :n].transpose(0, 1).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        weight_ih, weight_hh, rows, sigmoids, memory = ctx.saved_tensors
        n, m = weight_hh.shape[-1], weight_ih.shape[-1]
        T = sigmoids.shape[0]
        grad_at = ((lambda t: grad_states if t == T else None) if ctx.last_only
                   else (lambda t: grad_states[:, t]))
        grad_rows, grad_u = _backward_scan(
            grad_at, weight_hh, sigmoids, memory, rows,
            weight_ih if ctx.needs_input_grad[0] else None)
        grad_bias = grad_rows[:, n + m]
        return (grad_u, grad_rows[:, n:n + m].mT.contiguous(),
                grad_rows[:, :n].mT.contiguous(), grad_bias.clone(), grad_bias, None)


def _step_rows(u: Tensor, n: int) -> Tensor:
    """``(T+1, E, B, n + m + 1)``: row ``t`` is ``[h_t, u_{t+1}, 1]`` (``h_0 = 0``; the
    scan writes ``h_1..h_T``; the last row's input part is zero), so that one product per
    step gives the pre-activations (with ``[W_hh, W_ih, b]``) and one accumulates the
    three gradients."""
    E, B, T, m = u.shape
    rows = u.new_empty(T + 1, E, B, n + m + 1)
    rows[0, ..., :n] = 0
    rows[:T, ..., n:n + m] = u.permute(2, 0, 1, 3)
    rows[:T, ..., n + m] = 1
    rows[T, ..., n:] = 0
    return rows


def _forward_scan(rows: Tensor, weight_t: Tensor) -> tuple[Tensor, Tensor]:
    """Run the recurrence over time.

    Args:
        rows: ``(T+1, E, B, n + m + 1)`` from :func:`_step_rows`; ``h_1..h_T`` are written
            into its first ``n`` columns.
        weight_t: ``(E, n + m + 1, 4n)``, ``[W_hh, W_ih, b_ih + b_hh]ᵀ`` with the ``g``
            part doubled.

    Returns:
        ``sigmoids`` ``(T, E, B, 4n)``: ``[σ(a_i), σ(a_f), σ(2 a_g), σ(a_o)]`` of every
        step; ``memory`` ``(T+1, E, B, 4n)``: per step the blocks
        ``[g, c_{t-1}, 4 i, tanh(c_t)]`` (row ``T`` holds only ``c_T``), laid out so that
        one product with ``σ(1-σ)`` of the sigmoids gives the backward pass's coefficients.
    """
    T1, E, B, _ = rows.shape
    four_n = weight_t.shape[-1]
    n = four_n // 4
    sigmoids = rows.new_empty(T1 - 1, E, B, four_n)
    memory = rows.new_empty(T1, E, B, four_n)
    memory[0, ..., n:2 * n] = 0  # c_0
    minus_one = rows.new_full((), -1.0)
    doubled_cell = rows.new_empty(E, B, n)
    for t in range(T1 - 1):
        i, f, s_g, o = torch.bmm(rows[t], weight_t, out=sigmoids[t]).sigmoid_().chunk(4, -1)
        g, c_prev, four_i, tanh_c = memory[t].chunk(4, -1)
        torch.add(minus_one, s_g, alpha=2, out=g)
        c = torch.mul(f, c_prev, out=memory[t + 1, ..., n:2 * n]).addcmul_(i, g)
        torch.mul(c, 2, out=doubled_cell).sigmoid_()
        torch.add(minus_one, doubled_cell, alpha=2, out=tanh_c)
        torch.mul(o, tanh_c, out=rows[t + 1, ..., :n])
        torch.mul(i, 4, out=four_i)
    return sigmoids, memory


def _backward_scan(grad_at, weight_hh: Tensor, sigmoids: Tensor, memory: Tensor,
                   rows: Tensor, weight_ih: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """BPTT of :func:`_forward_scan`, accumulating the weight gradients step by step.

    Args:
        grad_at: ``t -> `` the loss's gradient ``(E, B, n)`` at ``h_t``, or ``None``.
        weight_hh: ``(E, 4n, n)`` (not doubled: ``δa`` is the gradient at the true ``a``).
        sigmoids, memory, rows: the forward pass's (see :func:`_forward_scan`).
        weight_ih: ``(E, 4n, m)`` when the inputs' gradient is wanted, else ``None``.

    Returns:
        ``[∂/∂W_hh, ∂/∂W_ih, ∂/∂b]ᵀ`` stacked, ``(E, n + m + 1, 4n)``, and ``∂/∂u``
        ``(E, B, T, m)`` or ``None``.
    """
    T, E, B, four_n = sigmoids.shape
    n = four_n // 4
    grad_rows = sigmoids.new_zeros(E, rows.shape[-1], four_n)
    grad_pre = sigmoids.new_empty(E, B, four_n)
    coefficients = sigmoids.new_empty(E, B, four_n)
    out_scale = sigmoids.new_empty(E, B, n)
    grad_u = None if weight_ih is None else sigmoids.new_empty(T, E, B, weight_ih.shape[-1])
    grad_cell = None
    for t in range(T - 1, -1, -1):
        s, mem = sigmoids[t], memory[t]
        grad_h = grad_at(t + 1)
        if t < T - 1:
            grad_h = (torch.bmm(grad_pre, weight_hh) if grad_h is None
                      else torch.baddbmm(grad_h, grad_pre, weight_hh))
        # δc = δc_next f_next + δh o (1 - tanh²c), with o tanh²c = h tanh c
        torch.addcmul(s[..., 3 * n:], rows[t + 1, ..., :n], mem[..., 3 * n:], value=-1,
                      out=out_scale)
        grad_cell = (grad_h * out_scale if grad_cell is None
                     else grad_cell.addcmul_(grad_h, out_scale))
        # [g i(1-i), c f(1-f), 4i σ(1-σ) = i(1-g²), tanh(c) o(1-o)]
        torch.addcmul(s, s, s, value=-1, out=coefficients).mul_(mem)
        torch.mul(coefficients[..., :3 * n].view(E, B, 3, n), grad_cell.unsqueeze(2),
                  out=grad_pre[..., :3 * n].view(E, B, 3, n))
        torch.mul(coefficients[..., 3 * n:], grad_h, out=grad_pre[..., 3 * n:])
        grad_cell.mul_(s[..., n:2 * n])
        grad_rows.baddbmm_(rows[t].mT, grad_pre)
        if grad_u is not None:
            torch.bmm(grad_pre, weight_ih, out=grad_u[t])
    return grad_rows, None if grad_u is None else grad_u.permute(1, 2, 0, 3)
