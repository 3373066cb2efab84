"""Converters for ``mambapy`` (https://github.com/alxndrTL/mamba.py): its ``MambaBlock``
becomes a ``"mamba"`` cell (docs/maths.md#mamba) with a copy of the block's ``state_dict``, a
``ResidualBlock`` (``x + mixer(RMSNorm(x))``) a :class:`~gatescope.cells.residual.ResidualCell`
around it (docs/maths.md#residual-blocks), and a ``Mamba`` (its ``layers``, residual blocks)
a :class:`~gatescope.StackedCell` of those.

The cell computes the block's recurrent ``step(x, cache)``; its state ``[y; ξ; h]`` holds the
cache ``(h, inputs)`` flattened (:meth:`~gatescope.cells.mamba.MambaCell.split_state`).
mambapy computes ``A = -exp(A_log.float())`` and ``D.float()`` in float32 even in a float64
block, so a float64 cell agrees with the block to float32 precision in those two (the cell
computes in the block's dtype throughout).
"""

from __future__ import annotations

import torch
from torch import nn

from ..cells.mamba import MambaCell
from ..cells.residual import ResidualCell
from ..cells.stack import StackedCell


def _mamba_block(module: nn.Module, layer: int | None) -> MambaCell:
    """The ``"mamba"`` cell of a ``mambapy.mamba.MambaBlock``.

    Raises:
        ValueError: for ``layer`` other than ``None`` (a block is one layer), or a block
            built with ``inner_layernorms=True`` (RMSNorms on ``Δ``, ``B``, ``C``, which the
            cell does not compute).
    """
    if layer is not None:
        raise ValueError(f"a MambaBlock is one layer: pass layer=None, got {layer!r}")
    config = module.config
    if config.inner_layernorms:
        raise ValueError("MambaBlock with inner_layernorms=True is not supported (the cell "
                         "has no RMSNorm on Δ, B, C): build it with inner_layernorms=False")
    weight = module.in_proj.weight
    cell = MambaCell(config.d_model, config.d_model, bias=module.in_proj.bias is not None,
                     d_state=config.d_state, expand=config.expand_factor,
                     d_conv=config.d_conv, dt_rank=config.dt_rank,
                     conv_bias=module.conv1d.bias is not None)
    cell.to(dtype=weight.dtype, device=weight.device).load_state_dict(module.state_dict())
    return cell


def _residual_block(module: nn.Module, layer: int | None) -> ResidualCell:
    """The :class:`~gatescope.cells.residual.ResidualCell` of a ``mambapy`` ``ResidualBlock``:
    RMSNorm with the block's ``rms_norm_eps`` and gain, around its ``MambaBlock``.

    Raises:
        ValueError: as :func:`_mamba_block` (``layer``, ``inner_layernorms``).
    """
    mixer = _mamba_block(module.mixer, layer)
    norm = module.norm
    cell = ResidualCell(mixer, norm="rms", eps=norm.eps, affine=not norm.use_mup)
    with torch.no_grad():
        if not norm.use_mup:
            cell.norm.weight.copy_(norm.weight)
    return cell


def _mamba(module: nn.Module, layer: int | None) -> ResidualCell | StackedCell:
    """The cell of a ``mambapy`` ``Mamba``: a :class:`~gatescope.StackedCell` of its residual
    blocks (top layer first in the state), or layer ``k`` alone with ``layer=k``.

    Raises:
        ValueError: for ``layer`` outside ``0..n_layers-1`` (naming the range), or a block
            :func:`_mamba_block` refuses.
    """
    blocks = list(module.layers)
    if layer is not None:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(blocks):
            raise ValueError(f"layer must be an int in 0..{len(blocks) - 1} (n_layers="
                             f"{len(blocks)}) or None, got {layer!r}")
        return _residual_block(blocks[layer], None)
    cells = [_residual_block(block, None) for block in blocks]
    return cells[0] if len(cells) == 1 else StackedCell(cells)


#: mambapy class name -> converter.
CONVERTERS = {"MambaBlock": _mamba_block, "ResidualBlock": _residual_block, "Mamba": _mamba}
