"""Optimizer step sizes read from the optimizer state, and their dispersion."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_cell, random_inputs
from references import steady_state_step_sizes

import gatescope as gs
from gatescope.measures import (
    effective_learning_rates,
    gates_vs_optimizer,
    optimizer_step_sizes,
    spectrum_stats,
    step_size_dispersion,
)


def _model(seed=0):
    return gs.SequenceModel(random_cell("multi_gate", 3, 4, True, seed), 1).double()


def _train(model, opt, steps=3):
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        u = torch.randn(4, 5, 3, generator=gen, dtype=torch.float64)
        y = torch.randn(4, 1, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        model.loss(u, y).backward()
        opt.step()


@pytest.mark.parametrize("kind", ["adam", "adamw", "amsgrad"])
def test_adam_steps_equal_the_hand_computed_formula(kind):
    model = _model()
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    opt = cls(model.parameters(), lr=3e-3, betas=(0.8, 0.95), eps=1e-6,
              amsgrad=kind == "amsgrad")
    _train(model, opt, steps=4)
    steps = optimizer_step_sizes(opt)
    assert list(steps) == list(model.parameters())
    for p, s in steps.items():
        st = opt.state[p]
        v = st["max_exp_avg_sq"] if kind == "amsgrad" else st["exp_avg_sq"]
        t = int(st["step"])
        assert t == 4
        ref = 3e-3 / (torch.sqrt(v / (1 - 0.95**t)) + 1e-6)
        assert s.shape == p.shape and s.dtype == p.dtype
        torch.testing.assert_close(s, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_step_size_times_the_corrected_moment_is_the_update(amsgrad):
    model = _model(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=amsgrad)
    _train(model, opt, steps=2)
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, steps=1)
    steps = optimizer_step_sizes(opt)
    for p, old in zip(model.parameters(), before, strict=True):
        m_hat = opt.state[p]["exp_avg"] / (1 - 0.9 ** int(opt.state[p]["step"]))
        torch.testing.assert_close(old - p.detach(), steps[p] * m_hat, rtol=1e-9, atol=1e-15)


def test_unstepped_adam_parameters_get_nan():
    model = _model()
    steps = optimizer_step_sizes(torch.optim.Adam(model.parameters()))
    assert all(s.isnan().all() for s in steps.values())


def _assert_matches_real_steps(opt, model, rtol=1e-9, **frozen):
    """The step sizes equal the parameter change per unit gradient of real ``opt.step()``
    calls (see ``references.steady_state_step_sizes``)."""
    steps = optimizer_step_sizes(opt)
    real = steady_state_step_sizes(model, opt, **frozen)
    for p in model.parameters():
        assert steps[p].shape == p.shape and steps[p].dtype == p.dtype
        torch.testing.assert_close(steps[p], real[p], rtol=rtol, atol=0)


def test_sgd_steps():
    model = _model()
    params = list(model.parameters())
    opt = torch.optim.SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}], lr=0.1)
    steps = optimizer_step_sizes(opt)
    for i, p in enumerate(params):
        assert torch.equal(steps[p], torch.full_like(p, 0.1 if i < 2 else 0.5))
    _assert_matches_real_steps(opt, model)


@pytest.mark.parametrize("options", [
    {"momentum": 0.9, "dampening": 0.5},
    {"momentum": 0.75, "nesterov": True},
    {"momentum": 0.6, "dampening": 0.2, "nesterov": False},
], ids=["dampened", "nesterov", "heavy_ball"])
def test_momentum_steps_are_the_settled_change_per_unit_gradient(options):
    """SGD with momentum: the step size is what a real step moves a parameter per unit of a
    constant gradient once the momentum buffer has settled."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, **options)
    _train(model, opt)
    _assert_matches_real_steps(opt, model)


@pytest.mark.parametrize("momentum", [0.0, 0.5])
@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_steps(centered, momentum):
    """RMSprop: against real steps with the square average held (``alpha = 1`` in the copy
    that is stepped), so the preconditioner is the one in the optimizer state."""
    model = _model()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, eps=1e-7, momentum=momentum,
                              centered=centered)
    _train(model, opt)
    _assert_matches_real_steps(opt, model, alpha=1.0)


def test_unsupported_optimizer_raises_type_error():
    with pytest.raises(TypeError, match="Adagrad"):
        optimizer_step_sizes(torch.optim.Adagrad(_model().parameters()))


def test_step_size_dispersion():
    const = step_size_dispersion({torch.zeros(3): torch.full((3,), 0.2),
                                  torch.zeros(2, 2): torch.full((2, 2), 0.2)}, r=2)
    assert const.cv == 0 and const.ai == 1
    torch.testing.assert_close(const.participation_ratio, torch.tensor(7.0, dtype=torch.float64))
    x = torch.tensor([4.0, 1.0, math.nan, 2.0, 1.0])  # NaN: not stepped, left out
    d = step_size_dispersion(x, r=2, levels=(0.0, 0.5, 1.0))
    v = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(d.cv, v.std(correction=0) / v.mean())
    ref = spectrum_stats(v, r=2)
    for name in ("ai", "ce", "participation_ratio", "effective_rank"):
        torch.testing.assert_close(getattr(d, name), getattr(ref, name))
    torch.testing.assert_close(d.quantiles, torch.tensor([1.0, 1.5, 4.0], dtype=torch.float64))


def _mu(name, order=0):
    cell = random_cell(name, 3, 12, False, 2)
    with torch.no_grad():
        traj = cell.unroll(random_inputs(3, 8, 3, 2))
    return effective_learning_rates(cell, traj, lags=[0, 1, 4, 8], order=order)


def test_gates_vs_optimizer_side_by_side():
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(model, opt)
    scalar = gates_vs_optimizer(_mu("scalar_gate"), opt, lr=1e-2, r=4)
    assert scalar.gates.cv.shape == (4,) and scalar.gates.quantiles.shape == (7, 4)
    assert (scalar.gates.cv == 0).all()  # one gate for all neurons
    torch.testing.assert_close(scalar.gates.ai, torch.ones(4, dtype=torch.float64))
    multi = gates_vs_optimizer(_mu("multi_gate"), optimizer_step_sizes(opt), lr=1e-2, r=4)
    assert (multi.gates.cv[1:] > 0).all() and multi.gates.cv[0] == 0  # μ_{t,0} = 1
    ref = step_size_dispersion(optimizer_step_sizes(opt), r=4)
    for name in ("cv", "ai", "ce", "participation_ratio", "effective_rank", "quantiles"):
        torch.testing.assert_close(getattr(multi.optimizer, name), getattr(ref, name))
    pooled = (1e-2 * _mu("multi_gate")[:, 4:, 2]).abs().flatten()  # lag 4, t >= 4
    torch.testing.assert_close(multi.gates.quantiles[3, 2], pooled.quantile(0.5))
