"""Transport products and exact sensitivities."""

from __future__ import annotations

import pytest
import torch
from conftest import random_cell, random_inputs
from problems import cases

import gatescope as gs
from gatescope.dynamics.spectral import RANK, top_singular_values


def _jacobians(name="multi_gate", B=3, T=9, n=5, seed=0, dtype=torch.float64):
    cell = random_cell(name, 2, n, True, seed, dtype=dtype)
    with torch.no_grad():
        return gs.jacobians(cell, cell.unroll(random_inputs(B, T, 2, seed, dtype=dtype)))


def test_transport_is_the_chain_rule_product():
    J = _jacobians()
    torch.testing.assert_close(gs.transport(J, 4, 1), J[:, 3] @ J[:, 2] @ J[:, 1])
    torch.testing.assert_close(gs.transport(J, 2, 2), torch.eye(5, dtype=J.dtype).expand(3, 5, 5))
    assert not torch.allclose(gs.transport(J, 4, 1), J[:, 1] @ J[:, 2] @ J[:, 3])


@pytest.mark.parametrize("problem", cases(dtypes=[torch.float64],
                                          sizes=["typical", "smallest"]))
def test_transport_is_the_derivative_of_a_later_state(problem):
    """M_{T,k} = ∂h_T/∂h_k by autograd through the cell's steps k+1..T, for every k."""
    cell, u = problem.cell(), problem.inputs()
    T = u.shape[1]
    with torch.no_grad():
        traj = cell.unroll(u)
    J = gs.jacobians(cell, traj)
    for k in range(T + 1):
        def later(h, k=k):
            for t in range(k, T):
                h = cell.step(h, u[:, t])
            return h.sum(0)  # examples are independent: the sum keeps each one's rows

        ref = torch.autograd.functional.jacobian(later, traj.states[:, k]).transpose(0, 1)
        torch.testing.assert_close(gs.transport(J, T, k), ref, rtol=0, atol=1e-12)


def test_transport_rejects_bad_windows():
    with pytest.raises(ValueError, match="k <= t"):
        gs.transport(_jacobians(), 2, 3)


@pytest.mark.parametrize("problem", cases(sizes=["long"], dtypes=[torch.float32])
                         + cases(sizes=["typical", "smallest"]))
def test_sensitivities_equal_matrix_norms_on_every_pair(problem):
    """S_{t,k} is the spectral norm of J_t ⋯ J_{k+1}, multiplied out by hand in float64."""
    with torch.no_grad():
        J = gs.jacobians(problem.cell(), problem.trajectory())
    S = gs.sensitivities(J)
    Bn, T, N = J.shape[:3]
    assert S.shape == (Bn, T + 1, T + 1)
    for k in range(T + 1):
        M = torch.eye(N, dtype=torch.float64).expand(Bn, N, N)
        for t in range(k, T + 1):
            if t > k:
                M = J[:, t - 1].double() @ M
            torch.testing.assert_close(S[:, t, k].double(), torch.linalg.matrix_norm(M, 2),
                                       rtol=1e-5, atol=0)
    for t in range(T + 1):
        assert torch.isnan(S[:, t, t + 1:]).all()


def test_sensitivities_survive_long_sequences_without_underflow():
    """A float32 product of 300 factors of norm < 0.3 underflows; S must not."""
    J = 0.3 * _jacobians("plain", B=1, T=300, n=4, dtype=torch.float32)
    M, log_scale = torch.eye(4, dtype=torch.float64), 0.0
    for t in range(300):
        M = J[0, t].double() @ M
        log_scale += M.norm().log().item()
        M = M / M.norm()
    expected = torch.linalg.matrix_norm(M, 2).log().item() + log_scale
    assert expected < -100  # far below float32's range
    S = gs.sensitivities(J)
    assert abs(S[0, 300, 0].log().item() - expected) < 1e-5


def test_sensitivities_chunked_over_start_times(monkeypatch):
    from gatescope.dynamics import transport

    J = _jacobians(B=2, T=12, n=6)
    whole = gs.sensitivities(J)
    monkeypatch.setattr(transport, "_PRODUCT_ELEMENTS", 2 * 36 * 3)  # 3 start times a chunk
    torch.testing.assert_close(gs.sensitivities(J), whole, equal_nan=True)


