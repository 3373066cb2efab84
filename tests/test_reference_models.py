"""``from_torch`` of the reference implementations users have (``minGRU_pytorch``,
``LRU_pytorch``; the ``gatescope[models]`` extra): the converted cells, their stacks and
residual blocks reproduce the reference modules' outputs, and their analytic Jacobians equal
autograd through the reference modules' own one-step functions (float64, 1e-10).

The one-step functions: minGRU/minLSTM's ``forward`` on one step with ``prev_hidden`` and
``return_next_prev_hidden=True`` (the sequential branch); LRU's ``forward`` on a
``(1, m)`` sequence with ``state=``, which returns the output ``y_t`` but not the new state,
so the state rows are read through two probe copies of the module whose ``C`` is ``I`` and
``-iI`` (and ``D = 0``): their outputs are ``Re x_t`` and ``Im x_t``, computed by the
reference's own step. The LRU writes its outputs into ``torch.empty`` buffers of the default
dtype, so its tests run under ``torch.set_default_dtype(torch.float64)``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import jacrev

import gatescope as gs
from gatescope.cells.lru import interleave

pytest.importorskip("minGRU_pytorch", reason="needs the models extra (minGRU-pytorch)")
lru_pytorch = pytest.importorskip("LRU_pytorch", reason="needs the models extra (LRU-pytorch)")
from minGRU_pytorch.minGRU import g, minGRU  # noqa: E402  (after the importorskip)
from minGRU_pytorch.minLSTM import minLSTM  # noqa: E402

N, B, T = 4, 2, 5
TOL = dict(atol=1e-10, rtol=1e-10)
#: (expansion_factor, proj_out) of the minGRU/minLSTM cases: d = n, 2n, n with a projection.
#: The last is minGRUAttnHybrid's: the output is the inner state, d = 2n wide.
SHAPES = [(1.0, None), (2.0, None), (1.0, True), (1.5, None), (2.0, False)]
MIN_CLASSES = {"minGRU": "min_gru", "minLSTM": "min_lstm"}
MIN_MODULES = {"minGRU": minGRU, "minLSTM": minLSTM}


@pytest.fixture(autouse=True)
def float64_default():
    """The LRU reference allocates its outputs with the default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _min_module(kind, dim=N, expansion_factor=1.0, proj_out=None, seed=0):
    torch.manual_seed(seed)
    return MIN_MODULES[kind](dim, expansion_factor=expansion_factor, proj_out=proj_out)


def _lru_module(m=N, n=N, state_features=3, seed=0):
    torch.manual_seed(seed)
    return lru_pytorch.LRU(m, n, state_features)


# ------------------------------------------------- the references' one-step functions
# Each maps one example's gatescope state (N,) and input (m,) to (new state (N,), output (n,)).


def _min_step(module):
    d = module.to_hidden_and_gate.out_features // 2 if hasattr(module, "to_hidden_and_gate") \
        else module.to_hidden_and_f_i_gate.out_features // 3
    projected = isinstance(module.to_out, nn.Linear)

    def step(state, u):
        out, s = module(u[None, None], state[-d:][None, None], return_next_prev_hidden=True)
        out, s = out[0, 0], s[0, 0]
        return (torch.cat([out, s]) if projected else s), out
    return step


def _lru_step(module):
    k = module.nu_log.shape[0]
    probes = []
    for C in (torch.eye(k), -1j * torch.eye(k)):
        probe = copy.deepcopy(module)
        probe.out_features = k
        probe.C = nn.Parameter(C.to(module.C.dtype))
        probe.D = nn.Parameter(torch.zeros(k, module.D.shape[1]))
        probes.append(probe)
    n = module.out_features

    def step(state, u):
        x = torch.complex(state[n::2], state[n + 1::2])
        y, re, im = (mod(u[None], state=x)[0] for mod in (module, *probes))
        return torch.cat([y, interleave(re, im)]), y
    return step


def _residual_step(norm, inner):
    def step(state, u):
        n = u.shape[-1]
        x, out = inner(state[n:], norm(u))
        y = u + out
        return torch.cat([y, x]), y
    return step


def _stacked_step(cell, steps):
    """The chained references' step on the :class:`StackedCell` ``cell``'s state layout."""
    def step(state, u):
        news, x = [], u
        for part, layer_step in zip(cell.split_state(state), steps, strict=True):
            new, x = layer_step(part, x)
            news.append(new)
        return cell.join_states(news)
    return step


def _state_only(step):
    return lambda state, u: step(state, u)[0]


