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
from gatescope.measures.rates import neuron_cv
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


def test_the_probe_reads_mamba_rates_and_envelopes_without_dense_jacobians():
    torch.manual_seed(0)
    cell = gs.make_cell("mamba", 3, 2, dtype=torch.float64, d_state=2, expand=2)
    ctx = _context(cell, torch.randn(2, 6, 3, dtype=torch.float64))
    assert ctx.retention_structured and not ctx.structured
    from gatescope.probes.quantities import exact_and_first_order_envelopes

    assert ctx.rates.isfinite().any()
    assert set(exact_and_first_order_envelopes(ctx)) >= {"exact_envelope"}
    assert "jacobians" not in vars(ctx)


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


# --- the cache-blocked kernels: tiles of end times, channel blocks, anchored products ---

class Declared(gs.RecurrentCell):
    """A bare declared structure, read from the trajectory's cache (the tests never step it)."""

    def jacobian_structure(self, traj):
        return JacobianStructure(traj.cache["modulus"], traj.cache.get("angle"))


def declared(modulus, angle=None, lengths=None):
    """The cell and a trajectory of the structure ``(modulus, angle)`` ``(B, T, K)``."""
    B, T, K = modulus.shape
    n = K if angle is None else 2 * K
    zero = torch.zeros(1, 1, 1, dtype=torch.float64)
    cache = {"modulus": modulus} if angle is None else {"modulus": modulus, "angle": angle}
    traj = gs.Trajectory(inputs=zero.expand(B, T, 1), states=zero.expand(B, T + 1, n),
                         gates=None, retention=modulus, cache=cache, cell_type=Declared,
                         lengths=None if lengths is None else torch.tensor(lengths))
    return Declared(1, n), traj


def reference_rates(modulus, angle, lags, order, lengths=None):
    """``μ`` ``(B, T+1, L, n)`` by the dual-number products of ``rates.window_products`` (one
    multiplication per step, no logs), NaN where ``ℓ > t`` and past the lengths."""
    from gatescope.measures.rates import window_products

    r, d = modulus, None
    if angle is not None:
        r = modulus.repeat_interleave(2, -1)
        d = (modulus * (torch.cos(angle) - 1)).repeat_interleave(2, -1)
    if lengths is not None:  # held steps: m = 1, θ = 0
        beyond = torch.arange(1, r.shape[1] + 1) > torch.tensor(lengths)[:, None]
        r = r.masked_fill(beyond[..., None], 1.0)
        d = None if d is None else d.masked_fill(beyond[..., None], 0.0)
    B, T, n = r.shape
    mu = torch.full((B, T + 1, len(lags), n), float("nan"), dtype=torch.float64)
    for lag, (p, s) in enumerate(window_products(r, None if order == 0 else d)):
        for i in [i for i, x in enumerate(lags) if x == lag]:
            mu[:, lag:, i] = p if s is None else p + s
    if lengths is not None:
        past = torch.arange(T + 1) > torch.tensor(lengths)[:, None]
        mu[past] = float("nan")
    return mu


