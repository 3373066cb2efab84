"""The matched statistic ψ_t(ℓ) and the exact-transport envelope (float64 references built from
autograd and from the definitions written out, never from the streamed passes)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from conftest import random_cell, random_inputs
from torch.func import functional_call, jvp

import gatescope as gs
from gatescope.dynamics.jacobians import jacobians_autograd
from gatescope.measures import rates
from gatescope.measures.envelopes import (
    DEFAULT_ENDS,
    envelope_agreement,
    envelope_ends,
    exact_envelope,
    first_order_envelope,
)
from gatescope.measures.matched import (
    loss_steps,
    matched_statistic,
    oriented,
    parameter_direction,
    readout_reads_retention,
)

B, T, M, N = 3, 7, 2, 4
LAGS = [0, 1, 2, 3, 5, 7, 9]  # 9 > T: NaN throughout


def _model(name: str, readout: str = "all", seed: int = 0, **options) -> gs.SequenceModel:
    torch.manual_seed(seed)
    cell = gs.make_cell(name, M, N, dtype=torch.float64, **options)
    return gs.SequenceModel(cell, output_size=2, readout=readout)


def _batch(model: gs.SequenceModel, seed: int = 0):
    u = random_inputs(B, T, M, seed)
    gen = torch.Generator().manual_seed(seed + 7)
    shape = (B, T, 2) if model.readout_kind == "all" else (B, 2)
    return u, torch.randn(shape, generator=gen, dtype=torch.float64)


# ------------------------------------------------------------------ references


def reference_tangents(cell, u, w, lengths=None):
    """``v_s = (∂h_s/∂θ)[w]`` by ``torch.func.jvp`` of the unroll written out step by step."""
    params = {k: p.detach() for k, p in cell.named_parameters()}

    def states(p):
        h = u.new_zeros(u.shape[0], cell.state_size)
        out = [h]
        for t in range(u.shape[1]):
            new = functional_call(cell, p, (h, u[:, t]))
            h = new if lengths is None else torch.where((lengths > t).unsqueeze(-1), new, h)
            out.append(h)
        return torch.stack(out, 1)

    return jvp(states, (params,), ({k: w[k] for k in params},))[1]


def reference_adjoints(model, states, y, mask=None):
    """``δ_t = ∂L_b/∂h_t`` of the MSE readout written out: ``2 (W h_t + b - y_t) W`` times
    the step's weight in ``B`` times the loss (``1/(T·out)`` per step, ``mask/Σmask`` with a
    mask, ``1/out`` at ``T`` for readout "last"); zero on the entries the readout skips."""
    W, b = model.readout.weight.detach(), model.readout.bias.detach()
    n_out = W.shape[0]
    h = states[..., : model.cell.hidden_size]
    delta = torch.zeros_like(states)
    if model.readout_kind == "last":
        err = h[:, -1] @ W.T + b - y
        delta[:, -1, : h.shape[-1]] = 2 * err @ W / n_out
        return delta
    err = h[:, 1:] @ W.T + b - y
    weight = (torch.full(err.shape[:2], 1.0 / err.shape[1], dtype=err.dtype) if mask is None
              else mask * states.shape[0] / mask.sum())  # (B, T)
    delta[:, 1:, : h.shape[-1]] = 2 * (weight.unsqueeze(-1) * err) @ W / n_out
    return delta


def reference_rates(cell, traj, lags):
    """First-order ``μ`` from its definition: ``μ⁰ = ∏_j r_j`` over ``j = t-ℓ+1..t`` and
    ``μ¹ = d/dε ∏_j (r_j + ε d_j)`` at ``ε = 0`` (by ``torch.func.jvp``), with
    ``d = diag(J) - r`` from ``torch.func`` Jacobians; NaN where ``ℓ > t`` or past a length."""
    J = jacobians_autograd(cell, traj)
    n = cell.retention_size
    r = traj.retention.expand(*traj.retention.shape[:-1], n)
    d = J.diagonal(dim1=-2, dim2=-1)[..., -n:] - r
    mu = torch.full((traj.batch_size, traj.seq_len + 1, len(lags), n), math.nan,
                    dtype=torch.float64)
    for i, lag in enumerate(lags):
        for t in range(lag, traj.seq_len + 1):
            rw, dw = r[:, t - lag:t], d[:, t - lag:t]
            p0, p1 = jvp(lambda e, rw=rw, dw=dw: (rw + e * dw).prod(1),
                         (torch.zeros((), dtype=torch.float64),),
                         (torch.ones((), dtype=torch.float64),))
            mu[:, t, i] = p0 + p1
    if traj.lengths is not None:
        past = torch.arange(traj.seq_len + 1) > traj.lengths.unsqueeze(-1)
        mu[past] = math.nan
    return mu


def reference_psi(model, u, y, lags, seed, mask=None, lengths=None):
    cell = model.cell
    w = parameter_direction(cell, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        traj = cell.unroll(u, lengths=lengths)
    v = reference_tangents(cell, u, w, lengths)
    delta = reference_adjoints(model, traj.states, y, mask)
    mu = reference_rates(cell, traj, lags)
    n = cell.retention_size
    psi = torch.full((u.shape[0], u.shape[1] + 1, len(lags)), math.nan, dtype=torch.float64)
    for i, lag in enumerate(lags):
        for t in range(lag, u.shape[1] + 1):
            psi[:, t, i] = (mu[:, t, i] * delta[:, t, -n:] * v[:, t - lag, -n:]).sum(-1)
    return psi


# ------------------------------------------------------------------ ψ


@pytest.mark.parametrize("name", ["leaky", "multi_gate", "gru", "min_gru"])
def test_psi_equals_the_autograd_reference(name):
    model = _model(name)
    u, y = _batch(model)
    psi = matched_statistic(model, u, y, LAGS, torch.Generator().manual_seed(3))
    ref = reference_psi(model, u, y, LAGS, 3)
    assert psi.shape == (B, T + 1, len(LAGS)) and psi.dtype == torch.float64
    assert psi[:, :, -1].isnan().all() and psi[:, 0, 1:].isnan().all()
    assert ref[:, 1:, :-1].nan_to_num().abs().amax() > 1e-4  # the reference is not zero
    torch.testing.assert_close(psi, ref, rtol=1e-10, atol=1e-13, equal_nan=True)


@pytest.mark.parametrize("name", ["multi_gate", "gru"])
def test_psi_with_mask_and_lengths_equals_the_reference(name):
    model = _model(name, seed=1)
    u, y = _batch(model, seed=1)
    lengths = torch.tensor([T, 4, 2])
    mask = (torch.arange(1, T + 1) <= lengths.unsqueeze(-1)).double()
    psi = matched_statistic(model, u, y, LAGS, torch.Generator().manual_seed(0), mask=mask,
                            lengths=lengths, chunk_size=1)
    ref = reference_psi(model, u, y, LAGS, 0, mask, lengths)
    assert psi[1, 5:].isnan().all() and not psi[0, 5:, :5].isnan().any()
    torch.testing.assert_close(psi, ref, rtol=1e-10, atol=1e-13, equal_nan=True)


def test_psi_readout_last_lives_at_the_last_step():
    model = _model("gru", readout="last")
    u, y = _batch(model)
    psi = matched_statistic(model, u, y, LAGS, torch.Generator().manual_seed(5))
    ref = reference_psi(model, u, y, LAGS, 5)
    torch.testing.assert_close(psi, ref, rtol=1e-10, atol=1e-13, equal_nan=True)
    defined = ~psi[:, :-1].isnan()
    assert (psi[:, :-1][defined] == 0).all() and (psi[:, -1, :-2] != 0).all()
    assert (psi[:, :, 5][~psi[:, :, 5].isnan()] == 0).all()  # ℓ = T: v_0 = 0
    steps = loss_steps(model, B, T)
    assert steps[:, -1].all() and not steps[:, :-1].any()


def test_psi_vanishes_where_the_readout_skips_the_retention():
    model = _model("lstm")  # readout reads h of [h; c]; the retention acts on c
    u, y = _batch(model)
    assert not readout_reads_retention(model) and readout_reads_retention(_model("gru"))
    psi = matched_statistic(model, u, y, LAGS, torch.Generator().manual_seed(0))
    defined = ~psi.isnan()
    assert defined.any() and (psi[defined] == 0).all()


def test_streamed_psi_equals_the_unstreamed_contraction(monkeypatch):
    for name in ("multi_gate", "min_gru"):
        model = _model(name, seed=2)
        u, y = _batch(model, seed=2)
        lags = [3, 0, 2, 3]  # out of order, repeated
        gen = torch.Generator().manual_seed(11)
        cell = model.cell
        w = parameter_direction(cell, gen)
        with torch.no_grad():
            traj = cell.unroll(u)
        v = reference_tangents(cell, u, w)[..., -cell.retention_size:]
        delta = gs.measures.anisotropy.state_gradients(model, traj.states, y)
        delta = delta[..., -cell.retention_size:]
        mu = gs.effective_learning_rates(cell, traj, lags)  # (B, T+1, L, n) held whole
        whole = torch.full((B, T + 1, len(lags)), math.nan, dtype=torch.float64)
        for i, lag in enumerate(lags):
            whole[:, lag:, i] = (mu[:, lag:, i] * delta[:, lag:] * v[:, : T + 1 - lag]).sum(-1)
        monkeypatch.setattr(rates, "CHUNK_ELEMENTS", 2 * cell.retention_size)  # time blocks
        for chunk in (None, 1, 2):
            psi = matched_statistic(model, u, y, lags, torch.Generator().manual_seed(11),
                                    chunk_size=chunk)
            torch.testing.assert_close(psi, whole, rtol=1e-12, atol=1e-15, equal_nan=True)
        monkeypatch.undo()


def test_direction_is_a_seeded_unit_vector_and_v_is_its_derivative():
    cell = _model("multi_gate").cell
    w = parameter_direction(cell, torch.Generator().manual_seed(4))
    again = parameter_direction(cell, torch.Generator().manual_seed(4))
    other = parameter_direction(cell, torch.Generator().manual_seed(5))
    assert set(w) == {k for k, _ in cell.named_parameters()}
    assert math.isclose(sum(float(x.square().sum()) for x in w.values()), 1.0, rel_tol=1e-14)
    assert all(torch.equal(w[k], again[k]) for k in w)
    assert not all(torch.equal(w[k], other[k]) for k in w)
    # v against central finite differences of the real unroll along w
    u = random_inputs(B, T, M, 0)
    v = reference_tangents(cell, u, w)
    eps = 1e-5
    params = {k: p.detach() for k, p in cell.named_parameters()}
    plus = {k: p + eps * w[k] for k, p in params.items()}
    minus = {k: p - eps * w[k] for k, p in params.items()}

    fd = (_unroll_with(cell, plus, u) - _unroll_with(cell, minus, u)) / (2 * eps)
    torch.testing.assert_close(v, fd, rtol=1e-6, atol=1e-9)


def _unroll_with(cell, params, u):
    """The cell's own ``unroll`` states with its parameters set to ``params`` (restored)."""
    saved = {k: q.detach().clone() for k, q in cell.named_parameters()}
    with torch.no_grad():
        for k, q in cell.named_parameters():
            q.copy_(params[k])
        states = cell.unroll(u).states
        for k, q in cell.named_parameters():
            q.copy_(saved[k])
    return states


