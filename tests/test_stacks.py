"""``from_torch`` of real recurrent modules: stacks, bidirectional layers, relu, projections
and packed sequences reproduce torch's outputs and per-step Jacobians (float64)."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gatescope as gs

M, N, P, T, B = 3, 4, 2, 5, 2
KINDS = {
    "rnn_tanh": (nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, {"nonlinearity": "relu"}),
    "gru": (nn.GRU, {}),
    "lstm": (nn.LSTM, {}),
    "lstm_proj": (nn.LSTM, {"proj_size": P}),
}
MATRIX = list(itertools.product(KINDS, (1, 2, 3), (False, True), (False, True)))


def _id(case):
    kind, layers, bidirectional, batch_first = case
    return (f"{kind}-L{layers}-{'bidir' if bidirectional else 'uni'}-"
            f"{'batch_first' if batch_first else 'time_first'}")


def _module(kind, layers=1, bidirectional=False, batch_first=False, dtype=torch.float64,
            seed=0):
    torch.manual_seed(seed)
    module_type, options = KINDS[kind]
    return module_type(M, N, num_layers=layers, bidirectional=bidirectional,
                       batch_first=batch_first, **options).to(dtype).eval()


def _randn(*shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _x(module, seed=1, dtype=torch.float64):
    """Inputs in the module's own layout."""
    x = _randn(B, T, M, seed=seed, dtype=dtype)
    return x if module.batch_first else x.transpose(0, 1)


def _batch_first(module, y):
    return y if module.batch_first else y.transpose(0, 1)


def _out_size(module):
    return getattr(module, "proj_size", 0) or module.hidden_size


def _is_lstm(module):
    return isinstance(module, nn.LSTM)


def _layer_states(module, hx):
    """torch's ``h`` (``(L, K, ·)``) or ``(h, c)`` -> the per-layer gatescope states."""
    if _is_lstm(module):
        return [torch.cat([h, c], -1) for h, c in zip(*hx, strict=True)]
    return list(hx)


def _torch_hx(module, parts):
    """Per-layer gatescope states -> torch's ``h`` or ``(h, c)``, each ``(L, K, ·)``."""
    p = _out_size(module)
    h = torch.stack([s[..., :p] for s in parts])
    return (h, torch.stack([s[..., p:] for s in parts])) if _is_lstm(module) else h


def _stack_state(cell, parts):
    return cell.join_states(parts) if isinstance(cell, gs.StackedCell) else parts[0]


def _split(cell, state):
    return cell.split_state(state) if isinstance(cell, gs.StackedCell) else [state]


def _random_hx(module, seed):
    layers, p = module.num_layers, _out_size(module)
    h = 0.5 * _randn(layers, B, p, seed=seed)
    return (h, 0.5 * _randn(layers, B, N, seed=seed + 1)) if _is_lstm(module) else h


def _torch_step_jacobians(module, cell, traj):
    """Per-step Jacobians by autograd through torch's own module stepped one step at a
    time (sequence length 1, ``h0`` built from the state): ``(B, T, N, N)``."""
    Nst = cell.state_size
    h = traj.previous_states.detach().reshape(B * T, Nst)
    u = traj.inputs.detach().reshape(B * T, 1, -1)
    x = u if module.batch_first else u.transpose(0, 1)

    def step(state):
        _, hx = module(x, _torch_hx(module, _split(cell, state)))
        return _stack_state(cell, _layer_states(module, hx))

    J = torch.autograd.functional.jacobian(step, h)
    return J.diagonal(dim1=0, dim2=2).permute(2, 0, 1).reshape(B, T, Nst, Nst)


def _single_layer(kind, module, k, direction):
    """A one-layer unidirectional torch module holding layer ``k``'s ``direction`` weights."""
    suffix = f"_l{k}" + ("_reverse" if direction == "backward" else "")
    module_type, options = KINDS[kind]
    m_k = M if k == 0 else _out_size(module) * (2 if module.bidirectional else 1)
    single = module_type(m_k, N, batch_first=module.batch_first, **options).double().eval()
    with torch.no_grad():
        for name, p in single.named_parameters():
            p.copy_(getattr(module, name.replace("_l0", suffix)))
    return single


# --- unidirectional modules: the whole module as one cell -----------------------------------

UNI = [c for c in MATRIX if not c[2]]


