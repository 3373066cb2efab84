"""``ResidualCell``: the pre-norm residual block ``y = u + mixer(norm(u))`` (optionally with a
feedforward half) around any cell, its norms' and feedforward's Jacobians and its analytic
Jacobians against ``torch.func`` (float64, 1e-10), alone and in stacks; mambapy's ``RMSNorm``
is the ``"rms"`` norm (with the models extra)."""

from __future__ import annotations

import pytest
import torch
from torch.func import jacrev, vmap

import gatescope as gs
from gatescope.cells.feedforward import feedforward_jacobian, make_feedforward
from gatescope.cells.norms import NORMS, make_norm, norm_jacobian

N, B, T = 4, 2, 5
TOL = dict(atol=1e-10, rtol=1e-10)
#: Mixers of width N (m = n): gated cells (B != 0), an LSTM ([h; c]) and diagonal ones.
MIXERS = ["gru", "lstm", "multi_gate", "min_gru", "lru", "rg_lru"]


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _block(mixer, norm="rms", seed=0, **options):
    torch.manual_seed(seed)
    cell = gs.ResidualCell(gs.make_cell(mixer, N, N, dtype=torch.float64), norm=norm, **options)
    with torch.no_grad():  # gains and biases away from their initial 1 and 0
        for p in cell.norm.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return cell


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("eps", [None, 1e-5, 0.5])
@pytest.mark.parametrize("kind", NORMS)
def test_norm_jacobians_equal_torch_func(kind, eps, affine):
    norm = make_norm(kind, N, eps, affine).double()
    with torch.no_grad():
        for p in norm.parameters():
            p.add_(0.3 * _randn(*p.shape, seed=3))
    x = _randn(B, T, N, seed=1)
    ref = vmap(vmap(jacrev(norm)))(x)
    torch.testing.assert_close(norm_jacobian(norm, x), ref, **TOL)


@pytest.mark.parametrize("mult", [0.5, 4])
def test_feedforward_jacobian_equals_torch_func(mult):
    torch.manual_seed(0)
    ff = make_feedforward(N, mult).double()
    assert [type(m) for m in ff] == [torch.nn.Linear, torch.nn.GELU, torch.nn.Linear]
    assert ff[0].out_features == int(N * mult) and ff[1].approximate == "none"
    x = 2 * _randn(B, T, N, seed=1)
    torch.testing.assert_close(feedforward_jacobian(ff, x), vmap(vmap(jacrev(ff)))(x), **TOL)


def test_norms_are_torchs():
    """``"rms"`` is torch's RMSNorm (minGRU_pytorch's), ``"layer"`` torch's LayerNorm, each
    with torch's default eps for ``eps=None``."""
    assert isinstance(make_norm("rms", N, None, True), torch.nn.RMSNorm)
    assert make_norm("rms", N, None, True).eps is None  # torch: finfo(dtype).eps
    assert isinstance(make_norm("layer", N, None, True), torch.nn.LayerNorm)
    assert make_norm("layer", N, None, False).eps == 1e-5
    assert isinstance(make_norm(None, N, None, True), torch.nn.Identity)


def test_rms_norm_computes_mambapys():
    x = _randn(B, T, N, seed=1)
    mamba = pytest.importorskip("mambapy.mamba", reason="needs the models extra (mambapy)")
    for mup in (False, True):
        theirs = mamba.RMSNorm(N, eps=1e-5, use_mup=mup).double()
        ours = make_norm("rms", N, 1e-5, affine=not mup).double()
        if not mup:
            with torch.no_grad():
                theirs.weight.copy_(_randn(N, seed=2))
            ours.load_state_dict(theirs.state_dict())
        torch.testing.assert_close(ours(x), theirs(x), **TOL)


@pytest.mark.parametrize("feedforward", [None, 2])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("mixer", MIXERS)
def test_block_output_is_the_input_plus_the_mixers_output_on_the_normed_input(mixer, norm,
                                                                              feedforward):
    cell = _block(mixer, norm, feedforward=feedforward)
    u, h0 = _randn(B, T, N, seed=1), _randn(B, cell.state_size, seed=2)
    with torch.no_grad():
        traj = cell.unroll(u, h0)
        inner = cell.mixer.unroll(cell.norm(u), h0[:, N:])
        v = u + inner.states[:, 1:, :N]
        y = v if feedforward is None else v + cell.ff(cell.ff_norm(v))
    torch.testing.assert_close(traj.states[:, 1:, N:], inner.states[:, 1:], **TOL)
    torch.testing.assert_close(traj.states[:, 1:, :N], y, **TOL)
    torch.testing.assert_close(traj.retention, inner.retention, **TOL)
    assert cell.state_size == N + cell.mixer.state_size
    assert cell.retention_size == cell.mixer.retention_size
    assert cell.gated == cell.mixer.gated


