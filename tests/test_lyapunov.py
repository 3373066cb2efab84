"""Finite-time Lyapunov exponents (QR method on JVPs) against systems whose exponents are
known exactly: a linear recurrence (log |eig A|) and cells whose Jacobian is the diagonal of
their retention (the zeroth-order prediction E_t log r_t)."""

from __future__ import annotations

import math

import pytest
import torch
from linear_cell import LinearCell, with_eigenvalues

import gatescope as gs

EIGENVALUES = [0.95, -0.8, 0.6, 0.4, 0.2]


def _linear_problem(T: int = 260):
    cell = LinearCell(with_eigenvalues(EIGENVALUES))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        return cell, cell.unroll(torch.randn(2, T, 1, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("every", [1, 5])
def test_linear_recurrence_gives_log_abs_eigenvalues(k, every):
    """Guards the QR method: for h_t = A h_{t-1} (distinct real |eig A|) the exponents after
    the alignment steps are log |eig A|, sorted descending, to 1e-6, with and without
    reorthonormalising at every step."""
    cell, traj = _linear_problem()
    exponents = gs.lyapunov_exponents(cell, traj, k, discard=200, reorthonormalize_every=every)
    expected = torch.tensor([math.log(abs(x)) for x in EIGENVALUES], dtype=torch.float64)[:k]
    assert exponents.shape == (2, k)
    torch.testing.assert_close(exponents, expected.expand(2, k), rtol=0, atol=1e-6)


def _retention_only(name: str, n: int = 6) -> tuple[gs.RecurrentCell, gs.Trajectory]:
    """A ``name`` cell whose candidate and gates do not read ``h`` (every recurrent weight 0),
    so ``J_t = diag(r_t)``; the gate biases give each neuron its own retention (well-separated
    time scales, so ``Q`` aligns with the neurons within the discarded steps)."""
    torch.manual_seed(3)
    cell = gs.make_cell(name, 2, n, bias=True, dtype=torch.float64)
    retention = torch.linspace(0.3, 0.95, n, dtype=torch.float64)
    with torch.no_grad():
        for pname, p in cell.named_parameters():
            if "recurrent" in pname or pname == "weight_hh":
                p.zero_()
            elif pname.startswith("input.") or pname == "weight_ih":
                p.mul_(0.3)  # inputs move the gates around their bias
        if name == "gru":  # retention z: the bias of its block of weight_ih
            cell.bias_hh.zero_()
            cell.bias_ih[n:2 * n] = torch.logit(retention)
        elif name in ("scalar_gate", "multi_gate"):  # retention 1 - g
            cell.gate_input.bias.copy_(torch.logit(1 - retention[: cell.gate_input.bias.numel()]))
        gen = torch.Generator().manual_seed(4)
        traj = cell.unroll(torch.randn(2, 400, 2, generator=gen, dtype=torch.float64))
    return cell, traj


@pytest.mark.parametrize("name", ["plain", "leaky", "scalar_gate", "multi_gate", "gru"])
def test_exponents_equal_the_retention_time_scales_when_j_is_diag_r(name):
    """Guards the zeroth-order link: with every recurrent weight 0, J_t = diag(r_t) exactly,
    and the exponents are the sorted E_t log r_t of gs.gate_time_scale_exponents (one shared
    value for leaky and scalar_gate; -inf for plain, whose retention and J are 0)."""
    cell, traj = _retention_only(name)
    exponents = gs.lyapunov_exponents(cell, traj, cell.hidden_size, discard=200)
    predicted = gs.gate_time_scale_exponents(traj, discard=200)
    torch.testing.assert_close(exponents, predicted.expand_as(exponents), rtol=0, atol=1e-9)


def test_leaky_cell_with_tiny_weights_is_near_log_retention():
    """Guards the first-order size of the correction: J_t = (1-α)(I + E_t) with
    ‖E_t‖ ≤ e = α‖W_r‖/(1-α), so every exponent lies in [log((1-α)(1-e)), log((1-α)(1+e))]."""
    torch.manual_seed(2)
    alpha = 0.3
    cell = gs.make_cell("leaky", 2, 8, alpha=alpha, dtype=torch.float64)
    with torch.no_grad():
        cell.recurrent.weight.mul_(1e-3)
        traj = cell.unroll(torch.randn(2, 200, 2, dtype=torch.float64))
    e = alpha * torch.linalg.matrix_norm(cell.recurrent.weight.detach(), ord=2).item() / (1 - alpha)
    exponents = gs.lyapunov_exponents(cell, traj, 8)
    assert (exponents >= math.log((1 - alpha) * (1 - e)) - 1e-12).all()
    assert (exponents <= math.log((1 - alpha) * (1 + e)) + 1e-12).all()
    assert (exponents - math.log(1 - alpha)).abs().max() > 0  # the weights do act


def test_exponents_are_sorted_and_agree_with_dense_products():
    """Guards the general case on a nonlinear cell: the sum of the k = N exponents is the
    mean log |det J_t| (volume growth), and they come sorted descending."""
    torch.manual_seed(7)
    cell = gs.make_cell("gru", 3, 5, dtype=torch.float64)
    with torch.no_grad():
        traj = cell.unroll(torch.randn(2, 60, 3, dtype=torch.float64))
    exponents = gs.lyapunov_exponents(cell, traj, 5)
    log_det = torch.linalg.slogdet(gs.jacobians(cell, traj))[1].mean(1)
    torch.testing.assert_close(exponents.sum(-1), log_det, rtol=0, atol=1e-10)
    assert (exponents[:, :-1] >= exponents[:, 1:]).all()


def test_steps_past_a_length_are_not_counted():
    """Guards padded batches: an example's exponents are those of its own steps only (equal
    to the exponents of the trajectory cut at its length)."""
    cell, traj = _linear_problem(T=240)
    traj.lengths = torch.tensor([240, 220])
    cut = traj.examples(slice(1, 2)).steps(0, 220)
    cut.lengths = None
    both = gs.lyapunov_exponents(cell, traj, 3, discard=200)
    alone = gs.lyapunov_exponents(cell, cut, 3, discard=200)
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"k": 0}, ValueError, r"k must be an int in \[1, 5\], got 0"),
    ({"k": 6}, ValueError, r"k must be an int in \[1, 5\], got 6"),
    ({"k": 2.0}, TypeError, r"k must be an int in \[1, 5\]"),
    ({"k": 2, "discard": 260}, ValueError, r"discard must be an int in \[0, 259\]"),
    ({"k": 2, "reorthonormalize_every": 0}, ValueError,
     r"reorthonormalize_every must be an int in \[1, 260\]"),
])
def test_lyapunov_exponents_refuse_bad_arguments_before_any_compute(kwargs, error, match,
                                                                    monkeypatch):
    """Guards the validation: a clear error naming the argument and its range, raised before
    the cell is evaluated."""
    cell, traj = _linear_problem()
    monkeypatch.setattr(type(cell), "compute", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(error, match=match):
        gs.lyapunov_exponents(cell, traj, **kwargs)
