"""Converters for the recurrent modules of third-party packages (the ``gatescope[models]``
extra): :func:`gatescope.from_torch` hands a module of one of these packages to the converter
its package module registers, and gives torch's own modules to :mod:`gatescope.convert`.

Each package module here (one per third-party package, imported only when a module of that
package is converted, so the package stays optional) exposes ``CONVERTERS``: the class name
of each supported module -> a function ``(module, layer) -> RecurrentCell`` that returns a cell
computing what the module computes, with copies of its weights.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

from torch import Tensor, nn

from ..cells.base import RecurrentCell

#: The top-level package of a module's class -> the gatescope module holding its converters.
PACKAGES: dict[str, str] = {"minGRU_pytorch": "mingru", "LRU_pytorch": "lru",
                           "mambapy": "mambapy"}

Converter = Callable[[nn.Module, "int | None"], RecurrentCell]


def converter_for(module: nn.Module) -> Converter | None:
    """The registered converter of ``module``'s class, or ``None`` when its package has none.

    Raises:
        TypeError: for a module of a supported package whose class has no converter (naming
            the classes that have one).
    """
    package = type(module).__module__.split(".")[0]
    if package not in PACKAGES:
        return None
    converters = importlib.import_module(f".{PACKAGES[package]}", __name__).CONVERTERS
    name = type(module).__name__
    if name not in converters:
        raise TypeError(f"from_torch supports {', '.join(sorted(converters))} of {package}, "
                        f"got {name}")
    return converters[name]


def check_single_layer(module: nn.Module, layer) -> None:
    """Refuse ``layer`` other than ``None``/``0`` for a single-layer ``module``, and a module
    with forward hooks (which the converted cell would not run).

    Raises:
        ValueError: for another ``layer``, naming the allowed values.
        TypeError: when ``module`` has forward hooks.
    """
    name = type(module).__name__
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer):
        raise ValueError(f"{name} has a single layer: layer must be None or 0, got {layer!r}")
    if module._forward_hooks or module._forward_pre_hooks:
        raise TypeError(f"from_torch reproduces {name}.forward, but this {name} has forward "
                        "hooks, which the cell would not run; remove them before converting")


def cell_from_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[str, RecurrentCell] | None:
    """The cell of a reference package's module from its ``state_dict`` alone (the packages
    need not be installed: the cells use their parameter names): ``(description, cell)`` for
    the first layout whose marker key ``state_dict`` has, or ``None`` when none matches.

    Raises:
        ValueError, TypeError, RuntimeError, KeyError: the layout's builder refusing the
            weights (a layout it does not compute, keys or shapes that do not fit).
    """
    for package, name in PACKAGES.items():
        layouts = importlib.import_module(f".{name}", __name__).STATE_DICT_LAYOUTS
        for cls, (marker, build) in layouts.items():
            if marker in state_dict:
                return f"{package}.{cls}", build(state_dict)
    return None