def reference_sensitivities(modulus, starts):
    """``max_q ∏_{j=k+1..k+ℓ} m_{j,q}`` by cumulative products: ``(B, S, T+1)``."""
    B, T, K = modulus.shape
    out = torch.full((B, len(starts), T + 1), float("nan"), dtype=torch.float64)
    for i, k in enumerate(starts):
        prods = torch.cat([torch.ones(B, 1, K, dtype=torch.float64),
                           torch.cumprod(modulus[:, k:], 1)], 1)
        out[:, i, : T + 1 - k] = prods.amax(-1)
    return out


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 40 values and channel blocks of at most 192 prefix sums: with K = 7 and T
    = 45 or 100 the tiles and blocks split unevenly (at T = 45 blocks of 4 and 3 channels
    for one example, of 2, 2, 2 and 1 for two; of 1 channel at T = 100)."""
    import gatescope.dynamics.structured as structured

    monkeypatch.setattr(structured, "CHUNK_ELEMENTS", 40)
    monkeypatch.setattr(structured, "BLOCK_ELEMENTS", 192)


def moduli(B=3, T=45, K=7, low=0.55, seed=0):
    g = torch.Generator().manual_seed(seed)
    return low + (1 - low) * torch.rand(B, T, K, generator=g, dtype=torch.float64)


LAGS = [0, 1, 3, 8, 15, 16, 17, 31, 33, 64, 99, 100, 3, 120]


def check_summary(modulus, angle=None, order=1, lengths=None, chunk_size=None):
    """The blocked summary against ``envelope`` and ``neuron_cv`` of the products' ``μ``."""
    cell, traj = declared(modulus, angle, lengths)
    summary = gs.effective_rate_summary(cell, traj, LAGS, order=order, chunk_size=chunk_size)
    mu = reference_rates(modulus, angle, LAGS, order, lengths)
    assert_close(summary.envelope, gs.envelope(mu))
    assert_close(summary.neuron_cv, neuron_cv(mu))
    return summary


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("rotation", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
def test_blocked_summary_equals_the_full_tensor(small_tiles, order, rotation, lengths):
    """Uneven tiles and channel blocks, anchored products (``G = 32``) and the partial
    cells around them, rotations' signed first-order rates, lengths, a repeated lag and one
    longer than T."""
    modulus = moduli(T=100, low=0.3)
    angle = None
    if rotation:
        angle = 2.5 * torch.rand(modulus.shape, generator=torch.Generator().manual_seed(3),
                                 dtype=torch.float64)
    check_summary(modulus, angle, order, None if lengths is None else [100, 37, 1],
                  chunk_size=2)


def test_anchored_products_are_taken_and_exact():
    """The anchored factors (``G = 64`` for ``m ≥ 0.3`` in float64, ``32`` in float32, whose
    bound is lower) give the products of one ``exp`` per entry, in whole cells between the
    partial ones at either end."""
    from gatescope.dynamics.structured import AnchoredProducts, CumulativeLogs

    logs = CumulativeLogs.of(JacobianStructure(moduli(T=200, low=0.3)))
    anchored = AnchoredProducts.of(logs)
    narrow = AnchoredProducts.of(logs, torch.float32)
    assert anchored is not None and anchored.spacing == 64 and narrow.spacing == 32
    for lag in (1, 31, 32, 33, 63, 64, 65, 100):
        for products, dtype, rtol in ((anchored, torch.float64, 1e-13),
                                      (narrow, torch.float32, 1e-6)):
            tiles = list(products.tiles(lag, products.spacing))
            assert sum(mu is not None for _, mu, _ in tiles) >= 2
            cuts = [lag] + [ends.stop for ends, _, _ in tiles]
            assert [ends.start for ends, _, _ in tiles] == cuts[:-1] and cuts[-1] == 201
            for ends, mu, scale in tiles:
                if mu is None:
                    continue
                assert mu.dtype == dtype and (scale is None) == (dtype == torch.float64)
                got = mu.double() if scale is None else mu.double() * scale.unsqueeze(-1)
                torch.testing.assert_close(got, logs.products(lag, ends), rtol=rtol, atol=0)


def test_steps_too_large_for_anchors_take_one_exp_each():
    """``|log m| = 20`` per step leaves no spacing within the bound: the plain path."""
    from gatescope.dynamics.structured import AnchoredProducts, CumulativeLogs

    modulus = moduli(T=30, low=0.5) * torch.tensor([1.0] * 6 + [1e-9])
    assert AnchoredProducts.of(CumulativeLogs.of(JacobianStructure(modulus))) is None
    check_summary(modulus)


def test_underflowing_windows_are_zero_as_with_one_exp_each():
    """Long windows of ``m ≈ 0.2`` underflow (``0.2^460 ≈ 0``): those tiles are zeros, the
    envelope 0 and the CV NaN there (0/0), as the products give; the windows near the edge
    of the normal range take the exp."""
    modulus = 0.15 + 0.1 * moduli(B=2, T=600, K=3, low=0.0)
    cell, traj = declared(modulus)
    lags = [1, 64, 300, 420, 450, 470, 500, 599]
    summary = gs.effective_rate_summary(cell, traj, lags, order=0)
    mu = reference_rates(modulus, None, lags, 0)
    assert summary.envelope[-1] == 0 and summary.neuron_cv[-1].isnan()
    assert_close(summary.envelope, gs.envelope(mu))
    assert_close(summary.neuron_cv, neuron_cv(mu))


def test_windows_below_the_normal_range_keep_their_normal_entries():
    """Bursts of strong decay (``m = e^-3.5`` in the first half of every 32 steps): an
    anchored factor ``A`` of a long window lies below ``e^-745`` (0 as a scale) while
    the entries ``E F A`` that start just after a burst are ``e^56`` larger, normal floats;
    the scaled cells keep them, as one ``exp`` each does."""
    steps = torch.full((600,), -0.05, dtype=torch.float64)
    steps[torch.arange(600) % 32 < 16] = -3.5
    gen = torch.Generator().manual_seed(4)
    modulus = torch.exp(steps[None, :, None] + 0.01 * torch.rand(2, 600, 5, generator=gen,
                                                                 dtype=torch.float64))
    cell, traj = declared(modulus)
    lags = list(range(380, 441, 3))
    summary = gs.effective_rate_summary(cell, traj, lags, order=0)
    mu = reference_rates(modulus, None, lags, 0)
    assert (gs.envelope(mu) > 1e-300).sum() > 5  # normal windows at these lags
    assert_close(summary.envelope, gs.envelope(mu))
    assert_close(summary.neuron_cv, neuron_cv(mu))


def test_growing_windows_stay_finite_where_their_values_are():
    """``m ≈ e^1.1`` (an unstable channel): windows past ``e^709`` overflow, but the cells
    whose largest factor ``A`` does while their entries ``E F A`` do not keep finite values,
    as one ``exp`` each does (the scale is clamped to a normal float at both ends)."""
    gen = torch.Generator().manual_seed(0)
    modulus = torch.exp(1.1 + 0.02 * torch.rand(2, 800, 5, generator=gen, dtype=torch.float64))
    cell, traj = declared(modulus)
    lags = list(range(600, 660, 8))
    summary = gs.effective_rate_summary(cell, traj, lags, order=0)
    mu = reference_rates(modulus, None, lags, 0)
    want = gs.envelope(mu)
    assert want.isfinite().sum() > 3 and not want.isfinite().all()
    assert torch.equal(summary.envelope.isfinite(), want.isfinite())
    torch.testing.assert_close(summary.envelope[want.isfinite()], want[want.isfinite()],
                               rtol=1e-10, atol=0)


def test_zero_steps_in_the_modulus(small_tiles):
    modulus = moduli()
    modulus[0, 10, 2] = 0.0
    modulus[2, :, 5] = 0.0
    check_summary(modulus, order=0)
    S = start_sensitivities(JacobianStructure(modulus), [0, 9, 10, 44, 45])
    assert_close(S, reference_sensitivities(modulus, [0, 9, 10, 44, 45]))


def test_equal_neurons_have_zero_dispersion(small_tiles):
    """Every channel the same retention: the CV is 0 to rounding (the blocks' moments are
    merged exactly, not by Σx² - (Σx)²/n), at every lag and in every channel block."""
    modulus = moduli(T=100, K=1, low=0.3).expand(3, 100, 7).contiguous()
    cell, traj = declared(modulus)
    summary = gs.effective_rate_summary(cell, traj, LAGS, chunk_size=2)
    assert_close(summary.envelope, gs.envelope(reference_rates(modulus, None, LAGS, 1)))
    finite = summary.neuron_cv[~summary.neuron_cv.isnan()]
    assert len(finite) == len(LAGS) - 1 and finite.abs().max() < 1e-12


@pytest.mark.parametrize("rotation", [False, True])
def test_tiled_sensitivities_equal_the_products(small_tiles, rotation):
    """Starts unsorted, repeated, at 0 and at T; uneven tiles and channel blocks."""
    modulus = moduli()
    angle = torch.rand(modulus.shape, dtype=torch.float64) if rotation else None
    starts = [45, 0, 17, 3, 17, 44]
    S = start_sensitivities(JacobianStructure(modulus, angle), starts)
    assert_close(S, reference_sensitivities(modulus, starts))


def test_tiled_sensitivities_with_lengths(small_tiles):
    modulus = moduli()
    cell, traj = declared(modulus, lengths=[45, 20, 1])
    S = start_sensitivities(structure_of(cell, traj), [0, 5, 20, 45], lengths=traj.lengths)
    held = modulus.masked_fill((torch.arange(1, 46) > torch.tensor([45, 20, 1])[:, None])
                               [..., None], 1.0)
    assert_close(S, reference_sensitivities(held, [0, 5, 20, 45]))
    assert (S[1, 2, 1:26] == 1).all() and (S[2, 1, 1:41] == 1).all()  # windows after the end


@pytest.mark.parametrize("rotation", [False, True])
def test_float32_rates_match_float64(small_tiles, rotation):
    """The opt-in float32 anchored tiles (their row scales float64) against float64: the
    envelope and the CV to 1e-5, over lags whose rates span e^0 to e^-100."""
    modulus = moduli(T=100, low=0.3)
    angle = torch.rand(modulus.shape, dtype=torch.float64) if rotation else None
    cell, traj = declared(modulus, angle)
    wide, narrow = (gs.effective_rate_summary(cell, traj, LAGS, chunk_size=2, precision=p)
                    for p in ("float64", "float32"))
    assert_close(narrow.envelope, wide.envelope, rtol=1e-5)
    assert_close(narrow.neuron_cv, wide.neuron_cv, rtol=1e-5)
    assert not torch.equal(narrow.neuron_cv, wide.neuron_cv)  # the float32 path was taken


def test_a_bad_precision_is_refused():
    cell, traj = declared(moduli())
    with pytest.raises(ValueError, match=r"precision must be one of \['float32', 'float64'\]"):
        gs.effective_rate_summary(cell, traj, [1], precision="half")
