"""Doctest setup: pytest loads this for the docstring examples under ``src/gatescope``.

Those examples run as doctests (``--doctest-modules`` and ``testpaths`` in
``pyproject.toml``, so a plain ``python -m pytest`` runs them). Each example sees ``gs`` (the
package) and ``torch`` without importing them, runs with torch's CPU generator seeded with 0,
and whatever it registers (a cell, a task, an experiment, a quantity, a metric) is removed again
afterwards, so examples never leak into ``gatescope list`` or other tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator

import pytest
import torch

import gatescope as gs
from gatescope.registry import Registry

#: Modules that import an optional package as they are imported: without it, their doctests
#: are not collected (the tests that use them skip, naming the extra).
collect_ignore = ([] if importlib.util.find_spec("lightning") is not None
                  else ["integrations/lightning.py"])

try:
    DoctestItem = pytest.DoctestItem
except AttributeError:  # pytest < 8.1
    from _pytest.doctest import DoctestItem


def registries() -> list[dict]:
    """Every registry of the loaded gatescope modules: each :class:`Registry` (cells, tasks,
    experiments, quantities) and the metric catalogue.

    Found by type rather than listed by name, so a registry added or moved later is covered
    too; the catalogue of metrics (a plain dict) is matched by its name.
    """
    found: dict[int, dict] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "gatescope" or name.startswith("gatescope.")):
            continue
        for attr, value in vars(module).items():
            if isinstance(value, Registry) or (attr == "_CATALOGUE" and isinstance(value, dict)):
                found[id(value)] = value
    return list(found.values())


@contextlib.contextmanager
def restored_registries() -> Iterator[None]:
    """Put every registry back as it was on entry (also the tests' isolation fixture uses this)."""
    snapshots = [(registry, dict(registry)) for registry in registries()]
    try:
        yield
    finally:
        for registry, entries in snapshots:
            registry.clear()
            registry.update(entries)


@pytest.fixture(autouse=True)
def _doctest_environment(request: pytest.FixtureRequest, doctest_namespace: dict):
    """For doctests only: ``gs``/``torch`` in the namespace, seeded, registries restored."""
    if not isinstance(request.node, DoctestItem):
        yield
        return
    doctest_namespace.update(gs=gs, torch=torch)
    with restored_registries(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