def _reference_jacobians(step, traj):
    """``∂h_t/∂h_{t-1}`` and ``∂h_t/∂u_t`` of the reference ``step`` (state only) at every
    ``(b, t)`` of ``traj`` by ``jacrev``: ``(B, T, N, N)``, ``(B, T, N, m)``. A loop over the
    steps: the LRU reference writes into ``torch.empty`` buffers, which ``vmap`` refuses."""
    h, u = traj.previous_states.detach(), traj.inputs.detach()
    pairs = [jacrev(step, argnums=(0, 1))(h[b, t], u[b, t])
             for b in range(h.shape[0]) for t in range(h.shape[1])]
    J, E = (torch.stack([p[i] for p in pairs]).unflatten(0, h.shape[:2]) for i in (0, 1))
    return J, E


def _check_jacobians(cell, traj, step, split_is_zero):
    """The analytic J, split and input Jacobian against autograd through ``step``; ``B = 0``
    when ``split_is_zero`` (one diagonal layer), else ``A`` against the torch.func twin."""
    J_ref, E_ref = _reference_jacobians(step, traj)
    torch.testing.assert_close(gs.jacobians(cell, traj), J_ref, **TOL)
    A, Bg = gs.jacobian_split(cell, traj)
    torch.testing.assert_close(A + Bg, J_ref, **TOL)
    if split_is_zero:
        assert torch.count_nonzero(Bg) == 0
    else:
        assert Bg.abs().max() > 1e-3  # the coupling across layers
        torch.testing.assert_close(A, gs.jacobian_split_autograd(cell, traj)[0], **TOL)
    with torch.no_grad():
        torch.testing.assert_close(cell.analytic_input_jacobian(traj.detach()), E_ref, **TOL)


# ------------------------------------------------------------------ minGRU, minLSTM


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", list(MIN_CLASSES))
def test_min_cells_reproduce_the_parallel_and_sequential_forward(kind, shape):
    """The log-space parallel forward (a Heinsen scan: cumulative log-sums, whose float64
    rounding grows with T, ~1e-16·T relative: docs/maths.md#converting-the-reference-modules)
    and the sequential step with ``prev_hidden`` both equal the cell to 1e-10."""
    module = _min_module(kind, expansion_factor=shape[0], proj_out=shape[1])
    cell = gs.from_torch(module)
    assert cell.name == MIN_CLASSES[kind]
    assert (cell.to_out is not None) == isinstance(module.to_out, nn.Linear)
    assert cell.inner_size == int(N * shape[0]) == (cell.state_size - cell.output_size)
    assert cell.input_size == N and cell.hidden_size == (N if shape[1] is not False
                                                         else cell.inner_size)
    assert all(p.dtype == torch.float64 for p in cell.parameters())
    u = 2 * _randn(B, T, N, seed=1)
    traj = cell.unroll(u)
    out = traj.states[:, 1:, :cell.hidden_size]
    torch.testing.assert_close(out, module(u), **TOL)
    s, steps = None, []
    for t in range(T):
        y, s = module(u[:, t:t + 1], s, return_next_prev_hidden=True)
        steps.append(y)
    torch.testing.assert_close(out, torch.cat(steps, 1), **TOL)
    torch.testing.assert_close(traj.states[:, -1, -cell.inner_size:], s[:, 0], **TOL)


@pytest.mark.parametrize("kind", list(MIN_CLASSES))
def test_min_cells_reproduce_the_parallel_forward_from_a_prev_hidden(kind):
    """With ``prev_hidden`` the parallel minGRU starts from it; the parallel minLSTM starts
    from ``g(prev_hidden)`` (its ``log_h_0 = log_g(prev_hidden)``), unlike its sequential step,
    which starts from ``prev_hidden``: a quirk of the reference, reproduced by the cell with
    ``h0 = g(prev_hidden)``."""
    module = _min_module(kind, expansion_factor=2.0)
    cell = gs.from_torch(module)
    u = _randn(B, T, N, seed=1)
    s0 = torch.rand(B, cell.inner_size, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64) + 0.1  # the parallel forward takes its log
    start = s0 if kind == "minGRU" else g(s0)
    h0 = torch.cat([cell.to_out(start), start], -1)
    with torch.no_grad():
        torch.testing.assert_close(cell.unroll(u, h0).states[:, 1:, :N],
                                   module(u, s0[:, None]), **TOL)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", list(MIN_CLASSES))
def test_min_cell_jacobians_equal_autograd_through_the_reference_step(kind, shape):
    module = _min_module(kind, expansion_factor=shape[0], proj_out=shape[1])
    cell = gs.from_torch(module)
    traj = cell.unroll(_randn(B, T, N, seed=1), _randn(B, cell.state_size, seed=2))
    _check_jacobians(cell, traj, _state_only(_min_step(module)), split_is_zero=True)


