"""Matrix-free products with the step Jacobians and matrix-free transport norms, against the
dense exact path (``gs.jacobians``, ``gs.transport``) as the reference."""

from __future__ import annotations

import pytest
import torch
from linear_cell import LinearCell, with_eigenvalues
from problems import CELLS, cases

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


# ---------------------------------------------------------------------- transport norms

#: The sizes of the dense comparison: n = 128, T = 400, two examples.
LARGE = {"n": 128, "T": 400, "B": 2}
LAGS, STARTS = [0, 1, 7, 100], [100, 257, 400]


def _problem(name: str, n: int = 32, T: int = 120, B: int = 2
             ) -> tuple[gs.RecurrentCell, gs.Trajectory]:
    """A float64 ``name`` cell of ``n`` units (seeded) and its trajectory of ``T`` steps."""
    torch.manual_seed(5)
    cell = gs.make_cell(name, 3, n, dtype=torch.float64)
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        return cell, cell.unroll(torch.randn(B, T, 3, generator=gen, dtype=torch.float64))


def _dense_norms(J: torch.Tensor, starts, lags) -> torch.Tensor:
    """The reference: ``‖M_{t,t-ℓ}‖_2`` from the dense transport, ``(B, S, L)``."""
    return torch.stack([torch.stack([torch.linalg.matrix_norm(gs.transport(J, t, t - lag), ord=2)
                                     for lag in lags], -1) for t in starts], 1)


@pytest.mark.parametrize("name", CELLS)
def test_transport_norms_equal_the_dense_norms_at_real_sizes(name):
    """Guards gs.transport_norms at n=128, T=400 on every cell: the norms equal the dense
    ‖M_{t,t-ℓ}‖_2 to the tolerance (1e-6 relative), every entry converged, the certificate
    lower ≤ σ ≤ upper holds and ℓ = 0 gives 1."""
    cell, traj = _problem(name, **LARGE)
    out = gs.transport_norms(cell, traj, LAGS, STARTS)
    reference = _dense_norms(gs.jacobians(cell, traj), STARTS, LAGS).double()
    assert out.norms.shape == (LARGE["B"], len(STARTS), len(LAGS))
    assert out.converged.all()
    torch.testing.assert_close(out.norms, reference, rtol=1e-6, atol=0)
    assert (out.lower <= reference * (1 + 1e-12)).all()
    assert (reference <= out.upper * (1 + 1e-12)).all()
    assert (out.upper <= out.lower * (1 + 1e-6)).all()
    torch.testing.assert_close(out.norms[..., 0], torch.ones(2, 3, dtype=torch.float64))


def test_transport_norms_residual_is_the_true_residual():
    """Guards the certificate field: residual is ‖MᴴM v - θ v‖ of the returned unit vector v
    (checked with the dense M)."""
    cell, traj = _problem("gru")
    out = gs.transport_norms(cell, traj, [1, 30], [60, 120], rtol=1e-3)
    J = gs.jacobians(cell, traj)
    for s, t in enumerate(out.starts.tolist()):
        for i, lag in enumerate(out.lags.tolist()):
            M = gs.transport(J, t, t - lag)
            v = out.vectors[:, s, i]
            theta = out.norms[:, s, i] ** 2
            gram_v = torch.einsum("bji,bjk,bk->bi", M, M, v)
            true = torch.linalg.vector_norm(gram_v - theta[:, None] * v, dim=-1)
            torch.testing.assert_close(torch.linalg.vector_norm(v, dim=-1),
                                       torch.ones(2, dtype=torch.float64))
            assert (true <= out.residual[:, s, i] + 1e-10 * theta).all()


def test_transport_norms_never_form_a_jacobian(monkeypatch):
    """Guards the matrix-free promise: transport_norms neither calls gs.jacobians nor a
    cell's analytic Jacobian, and works under a dense budget that refuses the Jacobian stack
    (whose error message names gs.transport_norms)."""
    cell, traj = _problem("lstm")

    def refuse(*args, **kwargs):
        raise AssertionError("a dense Jacobian was formed")

    monkeypatch.setattr(type(cell), "analytic_jacobian", refuse)
    monkeypatch.setattr(type(cell), "analytic_jacobian_split", refuse)
    with gs.dense_budget_limit(2**20):
        with pytest.raises(gs.DenseBudgetExceeded, match=r"gs\.transport_norms\(cell, traj"):
            gs.jacobians(cell, traj)
        out = gs.transport_norms(cell, traj, [1, 50], [120])
    assert out.converged.all()


def test_transport_norms_default_starts_are_evenly_spaced_after_the_longest_lag():
    """Guards the default starts: a few evenly spaced end times in [max(lags), T]."""
    cell, traj = _problem("plain")
    out = gs.transport_norms(cell, traj, [3, 40], rtol=1e-3)
    assert out.starts.tolist() == [40, 60, 80, 100, 120]
    assert out.norms.shape == (2, 5, 2)


def test_transport_norms_report_unconverged_entries():
    """Guards the honest report: with too few Lanczos steps the flat-spectrum entries are
    flagged not converged, their norms stay lower bounds and their upper bounds exceed
    lower·sqrt(1 + rtol)."""
    cell, traj = _problem("gru")
    out = gs.transport_norms(cell, traj, [1], [100], max_iter=3)
    reference = _dense_norms(gs.jacobians(cell, traj), [100], [1])
    assert not out.converged.any()
    assert (out.iterations == 3).all()
    assert (out.norms <= reference * (1 + 1e-12)).all()
    assert (out.upper > out.lower * (1 + 1e-6) ** 0.5).all()


