"""Shared fixtures: float64 cells and inputs for the reference tests, and registry isolation."""

from __future__ import annotations

import pytest
import torch
from problems import CELLS  # noqa: F401 (the catalogue's cells; tests import them from here)

import gatescope as gs
from gatescope.conftest import registries, restored_registries  # noqa: F401 (tests use both)


def random_cell(name: str, m: int, n: int, bias: bool, seed: int, dtype=torch.float64):
    torch.manual_seed(seed)
    return gs.make_cell(name, m, n, bias=bias, dtype=dtype)


def random_inputs(B: int, T: int, m: int, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(B, T, m, generator=gen, dtype=dtype)


@pytest.fixture(params=CELLS)
def cell_name(request):
    return request.param


@pytest.fixture(autouse=True)
def isolated_registries():
    """Whatever a test registers (cells, tasks, experiments, probe quantities) is gone after
    it, and what it replaced is back: every registry's contents, order included, are restored
    in place. Guards against test order changing ``gatescope list``, ``gatescope verify`` or
    the probe presets."""
    with restored_registries():
        yield