# ------------------------------------------------------------------------------ LRU


def test_lru_reproduces_the_reference_forward_from_zero_and_from_a_state():
    module = _lru_module(m=3, n=N, state_features=5)
    cell = gs.from_torch(module)
    assert cell.name == "lru" and cell.state_features == 5 and cell.input_size == 3
    assert all(p.dtype == torch.float64 for p in cell.parameters())
    u = _randn(B, T, 3, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(cell.unroll(u).states[:, 1:, :N], module(u), **TOL)
        x0 = torch.complex(_randn(5, seed=2), _randn(5, seed=3))
        h0 = torch.cat([torch.zeros(N), interleave(x0.real, x0.imag)])[None]
        # a 3-D input restarts every sequence from zero: the state is taken by a 2-D one
        torch.testing.assert_close(cell.unroll(u[:1], h0).states[0, 1:, :N],
                                   module(u[0], state=x0), **TOL)


def test_lru_jacobians_equal_autograd_through_the_reference_step():
    module = _lru_module(m=3, n=N, state_features=5)
    cell = gs.from_torch(module)
    traj = cell.unroll(_randn(B, T, 3, seed=1), _randn(B, cell.state_size, seed=2))
    _check_jacobians(cell, traj, _state_only(_lru_step(module)), split_is_zero=True)


# ------------------------------------------------------------------- stacks of layers


def _layers(kinds, seed=0):
    """Reference modules of width N (all ``m = n``, so any order stacks) and their steps."""
    modules, steps = [], []
    for k, kind in enumerate(kinds):
        if kind == "LRU":
            modules.append(_lru_module(seed=seed + k))
            steps.append(_lru_step(modules[-1]))
        else:
            modules.append(_min_module(kind, expansion_factor=2.0, seed=seed + k))
            steps.append(_min_step(modules[-1]))
    return modules, steps


STACKS = [("minGRU", "minLSTM"), ("minLSTM", "LRU", "minGRU"), ("LRU", "LRU")]


@pytest.mark.parametrize("kinds", STACKS, ids="-".join)
def test_stacks_of_converted_cells_equal_the_references_chained(kinds):
    modules, steps = _layers(kinds)
    cell = gs.StackedCell([gs.from_torch(m) for m in modules])
    u = _randn(B, T, N, seed=1)
    x = u
    for module in modules:
        x = module(x)
    traj = cell.unroll(u)
    torch.testing.assert_close(traj.states[:, 1:, :N], x, **TOL)
    _check_jacobians(cell, cell.unroll(u, _randn(B, cell.state_size, seed=2).abs()),
                     _stacked_step(cell, steps), split_is_zero=False)


def _rms(seed):
    norm = nn.RMSNorm(N)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * _randn(N, seed=seed))
    return norm


@pytest.mark.parametrize("kinds", [*STACKS, ("minGRU",)], ids="-".join)
def test_residual_blocks_equal_the_references_pre_norm_residual_layers(kinds):
    """minLM's mixer half of each layer, ``x = mixer(RMSNorm(x)) + x``, chained (with
    torch's RMSNorm and its default eps, as minGRU_pytorch uses it)."""
    modules, steps = _layers(kinds)
    norms = [_rms(seed=10 + k) for k in range(len(modules))]
    blocks = []
    for module, norm in zip(modules, norms, strict=True):
        block = gs.ResidualCell(gs.from_torch(module), norm="rms")
        block.norm.load_state_dict(norm.state_dict())
        blocks.append(block)
    cell = blocks[0] if len(blocks) == 1 else gs.StackedCell(blocks)
    u = _randn(B, T, N, seed=1)
    x = u
    for module, norm in zip(modules, norms, strict=True):
        x = module(norm(x)) + x
    torch.testing.assert_close(cell.unroll(u).states[:, 1:, :N], x, **TOL)
    block_steps = [_residual_step(norm, step) for norm, step in zip(norms, steps, strict=True)]
    step = (_state_only(block_steps[0]) if len(blocks) == 1
            else _stacked_step(cell, block_steps))
    _check_jacobians(cell, cell.unroll(u, _randn(B, cell.state_size, seed=2).abs()), step,
                     split_is_zero=len(blocks) == 1)


