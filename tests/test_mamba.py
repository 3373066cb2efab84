"""The ``mamba`` cell: analytic Jacobians against autograd through the cell's step and through
mambapy's own ``MambaBlock.step``, outputs against ``step`` and the parallel ``forward``, the
``from_torch`` converter, stacks and ``gatescope verify`` (docs/maths.md#mamba)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.func import jacrev, vmap

import gatescope as gs
from gatescope.verify import run_checks

#: (d_conv, bias, conv_bias, dt_rank) option sets compared with mambapy.
OPTIONS = [(4, False, True, "auto"), (2, True, False, 3), (4, True, True, 2)]
M, STATE, B, T = 4, 3, 2, 6


def tight(x, ref):
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-10 * max(1.0, ref.abs().max().item()))


def random_mamba(seed=0, **options):
    torch.manual_seed(seed)
    cell = gs.make_cell("mamba", 3, 4, d_state=STATE, dtype=torch.float64, **options)
    with torch.no_grad():  # biases and decays away from their initial values
        for p in cell.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return cell


def unrolled(cell, seed=1, T=T):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(B, T, cell.input_size, generator=gen, dtype=torch.float64)
    h0 = 0.5 * torch.randn(B, cell.state_size, generator=gen, dtype=torch.float64)
    return cell.unroll(u, h0)


def step_jacobians(step, traj):
    """``(∂state_t/∂state_{t-1}, ∂state_t/∂u_t)`` by ``vmap(jacrev(step))`` over every step."""
    h, u = traj.previous_states.flatten(0, 1), traj.inputs.flatten(0, 1)
    J, E = vmap(jacrev(step, argnums=(0, 1)))(h, u)
    return J.unflatten(0, (traj.batch_size, -1)), E.unflatten(0, (traj.batch_size, -1))


# ---------------------------------------------------------------- the cell's own autograd


@pytest.mark.parametrize("d_conv", [1, 2, 4])
def test_analytic_split_and_input_jacobian_equal_the_cells_autograd(d_conv):
    cell = random_mamba(d_conv=d_conv, bias=True)
    traj = unrolled(cell)
    A, Bg = cell.analytic_jacobian_split(traj)
    A_ref, B_ref = gs.jacobian_split_autograd(cell, traj)
    J_ref, E_ref = step_jacobians(cell.step, traj)
    tight(A, A_ref)
    tight(Bg, B_ref)
    tight(cell.analytic_jacobian(traj), J_ref)
    tight(cell.analytic_input_jacobian(traj), E_ref)
    # the gates read the previous window: B ≠ 0 exactly when there is one
    assert (Bg.abs().max() > 1e-3) == (d_conv > 1)


def test_padded_batches_hold_the_state_past_each_length():
    cell = random_mamba()
    traj = cell.unroll(unrolled(cell).inputs, lengths=torch.tensor([T, 3]))
    tight(traj.states[1, 4:], traj.states[1, 3].expand(T - 3, -1))
    for part, ref in zip(gs.jacobian_split(cell, traj),
                         gs.jacobian_split_autograd(cell, traj), strict=True):
        tight(part, ref)


def test_retention_is_exp_delta_A_on_the_ssm_state_and_the_gate_is_delta():
    cell = random_mamba()
    traj = unrolled(cell)
    decay = torch.exp(traj.gates.unsqueeze(-1) * cell.decay_rates())
    tight(traj.retention, decay.flatten(-2))
    assert traj.gates.shape == (B, T, cell.d_inner) and bool((traj.gates > 0).all())
    # the retention is the diagonal of J on the last retention_size entries
    J = cell.analytic_jacobian(traj)
    tight(J.diagonal(dim1=-2, dim2=-1)[..., -cell.retention_size:], traj.retention)
    mu0 = gs.effective_learning_rates(cell, traj, lags=[3], order=0)
    tight(mu0[:, 3, 0], traj.retention[:, :3].prod(1))


@pytest.mark.parametrize("widths", [(3, 4, 5), (3, 4, 2, 3)])
def test_mamba_layers_stack(widths):
    torch.manual_seed(2)
    stack = gs.StackedCell([
        gs.make_cell("mamba", m, n, d_state=2, d_conv=2 + k % 2, dtype=torch.float64)
        for k, (m, n) in enumerate(zip(widths[:-1], widths[1:], strict=True))])
    traj = unrolled(stack, T=4)
    J_ref, E_ref = step_jacobians(stack.step, traj)
    tight(gs.jacobians(stack, traj), J_ref)
    tight(stack.analytic_input_jacobian(traj), E_ref)
    for part, ref in zip(gs.jacobian_split(stack, traj),
                         gs.jacobian_split_autograd(stack, traj), strict=True):
        tight(part, ref)


def test_the_full_probe_runs_with_delta_per_inner_channel():
    """The probe's per-neuron gate keeps ``Δ``'s ``d`` inner channels (it expanded every gate
    to ``hidden_size`` before, which failed for Mamba)."""
    torch.manual_seed(4)
    model = gs.SequenceModel(gs.make_cell("mamba", 3, 4, d_state=2), 1)
    u, y = torch.randn(4, 5, 3), torch.randn(4, 1)
    probe = gs.Probe(model, u, y, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     quantities="full")
    probe(0)
    results = probe.results()
    assert results["gate_per_neuron"].shape == (1, model.cell.d_inner)
    assert results["retention_per_neuron"].shape == (1, model.cell.retention_size)


def test_verify_passes():
    results = run_checks(cells=["mamba"])
    assert all(r.passed and not r.skipped for r in results), results


@pytest.mark.parametrize(("option", "value", "error"), [
    ("d_state", 0, ValueError), ("d_conv", 1.5, TypeError), ("expand", 0, ValueError),
    ("dt_rank", "full", ValueError), ("dt_init", "zero", ValueError),
    ("dt_min", -1.0, ValueError), ("bias", 1, TypeError)])
def test_bad_options_name_the_option(option, value, error):
    with pytest.raises(error, match=option):
        gs.make_cell("mamba", 3, 4, **{option: value})


# ---------------------------------------------------------------- mambapy's MambaBlock


@pytest.fixture(scope="module")
def mambapy():
    return pytest.importorskip("mambapy.mamba", reason="mambapy (gatescope[models]) is needed "
                               "for the comparisons with the reference MambaBlock")


def reference_block(mambapy, d_conv, bias, conv_bias, dt_rank, seed=0):
    """A float64 ``MambaBlock`` with random parameters; ``D`` is float32-exact, since the
    block computes ``D.float()``."""
    torch.manual_seed(seed)
    config = mambapy.MambaConfig(d_model=M, n_layers=1, d_state=STATE, expand_factor=2,
                                 d_conv=d_conv, dt_rank=dt_rank, bias=bias,
                                 conv_bias=conv_bias)
    block = mambapy.MambaBlock(config).double()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
        block.D.copy_(block.D.float())
    return block


def matched_cell(block):
    """``from_torch(block)`` whose ``A`` is the float32 ``A = -exp(A_log.float())`` the block
    computes, so the float64 comparisons test everything else to 1e-10."""
    cell = gs.from_torch(block)
    with torch.no_grad():
        cell.A_log.copy_(torch.log(torch.exp(block.A_log.float()).double()))
    return cell


@contextlib.contextmanager
def replaced_gates(block, replace):
    """mambapy's step passes its ``(δ, B, C)`` (before ``dt_proj``) through
    ``_apply_layernorms``; within the block, ``replace(δ, B, C)`` is used instead."""
    block._apply_layernorms = replace
    try:
        yield
    finally:
        del block._apply_layernorms


def block_step(block, state, u, cell):
    """mambapy's ``step`` as a map of the gatescope state: ``(B, N), (B, m) -> (B, N)``."""
    _, window, h = cell.split_state(state)
    y, (h, window) = block.step(u, (h, window))
    return cell.join_state(y, window, h)


