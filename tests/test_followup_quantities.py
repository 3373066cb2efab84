"""The follow-ups' probe quantities record what their measures compute, on the context's ψ
samples and rates (docs/learnability.md, docs/timescales.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gatescope as gs
from gatescope import metrics as M
from gatescope.measures import (
    effective_learning_rates,
    envelope,
    fitted_time_scales,
    learnability_window_from,
    mcculloch,
    phase,
    select_envelope_model,
    tail_exponent,
)
from gatescope.measures.detection import DETECTION_GRID
from gatescope.measures.matched import loss_steps, matched_statistic
from gatescope.measures.timescale_spectrum import PHASES

LAGS = [1, 2, 4, 8, 16, 24]


def _problem(cell_name: str = "multi_gate"):
    torch.manual_seed(0)
    cell = gs.make_cell(cell_name, input_size=3, hidden_size=12, dtype=torch.float64)
    model = gs.SequenceModel(cell, readout="all").double()
    u = torch.randn(8, 48, 3, dtype=torch.float64)
    y = u[..., :1].roll(4, dims=1)  # a lag-4 dependency: ψ has a signal
    return model, u, y


def test_label_tables_are_the_measures_own():
    assert tuple(PHASES) == M.PHASE_LABELS
    assert gs.measures.ENVELOPE_MODELS == M.ENVELOPE_MODEL_LABELS


def test_learnability_window_records_the_measure_on_the_psi_samples():
    model, u, y = _problem()
    record = gs.Probe(model, u, y, quantities=["learnability_window"], lags=LAGS).step(
        0, force=True)
    psi = matched_statistic(model, u, y, LAGS, torch.Generator().manual_seed(0))
    steps = loss_steps(model, *u.shape[:2])
    samples = psi[steps].T  # (L, S): every loss-bearing (b, t)
    traj = model.cell.unroll(u).detach()
    f = envelope(effective_learning_rates(model.cell, traj, LAGS, order=1))
    w = learnability_window_from(samples, LAGS, DETECTION_GRID, mcculloch, envelope=f)
    np.testing.assert_allclose(record["matched_alpha"], w.summary.alpha.numpy(), rtol=1e-12)
    np.testing.assert_allclose(record["required_samples"], w.n_required_continuous.numpy(),
                               rtol=1e-12)
    np.testing.assert_array_equal(record["learnability_window"], w.contiguous_window.numpy())
    assert record["learnability_window"].shape == (len(DETECTION_GRID),)
    np.testing.assert_allclose(record["scaling_slope"], w.scaling.slope, rtol=1e-12)
    # the window never shrinks with more samples
    assert (np.diff(record["learnability_window"]) >= 0).all()


def test_timescale_spectrum_records_tau_tail_model_and_phase():
    model, u, y = _problem()
    record = gs.Probe(model, u, y, quantities=["timescale_spectrum"], lags=LAGS).step(
        0, force=True)
    traj = model.cell.unroll(u).detach()
    mu = effective_learning_rates(model.cell, traj, LAGS, order=1)
    fit = fitted_time_scales(mu, LAGS)
    np.testing.assert_allclose(record["fitted_time_scale"], fit.tau.numpy(), rtol=1e-12)
    tail = tail_exponent(fit.tau, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(record["tail_beta"], tail.beta, rtol=1e-12)
    selection = select_envelope_model(LAGS, envelope(mu))
    assert record["envelope_model"] == float(selection.best)
    assert M.PHASE_LABELS[int(record["phase"])] == phase(selection, tail)
    weights = [record[m.name] for m in M.ENVELOPE_WEIGHTS]
    np.testing.assert_allclose(sum(weights), 1.0, rtol=1e-12)


def test_learnability_window_skips_where_psi_vanishes():
    model, u, y = _problem("lstm")  # the readout reads h, the retention acts on c
    probe = gs.Probe(model, u, y, quantities=["learnability_window"], lags=LAGS)
    record = probe.step(0, force=True)
    assert "scaling_slope" not in record
    assert any("ψ ≡ 0" in why for why in probe._notes["learnability_window"])


def test_learnability_window_skips_too_few_samples():
    model, u, y = _problem()
    probe = gs.Probe(model, u[:2, :40], y[:2, :40], quantities=["learnability_window"],
                     lags=LAGS)
    assert "scaling_slope" not in probe.step(0, force=True)
    assert any("at least 200 samples" in why for why in probe._notes["learnability_window"])


def test_timescale_spectrum_needs_three_lags():
    model, u, y = _problem()
    record = gs.Probe(model, u, y, quantities=["timescale_spectrum"], lags=[2, 5]).step(
        0, force=True)
    assert "tail_beta" not in record


def test_inspect_reports_the_spectrum_and_phase():
    torch.manual_seed(0)
    cell = gs.make_cell("leaky", input_size=3, hidden_size=8, alpha=0.1, dtype=torch.float64)
    with torch.no_grad():  # diag(J) = 1 - α exactly: the first-order μ is 0.9^ℓ
        cell.recurrent.weight.fill_diagonal_(0.0)
    result = gs.inspect(cell, torch.randn(4, 64, 3, dtype=torch.float64), quiet=True)
    spectrum = result.summary["units"][0]["spectrum"]
    # a constant retention 0.9: μ = 0.9^ℓ for every neuron, τ = -1/log 0.9 exactly
    assert spectrum["fitted_tau_median"] == pytest.approx(-1 / math.log(0.9), rel=1e-10)
    assert spectrum["phase"] == "collapsed" and spectrum["envelope_law"] == "exponential"
