"""A name -> cell-class registry that users extend with their own cells."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..registry import Registry
from .base import RecurrentCell

_CELLS: Registry[type[RecurrentCell]] = Registry("cell", RecurrentCell)


def register_cell(name: str) -> Callable[[type[RecurrentCell]], type[RecurrentCell]]:
    """Class decorator that makes a :class:`RecurrentCell` subclass available by ``name``.

    Example:
        >>> @gs.register_cell("my_cell")
        ... class MyCell(gs.RecurrentCell): ...
        >>> gs.cell_class("my_cell") is MyCell, MyCell.name
        (True, 'my_cell')

    ``docs/adding-a-cell.md`` builds a complete cell, with its analytic Jacobian split.
    """
    return _CELLS.register(name)


def list_cells() -> list[str]:
    """Names of the registered cells, in registration order."""
    return _CELLS.names()


def cell_class(name: str) -> type[RecurrentCell]:
    """The class registered as ``name``; ``ValueError`` naming the choices otherwise."""
    return _CELLS.lookup(name)


def make_cell(
    name: str,
    input_size: int,
    hidden_size: int,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    **options,
) -> RecurrentCell:
    """Build a registered cell.

    Args:
        name: registry name (see :func:`list_cells`).
        input_size: ``m``.
        hidden_size: ``n``.
        dtype: parameter dtype (default: torch's default dtype).
        device: parameter device.
        **options: cell-specific options, e.g. ``bias=True`` or ``alpha=0.8`` (leaky).
    """
    cell = cell_class(name)(input_size, hidden_size, **options)
    return cell.to(dtype=dtype, device=device)