def test_transport_norms_of_a_linear_recurrence_are_matrix_power_norms():
    """Guards the product order and the complex path: for h_t = A h_{t-1} the transport is
    A^ℓ, real or complex."""
    gen = torch.Generator().manual_seed(4)
    for A in (with_eigenvalues([0.9, -0.6, 0.5, 0.2]),
              torch.randn(4, 4, generator=gen, dtype=torch.complex128) / 3):
        cell = LinearCell(A)
        with torch.no_grad():
            traj = cell.unroll(torch.randn(1, 20, 1, dtype=torch.float64))
        out = gs.transport_norms(cell, traj, [0, 1, 5, 20], [20])
        expected = torch.stack([torch.linalg.matrix_norm(torch.linalg.matrix_power(A, lag), ord=2)
                                for lag in (0, 1, 5, 20)]).double()
        torch.testing.assert_close(out.norms[0, 0], expected, rtol=1e-6, atol=0)


def test_transport_norms_hold_the_state_past_a_length():
    """Guards padded batches: steps past traj.lengths are the identity in the transport."""
    problem = cases(cells=["multi_gate"], dtypes=[torch.float64], sizes=["long"])[0].values[0]
    cell = problem.cell()
    traj = problem.trajectory(cell)
    traj.lengths = torch.tensor([25, 11])
    J = gs.jacobians(cell, traj)
    J[~traj.step_mask] = torch.eye(J.shape[-1], dtype=J.dtype)
    out = gs.transport_norms(cell, traj, [1, 5, 20], [20, 25])
    torch.testing.assert_close(out.norms, _dense_norms(J, [20, 25], [1, 5, 20]), rtol=1e-6,
                               atol=0)


def test_transport_norms_in_float32():
    """Guards float32 cells: products run in the cell's dtype, the iteration in float64."""
    problem = cases(cells=["lstm"], dtypes=[torch.float32], sizes=["long"])[0].values[0]
    cell = problem.cell()
    traj = problem.trajectory(cell)
    out = gs.transport_norms(cell, traj, [1, 10], [10, 25], rtol=1e-4)
    reference = _dense_norms(gs.jacobians(cell, traj).double(), [10, 25], [1, 10])
    torch.testing.assert_close(out.norms, reference, rtol=1e-4, atol=1e-6)


def test_transport_norms_repeat_with_a_generator():
    """Guards reproducibility: the same generator seed gives the same result."""
    problem = cases(cells=["gru"], dtypes=[torch.float64], sizes=["long"])[0].values[0]
    cell = problem.cell()
    traj = problem.trajectory(cell)
    runs = [gs.transport_norms(cell, traj, [2, 9], [25], rtol=1e-3,
                               generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(runs[0].norms, runs[1].norms)
    assert torch.equal(runs[0].vectors, runs[1].vectors)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"lags": [-1]}, ValueError, r"lags must be ints with 0 <= lag <= T=7; got \[-1\]"),
    ({"lags": [8]}, ValueError, r"lags must be ints with 0 <= lag <= T=7; got \[8\]"),
    ({"lags": [1.5]}, TypeError, "lags must be a non-empty list of ints"),
    ({"lags": [True]}, TypeError, "lags must be a non-empty list of ints"),
    ({"lags": []}, TypeError, "lags must be a non-empty list of ints"),
    ({"lags": torch.tensor([1.0])}, TypeError, "lags must be ints .* dtype torch.float32"),
    ({"lags": [3], "starts": [2]}, ValueError,
     r"starts must be ints with max\(lags\)=3 <= t <= T=7; got \[2\]"),
    ({"lags": [3], "starts": [4, 9]}, ValueError, r"starts .* got \[9\]"),
    ({"lags": [3], "starts": "4"}, TypeError, "starts must be a non-empty list of ints"),
    ({"lags": [1], "rtol": 0}, ValueError, r"rtol must be a number in \(0, 1\)"),
    ({"lags": [1], "max_iter": 0}, ValueError, "max_iter must be an int >= 1"),
])
def test_transport_norms_refuse_bad_arguments_before_any_compute(kwargs, error, match,
                                                                 monkeypatch):
    """Guards the validation: a clear error naming the field and its allowed values, raised
    before the cell is evaluated."""
    problem = cases(cells=["plain"], dtypes=[torch.float64], sizes=["typical"])[0].values[0]
    cell = problem.cell()
    traj = problem.trajectory(cell)
    monkeypatch.setattr(type(cell), "compute", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(error, match=match):
        gs.transport_norms(cell, traj, **kwargs)


def test_transport_norms_accept_int_and_tensor_lags():
    """Guards the accepted forms of lags/starts: an int, a list, a 1-D integer tensor."""
    problem = cases(cells=["plain"], dtypes=[torch.float64], sizes=["typical"])[0].values[0]
    cell = problem.cell()
    traj = problem.trajectory(cell)
    a = gs.transport_norms(cell, traj, 2, 7)
    b = gs.transport_norms(cell, traj, torch.tensor([2]), torch.tensor([7]))
    assert a.norms.shape == b.norms.shape == (3, 1, 1)
    assert torch.equal(a.norms, b.norms)
