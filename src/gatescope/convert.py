"""Convert PyTorch's recurrent modules into the equivalent gatescope cells.

:func:`from_torch` turns an ``nn.GRU``/``nn.LSTM``/``nn.RNN`` (any ``num_layers``, tanh or
relu, ``proj_size``, either ``batch_first``), or an ``nn.GRUCell``/``nn.LSTMCell``/
``nn.RNNCell``, into a gatescope cell that computes the same recurrence with copies of the
same weights, so a model trained elsewhere can be analysed. A unidirectional stack becomes
one :class:`~gatescope.StackedCell`; one layer (and direction, for a bidirectional module)
is taken with ``layer=``/``direction=``, and :func:`layer_inputs` gives the inputs torch
feeds it.

Conventions to mind when comparing outputs:
    * gatescope is **batch first**: :meth:`~gatescope.RecurrentCell.unroll` takes
      ``u`` of shape ``(B, T, m)``. For a module built with ``batch_first=False`` (torch's
      default) pass ``x.transpose(0, 1)`` and compare ``traj.states[:, 1:, :n]`` with
      ``output.transpose(0, 1)``.
    * torch's initial state is ``h0`` of shape ``(L, B, n)`` (plus ``c0`` for an LSTM);
      gatescope's is ``(B, N)``: for one layer ``h0[0]``, or ``torch.cat([h0[0], c0[0]], -1)``
      for an LSTM, whose state is ``[h; c]`` (``N = 2n``); the final ``(h_n, c_n)`` is
      ``traj.states[:, -1].split(n, -1)``. A stack's state holds the layers top first
      (:meth:`~gatescope.StackedCell.join_states` of the per-layer states).
    * On CUDA, torch's fused (cuDNN) kernels may compute float32 with TF32 tensor cores
      (``torch.backends.cudnn.allow_tf32``), so float32 outputs can differ by more than
      rounding there; compare in float64.
"""

from __future__ import annotations

import functools
import inspect
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .cells.base import RecurrentCell, check_lengths
from .cells.registry import make_cell
from .cells.stack import StackedCell
from .converters import converter_for

#: Supported torch module types -> gatescope cell name.
_CELL_NAMES = {nn.GRU: "gru", nn.LSTM: "lstm", nn.RNN: "plain",
               nn.GRUCell: "gru", nn.LSTMCell: "lstm", nn.RNNCell: "plain"}

#: ``nn.Module``'s call machinery, which runs ``forward``.
_CALL_METHODS = ("__call__", "_call_impl", "_wrapped_call_impl")

#: The directions of a bidirectional module's layer.
DIRECTIONS = ("forward", "backward")


