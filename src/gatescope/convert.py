"""Convert PyTorch's recurrent modules into the equivalent gatescope cells.

:func:`from_torch` turns a single-layer ``nn.GRU``/``nn.LSTM``/``nn.RNN`` (tanh), or an
``nn.GRUCell``/``nn.LSTMCell``/``nn.RNNCell``, into a gatescope cell that computes the same
recurrence with copies of the same weights, so a model trained elsewhere can be analysed.

Conventions to mind when comparing outputs:
    * gatescope is **batch first**: :meth:`~gatescope.RecurrentCell.unroll` takes
      ``u`` of shape ``(B, T, m)``. For a module built with ``batch_first=False`` (torch's
      default) pass ``x.transpose(0, 1)`` and compare ``traj.states[:, 1:, :n]`` with
      ``output.transpose(0, 1)``.
    * torch's initial state is ``h0`` of shape ``(1, B, n)`` (plus ``c0`` for an LSTM);
      gatescope's is ``(B, N)``: ``h0[0]``, or ``torch.cat([h0[0], c0[0]], -1)`` for an LSTM,
      whose state is ``[h; c]`` (``N = 2n``); the final ``(h_n, c_n)`` is
      ``traj.states[:, -1].split(n, -1)``.
    * On CUDA, torch's fused (cuDNN) kernels may compute float32 with TF32 tensor cores
      (``torch.backends.cudnn.allow_tf32``), so float32 outputs can differ by more than
      rounding there; compare in float64.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from .cells.base import RecurrentCell
from .cells.registry import make_cell

#: Supported torch module types -> gatescope cell name.
_CELL_NAMES = {nn.GRU: "gru", nn.LSTM: "lstm", nn.RNN: "plain",
               nn.GRUCell: "gru", nn.LSTMCell: "lstm", nn.RNNCell: "plain"}

#: ``nn.Module``'s call machinery, which runs ``forward``.
_CALL_METHODS = ("__call__", "_call_impl", "_wrapped_call_impl")


def from_torch(module: nn.Module) -> RecurrentCell:
    """The gatescope cell equivalent to a PyTorch recurrent module.

    ``nn.GRU``/``nn.GRUCell`` become a ``"gru"`` cell and ``nn.LSTM``/``nn.LSTMCell`` an
    ``"lstm"`` cell, with torch's parameter layout (gate order r, z, n and i, f, g, o). An
    ``nn.RNN``/``nn.RNNCell`` with ``nonlinearity="tanh"`` becomes a ``"plain"`` cell,
    ``h_t = tanh(W_r h_{t-1} + W_i u_t + b)`` with ``recurrent.weight = weight_hh``,
    ``input.weight = weight_ih`` and torch's two biases folded into one,
    ``input.bias = bias_ih + bias_hh`` (the function is the same; the gradient with respect
    to ``input.bias`` equals torch's gradient with respect to either bias).

    The parameters are copies (detached from ``module``) with its dtype and device; the
    module is left unchanged. gatescope is batch first whatever ``module.batch_first`` says:
    see the module docstring for how to feed inputs and initial states and compare outputs.

    A subclass is accepted only when it computes what its torch class does: one that
    overrides ``forward`` (or a method ``forward`` calls), or a module with forward hooks,
    is refused, since the cell would silently differ from it.

    Args:
        module: a single-layer, unidirectional ``nn.GRU``, ``nn.LSTM`` (``proj_size=0``) or
            tanh ``nn.RNN``, or one of the cells ``nn.GRUCell``, ``nn.LSTMCell``, tanh
            ``nn.RNNCell`` (or a subclass that keeps their ``forward``).

    Returns:
        The cell: ``input_size = m`` and ``hidden_size = n`` as in ``module``; its
        ``state_size`` is ``n`` (``2n`` for an LSTM, whose state is ``[h; c]``).

    Raises:
        NotImplementedError: for a setting gatescope cannot express (``num_layers > 1``,
            ``bidirectional=True``, ``proj_size > 0``, ``nonlinearity="relu"``).
        TypeError: when ``module`` is not one of the supported types, or changes what its
            ``forward`` computes.
    """
    name = _cell_name(module)
    suffix = "_l0" if isinstance(module, nn.RNNBase) else ""
    weight_ih = getattr(module, "weight_ih" + suffix)
    weight_hh = getattr(module, "weight_hh" + suffix)
    bias_ih = getattr(module, "bias_ih" + suffix) if module.bias else None
    bias_hh = getattr(module, "bias_hh" + suffix) if module.bias else None
    cell = make_cell(name, module.input_size, module.hidden_size, bias=module.bias,
                     dtype=weight_hh.dtype, device=weight_hh.device)
    with torch.no_grad():
        if name == "plain":
            cell.recurrent.weight.copy_(weight_hh)
            cell.input.weight.copy_(weight_ih)
            if module.bias:
                cell.input.bias.copy_(bias_ih + bias_hh)
        else:
            cell.weight_ih.copy_(weight_ih)
            cell.weight_hh.copy_(weight_hh)
            if module.bias:
                cell.bias_ih.copy_(bias_ih)
                cell.bias_hh.copy_(bias_hh)
    return cell


def _cell_name(module: nn.Module) -> str:
    """The gatescope cell name for ``module``, after checking every setting is supported."""
    base = next((k for k in _CELL_NAMES if isinstance(module, k)), None)
    if base is None:
        raise TypeError(
            "from_torch supports nn.GRU, nn.LSTM, nn.RNN, nn.GRUCell, nn.LSTMCell and "
            f"nn.RNNCell, got {type(module).__name__}"
        )
    _check_forward_is_torchs(module, base)
    name = _CELL_NAMES[base]
    kind = type(module).__name__
    if isinstance(module, nn.RNNBase):
        if module.num_layers != 1:
            raise NotImplementedError(
                f"{kind} with num_layers={module.num_layers}: only single-layer modules "
                "(num_layers=1) are supported; analyse one layer at a time by copying its "
                f"weights (weight_*_l<k>) into a single-layer nn.{kind}"
            )
        if module.bidirectional:
            raise NotImplementedError(
                f"{kind} with bidirectional=True: only unidirectional modules are supported "
                "(a gatescope cell runs forward in time)"
            )
        if module.proj_size > 0:
            raise NotImplementedError(
                f"{kind} with proj_size={module.proj_size}: only proj_size=0 is supported "
                "(the 'lstm' cell has no output projection)"
            )
    if name == "plain" and module.nonlinearity != "tanh":
        raise NotImplementedError(
            f"{kind} with nonlinearity={module.nonlinearity!r}: only nonlinearity='tanh' "
            "is supported (it becomes the 'plain' tanh cell)"
        )
    return name


@functools.cache
def _forward_methods(base: type[nn.Module]) -> frozenset[str]:
    """Names of ``base``'s methods that its ``forward`` runs: ``forward``, what it calls on
    ``self`` (transitively, read from the code's attribute names) and the call machinery."""
    seen, todo = set(_CALL_METHODS), ["forward"]
    while todo:
        name = todo.pop()
        attr = inspect.getattr_static(base, name, None)
        if name in seen or attr is None:
            continue
        seen.add(name)
        code = getattr(attr.fget if isinstance(attr, property) else attr, "__code__", None)
        todo.extend(code.co_names if code is not None else ())
    return frozenset(seen)


def _check_forward_is_torchs(module: nn.Module, base: type[nn.Module]) -> None:
    """Refuse a ``module`` whose forward pass is not ``base``'s: a subclass overriding a
    method ``forward`` runs, an instance attribute shadowing one, or forward hooks."""
    cls = type(module)
    for name in sorted(_forward_methods(base)):
        overridden = (inspect.getattr_static(cls, name, None)
                      is not inspect.getattr_static(base, name, None))
        if overridden or name in vars(module):
            raise TypeError(
                f"from_torch reproduces nn.{base.__name__}.forward, but {cls.__name__} "
                f"overrides {name!r}, so the cell could differ from it; convert an "
                f"nn.{base.__name__} holding the same weights (or register a gatescope cell "
                "for the new computation)"
            )
    if module._forward_hooks or module._forward_pre_hooks:
        raise TypeError(
            f"from_torch reproduces nn.{base.__name__}.forward, but this {cls.__name__} has "
            "forward hooks, which the cell would not run; remove them before converting"
        )
