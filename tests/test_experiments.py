"""The paper's experiments: fidelity switches, row contents, designs and settings checks."""

from __future__ import annotations

import pytest
import torch
from conftest import random_cell, random_inputs
from references import post_update_gate_term
from torch.func import jacfwd

import gatescope as gs
from gatescope.dynamics.gate_term import gate_split
from gatescope.dynamics.transport import ordered_sensitivities
from gatescope.experiments import SettingsError, build_settings
from gatescope.experiments.anisotropy import AnisotropyExperiment, AnisotropySettings
from gatescope.experiments.expansion import (
    ExpansionExperiment,
    ExpansionSettings,
    sinusoid_inputs,
)
from gatescope.experiments.profiles import ProfilesExperiment, ProfilesSettings


def _quiet(done, total):
    pass


def _metrics(rows):
    return {r["metric"] for r in rows}


def test_reversed_order_sensitivities_are_norms_of_reversed_products():
    cell = random_cell("multi_gate", 2, 4, True, 0)
    with torch.no_grad():
        J = gs.jacobians(cell, cell.unroll(random_inputs(2, 6, 2, 0)))
    S = ordered_sensitivities(J, "reversed")
    for t in range(7):
        for k in range(t + 1):
            M = torch.eye(4, dtype=J.dtype).expand(2, 4, 4)
            for s in range(k + 1, t + 1):
                M = M @ J[:, s - 1]  # J_{k+1} ⋯ J_t: earlier factors on the left
            torch.testing.assert_close(S[:, t, k], torch.linalg.matrix_norm(M, 2),
                                       rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="chain"):
        ordered_sensitivities(J, "sideways")


def test_updated_gate_term_uses_the_state_after_the_update():
    cell = random_cell("scalar_gate", 2, 3, False, 1)
    traj = cell.unroll(random_inputs(2, 5, 2, 1))
    A, B = gate_split(cell, traj, "previous")
    torch.testing.assert_close(B, gs.jacobian_split(cell, traj)[1])
    _, B_post = gate_split(cell, traj, "updated")
    torch.testing.assert_close(B_post, post_update_gate_term(cell, traj))
    with pytest.raises(ValueError, match="gate_term"):
        gate_split(random_cell("leaky", 2, 3, False, 0), traj, "updated")


def test_expansion_rows_and_slopes(tmp_path):
    settings = ExpansionSettings(seeds=2, seq_len=40, hidden_size=16)
    exp = ExpansionExperiment()
    rows = exp.run_group(settings, exp.groups(settings)[1], tmp_path, _quiet)
    assert _metrics(rows) == {"truncation_error", "remainder_c2", "error_slope",
                              "correction_ratio_median", "correction_ratio"}
    slopes = [r["value"] for r in rows if r["metric"] == "error_slope"]
    assert len(slopes) == 2 and all(1.8 <= s <= 2.2 for s in slopes)
    paper = exp.run_group(settings.model_copy(update={"gate_term": "updated"}),
                          exp.groups(settings)[1], tmp_path, _quiet)
    ratio = [r["value"] for r in rows if r["metric"] == "correction_ratio_median"]
    assert ratio != [r["value"] for r in paper if r["metric"] == "correction_ratio_median"]


def test_profiles_rows(tmp_path):
    settings = ProfilesSettings(seeds=2, steps=4, checkpoints=(0, 4), seq_len=20,
                                hidden_size=12, probe_batch=3, rate_lags=(1, 4),
                                schedule_lags=(1, 3), cells=("leaky", "scalar_gate"))
    exp = ProfilesExperiment()
    leaky, scalar = (exp.run_group(settings, g, tmp_path / g.key, _quiet)
                     for g in exp.groups(settings))
    expected = {"sensitivity_profile", "predicted_profile", "zeroth_order_profile",
                "fit_slope", "fit_r2", "envelope", "rate_cv_order1", "rate_cv_order0",
                "schedule_multiplier", "retention_mean", "loss"}
    assert _metrics(scalar) == expected
    assert {r["step"] for r in scalar if r["metric"] == "fit_r2"} == {0, 4}
    assert all(r["value"] == 0 for r in scalar if r["metric"] == "rate_cv_order0")
    kernel = [r for r in leaky if r["metric"] == "schedule_multiplier" and r["lag"] == 3]
    assert all(r["value"] == pytest.approx(settings.lr * 0.2**3) for r in kernel)
    first = [r["value"] for r in scalar if r["metric"] == "sensitivity_profile" and r["lag"] == 1]
    assert first == [1.0] * 4  # normalised at lag 1, per seed and checkpoint