def test_oriented_makes_every_lag_mean_positive():
    psi = torch.tensor([[[1.0, -3.0, 0.0, math.nan], [2.0, 1.0, 0.0, math.nan]],
                        [[math.nan, -1.0, 0.0, math.nan], [-0.5, 0.5, 0.0, math.nan]]])
    out = oriented(psi)
    torch.testing.assert_close(out[..., 0], psi[..., 0], equal_nan=True)
    torch.testing.assert_close(out[..., 1], -psi[..., 1])
    assert (out[..., 2] == 0).all() and out[..., 3].isnan().all()
    assert (out.nanmean((0, 1))[:3] >= 0).all()
    with pytest.raises(ValueError, match="psi must be"):
        oriented(psi[0])


def test_psi_refuses_bad_input():
    model = _model("leaky")
    u, y = _batch(model)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="lags must be >= 0"):
        matched_statistic(model, u, y, [1, -1], gen)
    with pytest.raises(TypeError, match="not an integer lag"):
        matched_statistic(model, u, y, [1.5], gen)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        matched_statistic(model, u, y, [1], 0)
    with pytest.raises(ValueError, match="chunk_size must be"):
        matched_statistic(model, u, y, [1], gen, chunk_size=0)
    with pytest.raises(TypeError, match="gs.SequenceModel"):
        matched_statistic(model.cell, u, y, [1], gen)


