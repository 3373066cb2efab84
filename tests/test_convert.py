"""``from_torch``: converted cells reproduce PyTorch's recurrent modules and their Jacobians."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gatescope as gs
from gatescope.convert import from_torch

M, N, B, T = 3, 5, 2, 4
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
SEQUENCE_MODULES = {"gru": nn.GRU, "lstm": nn.LSTM, "plain": nn.RNN}
CELL_MODULES = {"gru": nn.GRUCell, "lstm": nn.LSTMCell, "plain": nn.RNNCell}


def _randn(*shape, seed, dtype):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _torch_step(module: nn.Module, u, state):
    """One step of the original module on gatescope's flat state ``(K, N)``: ``(K, N)``."""
    is_lstm = isinstance(module, (nn.LSTM, nn.LSTMCell))
    hx = state.split(module.hidden_size, -1) if is_lstm else state
    if isinstance(module, nn.RNNBase):
        x = u.unsqueeze(1 if module.batch_first else 0)
        hx = tuple(h.unsqueeze(0) for h in hx) if is_lstm else hx.unsqueeze(0)
        _, hx = module(x, hx)
        hx = tuple(h.squeeze(0) for h in hx) if is_lstm else hx.squeeze(0)
    else:
        hx = module(u, hx)
    return torch.cat(hx, -1) if is_lstm else hx


