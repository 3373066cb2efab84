"""Converters for ``mambapy`` (https://github.com/alxndrTL/mamba.py): its ``MambaBlock``
becomes a ``"mamba"`` cell (docs/maths.md#mamba) with a copy of the block's ``state_dict``.

The cell computes the block's recurrent ``step(x, cache)``; its state ``[y; ξ; h]`` holds the
cache ``(h, inputs)`` flattened (:meth:`~gatescope.cells.mamba.MambaCell.split_state`).
mambapy computes ``A = -exp(A_log.float())`` and ``D.float()`` in float32 even in a float64
block, so a float64 cell agrees with the block to float32 precision in those two (the cell
computes in the block's dtype throughout).
"""

from __future__ import annotations

from torch import nn

from ..cells.mamba import MambaCell


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


#: mambapy class name -> converter. ``Mamba`` and ``ResidualBlock`` (``x + mixer(RMSNorm(x))``)
#: need a residual wrapper cell, not here yet.
CONVERTERS = {"MambaBlock": _mamba_block}