# ------------------------------------------------------------------ envelopes


def reference_exact(cell, traj, lags, ends=None):
    """``mean_{b,t} Σ_q |[M_{t,t-ℓ}]_qq|`` from ``gs.transport`` of ``torch.func`` Jacobians,
    at every ``t ≥ ℓ`` (or at ``ends``), times past a length left out."""
    J = jacobians_autograd(cell, traj)
    n, T_ = cell.retention_size, traj.seq_len
    valid = torch.ones(traj.batch_size, T_ + 1, dtype=torch.bool)
    if traj.lengths is not None:
        valid = torch.arange(T_ + 1) <= traj.lengths.unsqueeze(-1)
    out = []
    for lag in lags:
        values = []
        for t in (range(lag, T_ + 1) if ends is None else ends):
            diag = gs.transport(J, t, t - lag).diagonal(dim1=-2, dim2=-1)[:, -n:]
            values.append(diag.abs().sum(-1)[valid[:, t]])
        out.append(torch.cat(values).mean())
    return torch.stack(out)


def reference_first_order(cell, traj, lags, ends=None):
    mu = reference_rates(cell, traj, lags).abs().sum(-1)  # (B, T+1, L)
    if ends is not None:
        mu = mu[:, ends]
    return torch.stack([mu[..., i][~mu[..., i].isnan()].mean() for i in range(len(lags))])


