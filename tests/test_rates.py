"""Effective learning rates and the §VII-A profile measures (float64 references)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import random_cell, random_inputs
from problems import cases

import gatescope as gs
from gatescope.measures import (
    effective_learning_rates,
    envelope,
    fit_power,
    gate_product,
    neuron_cv,
    profile_fit,
    sensitivity_profile,
    time_scales,
)
from gatescope.measures._quantile import quantile

B, T, M, N = 2, 6, 3, 4


def _setup(name, seed=0, bias=True):
    cell = random_cell(name, M, N, bias, seed)
    with torch.no_grad():
        traj = cell.unroll(random_inputs(B, T, M, seed))
    return cell, traj


def test_leaky_zeroth_order_is_a_power_of_the_retention():
    cell, traj = _setup("leaky")
    mu = effective_learning_rates(cell, traj, order=0)
    assert mu.shape == (B, T + 1, T + 1, N) and mu.dtype == torch.float64
    for lag in range(T + 1):
        ref = 1.0
        for _ in range(lag):
            ref *= 1 - cell.alpha
        assert (mu[:, lag:, lag] == ref).all()  # the same multiplications: bit for bit
        assert math.isclose(ref, (1 - cell.alpha) ** lag, rel_tol=1e-14)


def test_multi_gate_zeroth_order_is_the_window_product_of_one_minus_g():
    cell, traj = _setup("multi_gate")
    mu = effective_learning_rates(cell, traj, order=0)
    r = 1 - traj.gates
    for t in range(T + 1):
        for lag in range(t + 1):
            ref = r[:, t - lag:t].prod(1)
            torch.testing.assert_close(mu[:, t, lag], ref, rtol=1e-14, atol=0)


def test_scalar_gate_zeroth_order_is_shared_by_all_neurons():
    cell, traj = _setup("scalar_gate")
    mu = effective_learning_rates(cell, traj, order=0)
    finite = mu[~mu.isnan()].reshape(-1, N)
    assert (finite == finite[:, :1]).all()
    assert (finite[:, 0] < 1).any()


def test_plain_zeroth_order_vanishes_beyond_lag_zero():
    cell, traj = _setup("plain")
    mu = effective_learning_rates(cell, traj, order=0)
    assert (mu[:, :, 0] == 1).all()
    for lag in range(1, T + 1):
        assert (mu[:, lag:, lag] == 0).all()


def _brute_first_order(r, d, t, lag):
    """Σ_j (∏_{i≠j} r_i) d_j over j = t-ℓ+1..t, one neuron, plain Python."""
    window = range(t - lag + 1, t + 1)
    total = 0.0
    for j in window:
        prod = 1.0
        for i in window:
            if i != j:
                prod *= r[i - 1]
        total += prod * d[j - 1]
    return total


@pytest.mark.parametrize("problem", cases(dtypes=[torch.float64],
                                          sizes=["typical", "smallest"]))
def test_first_order_matches_the_brute_force_sum(problem):
    _check_first_order_by_brute_force(problem.cell(), problem.trajectory())


def _stack_of_a_gru_under_a_projected_lstm():
    torch.manual_seed(4)
    return gs.StackedCell([gs.make_cell("gru", M, 3), gs.make_cell("lstm", 3, 5, proj_size=2)]
                          ).double()


@pytest.mark.parametrize("make", [
    lambda: gs.make_cell("lstm", M, 5, proj_size=2).double(),
    _stack_of_a_gru_under_a_projected_lstm], ids=["lstm_proj", "stack_gru_lstm_proj"])
def test_rates_act_on_the_retained_entries_of_projected_and_stacked_cells(make):
    """Guards cell.retention_size: an LSTM with proj_size p != n retains its n cell entries
    (not hidden_size = p), a stack retains layer 0's (the last of its state); the rates
    equal the brute-force sum there."""
    cell = make()
    with torch.no_grad():
        traj = cell.unroll(random_inputs(B, T, M, 4))
    assert traj.retention.shape[-1] == cell.retention_size != cell.hidden_size
    _check_first_order_by_brute_force(cell, traj)


def _check_first_order_by_brute_force(cell, traj):
    mu0 = effective_learning_rates(cell, traj, order=0)
    mu = effective_learning_rates(cell, traj, order=1)
    J = gs.jacobians_autograd(cell, traj).detach()  # independent of the analytic path
    n, S = cell.retention_size, cell.state_size
    Bn, Tn = traj.batch_size, traj.seq_len
    diag = J.diagonal(dim1=-2, dim2=-1)[..., S - n:].numpy()
    r = traj.retention.expand(Bn, Tn, n).numpy()
    d = diag - r
    ref = np.full(mu.shape, np.nan)
    for b in range(Bn):
        for q in range(n):
            for t in range(Tn + 1):
                for lag in range(t + 1):
                    ref[b, t, lag, q] = _brute_first_order(r[b, :, q], d[b, :, q], t, lag)
    torch.testing.assert_close(mu - mu0, torch.from_numpy(ref), rtol=1e-10, atol=1e-12,
                               equal_nan=True)


def test_lstm_first_order_vanishes_on_the_cell_state():
    cell, traj = _setup("lstm")
    mu = effective_learning_rates(cell, traj)
    assert mu.shape[-1] == cell.hidden_size
    torch.testing.assert_close(mu, effective_learning_rates(cell, traj, order=0),
                               rtol=0, atol=1e-15, equal_nan=True)


def test_nan_exactly_where_the_lag_exceeds_the_end_time_and_lags_keep_their_order():
    cell, traj = _setup("gru")
    lags = [3, 0, T + 2, 1, 3]
    mu = effective_learning_rates(cell, traj, lags=lags)
    full = effective_learning_rates(cell, traj)
    t = torch.arange(T + 1).view(1, -1, 1, 1)
    assert torch.equal(mu.isnan(), (torch.tensor(lags).view(1, 1, -1, 1) > t).expand_as(mu))
    for i, lag in enumerate(lags):
        if lag <= T:
            torch.testing.assert_close(mu[:, :, i], full[:, :, lag], equal_nan=True)
    with pytest.raises(ValueError):
        effective_learning_rates(cell, traj, lags=[-1])
    with pytest.raises(ValueError):
        effective_learning_rates(cell, traj, order=2)


def test_envelope_and_time_scales():
    cell, traj = _setup("multi_gate")
    mu = effective_learning_rates(cell, traj)
    f = envelope(mu)
    for lag in range(T + 1):
        torch.testing.assert_close(f[lag], mu[:, lag:, lag].abs().mean())
    # τ is the e-folding lag of the kernel r̄^ℓ with r̄ the mean retention (1 - g here)
    tau = time_scales(cell, traj)
    mean_retention = torch.tensor(traj.retention.expand(B, T, N).numpy().mean((0, 1)))
    torch.testing.assert_close(mean_retention**tau, torch.full((N,), math.exp(-1),
                                                                 dtype=torch.float64))
    # leaky's retention is constant: its zeroth-order rates themselves fall as e^{-ℓ/τ}
    leaky, ltraj = _setup("leaky")
    tau = time_scales(leaky, ltraj)
    mu0 = effective_learning_rates(leaky, ltraj, order=0)
    for lag in range(T + 1):
        ref = torch.exp(-lag / tau).expand_as(mu0[:, lag:, lag])
        torch.testing.assert_close(mu0[:, lag:, lag], ref, rtol=1e-12, atol=0)


def test_quantile_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    x[1, 3] = x[2, :4] = math.nan
    x[4] = math.nan
    levels = torch.tensor([0.0, 0.01, 0.3, 0.5, 0.99, 1.0], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the all-NaN row
        ref = np.nanquantile(x.numpy(), levels.numpy(), axis=1)
    torch.testing.assert_close(quantile(x, levels), torch.from_numpy(ref), equal_nan=True)
    torch.testing.assert_close(quantile(x, 0.5, dim=1), torch.from_numpy(ref[3]), equal_nan=True)


@pytest.mark.parametrize("kind", ["update", "retention"])
def test_gate_product_by_brute_force(kind):
    cell, traj = _setup("multi_gate", seed=4)
    P = gate_product(traj, kind)
    x = traj.gates if kind == "update" else traj.retention
    for t in range(T + 1):
        assert P[:, t, t + 1:].isnan().all()
        for k in range(t + 1):
            torch.testing.assert_close(P[:, t, k], x[:, k:t].prod(1).mean(-1))
    leaky, ltraj = _setup("leaky")
    P = gate_product(ltraj, "update")
    assert math.isclose(P[0, T, 0].item(), leaky.alpha**T, rel_tol=1e-13)


def test_sensitivity_profile_is_the_lag_median_ratio():
    cell, traj = _setup("scalar_gate")
    S = gs.sensitivities(gs.jacobians(cell, traj))
    prof = sensitivity_profile(S)
    assert prof.shape == (T - 1,)
    med = [np.median(np.diagonal(S.numpy(), -lag, 1, 2)) for lag in range(1, T)]
    torch.testing.assert_close(prof, torch.tensor(med) / med[0])


def _numpy_profile(X):
    """``median_{t-k=ℓ} X / median_{t-k=1} X`` for ``ℓ = 1..T-1`` by numpy."""
    diagonals = [np.diagonal(X.numpy(), -lag, 1, 2) for lag in range(1, X.shape[-1] - 1)]
    medians = np.array([np.median(d) for d in diagonals])
    return medians / medians[0]


def test_power_fit_recovers_a_synthetic_power_law():
    cell, traj = _setup("multi_gate", seed=7)
    P = gate_product(traj, "update")
    S = 2.5 * P**0.7
    fit = fit_power(S, P)
    assert math.isclose(fit.slope, 0.7, rel_tol=1e-10)
    assert math.isclose(fit.intercept, math.log(2.5), rel_tol=1e-10)
    assert math.isclose(fit.r2, 1.0, rel_tol=1e-12)
    below = B * T * (T + 1) // 2
    assert 0.9 * below < fit.pairs < below  # the 1% tails are cut
    assert fit_power(S, P, trim=0).pairs == below
    result = profile_fit(traj, S)
    assert torch.equal(result.lags, torch.arange(1, T))
    torch.testing.assert_close(result.sensitivity, torch.from_numpy(_numpy_profile(S)))
    update = result.predictors["update"]
    assert update.fit == fit
    zeroth = torch.from_numpy(_numpy_profile(P))  # P̄(ℓ)/P̄(1) with numpy's medians
    torch.testing.assert_close(update.zeroth_order, zeroth)
    torch.testing.assert_close(update.fitted, zeroth**0.7)  # the known power, not fit.slope
    assert set(result.predictors) == {"update", "retention"}


def test_power_fit_degenerate_predictor_gives_nan():
    cell, traj = _setup("plain")
    S = gs.sensitivities(gs.jacobians(cell, traj))
    fit = fit_power(S, gate_product(traj, "update"))  # P = 1: log P does not vary
    assert math.isnan(fit.slope) and math.isnan(fit.r2)
    assert fit_power(S, gate_product(traj, "retention")).pairs == 0  # P = 0


def test_time_scale_of_full_retention_is_infinite():
    from gatescope.measures import time_scales

    cell = gs.make_cell("leaky", 2, 3, alpha=1.0)  # retention 1 - α = 0: τ = 0
    traj = cell.unroll(torch.randn(1, 4, 2))
    assert (time_scales(cell, traj) == 0).all()
    traj.retention = torch.ones_like(traj.retention)
    assert torch.isinf(time_scales(cell, traj)).all() and (time_scales(cell, traj) > 0).all()


def test_given_jacobians_are_used_for_the_first_order():
    from gatescope.measures import effective_learning_rates

    cell = gs.make_cell("multi_gate", 2, 3, dtype=torch.float64)
    traj = cell.unroll(torch.randn(2, 5, 2, dtype=torch.float64))
    J = gs.jacobians(cell, traj)
    torch.testing.assert_close(effective_learning_rates(cell, traj, J=J),
                               effective_learning_rates(cell, traj), equal_nan=True)
    other = effective_learning_rates(cell, traj, J=torch.zeros_like(J))
    assert not torch.allclose(other.nan_to_num(), effective_learning_rates(cell, traj)
                              .nan_to_num())


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _torch_cell_gates(name, cell, u):
    """Update gate and retention of a GRU or LSTM from its definition: the states of
    ``torch.nn.GRUCell``/``LSTMCell`` with the cell's weights, and the gates computed from
    them by hand (GRU: ``g = 1 - z``, ``r = z``; LSTM: ``g = i``, ``r = f``), ``(B, T, n)``."""
    n = cell.hidden_size
    ref = (torch.nn.GRUCell if name == "gru" else torch.nn.LSTMCell)(M, n).double()
    ref.load_state_dict(cell.state_dict())
    W_ih, W_hh = ref.weight_ih.detach().numpy(), ref.weight_hh.detach().numpy()
    b = (ref.bias_ih + ref.bias_hh).detach().numpy()
    state, gates, retention = None, [], []
    with torch.no_grad():
        for t in range(u.shape[1]):
            h = np.zeros((u.shape[0], n)) if state is None else \
                (state if name == "gru" else state[0]).numpy()
            pre = u[:, t].numpy() @ W_ih.T + h @ W_hh.T + b
            if name == "gru":  # blocks r, z, n
                z = _sigmoid(pre[:, n:2 * n])
                gates.append(1 - z)
                retention.append(z)
            else:  # blocks i, f, g, o
                gates.append(_sigmoid(pre[:, :n]))
                retention.append(_sigmoid(pre[:, n:2 * n]))
            state = ref(u[:, t], state)
    return np.stack(gates, 1), np.stack(retention, 1)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_gate_product_of_gru_and_lstm_follows_their_gates(name):
    cell, traj = _setup(name, seed=5)
    gates, retention = _torch_cell_gates(name, cell, traj.inputs)
    for kind, x in (("update", gates), ("retention", retention)):
        P = gate_product(traj, kind).numpy()
        for t in range(T + 1):
            assert np.isnan(P[:, t, t + 1:]).all()
            for k in range(t + 1):
                ref = np.ones_like(x[:, 0])
                for j in range(k + 1, t + 1):
                    ref = ref * x[:, j - 1]
                np.testing.assert_allclose(P[:, t, k], ref.mean(-1), rtol=1e-10, atol=0,
                                           err_msg=f"{kind} t={t} k={k}")


@pytest.mark.parametrize("name, order", [("gru", 1), ("lstm", 1), ("multi_gate", 0)])
def test_rates_streamed_by_example_chunks_equal_the_whole_batch(name, order):
    """Guards chunk_size: chunks of 2 of 5 examples give the whole-batch tensor exactly, and
    effective_rate_summary gives its envelope and neuron CV (to rounding)."""
    cell = random_cell(name, M, N, True, 1)
    with torch.no_grad():
        traj = cell.unroll(random_inputs(5, T, M, 1))
    lags = [0, 4, 1, T + 1]
    whole = effective_learning_rates(cell, traj, lags=lags, order=order)
    chunked = effective_learning_rates(cell, traj, lags=lags, order=order, chunk_size=2)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0, equal_nan=True)
    summary = gs.effective_rate_summary(cell, traj, lags=lags, order=order, chunk_size=2)
    assert summary.lags.tolist() == lags and summary.chunk_size == 2
    torch.testing.assert_close(summary.envelope, envelope(whole), equal_nan=True)
    torch.testing.assert_close(summary.neuron_cv, neuron_cv(whole), equal_nan=True)
    assert math.isnan(summary.envelope[-1]) and not summary.envelope[:-1].isnan().any()


def test_rates_past_a_sequence_length_are_nan_and_left_out_of_the_reductions():
    """Guards traj.lengths in the rates: times past a length are NaN; the envelope, the
    neuron CV and the time scales are those of the valid steps only."""
    cell, traj = _setup("multi_gate")
    traj.lengths = torch.tensor([T, 3])
    mu = effective_learning_rates(cell, traj)
    assert mu[1, 4:].isnan().all() and not mu[1, 3, :4].isnan().any()
    assert not mu[0, T, :].isnan().any()
    valid = [mu[0, lag:, lag] for lag in range(T + 1)]
    f = envelope(mu)
    for lag in range(4):
        ref = torch.cat([valid[lag], mu[1, lag:4, lag]]).abs().mean()
        torch.testing.assert_close(f[lag], ref)
    summary = gs.effective_rate_summary(cell, traj, chunk_size=1)
    torch.testing.assert_close(summary.envelope, f, equal_nan=True)
    torch.testing.assert_close(summary.neuron_cv, neuron_cv(mu), equal_nan=True)
    r = traj.retention.expand(B, T, N)
    mean_r = torch.cat([r[0], r[1, :3]]).mean(0)
    torch.testing.assert_close(time_scales(cell, traj), -1 / mean_r.log())


def test_permuted_neuron_cv_equals_a_direct_loop_and_removes_neuron_identity():
    """Guards C3's null (``rate_cv_order0_null``): the CV of ``∏_j r_{j,π_j(q)}`` with the
    neuron index of every (example, time) step permuted, against a float64 loop over
    ``(b, t)`` with the same permutations; it is reproducible from the generator's seed, equals
    the real CV at ``ℓ = 1``, leaves out times past a length, and is far below the real CV for
    gates with persistent per-neuron values."""
    from gatescope.measures.rates import permuted_neuron_cv

    B, T, n, lags = 3, 7, 5, [0, 1, 3, 7, 9]
    g = torch.Generator().manual_seed(4)
    r = 0.3 + 0.6 * torch.rand(B, T, n, generator=g, dtype=torch.float64)
    got = permuted_neuron_cv(r, lags, torch.Generator().manual_seed(11))
    keys = torch.rand(B, T, n, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    shuffled = np.take_along_axis(r.numpy(), keys.argsort(-1).numpy(), axis=-1)
    for i, lag in enumerate(lags):
        cvs = []
        for b in range(B):
            for t in range(lag, T + 1):
                mu = np.prod(shuffled[b, t - lag:t], axis=0) if lag else np.ones(n)
                cvs.append(mu.std() / mu.mean())
        expected = np.median(cvs) if cvs else np.nan
        np.testing.assert_allclose(got[i].item(), expected, rtol=1e-12, atol=1e-15)
    again = permuted_neuron_cv(r, lags, torch.Generator().manual_seed(11))
    assert torch.equal(got.nan_to_num(-1), again.nan_to_num(-1))
    real = gs.measures.neuron_cv(rates_from_retention(r, lags))
    assert got[1].item() == pytest.approx(real[1].item())  # one step: permutation-invariant
    persistent = r[:, :1].expand(B, T, n)  # each neuron keeps its gate along time
    assert permuted_neuron_cv(persistent, [4], torch.Generator().manual_seed(0)).item() < \
        0.7 * gs.measures.neuron_cv(rates_from_retention(persistent, [4])).item()
    beyond = torch.zeros(B, T + 1, dtype=torch.bool)
    beyond[0, 5:] = True  # example 0 ends at t = 4
    masked = permuted_neuron_cv(r, [3], torch.Generator().manual_seed(11), beyond)
    cvs = [np.prod(shuffled[b, t - 3:t], axis=0) for b in range(B) for t in range(3, T + 1)
           if not (b == 0 and t >= 5)]
    np.testing.assert_allclose(masked.item(), np.median([m.std() / m.mean() for m in cvs]),
                               rtol=1e-12)


def rates_from_retention(r: torch.Tensor, lags) -> torch.Tensor:
    """``μ⁰`` ``(B, T+1, L, n)`` of a retention tensor by brute force (NaN where ``ℓ > t``)."""
    B, T, n = r.shape
    out = torch.full((B, T + 1, len(lags), n), math.nan, dtype=torch.float64)
    for i, lag in enumerate(lags):
        for t in range(lag, T + 1):
            out[:, t, i] = r[:, t - lag:t].prod(1)
    return out
