"""Shared fixtures: float64 cells and inputs for the reference tests, and registry isolation."""

from __future__ import annotations

import sys

import pytest
import torch

import gatescope as gs
from gatescope.registry import Registry

CELLS = ("plain", "leaky", "scalar_gate", "multi_gate", "gru", "lstm")

#: Module-level dicts that act as registries without being :class:`Registry` instances.
_PLAIN_REGISTRIES = (("gatescope.probes.registry", "_QUANTITIES"),)


def random_cell(name: str, m: int, n: int, bias: bool, seed: int, dtype=torch.float64):
    torch.manual_seed(seed)
    return gs.make_cell(name, m, n, bias=bias, dtype=dtype)


def random_inputs(B: int, T: int, m: int, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(B, T, m, generator=gen, dtype=dtype)


@pytest.fixture(params=CELLS)
def cell_name(request):
    return request.param


def registries() -> list[dict]:
    """Every registry of the loaded gatescope modules: each module-level :class:`Registry`
    (cells, tasks, experiments, and any added later) plus the plain-dict ones listed in
    ``_PLAIN_REGISTRIES`` where they still exist."""
    found: dict[int, dict] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "gatescope" or name.startswith("gatescope.")):
            continue
        for value in vars(module).values():
            if isinstance(value, Registry):
                found[id(value)] = value
    for module_name, attribute in _PLAIN_REGISTRIES:
        value = getattr(sys.modules.get(module_name), attribute, None)
        if isinstance(value, dict):
            found[id(value)] = value
    return list(found.values())


@pytest.fixture(autouse=True)
def isolated_registries():
    """Whatever a test registers (cells, tasks, experiments, probe quantities) is gone after
    it, and what it replaced is back: every registry's contents, order included, are restored
    in place. Guards against test order changing ``gatescope list``, ``gatescope verify`` or
    the probe presets."""
    saved = [(reg, dict(reg)) for reg in registries()]
    yield
    for reg, contents in saved:
        reg.clear()
        reg.update(contents)