def _trajectory(name, seed=0, lengths=None, **options):
    cell = random_cell(name, M, N, True, seed) if not options else _model(
        name, seed=seed, **options).cell
    with torch.no_grad():
        return cell, cell.unroll(random_inputs(B, T, M, seed), lengths=lengths)


@pytest.mark.parametrize("name", ["min_gru", "lru"])
def test_structured_exact_envelope_equals_dense_products(name):
    cell, traj = _trajectory(name, lengths=torch.tensor([T, 5, 3]))
    lags = [0, 1, 2, 4, 7, 2]
    assert envelope_ends(cell, traj, lags) is None  # every t >= ℓ
    exact = exact_envelope(cell, traj, lags)
    torch.testing.assert_close(exact, reference_exact(cell, traj, lags), rtol=1e-10, atol=0)
    few = [0, 1, 4, 2]
    at = exact_envelope(cell, traj, few, ends=[7, 4, 7, 5])
    torch.testing.assert_close(at, reference_exact(cell, traj, few, [4, 5, 7]), rtol=1e-10,
                               atol=0)
    first = first_order_envelope(cell, traj, lags)
    torch.testing.assert_close(first, reference_first_order(cell, traj, lags), rtol=1e-10,
                               atol=0)
    if name == "min_gru":  # a nonnegative diagonal: first order is exact
        torch.testing.assert_close(first, exact, rtol=1e-12, atol=0)
    else:  # rotation blocks: cos(Σθ) against 1 + Σ(cos θ - 1)
        assert (first[2:] - exact[2:]).abs().amax() > 1e-3


@pytest.mark.parametrize("name", ["multi_gate", "gru", "lstm"])
def test_dense_exact_envelope_equals_dense_products(name):
    cell, traj = _trajectory(name, seed=3, lengths=torch.tensor([T, 6, 4]))
    lags = [5, 0, 1, 3, 1]
    ends = envelope_ends(cell, traj, lags)
    assert ends == [5, 6, 7] and len(ends) <= DEFAULT_ENDS
    ref = reference_exact(cell, traj, lags, ends)
    for chunk in (None, 1):
        torch.testing.assert_close(exact_envelope(cell, traj, lags, chunk_size=chunk), ref,
                                   rtol=1e-10, atol=0)
    J = gs.jacobians(cell, traj)
    torch.testing.assert_close(exact_envelope(cell, traj, lags, J=J), ref, rtol=1e-10, atol=0)
    first = first_order_envelope(cell, traj, lags)
    torch.testing.assert_close(first, reference_first_order(cell, traj, lags, ends),
                               rtol=1e-10, atol=0)
    torch.testing.assert_close(first_order_envelope(cell, traj, lags, J=J), first, rtol=1e-12,
                               atol=0)
    assert ref[1] == first[1] == cell.retention_size  # lag 0: M = I, μ = 1


def test_envelopes_refuse_bad_input():
    cell, traj = _trajectory("multi_gate")
    with pytest.raises(ValueError, match="lags must be"):
        exact_envelope(cell, traj, [T + 1])
    with pytest.raises(ValueError, match="ends must be"):
        exact_envelope(cell, traj, [3], ends=[2])
    with pytest.raises(TypeError, match="ends must be"):
        first_order_envelope(cell, traj, [3], ends=[4.5])
    with pytest.raises(ValueError, match="chunk_size must be"):
        exact_envelope(cell, traj, [3], chunk_size=-1)
    other, _ = _trajectory("gru")
    with pytest.raises(ValueError, match="not by this"):
        exact_envelope(other, traj, [1])


