"""The ``families`` experiment: settings, a tiny run end to end with its report, resume."""

from __future__ import annotations

import csv

import pytest

from gatescope.cli import main
from gatescope.experiments import SettingsError, build_settings, experiment_class
from gatescope.experiments.families import FAMILIES, model_name, parse_model_name

TINY = ["steps=2", "checkpoints=0,2", "seeds=2", "seq_len=8", "hidden_size=4",
        "batch_size=3", "probe_batch=2", "gradient_examples=4", "rank=2", "rate_lags=1,3",
        "log_every=1", "layers=2"]


def _problems(**values) -> dict[str, str]:
    with pytest.raises(SettingsError) as err:
        build_settings(experiment_class("families").settings_model, values)
    return dict(err.value.problems)


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("cells", "gru,transformer", "'leaky', 'gru', 'lstm', 'min_gru', 'lru' or 'mamba'"),
    ("optimizers", "sgd,lion", "sgd"),
    ("layers", "1,3", "1 or 2"),
])
def test_bad_settings_name_the_field_and_the_allowed_values(key, value, allowed):
    problems = _problems(**{key: value})
    assert list(problems) == [key]
    assert allowed in problems[key]


def test_rank_above_the_gradient_examples_is_refused():
    problems = _problems(rank=9, gradient_examples=8)
    assert "gradient_examples=8" in problems["rank"]


def test_model_names_round_trip():
    assert parse_model_name(model_name("min_gru", 2)) == ("min_gru", 2)


def test_tiny_run_writes_rows_for_every_family_its_report_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "families", "--out", str(out), "--quiet", "--set", *TINY]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert f"{2 * len(FAMILIES)} group(s) run, 0 reused" in first
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    measured = {(r["cell"], r["optimizer"], r["metric"]) for r in rows}
    for family in FAMILIES:
        for optimizer in ("sgd", "adam"):
            for metric in ("sensitivity_profile", "fit_slope", "rate_cv_order1", "gradcov_ai",
                           "gradcov_ce", "loss"):
                assert (model_name(family, 2), optimizer, metric) in measured
    report = (out / "REPORT.md").read_text()
    assert "## Gate coupling across model families" in report
    assert "## Verdicts" not in report
    for family in FAMILIES:
        assert f"- {family}, 2 layer(s), sgd: μ̃(3)" in report
    assert "Finding: gradient AI_r, Adam against SGD: of 6 models, adam is lower in" in report
    assert (out / "figures" / "families_profiles.png").stat().st_size > 0
    assert (out / "report.html").exists()

    (out / "REPORT.md").unlink()
    assert main(args) == 0
    assert f"0 group(s) run, {2 * len(FAMILIES)} reused" in capsys.readouterr().out
    assert (out / "REPORT.md").read_text() == report


def test_the_memory_check_counts_the_models_state_not_hidden_size():
    """Mamba's state (SSM state and window) is far larger than ``hidden_size``: a probe batch
    whose Jacobians fit at ``hidden_size`` but not at mamba's state size is refused."""
    model = experiment_class("families").settings_model
    sizes = {"hidden_size": 256, "seq_len": 2000, "probe_batch": 64}
    build_settings(model, {**sizes, "cells": "leaky", "layers": 1})
    problems = _problems(**sizes, cells="mamba", mamba_d_state=16)
    assert "state size" in next(iter(problems))


def test_a_repeated_family_or_layer_count_is_refused():
    assert "once" in _problems(cells="gru,gru")["cells"]
    assert "once" in _problems(layers=[2, 2])["layers"]
