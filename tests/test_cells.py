"""Cell registry, options and the torch.func fallback for user cells."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import registries

import gatescope as gs
from gatescope import metrics
from gatescope.cells.registry import _CELLS
from gatescope.dynamics import jacobians as jacobians_module
from gatescope.experiments.registry import _EXPERIMENTS
from gatescope.probes import registry as quantity_registry
from gatescope.tasks.registry import _TASKS


def test_registry_lists_the_paper_cells():
    assert {"plain", "leaky", "scalar_gate", "multi_gate", "gru", "lstm"} <= set(gs.list_cells())


def test_unknown_cell_names_the_choices():
    with pytest.raises(ValueError, match="multi_gate"):
        gs.make_cell("nope", 2, 3)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="alpha"):
        gs.make_cell("leaky", 2, 3, alpha=1.5)
    with pytest.raises(ValueError, match="input_size"):
        gs.make_cell("plain", 0, 3)
    with pytest.raises(ValueError, match="input_size=2"):
        gs.make_cell("plain", 2, 3).unroll(torch.randn(1, 4, 5))


def test_leaky_retention_and_state_size():
    cell = gs.make_cell("leaky", 2, 3, alpha=0.3)
    traj = cell.unroll(torch.randn(2, 4, 2))
    assert traj.gates is None
    torch.testing.assert_close(traj.retention, torch.full((2, 4, 1), 0.7))
    assert gs.make_cell("lstm", 2, 3).state_size == 6


def test_user_cell_falls_back_to_torch_func_with_one_warning():
    @gs.register_cell("test_softsign")
    class Softsign(gs.RecurrentCell):
        def __init__(self, input_size, hidden_size, bias=False):
            super().__init__(input_size, hidden_size)
            self.W = torch.nn.Linear(hidden_size, hidden_size, bias=bias)
            self.U = torch.nn.Linear(input_size, hidden_size, bias=False)

        def compute(self, h, u, held=None):
            a = self.W(h) + self.U(u)
            return {"state": a / (1 + a.abs()), "held": (), "gate": None,
                    "retention": torch.zeros_like(a[..., :1])}

    cell = gs.make_cell("test_softsign", 2, 3, dtype=torch.float64)
    traj = cell.unroll(torch.randn(2, 4, 2, dtype=torch.float64))
    jacobians_module._warned.discard(Softsign)
    with pytest.warns(UserWarning, match="no closed form for analytic_jacobian"):
        J = gs.jacobians(cell, traj)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        A, Bg = gs.jacobian_split(cell, traj)
    torch.testing.assert_close(J, gs.jacobians_autograd(cell, traj))
    torch.testing.assert_close(A, J)
    assert torch.count_nonzero(Bg) == 0


def test_the_isolation_fixture_sees_every_registry():
    """conftest's ``isolated_registries`` restores cells, tasks, experiments and the probe
    quantities (what ``test_softsign`` above registers is gone in every other test)."""
    found = [id(r) for r in registries()]
    for registry in (_CELLS, _TASKS, _EXPERIMENTS, quantity_registry._QUANTITIES,
                     metrics._CATALOGUE):
        assert id(registry) in found
    assert "test_softsign" not in gs.list_cells()


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_a_window_of_a_trajectory_is_the_unroll_from_its_first_state(name):
    """Guards Trajectory.steps/examples: the window (start, stop] of the first two examples
    equals unrolling those inputs from h_start (states, retention, gates and cache)."""
    cell = gs.make_cell(name, 2, 3).double()
    u = torch.randn(4, 7, 2, dtype=torch.float64)
    with torch.no_grad():
        traj = cell.unroll(u)
        part = traj.examples(slice(0, 2)).steps(2, 6)
        again = cell.unroll(u[:2, 2:6], h0=traj.states[:2, 2])
    assert part.seq_len == 4 and part.batch_size == 2
    for field in ("inputs", "states", "retention", "gates"):
        torch.testing.assert_close(getattr(part, field), getattr(again, field),
                                   rtol=1e-14, atol=1e-15)
    assert part.cache.keys() == again.cache.keys()
    for key in part.cache:
        torch.testing.assert_close(part.cache[key], again.cache[key], rtol=1e-14, atol=1e-15)


def test_a_window_shifts_and_clips_the_lengths():
    traj = gs.make_cell("gru", 2, 3).unroll(torch.randn(3, 6, 2))
    traj.lengths = torch.tensor([6, 3, 1])
    assert traj.steps(2, 5).lengths.tolist() == [3, 1, 0]
    assert traj.examples(slice(1, 3)).lengths.tolist() == [3, 1]