def test_agreement_of_equal_and_of_steeper_envelopes():
    lags = [0, 1, 2, 4, 8, 16]
    ell = torch.tensor(lags, dtype=torch.float64)
    exact = 3 * torch.exp(-0.1 * ell)
    same = envelope_agreement(exact, exact.clone(), lags)
    assert same.rank_correlation == pytest.approx(1, abs=1e-14)
    assert same.slope_ratio == pytest.approx(1, abs=1e-14) and same.lags == 6
    steeper = envelope_agreement(exact, 2 * torch.exp(-0.3 * ell), lags)
    assert steeper.rank_correlation == pytest.approx(1, abs=1e-14)
    assert steeper.slope_ratio == pytest.approx(3, rel=1e-12)
    assert steeper.exact_slope == pytest.approx(-0.1, rel=1e-12)
    # a first-order envelope that rises: ranks reversed, slope of the other sign
    rising = envelope_agreement(exact, torch.exp(0.05 * ell), lags)
    assert rising.rank_correlation == pytest.approx(-1, abs=1e-14)
    assert rising.slope_ratio == pytest.approx(-0.5, rel=1e-12)


def test_agreement_ranks_ties_and_skips_undefined_lags():
    lags = [1, 2, 3, 4, 5]
    exact = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    first = torch.tensor([4.0, 4.0, 2.0, 1.0, math.nan], dtype=torch.float64)
    res = envelope_agreement(exact, first, lags)
    # scipy.stats.spearmanr([5, 4, 3, 2], [4, 4, 2, 1]): ranks (3,2,1,0) vs (2.5,2.5,1,0)
    a = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64) - 1.5
    b = torch.tensor([2.5, 2.5, 1.0, 0.0], dtype=torch.float64) - 1.5
    expected = float((a * b).sum() / (a.norm() * b.norm()))
    assert res.lags == 4 and res.rank_correlation == pytest.approx(expected, abs=1e-14)
    assert math.isnan(envelope_agreement(exact, exact * 0, lags).rank_correlation)
    with pytest.raises(ValueError, match="shape"):
        envelope_agreement(exact, first[:3], lags)


# ------------------------------------------------------------------ probe quantities


def test_probe_records_the_matched_statistic_and_both_envelopes():
    model = _model("multi_gate", seed=4)
    u, y = _batch(model, seed=4)
    lags = [1, 2, 3]
    probe = gs.Probe(model, u, y, quantities=["matched_statistic", "exact_envelope"],
                     lags=lags)
    rec = probe(0)
    psi = matched_statistic(model, u, y, lags, torch.Generator().manual_seed(0))
    samples = psi[:, 1:]  # readout "all": the loss steps are t = 1..T
    mean = samples.nanmean((0, 1))
    torch.testing.assert_close(torch.as_tensor(rec["matched_mean"]), mean)
    std = ((samples - mean).square().nanmean((0, 1))).sqrt()
    torch.testing.assert_close(torch.as_tensor(rec["matched_std"]), std)
    positive = (samples > 0).sum((0, 1)) / (~samples.isnan()).sum((0, 1))
    torch.testing.assert_close(torch.as_tensor(rec["matched_positive_fraction"]),
                               positive.double())
    with torch.no_grad():
        traj = model.cell.unroll(u)
    exact = exact_envelope(model.cell, traj, lags)
    first = first_order_envelope(model.cell, traj, lags)
    torch.testing.assert_close(torch.as_tensor(rec["exact_envelope"]), exact)
    torch.testing.assert_close(torch.as_tensor(rec["first_order_envelope"]), first)
    agreement = envelope_agreement(exact, first, lags)
    assert float(rec["envelope_rank_correlation"]) == pytest.approx(agreement.rank_correlation)
    assert float(rec["envelope_slope_ratio"]) == pytest.approx(agreement.slope_ratio)


def test_probe_skips_the_matched_statistic_of_an_lstm():
    model = _model("lstm")
    u, y = _batch(model)
    probe = gs.Probe(model, u, y, quantities=["matched_statistic"], lags=[1, 2])
    assert "matched_mean" not in probe(0)
    assert "readout" in next(iter(probe.notes["matched_statistic"]))


def test_the_docs_example_runs(capsys):
    page = Path(__file__).resolve().parents[1] / "docs" / "matched-statistic.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.M | re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], str(page), "exec"), {"__name__": "docs_example"})
    assert "EnvelopeAgreement(rank_correlation=" in capsys.readouterr().out


def test_psi_refuses_a_result_over_the_dense_budget():
    model = _model("multi_gate")
    u, y = _batch(model)
    with gs.dense_budget_limit(1000), pytest.raises(gs.DenseBudgetExceeded,
                                                    match="gs.matched_statistic"):
        matched_statistic(model, u, y, LAGS, torch.Generator().manual_seed(0), chunk_size=1)
