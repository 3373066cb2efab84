"""A fused LSTM recurrence for seed ensembles: one ``autograd.Function`` for all E seeds.

The ``"batched"`` ensemble mode unrolls a cell step by step with autograd recording every
operation. For the LSTM, whose step is fixed, :func:`fused_lstm_states` runs the whole
recurrence of E stacked models as one :class:`torch.autograd.Function` instead:

* one ``bmm`` per step gives the four gates of all E seeds at once, from
  ``[h_{t-1}, u_t, 1] @ [W_hh, W_ih, b_ih + b_hh]ᵀ`` (input projection and biases ride
  along as extra columns, so nothing is added per step);
* ``tanh`` is evaluated as ``2 σ(2x) - 1`` (torch's CPU ``tanh`` is several times slower
  than its ``sigmoid``): the rows of the candidate ``g`` in the weights and bias are
  doubled (exact in floating point), so one ``sigmoid`` gives all four gates, and the scan
  carries ``2c`` so that ``tanh c`` needs no doubling either;
* the forward pass keeps, per step, the factors the backward pass multiplies with
  (``[2 g i(1-i), 2 c f(1-f), 2 i(1-g²), tanh(c') o(1-o), o(1-tanh²c'), f]``); the
  backward pass is the hand-written BPTT below: per step one ``bmm`` by ``W_hh``, writing
  ``δa`` into an ``(E, T, B, 4n)`` buffer (its own, so that a retained graph can run its
  backward again); after the sweep one ``bmm`` over all ``T·B`` rows at once gives the
  gradients of ``W_hh``, ``W_ih`` and the bias together (and one more the inputs'
  gradient), which is what a fused ``nn.LSTM`` does too: a product of that size runs
  faster than ``T`` small ones;
* every buffer is seed-major (``(E, T, B, ·)``), so that those products read it in place.

It computes the maths of :class:`~gatescope.cells.lstm.LSTMCell` (torch's gate order
i, f, g, o; ``h_0 = c_0 = 0``), so every seed gets the numbers of the cell run alone, up to
floating-point rounding. Per step, with ``a = W_ih u + b_ih + W_hh h + b_hh``::

    i, f, o = σ(a_i), σ(a_f), σ(a_o);  g = tanh(a_g);  c' = f c + i g;  h' = o tanh(c')

and, with ``δh``, ``δc`` the gradients reaching ``h'``, ``c'``::

    δc  += δh o (1 - tanh²c')
    δa_i = δc g i(1-i),  δa_f = δc c f(1-f),  δa_g = δc i (1-g²),  δa_o = δh tanh(c') o(1-o)
    δh_prev = W_hhᵀ δa (+ the loss's gradient at h),  δc_prev = δc f

Nothing mixes seeds: a seed whose numbers are not finite affects only its own slices.

**On a CPU in float32** torch's own LSTM kernel (oneDNN, ``aten::lstm``) runs each seed
instead, one call per seed for the whole sequence: it keeps one seed's packed weights in
cache over all steps and runs its three products per step near the core's peak, which a
``bmm`` over all seeds' weights (more than the cache holds) does not reach — measured in
docs/performance.md#lstm-ensembles. The ``E`` calls are a loop over seeds, each of which
is one fused kernel over ``T`` steps (not ``E·T`` Python steps); everything around the
recurrence (readout, loss, optimizer) stays batched over seeds. Elsewhere (float64, a GPU,
oneDNN switched off with ``torch.backends.mkldnn.flags(enabled=False)``) the scan below
runs.
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
    return _batched_states(u, weight_ih, weight_hh, bias_ih, bias_hh, last_only)


def _batched_states(u, weight_ih, weight_hh, bias_ih, bias_hh, last_only) -> Tensor:
    """:func:`fused_lstm_states` after the checks: the :class:`_FusedLSTM` function when a
    gradient is wanted, else the bare forward scan (nothing kept)."""
    if _vendor_kernel_applies(u):
        return _vendor_kernel_states(u, weight_ih, weight_hh, bias_ih, bias_hh, last_only)
    if bias_ih is None:
        bias_ih = bias_hh = weight_hh.new_zeros(weight_hh.shape[:2])
    weights = (weight_ih, weight_hh, bias_ih, bias_hh)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, *weights)):
        return _FusedLSTM.apply(u, *weights, last_only)
    rows = _step_rows(u, weight_hh.shape[-1])
    _forward_scan(rows, _scan_weight(*weights), keep=False)
    return _states(rows, weight_hh.shape[-1], last_only)


def _vendor_kernel_applies(u: Tensor) -> bool:
    """Whether torch's LSTM kernel runs on oneDNN for ``u`` (what ``aten::lstm`` checks:
    a CPU tensor in float32 with oneDNN built and enabled)."""
    return (u.device.type == "cpu" and u.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def _vendor_kernel_states(u, weight_ih, weight_hh, bias_ih, bias_hh, last_only) -> Tensor:
    """:func:`fused_lstm_states` by torch's fused LSTM kernel, one call per seed (see the
    module docstring); autograd records each call with the kernel's own backward."""
    E, B = u.shape[:2]
    n = weight_hh.shape[-1]
    zero = u.new_zeros(1, B, n)
    has_bias = bias_ih is not None
    outputs = []
    for e in range(E):
        params = ([weight_ih[e], weight_hh[e], bias_ih[e], bias_hh[e]] if has_bias
                  else [weight_ih[e], weight_hh[e]])
        # (input, (h0, c0), params, has_biases, num_layers, dropout, train,
        #  bidirectional, batch_first)
        out, h_last, _ = torch.lstm(u[e], (zero, zero), params, has_bias, 1, 0.0, True,
                                    False, True)
        outputs.append(h_last[0] if last_only else out)
    if last_only:
        return torch.stack(outputs)
    return torch.cat([u.new_zeros(E, 1, B, n), torch.stack(outputs).transpose(1, 2)], 1)


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


