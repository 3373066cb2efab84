"""Import an optional package, or say which ``gatescope[EXTRA]`` installs it."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the extra that installs it.

    Attributes:
        extra: the ``gatescope[EXTRA]`` to install, e.g. ``"ray"``.
    """

    def __init__(self, feature: str, module: str, extra: str) -> None:
        self.extra = extra
        super().__init__(f"{feature} needs the optional package {module!r}, which is not "
                         f"installed; install it with: pip install 'gatescope[{extra}]'",
                         name=module)


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtra` naming ``gatescope[extra]``.

    Args:
        module: the module to import, e.g. ``"ray"`` or ``"torch.utils.tensorboard"``.
        extra: the gatescope extra that installs it.
        feature: what needs it, for the message (e.g. ``"--backend ray"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(feature, module, extra) from err
