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
        bias = _candidate_doubled(bias_ih + bias_hh).unsqueeze(1)
        inputs = u.unbind(2)  # T steps of (E, B, m)
        sigmoids, memory, states = _forward_scan(
            inputs, bias, _candidate_doubled(weight_ih).mT, _candidate_doubled(weight_hh).mT)
        ctx.save_for_backward(u, weight_ih, weight_hh)
        ctx.scan = sigmoids, memory, states
        ctx.last_only = last_only
        # a copy of h_T: the output must not be one of the tensors kept on ctx
        return states[-1].clone() if last_only else torch.stack(states, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        u, weight_ih, weight_hh = ctx.saved_tensors
        sigmoids, memory, states = ctx.scan
        E, B, T, m = u.shape
        # [u_t, 1] per step: one product per step accumulates W_ih's and the bias's gradient
        inputs = torch.cat([u, u.new_ones(E, B, T, 1)], -1).unbind(2)
        grad_at = ((lambda t: grad_states if t == T else None) if ctx.last_only
                   else (lambda t: grad_states[:, t]))
        grad_hh_t, grad_ih_t, grad_inputs = _backward_scan(
            grad_at, weight_hh, sigmoids, memory, states, inputs,
            with_inputs=weight_ih if ctx.needs_input_grad[0] else None)
        grad_u = None if grad_inputs is None else torch.stack(grad_inputs, 2)
        grad_bias = grad_ih_t[:, m]
        return (grad_u, grad_ih_t[:, :m].mT, grad_hh_t.mT, grad_bias, grad_bias, None)


def _forward_scan(inputs: tuple[Tensor, ...], bias: Tensor, weight_ih_t: Tensor,
                  weight_hh_t: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Run the recurrence over time.

    Args:
        inputs: ``T`` inputs ``u_t``, each ``(E, B, m)``.
        bias: ``(E, 1, 4n)``, ``b_ih + b_hh``; ``weight_ih_t``: ``(E, m, 4n)``, ``W_ihᵀ``;
            ``weight_hh_t``: ``(E, n, 4n)``, ``W_hhᵀ``; all with the ``g`` part doubled.

    Returns:
        Per step ``t`` (index ``t - 1``): ``sigmoids`` ``(E, B, 4n)``,
        ``[σ(a_i), σ(a_f), σ(2 a_g), σ(a_o)]``; ``memory`` ``(E, B, 4n)``, the blocks
        ``[g, c_{t-1}, 4 i, tanh(c_t)]``, laid out so that one product with ``σ(1-σ)`` of
        the sigmoids gives the backward pass's coefficients; and the ``T + 1`` ``states``
        ``h_0 = 0, ..., h_T``, each ``(E, B, n)``.
    """
    E, B, _ = inputs[0].shape
    n = weight_hh_t.shape[1]
    minus_one = weight_hh_t.new_full((), -1.0)
    doubled_cell = weight_hh_t.new_empty(E, B, n)
    states = [weight_hh_t.new_zeros(E, B, n)]
    sigmoids, memory = [], []
    following = weight_hh_t.new_zeros(E, B, 4 * n)  # c_0 = 0 in its c_{t-1} block
    for u_t in inputs:
        mem, following = following, weight_hh_t.new_empty(E, B, 4 * n)
        s = torch.baddbmm(bias, u_t, weight_ih_t).baddbmm_(states[-1], weight_hh_t)
        i, f, s_g, o = s.sigmoid_().chunk(4, -1)
        g, c_prev, four_i, tanh_c = mem.chunk(4, -1)
        torch.add(minus_one, s_g, alpha=2, out=g)
        c = torch.mul(f, c_prev, out=following[..., n:2 * n]).addcmul_(i, g)
        torch.mul(c, 2, out=doubled_cell).sigmoid_()
        torch.add(minus_one, doubled_cell, alpha=2, out=tanh_c)
        states.append(o * tanh_c)
        torch.mul(i, 4, out=four_i)
        sigmoids.append(s)
        memory.append(mem)
    return sigmoids, memory, states


def _backward_scan(grad_at, weight_hh: Tensor, sigmoids: list[Tensor], memory: list[Tensor],
                   states: list[Tensor], inputs: tuple[Tensor, ...], with_inputs: Tensor | None
                   ) -> tuple[Tensor, Tensor, list[Tensor] | None]:
    """BPTT of :func:`_forward_scan`, accumulating the weight gradients step by step.

    Args:
        grad_at: ``t -> `` the loss's gradient ``(E, B, n)`` at ``h_t``, or ``None``.
        weight_hh: ``(E, 4n, n)`` (not doubled: ``δa`` is the gradient at the true ``a``).
        sigmoids, memory, states: what :func:`_forward_scan` returned.
        inputs: ``T`` tensors ``[u_t, 1]``, each ``(E, B, m + 1)``.
        with_inputs: ``W_ih`` ``(E, 4n, m)`` when the inputs' gradient is wanted, else
            ``None``.

    Returns:
        ``(∂/∂W_hhᵀ (E, n, 4n), [∂/∂W_ihᵀ; ∂/∂b] (E, m+1, 4n), per step ∂/∂u_t or None)``.
    """
    E, B, four_n = sigmoids[0].shape
    n = four_n // 4
    T = len(sigmoids)
    grad_hh_t = weight_hh.new_zeros(E, n, four_n)
    grad_ih_t = weight_hh.new_zeros(E, inputs[0].shape[-1], four_n)
    grad_inputs = [] if with_inputs is not None else None
    grad_pre = weight_hh.new_empty(E, B, four_n)
    coefficients = weight_hh.new_empty(E, B, four_n)
    out_scale = weight_hh.new_empty(E, B, n)
    grad_cell = None
    for t in range(T - 1, -1, -1):
        s, mem = sigmoids[t], memory[t]
        grad_h = grad_at(t + 1)
        if t < T - 1:
            grad_h = (torch.bmm(grad_pre, weight_hh) if grad_h is None
                      else torch.baddbmm(grad_h, grad_pre, weight_hh))
        # δc = δc_next f_next + δh o (1 - tanh²c), with o tanh²c = h tanh c
        torch.addcmul(s[..., 3 * n:], states[t + 1], mem[..., 3 * n:], value=-1,
                      out=out_scale)
        grad_cell = (grad_h * out_scale if grad_cell is None
                     else grad_cell.addcmul_(grad_h, out_scale))
        # [g i(1-i), c f(1-f), 4i σ(1-σ) = i(1-g²), tanh(c) o(1-o)]
        torch.addcmul(s, s, s, value=-1, out=coefficients).mul_(mem)
        torch.mul(coefficients[..., :3 * n].view(E, B, 3, n), grad_cell.unsqueeze(2),
                  out=grad_pre[..., :3 * n].view(E, B, 3, n))
        torch.mul(coefficients[..., 3 * n:], grad_h, out=grad_pre[..., 3 * n:])
        grad_cell.mul_(s[..., n:2 * n])
        grad_hh_t.baddbmm_(states[t].mT, grad_pre)
        grad_ih_t.baddbmm_(inputs[t].mT, grad_pre)
        if grad_inputs is not None:
            grad_inputs.append(torch.bmm(grad_pre, with_inputs))
    if grad_inputs is not None:
        grad_inputs.reverse()
    return grad_hh_t, grad_ih_t, grad_inputs
