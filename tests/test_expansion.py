"""First-order expansion of transport products in the gate-induced part."""

from __future__ import annotations

import pytest
import torch
from problems import GATED, cases
from torch.func import jacfwd

import gatescope as gs


def _by_hand(factors):
    """``X_ℓ ⋯ X_2 X_1`` of ``(..., ℓ, N, N)``, multiplied from the identity, latest factor
    on the left (the chain rule's order)."""
    M = torch.eye(factors.shape[-1], dtype=factors.dtype).expand_as(factors[..., 0, :, :])
    for j in range(factors.shape[-3]):
        M = factors[..., j, :, :] @ M
    return M


def _paper_cell(name, seed=0, T=100, n=64, m=3):
    torch.manual_seed(seed)
    cell = gs.make_cell(name, m, n, dtype=torch.float64)
    with torch.no_grad():
        for p in cell.parameters():
            p.normal_(0, 0.2)
    t = torch.linspace(0, 1, T, dtype=torch.float64)
    slow = torch.stack([torch.sin(2 * torch.pi * f * t) for f in (0.5, 1.0, 1.5)], -1)
    u = slow[None] + 0.05 * torch.randn(1, T, m, dtype=torch.float64)
    with torch.no_grad():
        return gs.jacobian_split(cell, cell.unroll(u))


@pytest.mark.parametrize("name", ["scalar_gate", "multi_gate"])
def test_small_eps_slope_is_two(name):
    A, B = _paper_cell(name)
    ex = gs.first_order_expansion(A, B)
    assert 1.9 <= ex.slope.item() <= 2.1
    assert ex.ratios.shape == (1, 100)
    torch.testing.assert_close(ex.exact, _by_hand(A + B))


def test_first_order_term_is_the_derivative_in_eps():
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(2, 5, 4, 4, generator=gen, dtype=torch.float64) / 2
    B = torch.randn(2, 5, 4, 4, generator=gen, dtype=torch.float64) / 5
    _check_against_jacfwd(A, B)


@pytest.mark.parametrize("problem", cases(cells=GATED, dtypes=[torch.float64],
                                          sizes=["typical", "smallest", "long"]))
def test_first_order_term_of_a_cells_split_is_the_derivative_in_eps(problem):
    """The same twin check on the time-scale and gate parts of each gated cell's Jacobians."""
    with torch.no_grad():
        A, B = gs.jacobian_split(problem.cell(), problem.trajectory())
    _check_against_jacfwd(A, B)


def _check_against_jacfwd(A, B):
    """Every part of the expansion of ``∏ (A_j + ε B_j)`` against the product multiplied out
    by hand, its first-order term against ``torch.func.jacfwd`` in ε."""
    ex = gs.first_order_expansion(A, B)
    zero = torch.zeros((), dtype=torch.float64)
    dF = jacfwd(lambda e: _by_hand(A + e * B))(zero)
    torch.testing.assert_close(ex.first, dF)
    torch.testing.assert_close(ex.zeroth, _by_hand(A))
    torch.testing.assert_close(ex.exact, _by_hand(A + B))
    error = torch.stack([torch.linalg.matrix_norm(_by_hand(A + e * B) - _by_hand(A) - e * dF)
                         for e in ex.eps], -1)
    torch.testing.assert_close(ex.error, error, rtol=1e-6, atol=1e-14)
    torch.testing.assert_close(ex.remainder, error / ex.eps**2, rtol=1e-6, atol=1e-4)
    ref_ratio = torch.linalg.matrix_norm(B, 2) / torch.linalg.matrix_norm(A, 2)
    torch.testing.assert_close(ex.ratios, ref_ratio, rtol=1e-6, atol=0)


def test_zero_gate_part_has_no_error():
    A = torch.randn(3, 4, 4, dtype=torch.float64)
    ex = gs.first_order_expansion(A, torch.zeros_like(A), eps=(0.1, 1.0), fit_points=2)
    assert ex.error.abs().max() < 1e-12


def test_bad_arguments():
    A = torch.randn(3, 4, 4)
    with pytest.raises(ValueError, match="stacks"):
        gs.first_order_expansion(A, A[:2])
    with pytest.raises(ValueError, match="positive"):
        gs.first_order_expansion(A, A, eps=(-1.0, 1.0))
