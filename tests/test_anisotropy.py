"""Anisotropy measures: spectrum statistics, transport products, per-example gradients,
update anisotropy and transport alignment (float64 references)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_cell, random_inputs
from problems import cases

import gatescope as gs
from gatescope.measures import (
    per_example_gradients,
    propagation_anisotropy,
    spectrum_stats,
    transport_alignment,
    update_anisotropy,
)


def test_spectrum_stats_on_known_values():
    sigma = torch.tensor([[1.0, 4.0, 1.0, 2.0], [3.0, 3.0, 3.0, 3.0]])  # any order
    st = spectrum_stats(sigma, r=2)
    assert torch.equal(st.sigma[0], torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(st.ai, torch.tensor([2.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(st.ce, torch.tensor([20 / 22, 0.5], dtype=torch.float64))
    torch.testing.assert_close(st.participation_ratio,
                               torch.tensor([22**2 / 274, 4.0], dtype=torch.float64))
    p = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64) / 8
    torch.testing.assert_close(st.effective_rank,
                               torch.stack([(-(p * p.log()).sum()).exp(),
                                            torch.tensor(4.0, dtype=torch.float64)]))
    top3 = spectrum_stats(sigma, r=2, ce_denominator=3)
    torch.testing.assert_close(top3.ce, torch.tensor([20 / 21, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(top3.ai, st.ai)
    zero = spectrum_stats(torch.tensor([2.0, 0.0, 0.0]), r=3)
    assert zero.ai == math.inf and zero.effective_rank == 1 and zero.participation_ratio == 1
    for bad in ({"r": 0}, {"r": 5}, {"r": 2, "ce_denominator": 1},
                {"r": 2, "ce_denominator": 5}, {"r": 2, "ce_denominator": "top"}):
        with pytest.raises(ValueError):
            spectrum_stats(sigma, **bad)


def test_propagation_anisotropy_matches_explicit_products():
    cell = random_cell("multi_gate", 3, 5, True, 0)
    with torch.no_grad():
        traj = cell.unroll(random_inputs(3, 9, 3, 0))
    J = gs.jacobians(cell, traj)
    lags = [1, 4, 9]
    res = propagation_anisotropy(J, lags, samples_per_lag=6, r=2)
    assert res.stats.ai.shape == (3, 6) and res.stats.sigma.shape == (3, 6, 5)
    assert torch.equal(res.lags, torch.tensor(lags))
    b, t, k = res.samples.unbind(-1)
    assert torch.equal(t - k, torch.tensor(lags).view(-1, 1).expand(3, 6))
    assert (k >= 0).all() and (t <= 9).all() and (b < 3).all()
    for i in range(3):
        for s in range(6):
            M = gs.transport(J, int(t[i, s]), int(k[i, s]))[b[i, s]]
            sv = torch.linalg.svdvals(M)
            torch.testing.assert_close(res.stats.sigma[i, s] / res.stats.sigma[i, s, 0],
                                       sv / sv[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res.stats.ai, res.stats.sigma[..., 0] / res.stats.sigma[..., 1])
    again = propagation_anisotropy(J, lags, samples_per_lag=6, r=2)
    assert torch.equal(again.samples, res.samples)
    other = propagation_anisotropy(J, lags, samples_per_lag=6, r=2,
                                   generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other.samples, res.samples)
    with pytest.raises(ValueError):
        propagation_anisotropy(J, [0, 2])
    with pytest.raises(ValueError):
        propagation_anisotropy(J, [10])


def test_propagation_anisotropy_draws_windows_within_each_length():
    """Guards propagation_anisotropy(lengths=): every sampled window (b, t, k) ends within
    sequence b's length, sequences shorter than the lag are never drawn, the statistics are
    those of the explicit products, and lags longer than every sequence are refused."""
    cell = random_cell("gru", 3, 4, True, 8)
    lengths = torch.tensor([9, 3, 6])
    with torch.no_grad():
        traj = cell.unroll(random_inputs(3, 9, 3, 8), lengths=lengths)
    J = gs.jacobians(cell, traj)
    res = propagation_anisotropy(J, [1, 4, 7], samples_per_lag=40, r=2, lengths=lengths)
    b, t, k = res.samples.unbind(-1)
    assert (t <= lengths[b]).all() and (k >= 0).all()
    assert set(b[1].tolist()) == {0, 2} and set(b[2].tolist()) == {0}  # long enough only
    assert {0, 1, 2} == set(b[0].tolist())
    for i, s in ((1, 0), (2, 5)):
        M = gs.transport(J, int(t[i, s]), int(k[i, s]))[b[i, s]]
        sv = torch.linalg.svdvals(M)
        torch.testing.assert_close(res.stats.sigma[i, s] / res.stats.sigma[i, s, 0], sv / sv[0])
    with pytest.raises(ValueError, match="exceed every sequence's length"):
        propagation_anisotropy(J, [9], lengths=torch.tensor([8, 3, 6]))
    with pytest.raises(ValueError, match="lengths must be"):
        propagation_anisotropy(J, [1], lengths=torch.tensor([0, 3, 6]))


def test_the_paper_codes_epsilon_regularises_ai_and_ce_absolutely():
    """Guards spectrum_stats(epsilon=): AI = s1/(s_r + eps), CE = top/(energy + eps); at the
    scale of a vanished product (s ~ 1e-10) eps = 1e-12 dominates CE (issue 15: the plain
    cell's CE@40 = 3e-8 in the paper's code against 1.000)."""
    sigma = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    st = spectrum_stats(sigma, r=2, epsilon=0.5)
    torch.testing.assert_close(st.ai, torch.tensor(4 / 2.5, dtype=torch.float64))
    torch.testing.assert_close(st.ce, torch.tensor(20 / 22.5, dtype=torch.float64))
    tiny = spectrum_stats(sigma * 1e-10, r=2, epsilon=1e-12)
    torch.testing.assert_close(tiny.ce, torch.tensor(20e-20 / (22e-20 + 1e-12),
                                                     dtype=torch.float64))
    assert tiny.ce < 1e-6 and spectrum_stats(sigma * 1e-10, r=2).ce > 0.9
    for bad in (-1e-12, math.nan, math.inf, True, "1e-12"):
        with pytest.raises(ValueError, match="epsilon must be a finite number >= 0"):
            spectrum_stats(sigma, r=2, epsilon=bad)


def test_propagation_anisotropy_with_epsilon_sees_the_products_true_scale():
    """Guards the true-scale path of propagation_anisotropy(epsilon>0): the factors are
    renormalised while multiplying, so the singular values must be taken back by their
    logged norms; they equal those of the explicit product (gs.transport)."""
    cell = random_cell("plain", 3, 5, True, 2)
    with torch.no_grad():
        traj = cell.unroll(random_inputs(2, 12, 3, 2))
    J = 0.3 * gs.jacobians(cell, traj)  # contracting: the products shrink with the lag
    res = propagation_anisotropy(J, [2, 10], samples_per_lag=4, r=2, epsilon=1e-30)
    b, t, k = res.samples.unbind(-1)
    for i in range(2):
        for s in range(4):
            M = gs.transport(J, int(t[i, s]), int(k[i, s]))[b[i, s]]
            torch.testing.assert_close(res.stats.sigma[i, s], torch.linalg.svdvals(M),
                                       rtol=1e-9, atol=0)
    assert res.stats.sigma[1, :, 0].max() < 1e-3  # the lag-10 products have shrunk
    with pytest.raises(ValueError, match="epsilon"):
        propagation_anisotropy(J, [2], epsilon=-1.0)


def _model(name, readout, loss="mse", out=2):
    cell = random_cell(name, 3, 4, True, 1)
    return gs.SequenceModel(cell, out, readout=readout, loss=loss).double()


def _loop_gradients(model, u, y, mask=None):
    rows = []
    for i in range(u.shape[0]):
        m = None if mask is None else mask[i:i + 1]
        grads = torch.autograd.grad(model.loss(u[i:i + 1], y[i:i + 1], m),
                                    list(model.parameters()))
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("readout", ["last", "all"])
@pytest.mark.parametrize("problem", cases(dtypes=[torch.float64],
                                          sizes=["typical", "smallest"]))
def test_per_example_gradients_equal_single_example_autograd(problem, readout):
    model = gs.SequenceModel(problem.cell(), 2, readout=readout).double()
    u = problem.inputs()
    B, T = u.shape[:2]
    y = problem.targets(readout, torch.Generator().manual_seed(problem.seed))
    G = per_example_gradients(model, u, y)
    assert G.shape == (B, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(G, _loop_gradients(model, u, y), rtol=1e-10, atol=1e-12)


def test_per_example_gradients_masked_cross_entropy_in_chunks():
    model = _model("lstm", "all", loss="cross_entropy", out=5)
    u = random_inputs(5, 6, 3, 3)
    y = torch.randint(0, 5, (5, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) > 0.4
    G = per_example_gradients(model, u, y, mask, chunk_size=2)
    torch.testing.assert_close(G, _loop_gradients(model, u, y, mask), rtol=1e-10, atol=1e-12)


def test_update_anisotropy_normalises_rows_then_centres_columns():
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(12, 30, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, 30)
    st = update_anisotropy(G * torch.rand(12, 1, generator=gen) * 7, r=3)  # row scale is lost
    X = G / G.norm(dim=1, keepdim=True)
    sv = torch.linalg.svdvals(X - X.mean(0))
    torch.testing.assert_close(st.sigma, sv, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(st.ai, sv[0] / sv[2], rtol=1e-9, atol=0)
    assert st.sigma[-1] < 1e-6  # centring removes one dimension


def _random_jacobians(B, T, N, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, N, N, generator=gen, dtype=torch.float64) / math.sqrt(N)


def test_transport_alignment_matches_explicit_svd_and_is_one_at_full_rank():
    J = _random_jacobians(4, 6, 5, 0)
    delta = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ks = [5, 0, 3]
    res = transport_alignment(J, delta, ks, r=2)
    assert res.alignment.shape == (4, 3) and res.baseline == 2 / 5
    for i, k in enumerate(ks):
        U = torch.linalg.svd(gs.transport(J, 6, k))[0][..., :2]
        ref = (U.mT @ delta.unsqueeze(-1)).squeeze(-1).pow(2).sum(-1) / delta.pow(2).sum(-1)
        torch.testing.assert_close(res.alignment[:, i], ref, rtol=1e-10, atol=1e-12)
    full = transport_alignment(J, delta, ks, r=5)
    torch.testing.assert_close(full.alignment, torch.ones(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError):
        transport_alignment(J, delta, [6])
    with pytest.raises(ValueError):
        transport_alignment(J, delta, [1], r=6)


def test_transport_alignment_of_random_directions_is_r_over_n():
    J = _random_jacobians(1, 3, 6, 2).expand(20000, -1, -1, -1)
    delta = torch.randn(20000, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = transport_alignment(J, delta, [0, 2], r=2)
    # a_r of an isotropic direction is Beta(r/2, (n-r)/2): mean r/n, std of the mean ~ 0.0015
    torch.testing.assert_close(res.alignment.mean(0),
                               torch.full((2,), res.baseline, dtype=torch.float64),
                               rtol=0, atol=0.01)


def test_singular_values_fall_back_when_lapack_refuses(monkeypatch):
    from gatescope.measures import anisotropy

    X = torch.randn(5, 6, 4, dtype=torch.float64)
    expected = torch.linalg.svdvals(X)
    real = torch.linalg.svdvals

    def refuse_batches(A):
        if A.shape[0] > 1 or A.dim() == 3 and A[0, 0, 0] == X[2, 0, 0]:
            raise torch.linalg.LinAlgError("did not converge")
        return real(A)

    monkeypatch.setattr(torch.linalg, "svdvals", refuse_batches)
    torch.testing.assert_close(anisotropy.singular_values(X), expected)


def test_top_left_singular_vectors_span_the_svd_subspace():
    from gatescope.measures.anisotropy import top_left_singular_vectors

    X = torch.randn(3, 8, 8, dtype=torch.float64)
    U = torch.linalg.svd(X)[0][..., :3]
    V = top_left_singular_vectors(X, 3)
    torch.testing.assert_close(V @ V.mT, U @ U.mT)


def test_final_state_gradient_is_each_examples_own():
    from gatescope.measures import final_state_gradient

    cell = random_cell("gru", 2, 3, True, 0)
    model = gs.SequenceModel(cell, 1).double()
    u, y = random_inputs(3, 5, 2, 0), torch.randn(3, 1, dtype=torch.float64)
    states = cell.unroll(u).states
    delta = final_state_gradient(model, states, y)
    for b in range(3):
        h = states[b:b + 1].detach().requires_grad_()
        (g,) = torch.autograd.grad(model.loss_from_states(h, y[b:b + 1]), h)
        torch.testing.assert_close(delta[b], g[0, -1])


def test_float_lags_and_start_times_are_refused_not_truncated():
    """Guards propagation_anisotropy and transport_alignment against lags=[1.7] or ks=[1.5]
    silently becoming 1 (the defect fixed for the rates, now shared)."""
    J = torch.randn(1, 5, 3, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="lags must be a sequence of ints"):
        propagation_anisotropy(J, [1.7])
    with pytest.raises(TypeError, match="ks must be a sequence of ints"):
        transport_alignment(J, torch.randn(1, 3, dtype=torch.float64), [1.5], r=2)
    assert propagation_anisotropy(J, torch.tensor([2]), samples_per_lag=2, r=2).lags.tolist() == [2]
