"""Lag-resolved BPTT against autograd (float64)."""

from __future__ import annotations

import pytest
import torch
from conftest import random_cell, random_inputs
from problems import cases
from torch.func import functional_call

import gatescope as gs
from gatescope.dynamics.lag_gradients import lag_gradients_dense


def _model(name, readout, seed=0, n=4, m=3, out=2, loss="mse"):
    cell = random_cell(name, m, n, True, seed)
    return gs.SequenceModel(cell, out, readout=readout, loss=loss).double()


def _autograd(model, u, y, mask=None):
    loss = model.loss(u, y, mask)
    return dict(zip([k for k, _ in model.named_parameters()],
                    torch.autograd.grad(loss, list(model.parameters())), strict=True))


@pytest.mark.parametrize("readout", ["last", "all"])
@pytest.mark.parametrize("problem", cases(dtypes=[torch.float64],
                                          sizes=["typical", "smallest"]))
def test_lag_terms_sum_to_the_autograd_gradient(problem, readout):
    model = gs.SequenceModel(problem.cell(), 2, readout=readout).double()
    u = problem.inputs()
    B, T = u.shape[:2]
    y = problem.targets(readout, torch.Generator().manual_seed(problem.seed))
    parts = gs.lag_gradients(model, u, y)
    ref = _autograd(model, u, y)
    assert list(parts) == list(ref)
    for k, g in ref.items():
        assert parts[k].shape == (T, *g.shape)
        torch.testing.assert_close(parts[k].sum(0), g, rtol=1e-10, atol=1e-12)


def test_masked_cross_entropy_readout_all():
    model = _model("lstm", "all", out=5, loss="cross_entropy")
    u = random_inputs(4, 6, 3, 2)
    y = torch.randint(0, 5, (4, 6))
    mask = torch.rand(4, 6) > 0.4
    parts = gs.lag_gradients(model, u, y, mask)
    for k, g in _autograd(model, u, y, mask).items():
        torch.testing.assert_close(parts[k].sum(0), g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("problem", cases(dtypes=[torch.float64],
                                          sizes=["typical", "smallest"]))
def test_lag_term_is_the_gradient_through_one_step_copy(problem):
    """Readout last: G_ℓ is the gradient w.r.t. a copy of θ used only at step T-ℓ."""
    model = gs.SequenceModel(problem.cell(), 2).double()
    u = problem.inputs()
    B, T = u.shape[:2]
    y = torch.randn(B, 2, generator=torch.Generator().manual_seed(problem.seed),
                    dtype=torch.float64)
    parts = gs.lag_gradients(model, u, y)
    cell = model.cell
    params = dict(cell.named_parameters())
    for lag in range(T):
        copy = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        h = cell.initial_state(B, u)
        for t in range(1, T + 1):
            h = functional_call(cell, copy if t == T - lag else params, (h, u[:, t - 1]))
        loss = model.loss_from_predictions(model.readout(h[..., : cell.hidden_size]), y)
        grads = torch.autograd.grad(loss, list(copy.values()))
        for (k, _), g in zip(copy.items(), grads, strict=True):
            torch.testing.assert_close(parts[f"cell.{k}"][lag], g, rtol=1e-10, atol=1e-13)
    assert not parts["readout.weight"][1:].any()  # the readout acts at step T only


def test_readout_all_lag_term_is_the_gradient_from_losses_lag_steps_later():
    """Readout all: G_ℓ = Σ_k ∂L_{k+ℓ}/∂θ_k with θ_k a copy used only at step k."""
    model = _model("multi_gate", "all", seed=7)
    B, T = 2, 5
    u = random_inputs(B, T, 3, 7)
    y = torch.randn(B, T, 2, dtype=torch.float64)
    parts = gs.lag_gradients(model, u, y)
    cell = model.cell
    params = dict(cell.named_parameters())
    for lag in range(T):
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        for k in range(1, T - lag + 1):
            copy = {n: v.detach().clone().requires_grad_() for n, v in params.items()}
            h, states = cell.initial_state(B, u), []
            for t in range(1, T + 1):
                h = functional_call(cell, copy if t == k else params, (h, u[:, t - 1]))
                states.append(h)
            pred = model.readout(states[k + lag - 1][..., : cell.hidden_size])
            loss = ((pred - y[:, k + lag - 1]) ** 2).mean(-1).sum() / (B * T)
            for (n, _), g in zip(copy.items(), torch.autograd.grad(loss, list(copy.values())),
                                 strict=True):
                total[n] += g
        for n, g in total.items():
            torch.testing.assert_close(parts[f"cell.{n}"][lag], g, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("readout", ["last", "all"])
@pytest.mark.parametrize("problem", cases(dtypes=[torch.float64], sizes=["typical"]))
def test_jacobian_free_lag_terms_equal_the_dense_twin_lag_by_lag(problem, readout):
    """Guards the Jacobian-free paths of lag_gradients (one backward over per-step parameter
    rows for "last", VJP sweeps for "all") against lag_gradients_dense, which multiplies by
    the dense J: every lag term, not only their sum, to 1e-10."""
    model = gs.SequenceModel(problem.cell(), 2, readout=readout).double()
    u = problem.inputs()
    B, T = u.shape[:2]
    gen = torch.Generator().manual_seed(problem.seed + 1)
    y = problem.targets(readout, gen)
    h0 = torch.randn(B, model.cell.state_size, generator=gen, dtype=torch.float64)
    parts = gs.lag_gradients(model, u, y, h0=h0)
    dense = lag_gradients_dense(model, u, y, h0=h0)
    assert list(parts) == list(dense)
    for k, g in dense.items():
        assert g[1:].abs().max() > 0 or k.startswith("readout")  # the lags carry terms
        torch.testing.assert_close(parts[k], g, rtol=1e-10, atol=1e-13)


class TiedPlain(gs.cells.plain.PlainCell):
    """A plain cell whose input projection reads the recurrent weight through a second
    name (one tensor, two names: ``named_parameters()`` lists it once)."""

    def __init__(self, n):
        super().__init__(n, n)
        self.input.weight = self.recurrent.weight


def test_tied_weights_keep_their_lag_terms():
    """Readout "last" substitutes per-step copies under every name of a tied tensor, so the
    lag terms still sum to autograd's gradient (a copy under one name only would lose the
    input path's share)."""
    torch.manual_seed(0)
    model = gs.SequenceModel(TiedPlain(3), 2, readout="last").double()
    u, y = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    parts = gs.lag_gradients(model, u, y)
    for k, g in _autograd(model, u, y).items():
        torch.testing.assert_close(parts[k].sum(0), g, rtol=1e-10, atol=1e-12, msg=k)


class DoubledGRU(gs.cells.gru.GRUCell):
    """A GRU subclass that redefines the step through ``compute``."""

    def compute(self, h, u, held=None):
        out = super().compute(h, u, held)
        return {**out, "state": 2 * out["state"]}


def test_a_gru_subclass_that_redefines_compute_steps_with_it():
    torch.manual_seed(0)
    cell = DoubledGRU(3, 4).double()
    h, u = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(cell(h, u), cell.compute(h, u)["state"], rtol=0, atol=0)