def _block_diagonal(J):
    """``(K, N, K, N)`` Jacobian of a batched map -> its per-example blocks ``(K, N, N)``."""
    return J.diagonal(dim1=0, dim2=2).permute(2, 0, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("name", list(SEQUENCE_MODULES))
def test_sequence_module_outputs_are_reproduced(name, batch_first, bias, dtype):
    torch.manual_seed(0)
    module = SEQUENCE_MODULES[name](M, N, bias=bias, batch_first=batch_first).to(dtype)
    cell = from_torch(module)
    assert cell.name == name
    assert all(p.dtype == dtype for p in cell.parameters())
    u = _randn(B, T, M, seed=1, dtype=dtype)
    h0 = _randn(1, B, N, seed=2, dtype=dtype)
    x = u if batch_first else u.transpose(0, 1)
    if name == "lstm":
        c0 = _randn(1, B, N, seed=3, dtype=dtype)
        out, (h_T, c_T) = module(x, (h0, c0))
        state0, final = torch.cat([h0[0], c0[0]], -1), torch.cat([h_T[0], c_T[0]], -1)
    else:
        out, h_T = module(x, h0)
        state0, final = h0[0], h_T[0]
    out = out if batch_first else out.transpose(0, 1)
    with torch.no_grad():
        states = cell.unroll(u, state0).states
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(states[:, 1:, :N], out, atol=tol, rtol=tol)
    torch.testing.assert_close(states[:, -1], final, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(CELL_MODULES))
def test_cell_module_steps_are_reproduced(name, bias, dtype):
    torch.manual_seed(0)
    module = CELL_MODULES[name](M, N, bias=bias).to(dtype)
    cell = from_torch(module)
    u = _randn(B, M, seed=1, dtype=dtype)
    state = _randn(B, cell.state_size, seed=2, dtype=dtype)
    tol = TOLERANCE[dtype]
    with torch.no_grad():
        torch.testing.assert_close(cell.step(state, u), _torch_step(module, u, state),
                                   atol=tol, rtol=tol)


@pytest.mark.parametrize(("module_type", "options"), [
    *[(t, {"batch_first": first}) for t in SEQUENCE_MODULES.values() for first in (True, False)],
    *[(t, {}) for t in CELL_MODULES.values()],
], ids=lambda x: x.__name__ if isinstance(x, type) else str(x))
def test_jacobians_match_autograd_through_the_original_module(module_type, options):
    torch.manual_seed(4)
    module = module_type(M, N, **options).double()
    cell = from_torch(module)
    u = _randn(B, T, M, seed=5, dtype=torch.float64)
    traj = cell.unroll(u, 0.5 * _randn(B, cell.state_size, seed=6, dtype=torch.float64))
    J = gs.jacobians(cell, traj)
    A, Bg = gs.jacobian_split(cell, traj)
    h = traj.previous_states.detach().reshape(B * T, -1)
    flat_u = u.reshape(B * T, M)
    J_torch = torch.autograd.functional.jacobian(lambda s: _torch_step(module, flat_u, s), h)
    J_ref = _block_diagonal(J_torch).reshape(J.shape)
    torch.testing.assert_close(J, J_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(A + Bg, J_ref, atol=1e-12, rtol=1e-12)


def test_biases_of_an_rnn_are_folded_into_the_input_bias():
    module = nn.RNN(M, N).double()
    cell = from_torch(module)
    torch.testing.assert_close(cell.input.bias, module.bias_ih_l0 + module.bias_hh_l0)
    assert cell.recurrent.bias is None
    assert from_torch(nn.RNN(M, N, bias=False)).input.bias is None


def test_parameters_are_copies_on_the_module_device():
    module = nn.GRU(M, N)
    cell = from_torch(module)
    assert {p.device for p in cell.parameters()} == {module.weight_hh_l0.device}
    with torch.no_grad():
        cell.weight_hh.zero_()
    assert module.weight_hh_l0.abs().sum() > 0
    assert cell.weight_hh.requires_grad


@pytest.mark.parametrize("module", [
    nn.GRU(M, N, num_layers=2), nn.LSTM(M, N, num_layers=3), nn.RNN(M, N, num_layers=2),
    nn.LSTM(M, N, proj_size=2), nn.RNN(M, N, nonlinearity="relu"),
    nn.RNNCell(M, N, nonlinearity="relu"),
], ids=lambda m: repr(m))
def test_settings_once_refused_now_convert(module):
    """Issue 11: stacks, proj_size and relu convert (they raised NotImplementedError);
    tests/test_stacks.py checks what they compute."""
    cell = from_torch(module)
    assert cell.hidden_size == (getattr(module, "proj_size", 0) or module.hidden_size)


@pytest.mark.parametrize("module", [nn.GRU(M, N, bidirectional=True),
                                    nn.LSTM(M, N, bidirectional=True)],
                         ids=lambda m: type(m).__name__)
def test_bidirectional_modules_need_layer_and_direction(module):
    with pytest.raises(ValueError, match="pass layer=.*direction=.*gs.layer_inputs"):
        from_torch(module)


def test_unsupported_module_types_raise_type_error():
    with pytest.raises(TypeError, match="nn.GRU, nn.LSTM, nn.RNN"):
        from_torch(nn.Linear(M, N))


def _final_states(cell, x):
    with torch.no_grad():
        return cell.unroll(x).states[:, -1, : cell.hidden_size]


@pytest.mark.parametrize("make", [
    lambda: nn.GRU(M, N, num_layers=2), lambda: nn.LSTM(M, N, batch_first=True),
    lambda: nn.RNN(M, N, nonlinearity="relu"), lambda: nn.GRUCell(M, N)],
    ids=["gru_2_layers", "lstm_batch_first", "rnn_relu", "gru_cell"])
def test_scripted_modules_convert_to_the_cell_of_the_original(make):
    """Guards from_torch of torch.jit.script-ed modules (issue 16): the cell equals the
    cell of the module before scripting, weights and all."""
    torch.manual_seed(11)
    module = make().double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates script
        scripted = torch.jit.script(module)
    x = torch.randn(2, 5, M, dtype=torch.float64)
    torch.testing.assert_close(_final_states(from_torch(scripted), x),
                               _final_states(from_torch(module), x), rtol=0, atol=0)


@pytest.mark.parametrize("kind, options", [
    ("DPLSTM", {"num_layers": 2, "batch_first": True}), ("DPGRU", {}),
    ("DPRNN", {"nonlinearity": "relu"}), ("DPLSTM", {"bidirectional": True})],
    ids=["dplstm_2_layers", "dpgru", "dprnn_relu", "dplstm_bidirectional"])
def test_opacus_dp_layers_convert_and_reproduce_their_outputs(kind, options):
    """Guards from_torch of Opacus' DP layers (issue 16): same parameter names as torch's, so
    the cell reproduces the DP module's own output (float64, 1e-12); a bidirectional one
    converts per (layer, direction)."""
    layers = pytest.importorskip("opacus.layers")
    torch.manual_seed(12)
    module = getattr(layers, kind)(M, N, **options).double().eval()
    x = torch.randn(2, 5, M, dtype=torch.float64)
    with torch.no_grad():
        out = module(x if module.batch_first else x.transpose(0, 1))[0]
    out = out if module.batch_first else out.transpose(0, 1)
    if module.bidirectional:
        cell = from_torch(module, layer=0, direction="forward")
        torch.testing.assert_close(cell.unroll(x).states[:, 1:, :N], out[..., :N],
                                   rtol=1e-12, atol=1e-12)
        assert from_torch(module, layer=0, direction="backward").input_size == M
        return
    torch.testing.assert_close(_final_states(from_torch(module), x), out[:, -1],
                               rtol=1e-12, atol=1e-12)
