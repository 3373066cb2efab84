"""``from_torch`` for ``minGRU_pytorch``: ``minGRU`` -> ``"min_gru"``, ``minLSTM`` ->
``"min_lstm"`` (docs/maths.md#mingru-and-minlstm).

The cells use the reference's parameter names (``to_hidden_and_gate`` or
``to_hidden_and_f_i_gate``, ``to_out``), so the module's ``state_dict`` loads into them
strictly. The reference keeps neither ``expansion_factor`` nor ``proj_out``: the inner width
``d`` is read from the gate projection and ``proj_out`` from ``to_out`` being a ``Linear``.
Without a projection the output is the inner state, so a module built with
``expansion_factor != 1, proj_out=False`` (as ``minGRUAttnHybrid`` builds its minGRU) becomes a
cell with ``input_size = dim`` and ``hidden_size = d``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

from torch import Tensor, nn

from ..cells.diagonal import DiagonalCell
from ..cells.registry import make_cell
from . import check_single_layer


def expansion_factor(dim: int, inner: int) -> float:
    """A float ``e`` with ``int(dim * e) == inner`` (how the reference and the cells size the
    inner width): ``inner / dim``, or the next float up where rounding makes the product fall
    just short of ``inner`` (e.g. ``49 * (1 / 49) = 0.999…``)."""
    e = inner / dim
    return e if int(dim * e) == inner else math.nextafter(e, math.inf)


def cell_from_weights(cell_name: str, projection: str, chunks: int,
                      state_dict: Mapping[str, Tensor]) -> DiagonalCell:
    """The ``cell_name`` cell holding ``state_dict`` (loaded strictly), its sizes read from
    the shapes: ``projection.weight`` has ``chunks * d`` rows and ``dim`` columns, and a
    ``to_out.weight`` means ``proj_out``.

    Raises:
        RuntimeError: for keys that are not the layout's (``load_state_dict``'s message).
    """
    weight = state_dict[f"{projection}.weight"]
    dim, inner = weight.shape[1], weight.shape[0] // chunks
    like = {"dtype": weight.dtype, "device": weight.device,
            "bias": f"{projection}.bias" in state_dict}
    if "to_out.weight" in state_dict:
        cell = make_cell(cell_name, dim, dim, expansion_factor=expansion_factor(dim, inner),
                         proj_out=True, **like)
    else:  # the output is the inner state, d wide (d != dim with an expansion_factor)
        cell = make_cell(cell_name, dim, inner, proj_out=False, **like)
    cell.load_state_dict(state_dict)
    return cell


def _converter(cell_name: str, projection: str, chunks: int):
    """The converter of the class whose input projection ``projection`` has ``chunks * d``
    outputs (``d`` the inner width)."""

    def convert(module: nn.Module, layer: int | None) -> DiagonalCell:
        """The cell computing ``module``'s recurrence, with copies of its weights (its dtype
        and device); ``layer`` must be ``None`` or ``0``."""
        check_single_layer(module, layer)
        return cell_from_weights(cell_name, projection, chunks, module.state_dict())

    return convert


#: The layouts :func:`cell_from_weights` reads: ``(cell, projection, chunks)``.
_LAYOUTS = {"minGRU": ("min_gru", "to_hidden_and_gate", 2),
            "minLSTM": ("min_lstm", "to_hidden_and_f_i_gate", 3)}

CONVERTERS = {name: _converter(*layout) for name, layout in _LAYOUTS.items()}

#: ``state_dict`` layouts (for ``gatescope inspect`` on a weights file): class name ->
#: ``(a key only that layout has, the cell builder)``.
STATE_DICT_LAYOUTS = {
    name: (f"{layout[1]}.weight", functools.partial(cell_from_weights, *layout))
    for name, layout in _LAYOUTS.items()}
