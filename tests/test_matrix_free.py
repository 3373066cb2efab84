"""Matrix-free products with the step Jacobians and matrix-free transport norms, against the
dense exact path (``gs.jacobians``, ``gs.transport``) as the reference."""

from __future__ import annotations

import pytest
import torch
from linear_cell import LinearCell
from problems import cases

import gatescope as gs
from gatescope.dynamics.step_products import step_jvp, step_vjp

# ---------------------------------------------------------------------- step products


def _vectors(traj: gs.Trajectory, *columns: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    N = traj.states.shape[-1]
    return torch.randn(traj.batch_size, traj.seq_len, N, *columns, generator=gen,
                       dtype=traj.states.dtype)


@pytest.mark.parametrize("columns", [(), (3,)], ids=["vector", "k3"])
@pytest.mark.parametrize("problem", cases(dtypes=[torch.float64]))
def test_step_jvp_equals_dense_jacobians(problem, columns):
    """Guards step_jvp: J_t V at every step (index t-1), one vector or k columns, equals the
    einsum with the dense gs.jacobians on every registered cell."""
    cell = problem.cell()
    traj = problem.trajectory(cell)
    J = gs.jacobians(cell, traj)
    V = _vectors(traj, *columns)
    expected = torch.einsum("btij,btj...->bti...", J, V)
    torch.testing.assert_close(step_jvp(cell, traj)(V), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("columns", [(), (3,)], ids=["vector", "k3"])
@pytest.mark.parametrize("problem", cases(dtypes=[torch.float64]))
def test_step_vjp_equals_dense_transposed_jacobians(problem, columns):
    """Guards step_vjp: J_tᵀ W at every step equals the einsum with the dense Jacobians."""
    cell = problem.cell()
    traj = problem.trajectory(cell)
    J = gs.jacobians(cell, traj)
    W = _vectors(traj, *columns, seed=1)
    expected = torch.einsum("btji,btj...->bti...", J, W)
    torch.testing.assert_close(step_vjp(cell, traj)(W), expected, rtol=0, atol=1e-12)


def test_step_vjp_is_the_conjugate_transpose_for_complex_states():
    """Guards the complex convention: step_vjp applies J_tᴴ (conjugate transpose), not J_tᵀ."""
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(4, 4, generator=gen, dtype=torch.complex128) / 3
    cell = LinearCell(A)
    with torch.no_grad():
        traj = cell.unroll(torch.randn(2, 5, 1, generator=gen, dtype=torch.float64))
    W = _vectors(traj, seed=2) + 1j * _vectors(traj, seed=3)
    torch.testing.assert_close(step_vjp(cell, traj)(W), W @ A.conj(), rtol=0, atol=1e-12)
    torch.testing.assert_close(step_jvp(cell, traj)(W), W @ A.T, rtol=0, atol=1e-12)


def test_step_products_are_the_identity_past_a_length():
    """Guards the held steps of a padded batch: past traj.lengths the state is held, so the
    products leave V unchanged there (J_t = I)."""
    problem = cases(cells=["gru"], dtypes=[torch.float64], sizes=["typical"])[0].values[0]
    cell = problem.cell()
    traj = problem.trajectory(cell)
    traj.lengths = torch.tensor([7, 4, 0])
    V = _vectors(traj)
    J = gs.jacobians(cell, traj)
    J[~traj.step_mask] = torch.eye(J.shape[-1], dtype=J.dtype)
    for product, dense in ((step_jvp, J), (step_vjp, J.mT)):
        torch.testing.assert_close(product(cell, traj)(V),
                                   torch.einsum("btij,btj->bti", dense, V), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 7), (3, 6, 5), (3, 7, 4, 2, 2), (2, 7, 5)])
@pytest.mark.parametrize("product", [step_jvp, step_vjp])
def test_step_products_refuse_a_wrong_shape(product, shape):
    """Guards the shape check: anything but (B, T, N) or (B, T, N, k) is refused by name."""
    problem = cases(cells=["plain"], dtypes=[torch.float64], sizes=["typical"])[0].values[0]
    cell = problem.cell()
    apply = product(cell, problem.trajectory(cell))
    with pytest.raises(ValueError, match=r"must have shape \(3, 7, 5\)"):
        apply(torch.zeros(shape, dtype=torch.float64))


def test_step_products_refuse_another_cells_trajectory():
    """Guards the trajectory check shared with gs.jacobians."""
    problem = cases(cells=["plain"], dtypes=[torch.float64], sizes=["typical"])[0].values[0]
    other = cases(cells=["leaky"], dtypes=[torch.float64], sizes=["typical"])[0].values[0]
    with pytest.raises(ValueError, match="made by a LeakyCell"):
        step_jvp(problem.cell(), other.trajectory())
