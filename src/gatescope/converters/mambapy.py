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

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..cells.mamba import MambaCell
from ..cells.residual import ResidualCell
from ..cells.stack import StackedCell

#: mambapy's default ``rms_norm_eps`` (``MambaConfig``), for weights that do not say.
RMS_NORM_EPS = 1e-5


def _mamba_block(module: nn.Module, layer: int | None) -> MambaCell:
    """The ``"mamba"`` cell of a ``mambapy.mamba.MambaBlock``.

    Raises:
        ValueError: for ``layer`` other than ``None`` (a block is one layer), or a block
            built with ``inner_layernorms=True`` (RMSNorms on ``Δ``, ``B``, ``C``, which the
            cell does not compute).
    """
    if layer is not None:
        raise ValueError(f"a MambaBlock is one layer: pass layer=None, got {layer!r}")
    if module.config.inner_layernorms:
        raise ValueError("MambaBlock with inner_layernorms=True is not supported (the cell "
                         "has no RMSNorm on Δ, B, C): build it with inner_layernorms=False")
    return block_from_weights(module.state_dict())


def block_from_weights(weights: Mapping[str, Tensor]) -> MambaCell:
    """The ``"mamba"`` cell of a ``MambaBlock``'s ``state_dict`` (loaded strictly), its
    options read from the shapes: ``d_model`` and ``d_inner`` from ``in_proj``, ``d_state``
    from ``A_log``, ``d_conv`` from ``conv1d``, ``dt_rank`` from ``dt_proj``, the biases
    from their keys.

    Raises:
        ValueError: for the RMSNorms of ``inner_layernorms=True`` (keys ``dt_layernorm.*``).
        RuntimeError: for other keys that are not the layout's (``load_state_dict``'s).
    """
    if "dt_layernorm.weight" in weights:
        raise ValueError("MambaBlock with inner_layernorms=True is not supported (the cell "
                         "has no RMSNorm on Δ, B, C): build it with inner_layernorms=False")
    weight = weights["in_proj.weight"]
    d_model, d_inner = weight.shape[1], weights["A_log"].shape[0]
    cell = MambaCell(d_model, d_model, bias="in_proj.bias" in weights,
                     d_state=weights["A_log"].shape[1], expand=d_inner // d_model,
                     d_conv=weights["conv1d.weight"].shape[-1],
                     dt_rank=weights["dt_proj.weight"].shape[1],
                     conv_bias="conv1d.bias" in weights)
    cell.to(dtype=weight.dtype, device=weight.device).load_state_dict(weights)
    return cell


def residual_from_weights(weights: Mapping[str, Tensor], eps: float = RMS_NORM_EPS
                          ) -> ResidualCell:
    """The :class:`~gatescope.cells.residual.ResidualCell` of a ``ResidualBlock``'s
    ``state_dict``: RMSNorm (``norm.weight``; without it, mambapy's ``mup`` norm with no gain)
    of ``ε = eps`` around the block of ``mixer.*``."""
    mixer = block_from_weights(_under(weights, "mixer."))
    gain = weights.get("norm.weight")
    cell = ResidualCell(mixer, norm="rms", eps=eps, affine=gain is not None)
    if gain is not None:
        with torch.no_grad():
            cell.norm.weight.copy_(gain)
    return cell


def stack_from_weights(weights: Mapping[str, Tensor], eps: float = RMS_NORM_EPS,
                       layer: int | None = None) -> ResidualCell | StackedCell:
    """The cell of a ``Mamba``'s ``state_dict`` (``layers.{k}.*``): a
    :class:`~gatescope.StackedCell` of its residual blocks (one block alone is returned as
    it is), or block ``layer`` alone.

    Raises:
        ValueError: for ``layer`` outside ``0..n_layers-1`` (naming the range).
    """
    count = 1 + max(int(key.split(".")[1]) for key in weights if key.startswith("layers."))
    if layer is not None:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < count:
            raise ValueError(f"layer must be an int in 0..{count - 1} (n_layers={count}) or "
                             f"None, got {layer!r}")
        return residual_from_weights(_under(weights, f"layers.{layer}."), eps)
    cells = [residual_from_weights(_under(weights, f"layers.{k}."), eps) for k in range(count)]
    return cells[0] if count == 1 else StackedCell(cells)


def _under(weights: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``weights`` under ``prefix``, with it removed."""
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def _residual_block(module: nn.Module, layer: int | None) -> ResidualCell:
    """The :class:`~gatescope.cells.residual.ResidualCell` of a ``mambapy`` ``ResidualBlock``:
    RMSNorm with the block's ``rms_norm_eps`` and gain, around its ``MambaBlock``.

    Raises:
        ValueError: as :func:`_mamba_block` (``layer``, ``inner_layernorms``).
    """
    _mamba_block(module.mixer, layer)  # its refusals
    return residual_from_weights(module.state_dict(), module.norm.eps)


def _mamba(module: nn.Module, layer: int | None) -> ResidualCell | StackedCell:
    """The cell of a ``mambapy`` ``Mamba``: a :class:`~gatescope.StackedCell` of its residual
    blocks (top layer first in the state), or layer ``k`` alone with ``layer=k``.

    Raises:
        ValueError: for a bad ``layer`` or a block :func:`_mamba_block` refuses.
    """
    for block in module.layers:
        _mamba_block(block.mixer, None)
    return stack_from_weights(module.state_dict(), module.config.rms_norm_eps, layer)


#: mambapy class name -> converter.
CONVERTERS = {"MambaBlock": _mamba_block, "ResidualBlock": _residual_block, "Mamba": _mamba}

#: ``state_dict`` layouts (for ``gatescope inspect`` on a weights file): class name ->
#: ``(a key only that layout has, the cell builder)``. The RMSNorm's ``ε`` is not in the
#: weights: mambapy's default is assumed.
STATE_DICT_LAYOUTS = {"Mamba": ("layers.0.mixer.A_log", stack_from_weights),
                      "ResidualBlock": ("mixer.A_log", residual_from_weights),
                      "MambaBlock": ("A_log", block_from_weights)}