def test_anisotropy_designs_and_rows(tmp_path):
    common = dict(seeds=2, steps=3, checkpoints=(0, 3), seq_len=20, hidden_size=12,
                  tasks=("adding",), lags=(1, 4), samples_per_lag=4, gradient_examples=8,
                  probe_batch=4, rank=4)
    paper = AnisotropySettings(design="paper", **common)
    exp = AnisotropyExperiment()
    assert [(g.cell, g.optimizer) for g in exp.groups(paper)] == [
        ("plain", "adam"), ("scalar_gate", "sgd"), ("multi_gate", "sgd")]
    factorial = AnisotropySettings(**common)
    assert [(g.cell, g.optimizer) for g in exp.groups(factorial)] == [
        ("plain", "adam"), ("scalar_gate", "sgd"), ("multi_gate", "sgd"),  # the paper's first
        ("plain", "sgd"), ("scalar_gate", "adam"), ("multi_gate", "adam")]
    two_tasks = AnisotropySettings(**common | {"tasks": ("adding", "ar2"),
                                               "cells": ("plain", "multi_gate")})
    assert [g.key for g in exp.groups(two_tasks)] == [
        "adding__plain__adam", "adding__multi_gate__sgd", "ar2__plain__adam",
        "ar2__multi_gate__sgd", "adding__plain__sgd", "adding__multi_gate__adam",
        "ar2__plain__sgd", "ar2__multi_gate__adam"]
    rows = exp.run_group(factorial.model_copy(update={"fixed_batch": True}),
                         exp.groups(factorial)[5], tmp_path, _quiet)
    assert _metrics(rows) == {"jacobian_ai", "jacobian_ce", "alignment", "alignment_baseline",
                              "gradcov_ai", "gradcov_ce", "step_cv", "step_ai", "rate_cv_order0",
                              "loss"}
    assert {r["step"] for r in rows if r["metric"] == "step_cv"} == {3}  # Adam: after a step


def test_the_paper_codes_spectrum_settings_change_only_what_the_code_changes(tmp_path):
    """Guards the anisotropy experiment's spectrum settings (issues 15, 17): ce_denominator=16
    moves the transport CE only (the paper's code takes the gradient covariance's CE over all
    its singular values); spectrum_epsilon=1e-12 lowers the plain cell's long-lag transport
    CE to almost 0, where its products have vanished."""
    common = dict(design="paper", seeds=2, steps=1, checkpoints=(0,), seq_len=40,
                  hidden_size=20, tasks=("adding",), lags=(1, 30), samples_per_lag=4,
                  gradient_examples=16, probe_batch=4, rank=4)
    exp = AnisotropyExperiment()

    def values(**switch):
        settings = AnisotropySettings(**common | switch)
        rows = exp.run_group(settings, exp.groups(settings)[0], tmp_path / str(switch), _quiet)
        return {(r["metric"], r["seed"], r["lag"]): r["value"] for r in rows
                if r["metric"] in ("jacobian_ce", "gradcov_ce", "gradcov_ai")}

    default, top16, eps = values(), values(ce_denominator=16), values(spectrum_epsilon=1e-12)
    for key, v in default.items():
        if key[0] == "gradcov_ce":
            assert top16[key] == v  # over all singular values in both
    assert any(top16[k] != v for k, v in default.items() if k[0] == "jacobian_ce")
    long_ce = [(default[k], eps[k]) for k in default if k[0] == "jacobian_ce" and k[2] == 30]
    assert all(d > 0.5 and e < 1e-3 for d, e in long_ce), long_ce


@pytest.mark.parametrize("assignment, key", [
    ({"lags": [1, 30]}, "lags"), ({"rank": 80}, "rank"), ({"design": "mixed"}, "design"),
    ({"lr": {"sgd": 0.1}}, "lr"),
])
def test_anisotropy_settings_are_checked(assignment, key):
    with pytest.raises(SettingsError, match=key):
        build_settings(AnisotropySettings, {"seq_len": 20, "hidden_size": 16,
                                            "tasks": ["adding"], **assignment})


