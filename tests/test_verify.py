"""``gatescope verify``: the built-in cells pass; a cell with a wrong Jacobian fails."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import CELLS
from references import post_update_gate_term

import gatescope as gs
from gatescope import verify
from gatescope.cells.gated import MultiGateCell

CORE_CHECKS = ("jacobians", "jacobian split A, B", "lag gradients, readout last",
               "lag gradients, readout all")


class PostUpdateGateTerm(MultiGateCell):
    """The paper code's defect: ``B`` built from ``h_t`` instead of ``h_{t-1}``."""

    def analytic_jacobian_split(self, traj):
        A, _ = super().analytic_jacobian_split(traj)
        return A, post_update_gate_term(self, traj)


class NoClosedForm(MultiGateCell):
    def analytic_jacobian_split(self, traj):
        return None


class WrongJacobianOnly(MultiGateCell):
    """A closed form for J alone (no split), and a wrong one."""

    def analytic_jacobian_split(self, traj):
        return None

    def analytic_jacobian(self, traj):
        A, B = MultiGateCell.analytic_jacobian_split(self, traj)
        return A


class NeedsAnOption(MultiGateCell):
    def __init__(self, input_size, hidden_size, width):
        super().__init__(input_size, hidden_size)


@pytest.fixture
def registered():
    """Register test cells by name (conftest's ``isolated_registries`` removes them)."""

    def register(name, cls):
        gs.register_cell(name)(cls)

    return register


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_builtin_cells_pass_quickly(dtype):
    start = time.perf_counter()
    results = verify.run_checks(dtype=dtype, cells=CELLS)
    assert time.perf_counter() - start < 60
    assert all(r.passed for r in results), verify.format_table(results)
    for name in CELLS:
        ran = {r.name for r in results if r.cell == name and not r.skipped}
        assert set(CORE_CHECKS) <= ran
    assert all(r.error <= verify.TOLERANCES[dtype] for r in results if not r.skipped)


def test_main_prints_the_table_and_returns_zero(capsys):
    assert verify.main(device="cpu", dtype="float64") == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "PASS" in out
    for name in CELLS:
        assert name in out


def test_a_wrong_analytic_jacobian_fails(registered, capsys):
    registered("broken_gate_term", PostUpdateGateTerm)
    results = {r.name: r for r in verify.run_checks(cells=["broken_gate_term"])}
    for check in CORE_CHECKS:
        assert not results[check].passed and results[check].error > 1e-3
    assert verify.main() == 1  # every registered cell is checked, the broken one included
    out = capsys.readouterr().out
    assert "broken_gate_term" in out and "FAIL" in out


def test_a_cell_without_closed_form_skips_the_jacobian_checks(registered):
    registered("no_closed_form", NoClosedForm)
    with pytest.warns(UserWarning, match="no closed form"):
        results = {r.name: r for r in verify.run_checks(cells=["no_closed_form"])}
    assert results["jacobians"].skipped and results["jacobian split A, B"].skipped
    assert results["lag gradients, readout last"].passed
    assert not results["lag gradients, readout last"].skipped


def test_a_closed_form_for_j_alone_is_checked(registered):
    registered("wrong_jacobian_only", WrongJacobianOnly)
    results = {r.name: r for r in verify.run_checks(cells=["wrong_jacobian_only"])}
    assert not results["jacobians"].passed and not results["jacobians"].skipped
    assert results["jacobian split A, B"].skipped


def test_a_cell_that_cannot_be_built_fails_with_a_note(registered):
    registered("needs_an_option", NeedsAnOption)
    (result,) = verify.run_checks(cells=["needs_an_option"])
    assert not result.passed and "width" in result.note


def test_wrong_effective_rates_fail(monkeypatch):
    def wrong_rates(cell, traj, lags, order=1):
        """Zeros, NaN where ``ℓ > t`` as it should be."""
        mu = torch.zeros(traj.batch_size, traj.seq_len + 1, len(lags), cell.hidden_size,
                         dtype=torch.float64)
        mu[:, torch.tensor(lags) > torch.arange(traj.seq_len + 1)[:, None]] = torch.nan
        return mu

    monkeypatch.setattr(verify, "effective_learning_rates", wrong_rates)
    results = {r.name: r for r in verify.run_checks(cells=["gru"])}
    assert not results["effective rates"].passed
    assert results["per-example gradients"].passed


def test_per_example_gradients_are_checked(monkeypatch):
    def per_example_gradients(model, u, y, mask=None):
        """A loop over examples (what the check compares with), optionally off by 2x."""
        rows = []
        for i in range(u.shape[0]):
            loss = model.loss(u[i:i + 1], y[i:i + 1], None if mask is None else mask[i:i + 1])
            grads = torch.autograd.grad(loss, list(model.parameters()))
            rows.append(torch.cat([g.flatten() for g in grads]))
        return torch.stack(rows)

    def doubled(model, u, y, mask=None):
        return 2 * per_example_gradients(model, u, y, mask)

    for fn, ok in ((per_example_gradients, True), (doubled, False)):
        monkeypatch.setattr(verify, "per_example_gradients", fn)
        (result,) = [r for r in verify.run_checks(cells=["lstm"])
                     if r.name == "per-example gradients"]
        assert result.passed is ok and not result.skipped


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown cell"):
        verify.run_checks(cells=["nope"])
    with pytest.raises(ValueError, match="dtype"):
        verify.run_checks(dtype="float16")