def _check_against_torch_func(cell, traj):
    J = gs.jacobians(cell, traj)
    torch.testing.assert_close(J, gs.jacobians_autograd(cell, traj), **TOL)
    A, Bg = gs.jacobian_split(cell, traj)
    A_ref, B_ref = gs.jacobian_split_autograd(cell, traj)
    torch.testing.assert_close(A, A_ref, **TOL)
    torch.testing.assert_close(Bg, B_ref, **TOL)
    E_ref = vmap(jacrev(cell.step, argnums=1))(traj.previous_states.reshape(B * T, -1),
                                               traj.inputs.reshape(B * T, -1))
    with torch.no_grad():
        E = cell.analytic_input_jacobian(traj.detach())
    torch.testing.assert_close(E, E_ref.reshape(E.shape), **TOL)
    return Bg


@pytest.mark.parametrize("feedforward", [None, 2])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("mixer", MIXERS)
def test_block_jacobians_equal_torch_func(mixer, norm, feedforward):
    cell = _block(mixer, norm, feedforward=feedforward)
    with torch.no_grad():
        traj = cell.unroll(_randn(B, T, N, seed=1), 0.5 * _randn(B, cell.state_size, seed=2))
    Bg = _check_against_torch_func(cell, traj)
    # B is the mixer's: nonzero where its gates read the state, zero for the diagonal ones
    assert bool(Bg.abs().max() > 1e-3) == (mixer in ("gru", "lstm", "multi_gate"))
    # y_{t-1} does not feed the step; y_t's rows repeat the mixer's output rows
    J = gs.jacobians(cell, traj)
    assert J[..., :N].abs().max() == 0
    if feedforward is None:
        torch.testing.assert_close(J[..., :N, N:], J[..., N:2 * N, N:])


@pytest.mark.parametrize("mixers", [("gru", "min_gru"), ("lstm", "lru", "multi_gate")],
                         ids="-".join)
def test_stacked_blocks_jacobians_equal_torch_func(mixers):
    blocks = [_block(m, norm, seed=k, feedforward=ff) for k, (m, norm, ff) in
              enumerate(zip(mixers, ["rms", "layer", None], [4, None, 0.5], strict=False))]
    cell = gs.StackedCell(blocks)
    u = _randn(B, T, N, seed=1)
    with torch.no_grad():
        traj = cell.unroll(u, 0.5 * _randn(B, cell.state_size, seed=2))
        x = u
        for k, block in enumerate(blocks):  # each block fed the one below's output
            x = block.unroll(x, traj.states[:, 0, cell.layer_slices[k]]).states[:, 1:, :N]
    torch.testing.assert_close(traj.states[:, 1:, :N], x, **TOL)
    assert _check_against_torch_func(cell, traj).abs().max() > 1e-3


def test_bad_mixers_and_options_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="input_size == hidden_size.*input_size=3, hidden_size=4"):
        gs.ResidualCell(gs.make_cell("gru", 3, N))
    with pytest.raises(TypeError, match="mixer must be a gatescope RecurrentCell"):
        gs.ResidualCell(torch.nn.GRUCell(N, N))
    with pytest.raises(ValueError, match=r"norm must be one of \('rms', 'layer', None\)"):
        gs.ResidualCell(gs.make_cell("gru", N, N), norm="batch")
    with pytest.raises(ValueError, match="eps must be > 0"):
        gs.ResidualCell(gs.make_cell("gru", N, N), eps=0.0)
    for bad in (0.1, -1, float("nan"), "4", True):  # int(4 * 0.1) = 0
        with pytest.raises(ValueError, match="feedforward must be None or a number > 0"):
            gs.ResidualCell(gs.make_cell("gru", N, N), feedforward=bad)


def test_block_norm_takes_the_mixers_dtype():
    cell = gs.ResidualCell(gs.make_cell("gru", N, N, dtype=torch.float64), norm="layer")
    assert {p.dtype for p in cell.parameters()} == {torch.float64}


def test_lag_gradients_and_rates_run_on_stacked_blocks():
    """The lag-resolved gradient of a SequenceModel on residual blocks (which reads the
    blocks' J and one-step derivatives) sums to autograd's; effective rates run on it."""
    cell = gs.StackedCell([_block("min_gru", feedforward=2), _block("gru", "layer", seed=1)])
    model = gs.SequenceModel(cell, output_size=1).double()
    u, y = _randn(B, T, N, seed=1), _randn(B, 1, seed=2)
    parts = gs.lag_gradients(model, u, y)
    grads = torch.autograd.grad(model.loss(u, y), list(model.parameters()))
    for (name, _), grad in zip(model.named_parameters(), grads, strict=True):
        torch.testing.assert_close(parts[name].sum(0), grad, **TOL)
    with torch.no_grad():
        mu = gs.effective_learning_rates(cell, cell.unroll(u))
    assert mu.shape == (B, T + 1, T + 1, cell.retention_size)
    assert torch.isfinite(mu[:, 1:, 1]).all()