def _scan_weight(weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
                 bias_hh: Tensor) -> Tensor:
    """``[W_hh, W_ih, b_ih + b_hh]ᵀ`` with the ``g`` part doubled: ``(E, n + m + 1, 4n)``,
    the right factor of every step's product with ``[h, u, 1]``."""
    weight = torch.cat([weight_hh, weight_ih, (bias_ih + bias_hh).unsqueeze(-1)], -1)
    return _candidate_doubled(weight).mT


def _states(rows: Tensor, n: int, last_only: bool) -> Tensor:
    """The states in :func:`fused_lstm_states` 's layout, copied out of ``rows``."""
    if last_only:
        return rows[:, -1, :, :n].clone()
    return rows[..., :n].contiguous()


class _FusedLSTM(torch.autograd.Function):
    """``(u, W_ih, W_hh, b_ih, b_hh, last_only) -> states``; see the module docstring."""

    @staticmethod
    def forward(ctx, u, weight_ih, weight_hh, bias_ih, bias_hh, last_only):
        n = weight_hh.shape[-1]
        rows = _step_rows(u, n)
        kept = _forward_scan(rows, _scan_weight(weight_ih, weight_hh, bias_ih, bias_hh),
                             keep=True)
        ctx.save_for_backward(weight_ih, weight_hh, rows, kept)
        ctx.last_only = last_only
        # a copy: an output must not be a tensor kept for the backward pass
        return _states(rows, n, last_only)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        weight_ih, weight_hh, rows, kept = ctx.saved_tensors
        n, m = weight_hh.shape[-1], weight_ih.shape[-1]
        T = kept.shape[1]
        grad_at = ((lambda t: grad_states if t == T else None) if ctx.last_only
                   else (lambda t: grad_states[:, t]))
        grad_rows, grad_u = _backward_scan(
            grad_at, weight_hh, kept, rows, weight_ih if ctx.needs_input_grad[0] else None)
        grad_bias = grad_rows[:, n + m]
        return (grad_u, grad_rows[:, n:n + m].mT.contiguous(),
                grad_rows[:, :n].mT.contiguous(), grad_bias.clone(), grad_bias, None)


def _step_rows(u: Tensor, n: int) -> Tensor:
    """``(E, T+1, B, n + m + 1)``: row ``t`` is ``[h_t, u_{t+1}, 1]`` (``h_0 = 0``; the
    scan writes ``h_1..h_T``; the last row's input part is zero), so that one product per
    step gives the pre-activations (with ``[W_hh, W_ih, b]``) and one accumulates the
    three gradients."""
    E, B, T, m = u.shape
    rows = u.new_empty(E, T + 1, B, n + m + 1)
    rows[:, 0, :, :n] = 0
    rows[:, :T, :, n:n + m] = u.transpose(1, 2)
    rows[:, :T, :, n + m] = 1
    rows[:, T, :, n:] = 0
    return rows