@pytest.mark.parametrize("kind", ["flat", "decaying", "degenerate", "rank_one", "zero"])
def test_top_singular_values_are_exact_for_hard_spectra(kind):
    gen = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(50, 16, 16, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(50, 16, 16, generator=gen, dtype=torch.float64))[0]
    s = {
        "flat": 1 - 1e-4 * torch.rand(50, 16, generator=gen, dtype=torch.float64),
        "decaying": 0.5 ** torch.arange(16, dtype=torch.float64).expand(50, 16),
        "degenerate": torch.ones(50, 16, dtype=torch.float64),
        "rank_one": torch.cat([torch.ones(50, 1), torch.zeros(50, 15)], 1).double(),
        "zero": torch.zeros(50, 16, dtype=torch.float64),
    }[kind]
    M = U @ torch.diag_embed(s) @ V.mT
    sigma, basis, _, _ = top_singular_values(M.float())
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(M, 2), rtol=1e-5, atol=1e-6)
    assert basis.shape == (50, 16, RANK)


def test_power_iteration_norms_follow_the_paper_codes_algorithm():
    """Guards sensitivities(power_iterations=p): at lag 1 each estimate is the paper code's
    loop (v Gaussian, p steps of v <- Jv/(|Jv| + 1e-12), then |Jv|) on the vectors the
    generator draws, one per (start time, example)."""
    cell = random_cell("gru", 2, 4, True, 3)
    with torch.no_grad():
        traj = cell.unroll(random_inputs(3, 5, 2, 3))
    J = gs.jacobians(cell, traj)
    S = gs.sensitivities(J, power_iterations=5, generator=torch.Generator().manual_seed(7))
    v0 = torch.randn(5 * 3, 4, 1, generator=torch.Generator().manual_seed(7),
                     dtype=torch.float64).view(5, 3, 4)
    for k in range(5):
        for b in range(3):
            v = v0[k, b] / (v0[k, b].norm() + 1e-12)
            for _ in range(5):
                v = J[b, k] @ v
                v = v / (v.norm() + 1e-12)
            torch.testing.assert_close(S[b, k + 1, k], (J[b, k] @ v).norm(), rtol=1e-12, atol=0)


def test_power_iterations_regularise_at_the_products_true_scale():
    """Guards the paper code's ``+1e-12`` under renormalisation: the code never rescales its
    products, so once ``‖M‖`` nears 1e-12 each step shrinks ``v`` and the estimate collapses;
    gatescope renormalises long products but must give the same estimate. J = 0.01·I (2×2),
    lag 7: ``‖M‖ = 1e-14``; the code's loop on the unnormalised product, on the vectors the
    generator draws for that lag, gives the estimate (far below 1e-14)."""
    T = 8
    J = (0.01 * torch.eye(2, dtype=torch.float64)).expand(1, T, 2, 2).contiguous()
    S = gs.sensitivities(J, power_iterations=5, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    draws = [torch.randn(T - lag + 1, 2, 1, generator=gen, dtype=torch.float64)
             for lag in range(1, T + 1)]  # one (start, example) vector per product, lag by lag
    lag = 7
    M = torch.linalg.matrix_power(J[0, 0], lag)
    v = draws[lag - 1][0] / (draws[lag - 1][0].norm() + 1e-12)
    for _ in range(5):
        v = M @ v
        v = v / (v.norm() + 1e-12)
    expected = (M @ v).norm()
    assert expected < 1e-16  # the collapse the code shows
    torch.testing.assert_close(S[0, lag, 0], expected, rtol=1e-9, atol=0)


def test_power_iteration_underestimates_a_non_normal_product():
    """Guards the switch's meaning: iterating M (not MᵀM) finds the dominant eigenvector,
    so for a non-normal M the estimate is a lower bound, strictly below ‖M‖₂ (here the
    swap [[0, 4], [1, 0]] with ‖M‖₂ = 4 and |λ| = 2), and never above it."""
    J = torch.tensor([[0.0, 4.0], [1.0, 0.0]], dtype=torch.float64).expand(1, 1, 2, 2)
    est = gs.sensitivities(J, power_iterations=5)[0, 1, 0]
    assert 1.0 <= est < 4.0 - 0.5
    cell = random_cell("multi_gate", 3, 6, True, 4)
    with torch.no_grad():
        traj = cell.unroll(random_inputs(2, 8, 3, 4))
    Jg = gs.jacobians(cell, traj)
    exact, power = gs.sensitivities(Jg), gs.sensitivities(Jg, power_iterations=5)
    lower = torch.tril(torch.ones(9, 9, dtype=torch.bool), -1)
    assert (power[:, lower] <= exact[:, lower] * (1 + 1e-9)).all()
    assert (power[:, lower] < exact[:, lower] * (1 - 1e-6)).any()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="power_iterations"):
            gs.sensitivities(Jg, power_iterations=bad)
