"""Analytic Jacobians and their split against the torch.func twins (float64)."""

from __future__ import annotations

import pytest
import torch
from conftest import CELLS, random_cell, random_inputs
from hypothesis import given, settings
from hypothesis import strategies as st
from problems import Problem, Size, cases
from references import post_update_gate_term

import gatescope as gs


def _check_twins(cell, traj, tol):
    """Analytic J and its split equal their torch.func twins; the split adds up to J."""
    J = gs.jacobians(cell, traj)
    assert J.shape == (traj.batch_size, traj.seq_len, cell.state_size, cell.state_size)
    assert J.dtype == traj.states.dtype
    torch.testing.assert_close(J, gs.jacobians_autograd(cell, traj), **tol)
    A, Bg = gs.jacobian_split(cell, traj)
    A_ref, B_ref = gs.jacobian_split_autograd(cell, traj)
    torch.testing.assert_close(A, A_ref, **tol)
    torch.testing.assert_close(Bg, B_ref, **tol)
    torch.testing.assert_close(A + Bg, J, **tol)
    if cell.name in ("plain", "leaky"):
        assert torch.count_nonzero(Bg) == 0
    if cell.name == "scalar_gate":
        assert (torch.linalg.matrix_rank(Bg) <= 1).all()


@pytest.mark.parametrize("problem", cases())
def test_analytic_jacobians_match_autograd(problem):
    cell = problem.cell()
    _check_twins(cell, problem.trajectory(cell), problem.tolerance)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(CELLS), st.integers(1, 3), st.integers(1, 5), st.integers(1, 6),
       st.integers(1, 4), st.booleans(), st.integers(0, 10_000))
def test_analytic_jacobians_match_autograd_at_random_sizes(name, B, T, n, m, bias, seed):
    """The catalogue's twin check at sizes hypothesis draws (float64)."""
    problem = Problem(name, Size(B=B, T=T, n=n, m=m, bias=bias), torch.float64, seed)
    cell = problem.cell()
    _check_twins(cell, problem.trajectory(cell), {"rtol": 0, "atol": 1e-10})


@pytest.mark.parametrize("problem", cases(dtypes=[torch.float64], sizes=["typical"]))
def test_jacobian_of_step_t_is_at_index_t_minus_1(problem):
    """``J[:, t-1] = ∂h_t/∂h_{t-1}``, by autograd through one step of the cell (the input
    ``u_t`` sits at index ``t - 1``)."""
    cell, u = problem.cell(), problem.inputs()
    traj = problem.trajectory(cell)
    J = gs.jacobians(cell, traj)
    for t in range(1, u.shape[1] + 1):
        step = torch.func.jacrev(lambda h, t=t: cell.step(h, u[0, t - 1]))
        torch.testing.assert_close(J[0, t - 1], step(traj.states[0, t - 1]),
                                   rtol=0, atol=1e-12)


def test_gate_term_uses_state_before_update():
    """B must use h_{t-1}; the paper code's h_t variant (by autograd at the post-update
    state) gives a different (wrong) matrix."""
    cell = random_cell("multi_gate", 2, 4, False, 3)
    traj = cell.unroll(random_inputs(2, 5, 2, 3))
    _, Bg = gs.jacobian_split(cell, traj)
    assert (Bg - post_update_gate_term(cell, traj)).abs().max() > 1e-3


@pytest.mark.parametrize("name", CELLS)
def test_cells_run_in_float32_and_without_bias(name):
    cell = gs.make_cell(name, 3, 4, bias=False)
    assert all(p.dtype == torch.float32 for p in cell.parameters())
    assert not any("bias" in k for k, _ in cell.named_parameters())
    traj = cell.unroll(torch.randn(2, 3, 3))
    assert traj.states.shape == (2, 4, cell.state_size)
    assert gs.jacobians(cell, traj).dtype == torch.float32