def _forward_scan(rows: Tensor, weight_t: Tensor, keep: bool) -> Tensor | None:
    """Run the recurrence over time.

    The scan carries ``2c`` instead of ``c`` (every product and sum is exactly twice the
    one with ``c``), so that ``tanh c = 2 σ(2c) - 1`` needs no doubling of its own.

    Args:
        rows: ``(E, T+1, B, n + m + 1)`` from :func:`_step_rows`; ``h_1..h_T`` are written
            into its first ``n`` columns.
        weight_t: ``(E, n + m + 1, 4n)`` from :func:`_scan_weight`.
        keep: whether to keep what the backward pass needs.

    Returns:
        With ``keep``, ``(E, T, B, 6n)``: per step the factors of the backward pass,
        ``[2 g i(1-i), 2 c f(1-f), 2 i(1-g²), tanh(c') o(1-o), o(1-tanh²c'), f]``
        (``c`` the previous cell state, ``c'`` the new one; the four gate blocks come as
        one product of ``σ(1-σ)`` with ``[2g, 2c, 8i, tanh c']``); else ``None``.
    """
    E, T1, B, _ = rows.shape
    four_n = weight_t.shape[-1]
    n = four_n // 4
    pre = rows.new_empty(E, B, four_n)
    i, f, s_g, o = pre.chunk(4, -1)
    sigmoid_cell = rows.new_empty(E, B, n)
    minus_one, minus_two = rows.new_full((), -1.0), rows.new_full((), -2.0)
    # [2g, 2c_{t-1}, 8i, tanh c_t] of step t, in two buffers that take turns: step t
    # writes its 2c_t into the other one, the next step's
    memory = (rows.new_zeros(E, B, four_n), rows.new_empty(E, B, four_n))
    blocks = tuple(m.chunk(4, -1) for m in memory)
    states, inputs = rows[..., :n].unbind(1), rows.unbind(1)
    if keep:
        kept = rows.new_empty(E, T1 - 1, B, 6 * n)
        factors = [k.unbind(1) for k in kept.split([four_n, n, n], -1)]
    for t in range(T1 - 1):
        (g2, c2_prev, eight_i, tanh_c), c2 = blocks[t % 2], blocks[(t + 1) % 2][1]
        torch.bmm(inputs[t], weight_t, out=pre).sigmoid_()
        torch.add(minus_two, s_g, alpha=4, out=g2)  # 2g = 4 σ(2 a_g) - 2
        torch.mul(f, c2_prev, out=c2).addcmul_(i, g2)
        torch.add(minus_one, torch.sigmoid(c2, out=sigmoid_cell), alpha=2, out=tanh_c)
        h = torch.mul(o, tanh_c, out=states[t + 1])
        if keep:
            torch.mul(i, 8, out=eight_i)
            torch.addcmul(pre, pre, pre, value=-1, out=factors[0][t]).mul_(memory[t % 2])
            torch.addcmul(o, h, tanh_c, value=-1, out=factors[1][t])  # o - o tanh²c
            factors[2][t].copy_(f)
    return kept if keep else None


def _backward_scan(grad_at, weight_hh: Tensor, kept: Tensor, rows: Tensor,
                   weight_ih: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """BPTT of :func:`_forward_scan`, then the weight gradients from all steps at once.

    It carries ``δ(2c) = δc / 2``, the gradient of the scan's ``2c``, which the doubled
    gate factors turn into ``δa`` without a rescaling. Step ``t`` writes ``δa_t`` into
    ``(E, T, B, 4n)``, so that after the sweep one product with the rows ``[h, u, 1]``
    sums the weight gradients over time and batch.

    Args:
        grad_at: ``t -> `` the loss's gradient ``(E, B, n)`` at ``h_t``, or ``None``.
        weight_hh: ``(E, 4n, n)`` (not doubled: ``δa`` is the gradient at the true ``a``).
        kept, rows: the forward pass's (see :func:`_forward_scan`).
        weight_ih: ``(E, 4n, m)`` when the inputs' gradient is wanted, else ``None``.

    Returns:
        ``[∂/∂W_hh, ∂/∂W_ih, ∂/∂b]ᵀ`` stacked, ``(E, n + m + 1, 4n)``, and ``∂/∂u``
        ``(E, B, T, m)`` or ``None``.
    """
    E, T, B, six_n = kept.shape
    n = six_n // 6
    grad_cell, cell_thrice = kept.new_zeros(E, B, n), kept.new_empty(E, B, 3 * n)
    gates, output, cell, forget = (k.unbind(1) for k in kept.split([3 * n, n, n, n], -1))
    grad_all = kept.new_empty(E, T, B, 4 * n)
    grad_pre = grad_all.unbind(1)
    for t in range(T - 1, -1, -1):
        grad_h = grad_at(t + 1)
        if t < T - 1:
            grad_h = (torch.bmm(grad_pre[t + 1], weight_hh) if grad_h is None
                      else torch.baddbmm(grad_h, grad_pre[t + 1], weight_hh))
        grad_cell.addcmul_(grad_h, cell[t], value=0.5)
        # (a broadcasting product is several times slower than a concatenation and one
        # product of equal shapes)
        torch.mul(gates[t], torch.cat([grad_cell] * 3, -1, out=cell_thrice),
                  out=grad_pre[t][..., :3 * n])
        torch.mul(output[t], grad_h, out=grad_pre[t][..., 3 * n:])
        grad_cell.mul_(forget[t])
    grad_all = grad_all.reshape(E, T * B, 4 * n)
    grad_rows = torch.bmm(rows[:, :T].reshape(E, T * B, -1).mT, grad_all)
    if weight_ih is None:
        return grad_rows, None
    grad_u = torch.bmm(grad_all, weight_ih).reshape(E, T, B, -1)
    return grad_rows, grad_u.transpose(1, 2)