def block_gates(block, state, u, cell):
    """The ``(δ, B, C)`` mambapy's step computes, detached."""
    seen = []
    with replaced_gates(block, lambda *v: seen.append(v) or v), torch.no_grad():
        block_step(block, state, u, cell)
    return seen[0]


def block_jacobian(block, cell, states, u, held=None):
    """``∂(block step)/∂(state, u)`` per example, ``(B, N, N), (B, N, m)``; with ``held``,
    the step's ``(δ, B, C)`` held at those values."""
    step = jacrev(lambda s, x: block_step(block, s, x, cell), argnums=(0, 1))
    if held is None:
        J, E = step(states, u)
    else:
        with replaced_gates(block, lambda *_: held):
            J, E = step(states, u)
    rows = torch.arange(states.shape[0])
    return J[rows, :, rows], E[rows, :, rows]


@pytest.mark.parametrize("options", OPTIONS)
def test_outputs_and_cache_equal_mambablock_step(mambapy, options):
    block = reference_block(mambapy, *options)
    cell = matched_cell(block)
    u = torch.randn(B, T, M, dtype=torch.float64)
    traj = cell.unroll(u)
    h = torch.zeros(B, cell.d_inner, STATE, dtype=torch.float64)
    window = torch.zeros(B, cell.d_inner, cell.d_conv - 1, dtype=torch.float64)
    with torch.no_grad():
        for t in range(T):
            y, (h, window) = block.step(u[:, t], (h, window))
            tight(traj.states[:, t + 1], cell.join_state(y, window, h))
        tight(traj.states[:, 1:, :M], block(u))  # the parallel scan (pscan)
    # the converted cell itself: mambapy's A is float32, so agreement is to ~1e-7
    direct = gs.from_torch(block).unroll(u).states
    torch.testing.assert_close(direct, traj.states, rtol=1e-5, atol=1e-6)