@pytest.mark.parametrize("case", UNI, ids=_id)
def test_unidirectional_module_outputs_and_final_state_are_reproduced(case):
    """The stack (or single layer) reproduces torch's output (the top layer's h) and its
    final h_n/c_n of every layer, from a random initial state of every layer."""
    kind, layers, _, batch_first = case
    module = _module(kind, layers, batch_first=batch_first)
    cell = gs.from_torch(module)
    assert isinstance(cell, gs.StackedCell) == (layers > 1)
    x, hx0 = _x(module), _random_hx(module, seed=2)
    with torch.no_grad():
        out, hx_n = module(x, hx0)
        traj = cell.unroll(_batch_first(module, x), _stack_state(cell, _layer_states(module, hx0)))
    p = _out_size(module)
    assert cell.hidden_size == p
    torch.testing.assert_close(traj.states[:, 1:, :p], _batch_first(module, out),
                               atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(traj.states[:, -1],
                               _stack_state(cell, _layer_states(module, hx_n)),
                               atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("case", UNI, ids=_id)
def test_unidirectional_jacobians_equal_autograd_through_torch_steps(case):
    """gs.jacobians (analytic, chained across layers) and the split's A + B equal autograd
    through torch's module stepped one step at a time."""
    kind, layers, _, batch_first = case
    module = _module(kind, layers, batch_first=batch_first)
    cell = gs.from_torch(module)
    hx0 = _random_hx(module, seed=3)
    with torch.no_grad():
        traj = cell.unroll(_randn(B, T, M, seed=4),
                           _stack_state(cell, _layer_states(module, hx0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # analytic: no torch.func fallback
        J = gs.jacobians(cell, traj)
        A, Bg = gs.jacobian_split(cell, traj)
    J_ref = _torch_step_jacobians(module, cell, traj)
    torch.testing.assert_close(J, J_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(A + Bg, J_ref, atol=1e-10, rtol=1e-10)


# --- every (layer, direction) as a single-layer cell on gs.layer_inputs -------------------

@pytest.mark.parametrize("case", MATRIX, ids=_id)
def test_each_layer_and_direction_reproduces_its_slice_of_torchs_output(case):
    """from_torch(m, layer=k, direction=d) on layer_inputs(m, x, k, d) gives direction d's
    half of layer k's output: the module output for the top layer, the next layer's
    inputs (torch's truncated module) below it; backward runs reversed in time."""
    kind, layers, bidirectional, batch_first = case
    module = _module(kind, layers, bidirectional, batch_first)
    x = _x(module)
    with torch.no_grad():
        out = _batch_first(module, module(x)[0])
    p = _out_size(module)
    directions = ("forward", "backward") if bidirectional else ("forward",)
    for k, (d_index, d) in itertools.product(range(layers), enumerate(directions)):
        cell = gs.from_torch(module, layer=k, direction=d)
        assert not isinstance(cell, gs.StackedCell)
        u = gs.layer_inputs(module, x, layer=k, direction=d)
        assert u.shape == (B, T, cell.input_size)
        with torch.no_grad():
            h = cell.unroll(u).states[:, 1:, :p]
        target = out if k == layers - 1 else gs.layer_inputs(module, x, layer=k + 1)
        target = target[..., d_index * p:(d_index + 1) * p]
        torch.testing.assert_close(h.flip(1) if d == "backward" else h, target,
                                   atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("case", [c for c in MATRIX if c[2]], ids=_id)
def test_bidirectional_layer_jacobians_equal_autograd_through_torch_steps(case):
    """Per-step Jacobians of every (layer, direction) cell equal autograd through torch's
    module (that layer's direction weights) stepped one step at a time."""
    kind, layers, bidirectional, batch_first = case
    module = _module(kind, layers, bidirectional, batch_first)
    x = _x(module)
    for k, d in itertools.product(range(layers), ("forward", "backward")):
        cell = gs.from_torch(module, layer=k, direction=d)
        with torch.no_grad():
            traj = cell.unroll(gs.layer_inputs(module, x, layer=k, direction=d),
                               0.5 * _randn(B, cell.state_size, seed=5))
        J_ref = _torch_step_jacobians(_single_layer(kind, module, k, d), cell, traj)
        torch.testing.assert_close(gs.jacobians(cell, traj), J_ref, atol=1e-10, rtol=1e-10)


def test_float32_stack_matches_torch_to_1e_5():
    module = _module("lstm", 3, dtype=torch.float32)
    cell = gs.from_torch(module)
    x = _x(module, dtype=torch.float32)
    with torch.no_grad():
        out = module(x)[0]
        states = cell.unroll(_batch_first(module, x)).states
    assert all(q.dtype == torch.float32 for q in cell.parameters())
    torch.testing.assert_close(states[:, 1:, :N], _batch_first(module, out), atol=1e-5, rtol=1e-5)


# --- the stack's structure and the analyses that run on it --------------------------------

def test_stack_layout_puts_the_top_layer_first():
    """docs/maths.md#stacked-state-layout: state = [x^{L-1}; ...; x^0]; readout part first."""
    cell = gs.from_torch(_module("lstm_proj", 3))
    assert [len(c.state_dict()) for c in cell.layers] == [5, 5, 5]
    assert cell.layer_slices == [slice(12, 18), slice(6, 12), slice(0, 6)]
    assert cell.state_size == 18 and cell.hidden_size == P
    with torch.no_grad():
        traj = cell.unroll(_randn(B, T, M, seed=6))
    top = cell.layer_trajectory(traj, 2)
    torch.testing.assert_close(traj.states[..., :P], top.states[..., :P])
    torch.testing.assert_close(traj.retention, traj.cache["l0.retention"])


@pytest.mark.parametrize("kind", ["gru", "lstm", "rnn_tanh"])
def test_stack_split_holds_every_gate_A_is_block_diagonal_and_equals_torch_func(kind):
    """A = blockdiag of each layer's own A (every gate of every layer and the inputs between
    layers held), B = J - A; the analytic split equals the torch.func split."""
    cell = gs.from_torch(_module(kind, 3))
    with torch.no_grad():
        traj = cell.unroll(_randn(B, T, M, seed=7))
    A, Bg = gs.jacobian_split(cell, traj)
    A_ref, B_ref = gs.jacobian_split_autograd(cell, traj)
    torch.testing.assert_close(A, A_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(Bg, B_ref, atol=1e-12, rtol=1e-12)
    for k, s in enumerate(cell.layer_slices):
        own = cell.layers[k].analytic_jacobian_split(cell.layer_trajectory(traj, k))[0]
        torch.testing.assert_close(A[..., s, s], own)
        others = [t for j, t in enumerate(cell.layer_slices) if j != k]
        assert all(A[..., s, t].abs().max() == 0 for t in others)


@pytest.mark.parametrize("name", ["plain", "leaky", "scalar_gate", "multi_gate", "gru", "lstm"])
def test_input_jacobians_equal_torch_func(name):
    """analytic_input_jacobian (what stacks chain with) equals jacrev with respect to u."""
    cell = gs.make_cell(name, M, N, bias=True, dtype=torch.float64)
    with torch.no_grad():
        traj = cell.unroll(_randn(B, T, M, seed=8), 0.5 * _randn(B, cell.state_size, seed=9))
        E = cell.analytic_input_jacobian(traj)
    ref = torch.func.vmap(torch.func.jacrev(cell.step, argnums=1))(
        traj.previous_states.reshape(B * T, -1), traj.inputs.reshape(B * T, M))
    torch.testing.assert_close(E, ref.reshape(E.shape), atol=1e-12, rtol=1e-12)


def test_analyses_run_on_a_stack():
    """gs.jacobians, jacobian_split, lag_gradients, sensitivities, transport and
    effective_learning_rates run on a StackedCell's trajectory."""
    cell = gs.from_torch(_module("gru", 2))
    u = _randn(B, T, M, seed=10)
    with torch.no_grad():
        traj = cell.unroll(u)
    J = gs.jacobians(cell, traj)
    torch.testing.assert_close(J, gs.jacobians_autograd(cell, traj).detach(),
                               atol=1e-12, rtol=1e-12)
    A, Bg = gs.jacobian_split(cell, traj)
    S = gs.sensitivities(J)
    assert S.shape == (B, T + 1, T + 1)
    M_T0 = gs.transport(J, T, 0)
    torch.testing.assert_close(S[:, T, 0], torch.linalg.matrix_norm(M_T0, 2))
    mu = gs.effective_learning_rates(cell, traj)
    assert mu.shape == (B, T + 1, T + 1, N) and torch.isfinite(mu[:, 1:, 1]).all()
    model = gs.SequenceModel(cell, output_size=1).double()
    y = _randn(B, 1, seed=11)
    parts = gs.lag_gradients(model, u, y)
    grads = torch.autograd.grad(model.loss(u, y), list(model.parameters()))
    for (name, _), g in zip(model.named_parameters(), grads, strict=True):
        torch.testing.assert_close(parts[name].sum(0), g, atol=1e-12, rtol=1e-12)


# --- packed sequences -----------------------------------------------------------------------

LENGTHS = torch.tensor([3, 5])


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_first", "batch_first"])
def test_unroll_with_lengths_equals_torchs_packed_stack(kind, batch_first):
    """unroll(lengths=) holds each state past its length: valid-step outputs and the final
    h_n/c_n equal torch's on pack_padded_sequence(..., enforce_sorted=False)."""
    module = _module(kind, 2, batch_first=batch_first)
    cell = gs.from_torch(module)
    x = _x(module)
    with torch.no_grad():
        packed = pack_padded_sequence(x, LENGTHS, batch_first=batch_first, enforce_sorted=False)
        out, hx_n = module(packed)
        out = _batch_first(module, pad_packed_sequence(out, batch_first=batch_first,
                                                       total_length=T)[0])
        traj = cell.unroll(_batch_first(module, x), lengths=LENGTHS)
    assert torch.equal(traj.lengths, LENGTHS)
    p = _out_size(module)
    valid = traj.step_mask.unsqueeze(-1)
    torch.testing.assert_close(traj.states[:, 1:, :p] * valid, out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(traj.states[:, -1], _stack_state(cell, _layer_states(module, hx_n)),
                               atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("kind", ["gru", "lstm_proj"])
def test_packed_bidirectional_layers_match_torch(kind):
    """Backward with lengths: each sequence reversed within its own length (torch's packed
    semantics); both directions of both layers match torch's packed module."""
    module = _module(kind, 2, bidirectional=True, batch_first=True)
    x = _x(module)
    with torch.no_grad():
        packed = pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)
        out, hx_n = module(packed)
        out = pad_packed_sequence(out, batch_first=True, total_length=T)[0]
    p = _out_size(module)
    final = _layer_states(module, hx_n)  # index 2k + direction
    for k, (d_index, d) in itertools.product(range(2), enumerate(("forward", "backward"))):
        cell = gs.from_torch(module, layer=k, direction=d)
        u = gs.layer_inputs(module, x, layer=k, direction=d, lengths=LENGTHS)
        with torch.no_grad():
            traj = cell.unroll(u, lengths=LENGTHS)
        torch.testing.assert_close(traj.states[:, -1], final[2 * k + d_index],
                                   atol=1e-12, rtol=1e-12)
        if k == 1:
            h = traj.states[:, 1:, :p]
            if d == "backward":
                h = gs.convert.reverse_within_lengths(h, LENGTHS)
            got = h * traj.step_mask.unsqueeze(-1)
            torch.testing.assert_close(got, out[..., d_index * p:(d_index + 1) * p],
                                       atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(("lengths", "error", "match"), [
    (torch.tensor([3]), ValueError, r"shape \(B=2,\)"),
    (torch.tensor([0, 5]), ValueError, "1..T=5"),
    (torch.tensor([3, 6]), ValueError, "1..T=5"),
    (torch.tensor([3.0, 5.0]), TypeError, "integer"),
], ids=["shape", "zero", "too_long", "float"])
def test_bad_lengths_are_refused_naming_the_argument(lengths, error, match):
    cell = gs.make_cell("gru", M, N)
    with pytest.raises(error, match=match) as info:
        cell.unroll(torch.randn(B, T, M), lengths=lengths)
    assert "lengths" in str(info.value)


# --- choices and their errors ----------------------------------------------------------------

def test_bidirectional_module_without_layer_says_to_pass_layer_and_direction():
    with pytest.raises(ValueError, match="layer=") as info:
        gs.from_torch(_module("gru", 2, bidirectional=True))
    assert "direction=" in str(info.value) and "gs.layer_inputs" in str(info.value)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"layer": 2}, r"layer must be an int in 0\.\.1"),
    ({"layer": -1}, r"layer must be an int in 0\.\.1"),
    ({"layer": True}, r"layer must be an int in 0\.\.1"),
    ({"layer": 0, "direction": "backward"}, r"direction must be one of \('forward',\)"),
    ({"layer": 0, "direction": "up"}, "direction must be one of"),
], ids=["too_big", "negative", "bool", "backward_of_unidirectional", "unknown"])
def test_bad_layer_or_direction_names_the_field_and_allowed_values(kwargs, match):
    module = _module("lstm", 2)
    with pytest.raises(ValueError, match=match):
        gs.from_torch(module, **kwargs)
    with pytest.raises(ValueError, match=match):
        gs.layer_inputs(module, _x(module), **{"layer": 0, **kwargs})


def test_layer_of_a_unidirectional_stack_is_that_layer_alone():
    module = _module("gru", 3)
    cell = gs.from_torch(module, layer=1)
    torch.testing.assert_close(cell.weight_hh, module.weight_hh_l1)
    torch.testing.assert_close(cell.weight_ih, module.weight_ih_l1)
    assert cell.input_size == N


def test_training_mode_with_dropout_warns_eval_semantics():
    module = _module("gru", 2)
    module.dropout = 0.5
    module.train()
    with pytest.warns(UserWarning, match="eval semantics"):
        gs.from_torch(module)
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gs.from_torch(module)


def test_relu_plain_cell_option_and_its_errors():
    cell = gs.make_cell("plain", M, N, nonlinearity="relu")
    assert cell.nonlinearity == "relu"
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        gs.make_cell("plain", M, N, nonlinearity="gelu")
