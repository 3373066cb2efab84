"""The retention structure (docs/maths.md#retention-structure): Mamba's SSM-state block of
every transport product is the product of its diagonals, so its effective rates, envelopes and
time scales take the structured path and equal the dense exact path to 1e-10 in float64; its
retention follows from the inputs alone."""

from __future__ import annotations

import pytest
import torch

import gatescope as gs
from gatescope.cells.structure import JacobianStructure
from gatescope.dynamics.structured import retention_structure_of, structure_of
from gatescope.measures.envelopes import exact_envelope

LENGTHS = {"full": None, "padded": [6, 3, 1]}
OPTIONS = {"d_conv4": {}, "d_conv1": {"d_conv": 1}, "no_conv_bias": {"conv_bias": False}}


def mamba(seed=0, **options):
    torch.manual_seed(seed)
    return gs.make_cell("mamba", input_size=3, hidden_size=2, dtype=torch.float64,
                        d_state=3, expand=2, **options)


def inputs(seed=1, B=3, T=6):
    return torch.randn(B, T, 3, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def unrolled(cell, lengths=None):
    with torch.no_grad():
        return cell.unroll(inputs(), lengths=None if lengths is None else torch.tensor(lengths))


def assert_close(a, b, rtol=1e-10):
    assert torch.equal(a.isnan(), b.isnan())
    torch.testing.assert_close(a.nan_to_num(), b.nan_to_num(), rtol=rtol, atol=1e-300)


def test_the_ssm_block_of_the_transport_is_the_product_of_the_retentions():
    """The declaration itself, against the dense Jacobians: the h-on-h block of J_t ⋯ J_{k+1}
    is ∏ diag(exp(Δ_j A)) (nothing but h feeds h)."""
    cell = mamba()
    traj = unrolled(cell)
    J = gs.jacobians_autograd(cell, traj)
    n = cell.retention_size
    product = torch.eye(cell.state_size, dtype=torch.float64).expand(3, -1, -1)
    retained = torch.ones(3, n, dtype=torch.float64)
    for t in range(traj.seq_len):
        product = J[:, t] @ product
        retained = retained * traj.retention[:, t]
        torch.testing.assert_close(product[:, -n:, -n:], torch.diag_embed(retained),
                                   rtol=1e-10, atol=1e-13)
    assert structure_of(cell, traj) is None  # the full Jacobian has no such structure
    s = retention_structure_of(cell, traj)
    assert s.angle is None and s.output_map is None
    torch.testing.assert_close(s.modulus, traj.retention, rtol=0, atol=0)


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("lengths", LENGTHS)
def test_mamba_rates_envelopes_and_time_scales_equal_the_dense_path(lengths, order):
    cell = mamba()
    traj = unrolled(cell, LENGTHS[lengths])
    lags = [0, 1, 2, 4, 6, 8]
    twin = mamba()
    twin.retention_structure = lambda traj: None
    for fast, dense in (
            (gs.effective_learning_rates(cell, traj, lags, order=order),
             gs.effective_learning_rates(twin, traj, lags, order=order)),
            (gs.effective_rate_summary(cell, traj, lags, order=order).envelope,
             gs.effective_rate_summary(twin, traj, lags, order=order).envelope),
            (gs.effective_rate_summary(cell, traj, lags, order=order).neuron_cv,
             gs.effective_rate_summary(twin, traj, lags, order=order).neuron_cv)):
        assert_close(fast, dense)
    ends = [6]
    assert_close(exact_envelope(cell, traj, [1, 2, 4], ends=ends),
                 exact_envelope(twin, traj, [1, 2, 4], ends=ends))


@pytest.mark.parametrize("options", OPTIONS)
def test_mamba_retention_from_the_inputs_alone(options):
    cell = mamba(**OPTIONS[options])
    with torch.no_grad():
        torch.testing.assert_close(cell.retention_from_inputs(inputs()),
                                   cell.unroll(inputs()).retention, rtol=1e-12, atol=1e-14)


def test_structured_cells_declare_their_inner_state():
    """By default the retention structure is the Jacobian structure without output rows."""
    torch.manual_seed(0)
    cell = gs.make_cell("lru", input_size=3, hidden_size=4, dtype=torch.float64,
                        state_features=3)
    traj = unrolled(cell)
    full, retained = structure_of(cell, traj), retention_structure_of(cell, traj)
    assert full.output_map is not None and retained.output_map is None
    torch.testing.assert_close(retained.modulus, full.modulus, rtol=0, atol=0)
    torch.testing.assert_close(retained.angle, full.angle, rtol=0, atol=0)
    assert retention_structure_of(gs.make_cell("gru", 3, 4), gs.make_cell("gru", 3, 4)
                                  .unroll(torch.randn(2, 3, 3))) is None


def test_a_retention_structure_of_the_wrong_size_is_refused():
    cell = mamba()
    traj = unrolled(cell)
    cell.retention_structure = lambda traj: JacobianStructure(traj.retention[..., :-1])
    with pytest.raises(ValueError, match="retention_structure gives modulus"):
        gs.effective_rate_summary(cell, traj, [1, 2])


@pytest.mark.parametrize("mixer", ["mamba", "min_gru"])
def test_a_residual_block_passes_its_mixers_retention_structure(mixer):
    """mambapy's ResidualBlock around Mamba (and a block around minGRU): the norm and the
    residual act on the input and output rows only, so the block's rates take the mixer's
    structure and equal the dense path."""
    def block(seed=0):
        torch.manual_seed(seed)
        inner = (gs.make_cell("mamba", 3, 3, dtype=torch.float64, d_state=2, expand=2)
                 if mixer == "mamba" else gs.make_cell("min_gru", 3, 3, dtype=torch.float64))
        return gs.cells.residual.ResidualCell(inner).double()

    cell = block()
    traj = unrolled(cell)
    assert retention_structure_of(cell, traj) is not None
    twin = block()
    twin.retention_structure = lambda traj: None
    lags = [0, 1, 3, 6]
    assert_close(gs.effective_learning_rates(cell, traj, lags, order=1),
                 gs.effective_learning_rates(twin, traj, lags, order=1))
    assert_close(gs.effective_rate_summary(cell, traj, lags).neuron_cv,
                 gs.effective_rate_summary(twin, traj, lags).neuron_cv)


def test_a_malformed_jacobian_structure_is_refused_by_the_rates_too():
    torch.manual_seed(0)
    cell = gs.make_cell("min_gru", 3, 4, dtype=torch.float64)
    traj = unrolled(cell)
    cell.jacobian_structure = lambda traj: JacobianStructure(
        traj.retention, output_map=torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="jacobian_structure gives modulus"):
        gs.effective_rate_summary(cell, traj, [1, 2])
