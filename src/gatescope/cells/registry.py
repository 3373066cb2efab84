"""A name -> cell-class registry that users extend with their own cells."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import RecurrentCell

_CELLS: dict[str, type[RecurrentCell]] = {}


def register_cell(name: str) -> Callable[[type[RecurrentCell]], type[RecurrentCell]]:
    """Class decorator that makes a :class:`RecurrentCell` subclass available by ``name``.

    Example:
        >>> @gs.register_cell("my_cell")
        ... class MyCell(gs.RecurrentCell): ...
    """

    def decorate(cls: type[RecurrentCell]) -> type[RecurrentCell]:
        if not (isinstance(cls, type) and issubclass(cls, RecurrentCell)):
            raise TypeError(f"register_cell({name!r}) expects a RecurrentCell subclass")
        cls.name = name
        _CELLS[name] = cls
        return cls

    return decorate


def list_cells() -> list[str]:
    """Names of the registered cells, in registration order."""
    return list(_CELLS)


def cell_class(name: str) -> type[RecurrentCell]:
    """The class registered as ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return _CELLS[name]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}; choose one of {sorted(_CELLS)}") from None


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