def from_torch(module: nn.Module, layer: int | None = None,
               direction: str | None = None) -> RecurrentCell:
    """The gatescope cell equivalent to a PyTorch recurrent module (or one of its layers).

    ``nn.GRU``/``nn.GRUCell`` become a ``"gru"`` cell and ``nn.LSTM``/``nn.LSTMCell`` an
    ``"lstm"`` cell, with torch's parameter layout (gate order r, z, n and i, f, g, o; an
    LSTM's ``proj_size = p`` gives the cell's ``weight_hr``, state ``[h (p); c (n)]``). An
    ``nn.RNN``/``nn.RNNCell`` becomes a ``"plain"`` cell with its ``nonlinearity`` (tanh or
    relu), ``h_t = φ(W_r h_{t-1} + W_i u_t + b)`` with ``recurrent.weight = weight_hh``,
    ``input.weight = weight_ih`` and torch's two biases folded into one,
    ``input.bias = bias_ih + bias_hh`` (the function is the same; the gradient with respect
    to ``input.bias`` equals torch's gradient with respect to either bias).

    A unidirectional module with ``num_layers = L > 1`` becomes a
    :class:`~gatescope.StackedCell` of its ``L`` layers (top layer first in the state, so a
    readout sees the top layer's ``h``). ``layer=k`` takes layer ``k`` alone (weights
    ``*_l{k}``); a bidirectional module must be taken one ``(layer, direction)`` at a time,
    ``direction="backward"`` being the weights ``*_l{k}_reverse`` (the cell runs forward in
    time over the reversed sequence): feed it :func:`layer_inputs`.

    Dropout between layers is not converted: the cell computes eval semantics (torch in
    ``eval()`` mode); a module in training mode with ``dropout > 0`` gets a warning.

    The parameters are copies (detached from ``module``) with its dtype and device; the
    module is left unchanged. gatescope is batch first whatever ``module.batch_first`` says:
    see the module docstring for how to feed inputs and initial states and compare outputs.

    A subclass is accepted only when it computes what its torch class does: one that
    overrides ``forward`` (or a method ``forward`` calls), or a module with forward hooks,
    is refused, since the cell would silently differ from it.

    Args:
        module: an ``nn.GRU``, ``nn.LSTM`` or ``nn.RNN``, or one of the cells
            ``nn.GRUCell``, ``nn.LSTMCell``, ``nn.RNNCell`` (or a subclass that keeps their
            ``forward``).
        layer: ``None`` for the whole (unidirectional) module, or the layer
            ``0 <= layer < num_layers`` to convert alone (required when bidirectional).
        direction: ``"forward"`` or ``"backward"`` (bidirectional modules only); ``None``
            means ``"forward"``.

    Returns:
        The cell: ``input_size = m`` (of that layer) and ``hidden_size`` the size of its
        ``h`` (``proj_size`` when set); ``state_size`` is ``n`` (``2n`` for an LSTM,
        ``p + n`` with a projection, the layers' sum for a stack).

    Raises:
        ValueError: for a bad ``layer`` or ``direction`` (naming the allowed values), or a
            bidirectional module without ``layer``.
        TypeError: when ``module`` is not one of the supported types, or changes what its
            ``forward`` computes.
    """
    if (convert := converter_for(module)) is not None:
        if direction is not None:
            raise ValueError(f"direction applies to torch's bidirectional modules, not to "
                             f"{type(module).__name__}: pass direction=None")
        return convert(module, layer)
    module = stock_module(module)
    name = _cell_name(module)
    layers, directions = _layer_choices(module)
    if direction is not None and direction not in directions:
        raise ValueError(f"direction must be one of {directions} for this "
                         f"{type(module).__name__}, got {direction!r}")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)
                              or not 0 <= layer < layers):
        raise ValueError(f"layer must be an int in 0..{layers - 1} (num_layers={layers}) or "
                         f"None, got {layer!r}")
    if layer is None and len(directions) == 2:
        raise ValueError(
            f"{type(module).__name__} is bidirectional: pass layer= (0..{layers - 1}) and "
            "direction= ('forward' or 'backward') to convert one (layer, direction) at a time, "
            "and feed it gs.layer_inputs(module, x, layer=, direction=)")
    _warn_dropout(module)
    suffix = "_reverse" if direction == "backward" else ""
    if layer is not None or layers == 1:
        return _layer_cell(module, name, layer or 0, suffix)
    return StackedCell([_layer_cell(module, name, k, "") for k in range(layers)])


def layer_inputs(module: nn.RNNBase, x: Tensor, layer: int, direction: str = "forward",
                 lengths: Tensor | None = None) -> Tensor:
    """The inputs torch feeds layer ``layer`` (and ``direction``) of ``module``, for the cell
    ``from_torch(module, layer=layer, direction=direction)``.

    Computed by running torch's own module truncated to its layers ``< layer`` (without
    autograd, in eval semantics: no dropout), whose output (both directions concatenated for
    a bidirectional module) is layer ``layer``'s input; ``x`` itself for layer 0.

    For ``direction="backward"`` the time order is reversed, the order the returned cell runs
    in: ``cell.unroll(layer_inputs(...)).states[:, s]`` is torch's backward output at time
    ``T - s``. With ``lengths`` torch runs packed sequences (``pack_padded_sequence``), and
    its backward direction reverses each sequence **within its own length**: sequence ``b``
    is read at ``len_b - 1, ..., 0``. So is it here: entries ``0..len_b-1`` of sequence ``b``
    are its first ``len_b`` inputs reversed and the padding after them is kept; unroll with
    the same ``lengths`` (``cell.unroll(u, lengths=lengths)``), whose state at step ``s`` is
    torch's backward output at time ``len_b - s``.

    Args:
        module: an ``nn.GRU``, ``nn.LSTM`` or ``nn.RNN`` (any ``num_layers``, either
            ``batch_first``, uni- or bidirectional).
        x: the module's input in its own layout: ``(B, T, m)`` with ``batch_first=True``,
            ``(T, B, m)`` otherwise.
        layer: ``0 <= layer < num_layers``.
        direction: ``"forward"``, or ``"backward"`` for a bidirectional module.
        lengths: optional ``(B,)`` integer valid lengths (``1..T``) of a padded batch.

    Returns:
        ``(B, T, m_k)`` batch first, ``m_k`` the layer's ``input_size``, detached.

    Raises:
        TypeError: when ``module`` is not an ``nn.GRU``/``nn.LSTM``/``nn.RNN``.
        ValueError: for a bad ``layer``, ``direction``, ``x`` shape or ``lengths``.
    """
    module = stock_module(module)
    if not isinstance(module, nn.RNNBase):
        raise TypeError(f"layer_inputs takes an nn.GRU, nn.LSTM or nn.RNN, got "
                        f"{type(module).__name__}")
    _cell_name(module)
    layers, directions = _layer_choices(module)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < layers:
        raise ValueError(f"layer must be an int in 0..{layers - 1} (num_layers={layers}), "
                         f"got {layer!r}")
    if direction not in directions:
        raise ValueError(f"direction must be one of {directions} for this "
                         f"{type(module).__name__}, got {direction!r}")
    layout = "(B, T, m)" if module.batch_first else "(T, B, m)"
    if x.dim() != 3 or x.shape[-1] != module.input_size:
        raise ValueError(f"x must have shape {layout} with m = input_size={module.input_size} "
                         f"(batch_first={module.batch_first}), got {tuple(x.shape)}")
    xb = x if module.batch_first else x.transpose(0, 1)
    if lengths is not None:
        lengths = check_lengths(lengths, *xb.shape[:2])
    with torch.no_grad():
        inputs = xb if layer == 0 else _run_batch_first(_truncated(module, layer), x, lengths)
    if direction == "backward":
        inputs = reverse_within_lengths(inputs, lengths)
    return inputs.detach()