@pytest.mark.parametrize("assignment, key", [
    ({"eps": [-1.0, 1.0]}, "eps"), ({"fit_points": 12}, "fit_points"), ({"device": "tpu"},
                                                                         "device"),
])
def test_expansion_settings_are_checked(assignment, key):
    with pytest.raises(SettingsError, match=key):
        build_settings(ExpansionSettings, assignment)
    assert build_settings(ExpansionSettings, {"seeds": [3, 7]}).seeds == (3, 7)


def test_paper_design_needs_a_rate_for_each_of_its_arms():
    with pytest.raises(SettingsError, match="adam"):
        build_settings(AnisotropySettings, {"design": "paper", "optimizers": ["sgd"],
                                            "lr": {"sgd": 0.01}})


def _hand_reversed_errors(settings, cell_name, seed):
    """``E(ε)`` of the reversed product ``(A_1 + εB_1)(A_2 + εB_2) ⋯ (A_T + εB_T)`` (earlier
    factors on the left), multiplied out by hand; the first-order term is ``d/dε`` at 0 by
    ``torch.func.jacfwd``. The cell and inputs are drawn as the experiment draws them."""
    gen = torch.Generator().manual_seed(seed)
    cell = gs.make_cell(cell_name, settings.input_size, settings.hidden_size,
                        dtype=torch.float64)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(settings.weight_std * torch.randn(p.shape, generator=gen,
                                                      dtype=torch.float64))
        u = sinusoid_inputs(settings.seq_len, settings.input_size, settings.noise_std, gen,
                            torch.float64)
        A, B = gs.jacobian_split(cell, cell.unroll(u))

    def product(e):
        M = torch.eye(settings.hidden_size, dtype=torch.float64)
        for j in range(settings.seq_len):
            M = M @ (A[0, j] + e * B[0, j])
        return M

    zero = torch.zeros((), dtype=torch.float64)
    first = jacfwd(product)(zero)
    return [torch.linalg.matrix_norm(product(torch.tensor(e, dtype=torch.float64))
                                     - product(zero) - e * first).item()
            for e in settings.eps]


def test_reversed_product_order_expands_the_reversed_product(tmp_path):
    """product_order="reversed": the truncation errors are those of the product written out
    in reversed order, and differ from the chain-rule order's."""
    settings = ExpansionSettings(seeds=(3,), cells=["multi_gate"], seq_len=12, hidden_size=6,
                                 product_order="reversed")
    exp = ExpansionExperiment()
    group = exp.groups(settings)[0]
    rows = exp.run_group(settings, group, tmp_path, _quiet)
    errors = {r["eps"]: r["value"] for r in rows if r["metric"] == "truncation_error"}
    expected = _hand_reversed_errors(settings, "multi_gate", 3)
    assert sorted(errors) == sorted(settings.eps)
    for eps, ref in zip(settings.eps, expected, strict=True):
        assert errors[eps] == pytest.approx(ref, rel=1e-6 if eps >= 1e-2 else 1e-3, abs=1e-13)
    chain = exp.run_group(settings.model_copy(update={"product_order": "chain"}), group,
                          tmp_path, _quiet)
    chain_big = [r["value"] for r in chain if r["metric"] == "truncation_error" and
                 r["eps"] == 1.0]
    assert chain_big[0] != pytest.approx(errors[1.0], rel=1e-3)


def test_the_correction_ratio_median_interpolates_an_even_count():
    """Guards correction_ratio_median (issue 17): the interpolated median of ρ_j, not
    torch.median's lower middle value (2.5, not 2, for ρ = 1, 2, 3, 4)."""
    from types import SimpleNamespace

    from gatescope.experiments.base import Group
    from gatescope.experiments.expansion import ExpansionExperiment

    ex = SimpleNamespace(eps=torch.tensor([0.1]), error=torch.tensor([1.0]),
                         remainder=torch.tensor([1.0]), slope=torch.tensor(2.0),
                         ratios=torch.tensor([4.0, 1.0, 3.0, 2.0]))
    rows = ExpansionExperiment._rows(Group("sinusoid", "multi_gate", "none"), 0, ex)
    assert [r["value"] for r in rows if r["metric"] == "correction_ratio_median"] == [2.5]
