"""The structured fast path (docs/maths.md#structured-jacobians) against the dense exact path:
the declared structure is the Jacobian, and sensitivities, effective rates, their envelope and
neuron dispersion agree to 1e-10 in float64; dispatch picks it for one structured layer only."""

from __future__ import annotations

import pytest
import torch

import gatescope as gs
from gatescope.cells.structure import JacobianStructure
from gatescope.dynamics.structured import (
    start_sensitivities,
    structure_of,
    structured_sensitivities,
)
from gatescope.measures import time_scales
from gatescope.probes import ProbeContext

CELLS = {
    "min_gru": ("min_gru", {}),
    "min_gru_proj": ("min_gru", {"expansion_factor": 1.5}),
    "min_lstm_proj": ("min_lstm", {"expansion_factor": 2.0}),
    "rg_lru": ("rg_lru", {}),
    "lru": ("lru", {"state_features": 3}),
}
LENGTHS = {"full": None, "padded": [7, 4, 1]}


def make(key: str, seed: int = 0):
    name, options = CELLS[key]
    torch.manual_seed(seed)
    return gs.make_cell(name, input_size=3, hidden_size=4, dtype=torch.float64, **options)


def unrolled(cell, lengths=None, seed: int = 1):
    u = torch.randn(3, 7, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        return cell.unroll(u, lengths=None if lengths is None else torch.tensor(lengths))


def dense_twin(cell):
    """The same cell with its structure hidden, so every measure takes the dense path."""
    cell.jacobian_structure = lambda traj: None
    return cell


def assert_close(a, b, rtol=1e-10):
    assert torch.equal(a.isnan(), b.isnan())
    torch.testing.assert_close(a.nan_to_num(), b.nan_to_num(), rtol=rtol, atol=1e-300)


def jacobian_from_structure(s: JacobianStructure) -> torch.Tensor:
    """The dense ``[[0, C Λ], [0, Λ]]`` the structure declares: ``(B, T, N, N)``."""
    if s.angle is None:
        inner = torch.diag_embed(s.modulus)
    else:
        c, n = s.modulus * torch.cos(s.angle), s.modulus * torch.sin(s.angle)
        B, T, K = s.modulus.shape
        inner = s.modulus.new_zeros(B, T, 2 * K, 2 * K)
        q = torch.arange(K)
        for a, b, value in ((0, 0, c), (0, 1, -n), (1, 0, n), (1, 1, c)):
            inner[..., 2 * q + a, 2 * q + b] = value
    if s.output_map is None:
        return inner
    rows = torch.cat([s.output_map @ inner, inner], -2)
    return torch.cat([rows.new_zeros(*rows.shape[:-1], s.output_size), rows], -1)


@pytest.mark.parametrize("key", CELLS)
def test_the_declared_structure_is_the_autograd_jacobian(key):
    cell = make(key)
    traj = unrolled(cell)
    J = jacobian_from_structure(structure_of(cell, traj))
    torch.testing.assert_close(J, gs.jacobians_autograd(cell, traj), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("key", CELLS)
def test_sensitivities_equal_the_dense_exact_path(key, lengths):
    cell = make(key)
    traj = unrolled(cell, LENGTHS[lengths])
    dense = gs.sensitivities(gs.jacobians(cell, traj), rtol=1e-12)
    assert_close(structured_sensitivities(cell, traj, rtol=1e-13), dense)


@pytest.mark.parametrize("key", ["min_gru", "lru"])
def test_sensitivities_from_start_times_at_every_lag(key):
    cell = make(key)
    traj = unrolled(cell)
    dense = gs.sensitivities(gs.jacobians(cell, traj), rtol=1e-12)
    starts = [0, 3, 7]
    S = start_sensitivities(structure_of(cell, traj), starts, rtol=1e-13)
    assert S.shape == (3, 3, 8)
    for i, k in enumerate(starts):
        assert_close(S[:, i, : 8 - k], dense[:, k:, k])
        assert S[:, i, 8 - k:].isnan().all()


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("key", CELLS)
def test_rates_envelope_and_dispersion_equal_the_dense_path(key, lengths, order):
    cell = make(key)
    traj = unrolled(cell, LENGTHS[lengths])
    lags = [0, 1, 2, 5, 7, 9]
    mu = gs.effective_learning_rates(cell, traj, lags, order=order)
    summary = gs.effective_rate_summary(cell, traj, lags, order=order, chunk_size=2)
    twin = dense_twin(make(key))
    mu_dense = gs.effective_learning_rates(twin, traj, lags, order=order)
    dense_summary = gs.effective_rate_summary(twin, traj, lags, order=order, chunk_size=2)
    assert_close(mu, mu_dense)
    assert_close(gs.envelope(mu), gs.envelope(mu_dense))
    assert_close(summary.envelope, dense_summary.envelope)
    assert_close(summary.neuron_cv, dense_summary.neuron_cv)


def test_lru_first_order_rates_carry_the_rotation():
    """``d = m (cos θ - 1) ≠ 0`` for the LRU, so order 1 differs from order 0 (and the
    comparison above checks a nonzero ``μ¹``)."""
    cell = make("lru")
    traj = unrolled(cell)
    mu0, mu1 = (gs.effective_learning_rates(cell, traj, [3], order=o) for o in (0, 1))
    assert (mu1 - mu0)[:, 3:].abs().min() > 1e-6


def test_a_zero_retention_step_zeroes_every_window_through_it():
    cell = make("min_gru")
    with torch.no_grad():  # channel 0's update gate saturates: r = 1 - σ(80) = 0 exactly
        cell.to_hidden_and_gate.weight[4].zero_()
        cell.to_hidden_and_gate.bias = torch.nn.Parameter(torch.zeros(8, dtype=torch.float64))
        cell.to_hidden_and_gate.bias[4] = 80.0
    traj = unrolled(cell)
    assert (traj.retention[..., 0] == 0).all()
    mu = gs.effective_learning_rates(cell, traj, [1, 4])
    assert (mu[:, 4:, :, 0] == 0).all()
    assert_close(mu, gs.effective_learning_rates(dense_twin(make("min_gru")), traj, [1, 4]))
    assert_close(structured_sensitivities(cell, traj, rtol=1e-13),
                 gs.sensitivities(gs.jacobians(cell, traj), rtol=1e-12))


def _context(cell, u):
    model = gs.SequenceModel(cell, output_size=1)
    return ProbeContext(model, u, torch.zeros(u.shape[0], 1, dtype=u.dtype), None, None,
                        lags=(1, 2), rank=1, samples_per_lag=1, step=0)


def test_the_measurement_context_takes_the_structured_path_for_one_layer():
    cell = make("min_gru_proj")
    u = torch.randn(2, 6, 3, dtype=torch.float64)
    ctx = _context(cell, u)
    assert ctx.structured
    S, mu = ctx.sensitivities, ctx.rates
    assert "jacobians" not in vars(ctx)  # the dense stack was never built
    dense = _context(dense_twin(make("min_gru_proj")), u)
    assert not dense.structured
    assert_close(S, dense.sensitivities, rtol=1e-6)  # what the dense default certifies
    assert_close(mu, dense.rates)
    assert "jacobians" in vars(dense)


def test_a_stack_of_structured_layers_keeps_the_dense_path():
    stack = gs.StackedCell([make("min_gru"), gs.make_cell("min_gru", 4, 4, dtype=torch.float64)])
    u = torch.randn(2, 5, 3, dtype=torch.float64)
    ctx = _context(stack, u)
    layer = stack.layer_trajectory(ctx.trajectory, 0)
    assert stack.layers[0].jacobian_structure(layer) is not None
    assert not ctx.structured
    assert_close(ctx.sensitivities, gs.sensitivities(gs.jacobians(stack, ctx.trajectory)))
    assert "jacobians" in vars(ctx)
    with pytest.raises(ValueError, match="declares no jacobian_structure"):
        structured_sensitivities(stack, ctx.trajectory)


def test_a_structure_of_the_wrong_size_is_refused():
    cell = make("min_gru")
    traj = unrolled(cell)
    cell.jacobian_structure = lambda t: JacobianStructure(t.retention[..., :2])
    with pytest.raises(ValueError, match="retention_size=4"):
        structure_of(cell, traj)
    with pytest.raises(ValueError, match="angle must have the modulus' shape"):
        JacobianStructure(traj.retention, traj.retention[..., :1])
    with pytest.raises(ValueError, match="starts must be ints with 0 <= k <= T=7"):
        start_sensitivities(structure_of(make("rg_lru"), unrolled(make("rg_lru"))), [8])


@pytest.mark.parametrize("key", ["min_gru", "min_gru_proj", "lru"])
def test_chunk_boundaries_change_nothing(key, monkeypatch):
    """With a tiny chunk the examples, channels, pairs and blocks of end times are all split;
    the results are those of one chunk."""
    import gatescope.dynamics.structured as structured

    cell = make(key)
    traj = unrolled(cell, LENGTHS["padded"])
    S, mu = structured_sensitivities(cell, traj, rtol=1e-13), gs.effective_learning_rates(
        cell, traj, [0, 2, 5])
    tau = time_scales(cell, traj)
    monkeypatch.setattr(structured, "CHUNK_ELEMENTS", 8)
    monkeypatch.setattr(gs.measures.rates, "CHUNK_ELEMENTS", 8)
    assert_close(structured_sensitivities(cell, traj, rtol=1e-13), S)
    assert_close(gs.effective_learning_rates(cell, traj, [0, 2, 5]), mu)
    blocked = time_scales(cell, traj)  # blocks of 2 steps
    assert_close(blocked, tau)
    inside = traj.step_mask.unsqueeze(-1).double()
    r = traj.retention.expand(*traj.retention.shape[:-1], cell.retention_size)
    assert_close(blocked, -1 / ((r * inside).sum((0, 1)) / inside.sum((0, 1))).log())