def test_a_float32_block_converts_to_a_float32_cell(mambapy):
    torch.manual_seed(5)
    block = mambapy.MambaBlock(mambapy.MambaConfig(d_model=M, n_layers=1, d_state=STATE))
    cell = gs.from_torch(block)
    u = torch.randn(B, T, M)
    assert cell.A_log.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(cell.unroll(u).states[:, 1:, :M], block(u),
                                   rtol=1e-5, atol=1e-6)


def test_d_conv_1_equals_the_parallel_forward(mambapy):
    """With ``d_conv = 1`` mambapy's ``step`` keeps one past input in its cache and reads it
    (its cache grows from 0 to 1 entries); the cell follows the block's ``forward``."""
    block = reference_block(mambapy, 1, True, True, "auto")
    cell = matched_cell(block)
    u = torch.randn(B, T, M, dtype=torch.float64)
    with torch.no_grad():
        tight(cell.unroll(u).states[:, 1:, :M], block(u))


@pytest.mark.parametrize("options", OPTIONS)
def test_jacobians_equal_autograd_through_mambablock_step(mambapy, options):
    block = reference_block(mambapy, *options)
    cell = matched_cell(block)
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(B, T, M, generator=gen, dtype=torch.float64)
    h0 = 0.5 * torch.randn(B, cell.state_size, generator=gen, dtype=torch.float64)
    traj = cell.unroll(u, h0).detach()
    A, Bg = cell.analytic_jacobian_split(traj)
    E = cell.analytic_input_jacobian(traj)
    for t in range(T):
        s, x = traj.states[:, t], u[:, t]
        J_ref, E_ref = block_jacobian(block, cell, s, x)
        A_ref, _ = block_jacobian(block, cell, s, x, block_gates(block, s, x, cell))
        tight(A[:, t] + Bg[:, t], J_ref)
        tight(A[:, t], A_ref)
        tight(E[:, t], E_ref)


def test_converter_refuses_what_the_cell_does_not_compute(mambapy):
    config = mambapy.MambaConfig(d_model=M, n_layers=1, d_state=STATE, inner_layernorms=True)
    with pytest.raises(ValueError, match="inner_layernorms"):
        gs.from_torch(mambapy.MambaBlock(config))
    block = mambapy.MambaBlock(mambapy.MambaConfig(d_model=M, n_layers=1))
    with pytest.raises(ValueError, match="layer"):
        gs.from_torch(block, layer=0)
    with pytest.raises(ValueError, match="layer must be an int in 0..0"):
        gs.from_torch(mambapy.Mamba(block.config), layer=1)