def test_gru_and_lstm_match_torch_cells():
    torch.manual_seed(0)
    u = torch.randn(3, 6, 4, dtype=torch.float64)
    for name, ref_cls in (("gru", torch.nn.GRUCell), ("lstm", torch.nn.LSTMCell)):
        cell = gs.make_cell(name, 4, 5, dtype=torch.float64)
        ref = ref_cls(4, 5).double()
        ref.load_state_dict(cell.state_dict())
        traj = cell.unroll(u)
        state = None
        for t in range(6):
            state = ref(u[:, t], state)
            h = state if name == "gru" else torch.cat(state, -1)
            torch.testing.assert_close(traj.states[:, t + 1], h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("parent", [gs.cells.PlainCell, gs.cells.LeakyCell,
                                    gs.cells.MultiGateCell, gs.cells.GRUCell,
                                    gs.cells.LSTMCell])
def test_a_subclass_that_redefines_the_split_gets_its_own_jacobian(parent):
    """J of a subclass follows its own split, not a shortcut inherited from its parent."""

    class ShiftedSplit(parent):
        def analytic_jacobian_split(self, traj):
            A, B = super().analytic_jacobian_split(traj)
            return A, 2 * B + 1

    cell = ShiftedSplit(2, 3).double()
    traj = cell.unroll(random_inputs(2, 4, 2, 0))
    A, B = gs.jacobian_split(cell, traj)
    torch.testing.assert_close(gs.jacobians(cell, traj), A + B, rtol=0, atol=1e-12)
    assert (gs.jacobians(cell, traj) - gs.jacobians_autograd(cell, traj)).abs().max() > 0.5


@pytest.mark.parametrize("problem", cases(cells=["gru", "lstm"], dtypes=[torch.float64]))
def test_direct_gru_and_lstm_jacobians_equal_the_split_and_autograd(problem):
    """Guards issue 16: GRU and LSTM build J directly (not A + B of the split); the direct
    J equals the split's sum and torch.func's jacrev to 1e-12 in float64."""
    cell = problem.cell()
    assert "analytic_jacobian" in vars(type(cell))
    traj = problem.trajectory(cell)
    J = cell.analytic_jacobian(traj)
    A, B = cell.analytic_jacobian_split(traj)
    torch.testing.assert_close(J, A + B, rtol=0, atol=1e-12)
    torch.testing.assert_close(J, gs.jacobians_autograd(cell, traj), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["gru", "lstm", "multi_gate"])
def test_steps_past_a_length_have_the_identity_jacobian_on_every_path(name):
    """Guards held_past_lengths: a padded sequence's state is held past its length (torch's
    packed semantics), so J = A = I and B = 0 there, on the analytic and the torch.func paths
    alike, and the matrix-free step products agree (J = I); within the length nothing
    changes. The dense transport past the length then equals the last valid state's."""
    cell = random_cell(name, 3, 4, True, 6)
    u = random_inputs(3, 6, 3, 6)
    lengths = torch.tensor([6, 2, 4])
    with torch.no_grad():
        traj = cell.unroll(u, lengths=lengths)
        full = cell.unroll(u)
    eye = torch.eye(cell.state_size, dtype=torch.float64)
    beyond = ~traj.step_mask
    for J in (gs.jacobians(cell, traj), gs.jacobians_autograd(cell, traj)):
        assert torch.equal(J[beyond], eye.expand(int(beyond.sum()), -1, -1))
        torch.testing.assert_close(J[~beyond], gs.jacobians(cell, full)[~beyond])
    for A, B in (gs.jacobian_split(cell, traj), gs.jacobian_split_autograd(cell, traj)):
        assert torch.equal(A[beyond], eye.expand(int(beyond.sum()), -1, -1))
        assert B[beyond].abs().max() == 0
    from gatescope.dynamics.step_products import step_jvp
    V = torch.randn(3, 6, cell.state_size, dtype=torch.float64)
    torch.testing.assert_close(step_jvp(cell, traj)(V),
                               torch.einsum("btij,btj->bti", gs.jacobians(cell, traj), V))