@pytest.mark.parametrize("use_lstm", [False, True])
@pytest.mark.parametrize("depth", [2, 3])
def test_blocks_with_feedforward_reproduce_minlm(depth, use_lstm):
    """A stack of ``ResidualCell(from_torch(mixer), feedforward=ff_mult)`` built from minLM's
    layers, with its final norm and logits as the readout, gives minLM's logits; its
    Jacobians equal autograd through minLM's layers stepped with ``prev_hidden``."""
    from minGRU_pytorch.minLM import minLM
    torch.manual_seed(0)
    model = minLM(num_tokens=11, dim=N, depth=depth, ff_mult=2, use_lstm=use_lstm)
    blocks = []
    for _, norm, mixer, ff_norm, ff, _ in model.layers:
        block = gs.ResidualCell(gs.from_torch(mixer), norm="rms", feedforward=2)
        for ours, theirs in ((block.norm, norm), (block.ff_norm, ff_norm), (block.ff, ff)):
            with torch.no_grad():
                for p in theirs.parameters():  # gains away from 1
                    p.add_(0.3 * torch.randn_like(p))
            ours.load_state_dict(theirs.state_dict())
        blocks.append(block)
    cell = gs.StackedCell(blocks)
    tokens = torch.randint(0, 11, (B, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        traj = cell.unroll(model.token_emb(tokens))
        torch.testing.assert_close(model.to_logits(model.norm(traj.states[:, 1:, :N])),
                                   model(tokens), **TOL)

    def layer_step(norm, mixer, ff_norm, ff):
        inner = _min_step(mixer)

        def step(state, u):
            new, y = _residual_step(norm, inner)(state, u)
            y = y + ff(ff_norm(y))
            return torch.cat([y, new[N:]]), y
        return step
    steps = [layer_step(*layer[1:5]) for layer in model.layers]
    traj = cell.unroll(model.token_emb(tokens).detach(), _randn(B, cell.state_size, seed=2))
    _check_jacobians(cell, traj, _stacked_step(cell, steps), split_is_zero=False)


# ------------------------------------------------------------------------ refusals


def test_unsupported_classes_of_the_packages_name_the_supported_ones():
    from minGRU_pytorch.minLM import CausalDepthWiseConv1d
    with pytest.raises(TypeError, match="minGRU, minLSTM of minGRU_pytorch"):
        gs.from_torch(CausalDepthWiseConv1d(N, 3))


@pytest.mark.parametrize("layer", [1, -1, "0", True, 0.0])
@pytest.mark.parametrize("make", [lambda: _min_module("minGRU"), _lru_module])
def test_layer_other_than_none_or_zero_is_refused(make, layer):
    module = make()
    with pytest.raises(ValueError, match="single layer: layer must be None or 0"):
        gs.from_torch(module, layer=layer)
    assert gs.from_torch(module, layer=0).state_size == gs.from_torch(module).state_size


def test_direction_and_hooks_are_refused():
    module = _min_module("minLSTM")
    with pytest.raises(ValueError, match="direction"):
        gs.from_torch(module, direction="forward")
    module.register_forward_hook(lambda *args: None)
    with pytest.raises(TypeError, match="forward hooks"):
        gs.from_torch(module)


def test_lru_with_mixed_dtypes_is_refused_naming_the_fields():
    torch.set_default_dtype(torch.float32)
    module = _lru_module().double()  # .double() leaves the complex B and C complex64
    with pytest.raises(TypeError, match="complex torch.complex128 \\(B, C\\)"):
        gs.from_torch(module)


def test_converted_cells_copy_the_weights_and_keep_dtype_and_device():
    torch.set_default_dtype(torch.float32)
    module = _min_module("minGRU", expansion_factor=1.5)
    cell = gs.from_torch(module)
    assert cell.to_hidden_and_gate.weight.dtype == torch.float32
    with torch.no_grad():
        cell.to_hidden_and_gate.weight.add_(1)
    assert not torch.equal(cell.to_hidden_and_gate.weight, module.to_hidden_and_gate.weight)
    reference = _lru_module()
    lru = gs.from_torch(reference)
    assert {p.dtype for p in lru.parameters()} == {torch.float32}
    assert {p.device for p in lru.parameters()} == {reference.D.device}
    torch.testing.assert_close(lru.C_im, reference.C.imag, atol=0, rtol=0)


def test_expansion_factor_recovers_inner_widths_that_rounding_would_lose():
    from gatescope.converters.mingru import expansion_factor
    assert int(49 * (1 / 49)) == 0  # why the inner width is not just inner / dim
    assert all(int(dim * expansion_factor(dim, inner)) == inner
               for dim in range(1, 60) for inner in range(1, 3 * dim))
    cell = gs.from_torch(_min_module("minGRU", dim=49, expansion_factor=1.5 / 49))
    assert cell.inner_size == 1