def test_state_dict_loads_directly(mambapy):
    block = reference_block(mambapy, 4, True, True, 2)
    cell = gs.make_cell("mamba", M, M, bias=True, d_state=STATE, dt_rank=2,
                        dtype=torch.float64)
    cell.load_state_dict(block.state_dict())
    assert cell.state_dict().keys() == block.state_dict().keys()


# ---------------------------------------------------------------- mambapy's ResidualBlock, Mamba


def reference_model(mambapy, n_layers, seed=0):
    """A float64 ``Mamba`` of ``n_layers`` residual blocks with random parameters (each block's
    ``D`` float32-exact, as in :func:`reference_block`)."""
    torch.manual_seed(seed)
    config = mambapy.MambaConfig(d_model=M, n_layers=n_layers, d_state=STATE, d_conv=3,
                                 bias=True)
    model = mambapy.Mamba(config).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for block in model.layers:
            block.mixer.D.copy_(block.mixer.D.float())
    return model


def matched_blocks(model):
    """``from_torch(model)`` with every layer's ``A`` the block's float32 one (see
    :func:`matched_cell`), and the list of its residual cells (bottom first)."""
    cell = gs.from_torch(model)
    blocks = list(cell.layers) if isinstance(cell, gs.StackedCell) else [cell]
    with torch.no_grad():
        for block, ref in zip(blocks, model.layers, strict=True):
            block.mixer.A_log.copy_(torch.log(torch.exp(ref.mixer.A_log.float()).double()))
    return cell, blocks


def model_step(model, cell, blocks, state, u):
    """mambapy's per-layer ``ResidualBlock.step`` as a map of the gatescope state: each layer's
    part is ``[x_out; mixer state]`` with the mixer's output ``x_out - x_in``."""
    parts = cell.split_state(state) if isinstance(cell, gs.StackedCell) else [state]
    new, x = [], u
    for part, block, ref in zip(parts, blocks, model.layers, strict=True):
        _, window, h = block.mixer.split_state(part[..., M:])
        out, (h, window) = ref.step(x, (h, window))
        new.append(torch.cat([out, block.mixer.join_state(out - x, window, h)], -1))
        x = out
    return cell.join_states(new) if isinstance(cell, gs.StackedCell) else new[0]


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_mamba_models_equal_mambapy_and_their_jacobians_its_step(mambapy, n_layers):
    """A ``Mamba`` of 1-3 residual blocks: the converted cell's outputs equal the model's
    parallel ``forward`` and its per-layer ``step``; J and the input Jacobian equal autograd
    through that step (float64, 1e-10)."""
    model = reference_model(mambapy, n_layers)
    cell, blocks = matched_blocks(model)
    assert isinstance(cell, gs.StackedCell) == (n_layers > 1)
    assert all(isinstance(b, gs.ResidualCell) for b in blocks)
    gen = torch.Generator().manual_seed(2)
    u = torch.randn(B, T, M, generator=gen, dtype=torch.float64)
    traj = cell.unroll(u).detach()
    with torch.no_grad():
        tight(traj.states[:, 1:, :M], model(u))
        for t in range(T):
            tight(traj.states[:, t + 1], model_step(model, cell, blocks, traj.states[:, t],
                                                    u[:, t]))
    J, E = cell.analytic_jacobian(traj), cell.analytic_input_jacobian(traj)
    rows = torch.arange(B)
    for t in range(T):
        J_ref, E_ref = jacrev(lambda s, x: model_step(model, cell, blocks, s, x),
                              argnums=(0, 1))(traj.states[:, t], u[:, t])
        tight(J[:, t], J_ref[rows, :, rows])
        tight(E[:, t], E_ref[rows, :, rows])


def test_a_residual_block_converts_with_its_norm(mambapy):
    model = reference_model(mambapy, 2)
    block = gs.from_torch(model.layers[1])
    assert isinstance(block, gs.ResidualCell)
    torch.testing.assert_close(block.norm.weight, model.layers[1].norm.weight, rtol=0, atol=0)
    assert block.norm.eps == model.config.rms_norm_eps
    layer = gs.from_torch(model, layer=1)
    assert layer.state_dict().keys() == block.state_dict().keys()
