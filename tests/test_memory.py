"""The dense budget: its settings, and every dense entry point stopping before it computes.

Guards issue 11's memory guard: a dense call whose tensors would exceed the budget raises
``DenseBudgetExceeded`` (a ``MemoryError``) naming the call, the tensor's shape and dtype, the
bytes against the budget and the matrix-free or streaming alternative, and it does so before
any of its compute runs (each test replaces the first compute step by a spy that fails).
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_cell, random_inputs

import gatescope as gs
import gatescope.dynamics.expansion as expansion_module
import gatescope.dynamics.jacobians as jacobians_module
import gatescope.dynamics.transport as transport_module
import gatescope.measures.anisotropy as anisotropy_module
import gatescope.measures.rates as rates_module
from gatescope import memory

TINY = 64  # bytes: every dense call below needs more


@pytest.fixture(autouse=True)
def no_budget_leak(monkeypatch):
    """Each test starts from the default budget, without the environment variable, and
    leaves no budget set behind."""
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    gs.set_dense_budget(None)
    yield
    gs.set_dense_budget(None)


def _traj(name="gru", B=2, T=5, n=3):
    cell = random_cell(name, 2, n, True, 0)
    with torch.no_grad():
        return cell, cell.unroll(random_inputs(B, T, 2, 0))


def _spy(monkeypatch, owner, attribute):
    """Replace ``owner.attribute`` by a function that fails the test if it is called."""
    def called(*args, **kwargs):
        raise AssertionError(f"{attribute} ran although the budget was exceeded")
    monkeypatch.setattr(owner, attribute, called)


# ------------------------------------------------------------------ settings


def test_default_budget_is_4_gib():
    assert gs.dense_budget() == memory.DEFAULT_DENSE_BUDGET == 4 * 2**30


@pytest.mark.parametrize("text, nbytes", [
    ("1024", 1024), ("2GiB", 2 * 2**30), ("2 gib", 2 * 2**30), ("1.5KiB", 1536),
    ("500MB", 500 * 10**6), ("8GB", 8 * 10**9), ("1e9", 10**9), ("3b", 3), ("1TiB", 2**40)])
def test_environment_variable_in_bytes_or_with_a_unit(monkeypatch, text, nbytes):
    monkeypatch.setenv(memory.ENV_VAR, text)
    assert gs.dense_budget() == nbytes


def test_set_then_scoped_budget_take_precedence_in_that_order(monkeypatch):
    monkeypatch.setenv(memory.ENV_VAR, "1GiB")
    gs.set_dense_budget("2GiB")
    assert gs.dense_budget() == 2 * 2**30
    with gs.dense_budget_limit(1000) as limit:
        assert limit == 1000 and gs.dense_budget() == 1000
        with gs.dense_budget_limit("1KiB"):
            assert gs.dense_budget() == 1024
        assert gs.dense_budget() == 1000
    assert gs.dense_budget() == 2 * 2**30
    gs.set_dense_budget(None)
    assert gs.dense_budget() == 2**30


@pytest.mark.parametrize("bad, error", [
    (0, ValueError), (-5, ValueError), ("", ValueError), ("lots", ValueError),
    ("2 parsecs", ValueError), ("-1GiB", ValueError), ("0.1b", ValueError),
    (True, TypeError), (1.5e9, TypeError), (None, TypeError), ([4], TypeError)])
def test_bad_budgets_are_refused_naming_the_argument_and_the_allowed_forms(bad, error):
    with (pytest.raises(error, match=r"nbytes must be a positive number of bytes.*GiB"),
          gs.dense_budget_limit(bad)):
        pass
    if bad is not None:
        with pytest.raises(error, match="nbytes"):
            gs.set_dense_budget(bad)


def test_a_bad_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv(memory.ENV_VAR, "four gigs")
    with pytest.raises(ValueError, match=f"environment variable {memory.ENV_VAR}.*'four gigs'"):
        gs.dense_budget()


def test_the_error_is_a_memory_error_with_the_numbers():
    with pytest.raises(gs.DenseBudgetExceeded) as info:
        memory.check_dense(5 * 2**30, "gs.thing: X of shape (3,) float64", "gs.other")
    err = info.value
    assert isinstance(err, MemoryError)
    assert (err.nbytes, err.budget, err.alternative) == (5 * 2**30, 4 * 2**30, "gs.other")
    assert str(err).startswith("gs.thing: X of shape (3,) float64 would need 5.0 GiB")
    memory.check_dense(4 * 2**30, "at the budget", "-")  # the budget itself is allowed


# ----------------------------------------------------- dense entry points refuse first


def _refuses(call, *needles):
    """``call()`` raises DenseBudgetExceeded under a tiny budget, naming every needle."""
    with gs.dense_budget_limit(TINY), pytest.raises(gs.DenseBudgetExceeded) as info:
        call()
    message = str(info.value)
    for needle in (*needles, f"dense budget of {TINY} B", "bytes"):
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


@pytest.mark.parametrize("fn, copies", [(gs.jacobians, 1), (gs.jacobian_split, 2)])
def test_analytic_jacobians_refuse_before_the_cell_computes(monkeypatch, fn, copies):
    cell, traj = _traj()
    for attribute in ("analytic_jacobian", "analytic_jacobian_split"):
        _spy(monkeypatch, cell, attribute)
    _refuses(lambda: fn(cell, traj), f"gs.{fn.__name__}", "shape (2, 5, 3, 3) float64",
             f"{copies} x", "gs.transport_norms")


@pytest.mark.parametrize("fn", [gs.jacobians_autograd, gs.jacobian_split_autograd])
def test_autograd_jacobians_refuse_before_torch_func_runs(monkeypatch, fn):
    cell, traj = _traj("lstm")
    _spy(monkeypatch, jacobians_module, "vmap")
    _refuses(lambda: fn(cell, traj), f"gs.{fn.__name__}", "shape (2, 5, 6, 6) float64",
             "gs.transport_norms")


def test_sensitivities_refuse_before_any_norm(monkeypatch):
    J = gs.jacobians(*_traj())
    _spy(monkeypatch, transport_module, "top_singular_values")
    _refuses(lambda: gs.sensitivities(J), "gs.sensitivities", "shape (2, 6, 6) float64",
             "gs.transport_norms")
    _refuses(lambda: transport_module.ordered_sensitivities(J, "reversed"),
             "gs.ordered_sensitivities", "gs.transport_norms")


def test_transport_refuses_before_the_product(monkeypatch):
    J = gs.jacobians(*_traj())
    _spy(monkeypatch, transport_module, "ordered_product")
    # exactly its three (B, N, N) products fit: the compute runs (and meets the spy)
    with (gs.dense_budget_limit(3 * 2 * 9 * 8),
          pytest.raises(AssertionError, match="ordered_product ran")):
        gs.transport(J, 4, 1)
    _refuses(lambda: gs.transport(J, 4, 1), "gs.transport", "shape (2, 3, 3) float64")


def test_propagation_anisotropy_refuses_before_sampling(monkeypatch):
    J = gs.jacobians(*_traj())
    _spy(monkeypatch, torch, "randint")
    _refuses(lambda: gs.propagation_anisotropy(J, [1, 2], samples_per_lag=4),
             "gs.propagation_anisotropy", "shape (8, 3, 3) float64", "samples_per_lag")


def test_first_order_expansion_refuses_before_the_products(monkeypatch):
    A, Bm = gs.jacobian_split(*_traj())
    _spy(monkeypatch, expansion_module, "zeroth_and_first_order")
    _refuses(lambda: gs.first_order_expansion(A[:, :3], Bm[:, :3]),
             "gs.first_order_expansion", f"shape (2, {len(expansion_module.DEFAULT_EPS)}, 3, 3, 3)",
             "eps grid")


def test_effective_rates_refuse_before_the_lag_pass_and_name_the_streaming_summary(
        monkeypatch):
    cell, traj = _traj()
    _spy(monkeypatch, rates_module, "rate_windows")
    message = _refuses(lambda: gs.effective_learning_rates(cell, traj),
                       "gs.effective_learning_rates", "shape (2, 6, 6, 3) float64",
                       "gs.effective_rate_summary", "chunk_size=")
    assert "2 examples' work" in message


def test_effective_rates_at_the_issue_size_refuse_without_allocating(monkeypatch):
    """The issue's example: (B, T+1, L, n) = (128, 1025, 128, 128) float64 is 16 GiB, over
    the default 4 GiB; the refusal comes from the shapes alone (a stand-in trajectory whose
    tensors are zero-stride views allocates nothing)."""
    B, T, n = 128, 1024, 128
    cell = random_cell("leaky", 1, n, True, 0)
    zeros = torch.zeros(1, dtype=torch.float64)
    traj = gs.Trajectory(inputs=zeros.expand(B, T, 1), states=zeros.expand(B, T + 1, n),
                         gates=None, retention=zeros.expand(B, T, n))
    _spy(monkeypatch, rates_module, "rate_windows")
    with pytest.raises(gs.DenseBudgetExceeded, match=r"16\.\d GiB.*budget of 4\.0 GiB"):
        gs.effective_learning_rates(cell, traj, lags=range(128), order=0, chunk_size=8)


def test_per_example_gradients_refuse_before_the_forward_pass(monkeypatch):
    cell = random_cell("gru", 2, 3, True, 0)
    model = gs.SequenceModel(cell, 1).double()
    _spy(monkeypatch, anisotropy_module, "_states_and_adjoints")
    u, y = random_inputs(4, 5, 2, 0), torch.zeros(4, 1, dtype=torch.float64)
    P = sum(p.numel() for p in model.parameters())
    _refuses(lambda: gs.per_example_gradients(model, u, y), "gs.per_example_gradients",
             f"shape (4, {P}) float64", "chunk_size=")


def test_a_budget_that_fits_changes_nothing():
    cell, traj = _traj()
    J = gs.jacobians(cell, traj)
    with gs.dense_budget_limit(J.numel() * J.element_size()):  # exactly J
        assert torch.equal(gs.jacobians(cell, traj), J)
