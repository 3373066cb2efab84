"""One road for a measurement: a quantity registered in one place reaches a probe's record,
an experiment's ``results.csv`` and ``gatescope list metrics``; every metric an experiment
writes is declared once."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import gatescope as gs
from gatescope import metrics
from gatescope.cli import main
from gatescope.experiments.anisotropy import AnisotropySettings
from gatescope.experiments.profiles import ProfilesSettings
from gatescope.probes import registry


@pytest.fixture
def state_norm(monkeypatch):
    """A user quantity, declared in this one place (registries restored afterwards)."""
    monkeypatch.setattr(registry, "_QUANTITIES", registry._QUANTITIES.copy())
    monkeypatch.setattr(metrics, "_CATALOGUE", dict(metrics._CATALOGUE))

    @gs.register_quantity("state_norm", cost=0, metrics=[
        gs.declare_metric("state_norm_mean", "mean ‖h_t‖ over the probe batch and time"),
        gs.declare_metric("state_abs_per_lag", "mean |h_t| at t = ℓ", ("lag",))])
    def state_norm(ctx):
        states = ctx.trajectory.states
        return {"state_norm_mean": states[:, 1:].norm(dim=-1).mean(),
                "state_abs_per_lag": states[:, list(ctx.lags)].abs().mean((0, 2))}

    return state_norm


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_new_quantity_reaches_probe_results_csv_and_the_listing(state_norm, tmp_path,
                                                                   capsys):
    cell = gs.make_cell("multi_gate", input_size=2, hidden_size=5)
    model = gs.SequenceModel(cell, output_size=1)
    u, y = torch.randn(3, 9, 2), torch.randn(3, 1)
    record = gs.Probe(model, u, y, quantities=["state_norm"], lags=[1, 4])(0)
    states = cell.unroll(u).states.detach()
    np.testing.assert_allclose(record["state_norm_mean"], states[:, 1:].norm(dim=-1).mean())
    np.testing.assert_allclose(record["state_abs_per_lag"], states[:, [1, 4]].abs().mean((0, 2)))

    settings = ProfilesSettings(seeds=1, steps=2, checkpoints=(0, 2), seq_len=10, hidden_size=6,
                                probe_batch=2, rate_lags=(1, 3), schedule_lags=(1,),
                                cells=("multi_gate",), extra_quantities=("state_norm",))
    gs.run_experiment("profiles", settings, tmp_path / "run", jobs=1, quiet=True)
    rows = _rows(tmp_path / "run" / "results.csv")
    mine = [r for r in rows if r["metric"].startswith("state_")]
    assert {r["metric"] for r in mine} == {"state_norm_mean", "state_abs_per_lag"}
    assert sorted({r["lag"] for r in mine if r["metric"] == "state_abs_per_lag"}) == ["1", "3"]
    assert sorted({r["step"] for r in mine}) == ["0", "2"]

    assert main(["list", "metrics"]) == 0
    listing = capsys.readouterr().out
    assert "state_norm_mean" in listing and "mean ‖h_t‖ over the probe batch" in listing


def test_a_metric_name_means_one_thing():
    assert metrics.declare_metric("fit_r2", metrics.FIT_R2.definition,
                                  ("predictor",)) is not None  # the same again: fine
    with pytest.raises(ValueError, match="already declared"):
        metrics.declare_metric("fit_r2", "something else")
    with pytest.raises(ValueError, match="axes"):
        metrics.Metric("x_bad", "bad axes", ("nope",))
    names = [m.name for m in metrics.list_metrics()]
    assert len(names) == len(set(names))
    # the two dispersions of the effective rates are two names, not one
    assert {"rate_cv_order0", "rate_cv_order1"} <= set(names) and "rate_cv" not in names


def test_every_metric_the_experiments_write_is_declared_once(tmp_path, capsys):
    prof = ProfilesSettings(seeds=1, steps=2, checkpoints=(0, 2), seq_len=10, hidden_size=6,
                            probe_batch=2, rate_lags=(1, 3), schedule_lags=(1,),
                            cells=("leaky", "scalar_gate"))
    aniso = AnisotropySettings(seeds=1, steps=2, checkpoints=(0, 2), seq_len=12, hidden_size=6,
                               probe_batch=3, lags=(1, 4), samples_per_lag=4, rank=3,
                               gradient_examples=4, tasks=("adding",), design="paper")
    gs.run_experiment("profiles", prof, tmp_path / "p", jobs=1, quiet=True)
    gs.run_experiment("anisotropy", aniso, tmp_path / "a", jobs=1, quiet=True)
    written = {r["metric"] for d in ("p", "a") for r in _rows(tmp_path / d / "results.csv")}
    assert main(["list", "metrics"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()
              if line.startswith("  ") and not line.startswith("      ")]
    assert all(listed.count(name) == 1 for name in written), written