def reverse_within_lengths(x: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Each sequence of ``x`` (``(B, T, ...)``) reversed in time within its own length
    (entries past it kept in place); the whole ``T`` steps without ``lengths``."""
    if lengths is None:
        return x.flip(1)
    T = x.shape[1]
    t = torch.arange(T, device=x.device)
    lengths = lengths.to(x.device).unsqueeze(-1)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # (B, T)
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


def _truncated(module: nn.RNNBase, layers: int) -> nn.RNNBase:
    """A copy of ``module``'s torch class with its first ``layers`` layers only, in eval mode
    without dropout."""
    base = next(k for k in (nn.LSTM, nn.GRU, nn.RNN) if isinstance(module, k))
    return _rebuilt(base, module, only_its_keys=True, num_layers=layers, dropout=0.0).eval()


def _run_batch_first(module: nn.RNNBase, x: Tensor, lengths: Tensor | None) -> Tensor:
    """``module``'s output on ``x`` (its own layout) as ``(B, T, ·)``; packed with ``lengths``
    (zeros past each length)."""
    if lengths is None:
        out = module(x)[0]
    else:
        T = x.shape[1 if module.batch_first else 0]
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=module.batch_first,
                                      enforce_sorted=False)
        out = pad_packed_sequence(module(packed)[0], batch_first=module.batch_first,
                                  total_length=T)[0]
    return out if module.batch_first else out.transpose(0, 1)


def _layer_choices(module: nn.Module) -> tuple[int, tuple[str, ...]]:
    """``(num_layers, allowed directions)`` of ``module`` (``(1, ("forward",))`` for cells)."""
    if not isinstance(module, nn.RNNBase):
        return 1, DIRECTIONS[:1]
    return module.num_layers, DIRECTIONS if module.bidirectional else DIRECTIONS[:1]


def _warn_dropout(module: nn.Module) -> None:
    if isinstance(module, nn.RNNBase) and module.training and module.dropout > 0:
        warnings.warn(
            f"{type(module).__name__} is in training mode with dropout={module.dropout}: the "
            "gatescope cell has no dropout and computes eval semantics (module.eval())",
            stacklevel=3)


def _layer_cell(module: nn.Module, name: str, k: int, suffix: str) -> RecurrentCell:
    """The single-layer cell holding copies of layer ``k``'s weights (``*_l{k}{suffix}``)."""
    if isinstance(module, nn.RNNBase):
        suffix = f"_l{k}{suffix}"
        width = (module.proj_size or module.hidden_size) * (2 if module.bidirectional else 1)
        input_size = module.input_size if k == 0 else width
    else:
        suffix, input_size = "", module.input_size
    weight = functools.partial(getattr, module)
    weight_hh = weight("weight_hh" + suffix)
    options = {"bias": module.bias}
    if name == "plain":
        options["nonlinearity"] = module.nonlinearity
    if getattr(module, "proj_size", 0):
        options["proj_size"] = module.proj_size
    cell = make_cell(name, input_size, module.hidden_size, **options,
                     dtype=weight_hh.dtype, device=weight_hh.device)
    with torch.no_grad():
        if name == "plain":
            cell.recurrent.weight.copy_(weight_hh)
            cell.input.weight.copy_(weight("weight_ih" + suffix))
            if module.bias:
                cell.input.bias.copy_(weight("bias_ih" + suffix) + weight("bias_hh" + suffix))
            return cell
        for p in ("weight_ih", "weight_hh", "weight_hr", "bias_ih", "bias_hh"):
            if getattr(cell, p, None) is not None:
                getattr(cell, p).copy_(weight(p + suffix))
    return cell


#: Modules that compute what a torch recurrent module does under another class: the
#: ``torch.jit.script``-ed torch module (by its ``original_name``) and Opacus' DP layers
#: (same hyperparameters and parameter names as torch's).
_EQUIVALENT_TYPES = {
    **{t.__name__: t for t in _CELL_NAMES},
    "DPLSTM": nn.LSTM, "DPGRU": nn.GRU, "DPRNN": nn.RNN,
    "DPLSTMCell": nn.LSTMCell, "DPGRUCell": nn.GRUCell, "DPRNNCell": nn.RNNCell,
}

#: The hyperparameters an equivalent module is rebuilt with, by torch type.
_HYPERPARAMETERS = {
    nn.RNNBase: ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional"),
    nn.RNNCellBase: ("input_size", "hidden_size", "bias"),
}


def stock_module(module: nn.Module) -> nn.Module:
    """``module`` itself when it is a torch recurrent module; for a ``torch.jit.script``-ed
    one or an Opacus ``DPLSTM``/``DPGRU``/``DPRNN`` (or their cells), the stock torch module
    with the same hyperparameters and a copy of its ``state_dict`` (loaded strictly, so a
    parameter layout that is not torch's is refused), in ``module``'s training mode.

    Raises:
        TypeError: when ``module`` is none of these (the caller's check names the types).
    """
    if isinstance(module, tuple(_CELL_NAMES)):
        return module
    is_script = isinstance(module, torch.jit.ScriptModule)
    kind = getattr(module, "original_name", None) if is_script else type(module).__name__
    is_opacus = type(module).__module__.startswith("opacus.")
    target = _EQUIVALENT_TYPES.get(kind) if (is_script or is_opacus) else None
    if target is None:
        return module
    try:
        stock = _rebuilt(target, module)
    except RuntimeError as err:
        raise TypeError(f"from_torch: {type(module).__name__} holds parameters that are not "
                        f"{target.__name__}'s: {str(err).splitlines()[0]}") from None
    return stock.train(module.training)


def _rebuilt(target: type[nn.Module], module: nn.Module, only_its_keys: bool = False,
             **overrides) -> nn.Module:
    """A ``target`` (a torch recurrent class) with ``module``'s hyperparameters (then
    ``overrides``), dtype and device, holding a copy of ``module``'s ``state_dict``: all of it
    (strictly: ``RuntimeError`` for another layout), or ``only_its_keys`` (a truncated copy)."""
    base = nn.RNNBase if issubclass(target, nn.RNNBase) else nn.RNNCellBase
    options = {k: getattr(module, k) for k in _HYPERPARAMETERS[base]}
    if target is nn.LSTM:
        options["proj_size"] = getattr(module, "proj_size", 0)
    if target in (nn.RNN, nn.RNNCell):
        options["nonlinearity"] = getattr(module, "nonlinearity", None) or getattr(
            module, "cell_params", {}).get("nonlinearity", "tanh")
    state = module.state_dict()
    weights = next(iter(state.values()))
    copy = target(**options | overrides, device=weights.device, dtype=weights.dtype)
    if only_its_keys:
        state = {k: v for k, v in state.items() if k in copy.state_dict()}
    copy.load_state_dict(state)
    return copy


def _cell_name(module: nn.Module) -> str:
    """The gatescope cell name for ``module``, after checking it computes its class's forward."""
    base = next((k for k in _CELL_NAMES if isinstance(module, k)), None)
    if base is None:
        raise TypeError(
            "from_torch supports nn.GRU, nn.LSTM, nn.RNN, nn.GRUCell, nn.LSTMCell and "
            "nn.RNNCell, their torch.jit.script-ed versions and Opacus' DPLSTM/DPGRU/DPRNN, "
            f"got {type(module).__name__}"
        )
    _check_forward_is_torchs(module, base)
    return _CELL_NAMES[base]


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
