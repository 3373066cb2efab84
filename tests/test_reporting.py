"""Reporting: verdict rules on synthetic tables whose answer is known (each claim's
"supported"/"not supported" pair is in tests/test_verdict_rules.py), the analogy and
fidelity sections, and every figure written as PNG and PDF.

Rows are fabricated here with the metric names the experiments write (docs/outputs.md#metrics and
``experiments/probes.py``), a few seeds, checkpoints and lags, so nothing depends on a run.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from gatescope.cells import cell_class, list_cells
from gatescope.reporting.analogies import analogy_sections, fidelity_section
from gatescope.reporting.anisotropy_figures import anisotropy_figures
from gatescope.reporting.anisotropy_verdicts import judge_c4, judge_c5, judge_c6, judge_c7
from gatescope.reporting.expansion_verdicts import judge_c8
from gatescope.reporting.profiles_figures import profiles_figures
from gatescope.reporting.profiles_verdicts import judge_c1, judge_c2, judge_c3
from gatescope.reporting.verdicts import MIXED, NOT_MEASURED, NOT_SUPPORTED, SUPPORTED
from gatescope.results import ResultsTable, Spread

SEEDS = (0, 1, 2)
STEPS = (0, 10, 20)
PROFILE_CELLS = ("leaky", "scalar_gate", "multi_gate")
FACTORIAL = tuple((c, o) for c in ("plain", "scalar_gate", "multi_gate") for o in ("sgd", "adam"))
PAPER_ARMS = (("plain", "adam"), ("scalar_gate", "sgd"), ("multi_gate", "sgd"))
GATED = ("scalar_gate", "multi_gate")
#: The gated cells as the report gets them: every cell whose class declares ``gated``.
GATED_CELLS = tuple(c for c in list_cells() if cell_class(c).gated)
#: The judges of the profiles and anisotropy claims, given the gated cells where they read them.
PROFILE_JUDGES = (judge_c1, functools.partial(judge_c2, gated=GATED_CELLS), judge_c3)
ANISOTROPY_JUDGES = (functools.partial(judge_c4, gated=GATED_CELLS), judge_c5,
                     functools.partial(judge_c6, gated=GATED_CELLS),
                     functools.partial(judge_c7, gated=GATED_CELLS))
EXPANSION_CELLS = ("scalar_gate", "multi_gate")


def jitter(seed: int) -> float:
    """A small seed-to-seed spread."""
    return 1 + 0.01 * seed


# --- fabricated rows --------------------------------------------------------------------


def profile_values(**override):
    """Value functions ``f(cell, step, seed, lag, predictor, time)`` per profiles metric."""
    base = {
        "sensitivity_profile": lambda c, st, s, lag, p, t: math.exp(-0.3 * (lag - 1) * jitter(s)),
        "predicted_profile": lambda c, st, s, lag, p, t: math.exp(-0.3 * (lag - 1)),
        "zeroth_order_profile": lambda c, st, s, lag, p, t: math.exp(-0.6 * (lag - 1)),
        "fit_slope": lambda c, st, s, lag, p, t: 0.5 * jitter(s),
        "fit_r2": lambda c, st, s, lag, p, t: 0.99,
        "rate_cv_order1": lambda c, st, s, lag, p, t: 0.3 * jitter(s),
        "rate_cv_order0": lambda c, st, s, lag, p, t: 1.0 * jitter(s) if c == "multi_gate"
        else 0.0,
        "envelope": lambda c, st, s, lag, p, t: math.exp(-lag),
        "schedule_multiplier": lambda c, st, s, lag, p, t: 0.01 * (0.2 if c == "leaky" else
                                                                    0.5 + 0.01 * t) ** lag,
        "retention_mean": lambda c, st, s, lag, p, t: 0.2 if c == "leaky" else 0.5 * jitter(s),
        "loss": lambda c, st, s, lag, p, t: 0.1,
    }
    return base | override


def profiles_table(values=None, cells=PROFILE_CELLS, steps=STEPS, lags=range(1, 9), T=10):
    """A profiles results table (one task, SGD)."""
    values = values or profile_values()
    rows = []

    def add(cell, step, seed, metric, lag=None, predictor=None, time=None):
        if metric in values:
            rows.append({"experiment": "profiles", "task": "adding", "cell": cell,
                         "optimizer": "sgd", "seed": seed, "step": step, "metric": metric,
                         "lag": lag, "predictor": predictor, "time": time,
                         "value": values[metric](cell, step, seed, lag, predictor, time)})

    for cell in cells:
        for step in steps:
            for seed in SEEDS:
                for lag in lags:
                    add(cell, step, seed, "sensitivity_profile", lag)
                    for p in ("update", "retention"):
                        add(cell, step, seed, "predicted_profile", lag, p)
                        add(cell, step, seed, "zeroth_order_profile", lag, p)
                for p in ("update", "retention"):
                    add(cell, step, seed, "fit_slope", predictor=p)
                    add(cell, step, seed, "fit_r2", predictor=p)
                for lag in (1, 2, 4, 8):
                    for metric in ("rate_cv_order1", "rate_cv_order0", "envelope"):
                        add(cell, step, seed, metric, lag)
                for lag in (1, 5):
                    for t in range(lag, T + 1):
                        add(cell, step, seed, "schedule_multiplier", lag, time=t)
                for t in range(1, T + 1):
                    add(cell, step, seed, "retention_mean", time=t)
                add(cell, step, seed, "loss")
    return ResultsTable.from_rows(rows)


def anisotropy_values(**override):
    """Value functions ``f(task, cell, optimizer, step, seed, lag)`` per anisotropy metric."""
    def gated(c):
        return c != "plain"

    base = {
        "jacobian_ai": lambda k, c, o, st, s, lag: (4.0 if gated(c) else 2.0) * lag * jitter(s),
        "jacobian_ce": lambda k, c, o, st, s, lag: (0.9 if gated(c) else 0.5) * jitter(s),
        "alignment": lambda k, c, o, st, s, lag: (0.6 if gated(c) else 0.4) * jitter(s),
        "alignment_baseline": lambda k, c, o, st, s, lag: 0.25,
        "gradcov_ai": lambda k, c, o, st, s, lag: (40.0 if gated(c) else 10.0) * jitter(s),
        "gradcov_ce": lambda k, c, o, st, s, lag: (0.95 if gated(c) else 0.8) * jitter(s),
        "step_cv": lambda k, c, o, st, s, lag: 1.5 * jitter(s) if o == "adam" else 0.0,
        "step_ai": lambda k, c, o, st, s, lag: 2.0 * jitter(s) if o == "adam" else 1.0,
        "rate_cv_order0": lambda k, c, o, st, s, lag: 0.5 * lag * jitter(s) if c == "multi_gate"
        else 0.0,
        "loss": lambda k, c, o, st, s, lag: 0.1,
    }
    return base | override


def anisotropy_table(values=None, arms=FACTORIAL, tasks=("adding", "narma10"), steps=STEPS,
                     lags=(1, 2, 4, 8)):
    """An anisotropy results table: per-lag and per-checkpoint rows of every arm."""
    values = values or anisotropy_values()
    rows = []

    def add(task, arm, step, seed, metric, lag=None):
        if metric in values:
            rows.append({"experiment": "anisotropy", "task": task, "cell": arm[0],
                         "optimizer": arm[1], "seed": seed, "step": step, "metric": metric,
                         "lag": lag, "value": values[metric](task, *arm, step, seed, lag)})

    for task in tasks:
        for arm in arms:
            for step in steps:
                for seed in SEEDS:
                    for lag in lags:
                        for metric in ("jacobian_ai", "jacobian_ce", "alignment"):
                            add(task, arm, step, seed, metric, lag)
                        if arm[0] in GATED:
                            add(task, arm, step, seed, "rate_cv_order0", lag)
                    for metric in ("alignment_baseline", "gradcov_ai", "gradcov_ce", "loss"):
                        add(task, arm, step, seed, metric)
                    if arm[1] == "sgd" or step > 0:  # Adam has no step sizes before a step
                        add(task, arm, step, seed, "step_cv")
                        add(task, arm, step, seed, "step_ai")
    return ResultsTable.from_rows(rows)



def expansion_values(**override):
    """Value functions ``f(cell, seed, eps, time)`` per expansion metric: a first-order-exact
    expansion (slope 2, ``E = ε²``) with small corrections (ρ_j = 0.1)."""
    base = {
        "truncation_error": lambda c, s, e, t: e**2 * jitter(s),
        "remainder_c2": lambda c, s, e, t: jitter(s),
        "error_slope": lambda c, s, e, t: 2.0 * jitter(s),
        "correction_ratio_median": lambda c, s, e, t: 0.1 * jitter(s),
        "correction_ratio": lambda c, s, e, t: 0.1 * jitter(s),
    }
    return base | override


def expansion_table(values=None, cells=EXPANSION_CELLS, eps=(1e-3, 1e-2, 0.1, 1.0), T=5):
    """An expansion results table: per-ε, per-seed and per-step rows of every cell."""
    values = values or expansion_values()
    rows = []

    def add(cell, seed, metric, eps=None, time=None):
        if metric in values:
            rows.append({"experiment": "expansion", "task": "sinusoid", "cell": cell,
                         "optimizer": "none", "seed": seed, "step": 0, "metric": metric,
                         "lag": None, "eps": eps, "time": time,
                         "value": values[metric](cell, seed, eps, time)})

    for cell in cells:
        for seed in SEEDS:
            for e in eps:
                add(cell, seed, "truncation_error", eps=e)
                add(cell, seed, "remainder_c2", eps=e)
            add(cell, seed, "error_slope")
            add(cell, seed, "correction_ratio_median")
            for t in range(1, T + 1):
                add(cell, seed, "correction_ratio", time=t)
    return ResultsTable.from_rows(rows)

EMPTY = ResultsTable.from_rows([])


# --- the table --------------------------------------------------------------------------


def test_table_helpers():
    table = profiles_table()
    assert table.checkpoints("fit_slope") == [0.0, 10.0, 20.0]
    assert table.combos("cell", "optimizer")[0] == ("leaky", "sgd")
    per_seed = table.select(cell="leaky", metric="sensitivity_profile", step=0).per_seed([0, 9])
    assert np.isfinite(per_seed[0]) and np.isnan(per_seed[1])
    lags, values = table.select(cell="leaky", metric="schedule_multiplier", step=0) \
        .per_seed_series("lag")
    assert lags.tolist() == [1.0, 5.0] and values.shape == (3, 2)
    assert values[0, 0] == pytest.approx(0.01 * 0.2)
    assert Spread.of([1, 2, 3, 4, 5]).iqr == pytest.approx(2.0)
    assert EMPTY.combos("cell") == [] and EMPTY.checkpoints() == []


# --- C1–C3 --------------------------------------------------------------------------------


def test_c2_not_supported_when_nothing_changes():
    v = judge_c2(profiles_table(), gated=GATED_CELLS)
    assert v.verdict == NOT_SUPPORTED


def test_c2_not_measured_with_one_checkpoint():
    assert judge_c2(profiles_table(steps=(0,)), gated=GATED_CELLS).verdict == NOT_MEASURED


# --- C4–C7 --------------------------------------------------------------------------------


def test_c4_supported_when_gated_arms_are_more_anisotropic():
    v = judge_c4(anisotropy_table(), gated=GATED_CELLS)
    assert v.verdict == SUPPORTED
    assert any("plain+sgd" in line for line in v.evidence)  # same-optimizer comparison


def swap_cells(f):
    """``f`` with plain's values given to the gated cells and the other way round."""
    return lambda k, c, *a: f(k, "plain" if c != "plain" else "scalar_gate", *a)


def test_c4_not_supported_when_plain_is_more_anisotropic():
    values = anisotropy_values(**{m: swap_cells(f) for m, f in anisotropy_values().items()
                                  if m in ("jacobian_ai", "jacobian_ce", "gradcov_ai",
                                           "gradcov_ce")})
    assert judge_c4(anisotropy_table(values), gated=GATED_CELLS).verdict == NOT_SUPPORTED


def test_an_arm_missing_on_one_task_is_not_a_failed_check():
    table = anisotropy_table()
    cols = table.columns
    keep = ~((cols["task"] == "narma10") & (cols["cell"] == "multi_gate") &
             (cols["optimizer"] == "sgd"))
    partial = ResultsTable({k: v[keep] for k, v in cols.items()})
    assert judge_c4(partial, gated=GATED_CELLS).verdict == SUPPORTED
    assert judge_c7(partial, gated=GATED_CELLS).verdict == SUPPORTED


def test_c4_paper_design_compares_across_optimizers():
    v = judge_c4(anisotropy_table(arms=PAPER_ARMS), gated=GATED_CELLS)
    assert v.verdict == SUPPORTED
    assert all("across optimizers" in line for line in v.evidence)


def test_c5_mixed_when_it_holds_for_some_tasks_only():
    def gradcov(k, c, o, st, s, lag):
        if (c, o) == ("multi_gate", "sgd"):
            return (50.0 if k == "adding" else 5.0) * jitter(s)
        return 20.0 * jitter(s)

    values = anisotropy_values(gradcov_ai=gradcov, jacobian_ai=lambda k, c, o, st, s, lag:
                               (9.0 if c == "multi_gate" else 3.0) * jitter(s))
    v = judge_c5(anisotropy_table(values))
    assert v.verdict == MIXED
    assert any("exceeds" in line for line in v.evidence)
    assert any("falls short" in line for line in v.evidence)
    assert not any(", step 0," in line for line in v.evidence)  # untrained checkpoint skipped


def test_c5_not_measured_without_its_arms():
    arms = (("plain", "sgd"), ("multi_gate", "sgd"))
    assert judge_c5(anisotropy_table(arms=arms)).verdict == NOT_MEASURED


def test_c6_needs_the_factorial_design():
    v = judge_c6(anisotropy_table(arms=PAPER_ARMS), gated=GATED_CELLS)
    assert v.verdict == NOT_MEASURED
    assert "factorial" in v.evidence[-1]


def test_c6_supported_when_optimizer_moves_updates_and_cell_moves_both():
    values = anisotropy_values(
        gradcov_ai=lambda k, c, o, st, s, lag: (4.0 if c != "plain" else 1.0)
        * (3.0 if o == "adam" else 1.0) * jitter(s),
        jacobian_ai=lambda k, c, o, st, s, lag: (4.0 if c != "plain" else 1.0) * lag
        * jitter(s))
    assert judge_c6(anisotropy_table(values), gated=GATED_CELLS).verdict == SUPPORTED


def test_c6_not_supported_when_the_optimizer_moves_transport_as_much():
    values = anisotropy_values(
        gradcov_ai=lambda k, c, o, st, s, lag: 3.0 if o == "adam" else 1.0,
        jacobian_ai=lambda k, c, o, st, s, lag: 3.0 if o == "adam" else 1.0)
    assert judge_c6(anisotropy_table(values), gated=GATED_CELLS).verdict == NOT_SUPPORTED


def test_c7_not_supported_at_the_random_baseline():
    values = anisotropy_values(alignment=lambda *a: 0.25)
    assert judge_c7(anisotropy_table(values), gated=GATED_CELLS).verdict == NOT_SUPPORTED


def test_c7_supported_above_baseline_and_above_plain():
    v = judge_c7(anisotropy_table(), gated=GATED_CELLS)
    assert v.verdict == SUPPORTED
    assert any("r/N = 0.25" in line for line in v.evidence)


# --- C8 ---------------------------------------------------------------------------------


def test_c8_not_measured_without_its_rows():
    """Guards judge_c8 on a table that lacks its rows: a cell with no correction_ratio_median
    rows (or a table with only other metrics) was judged "not supported" (NaN fails every
    comparison) instead of "not measured"."""
    only_errors = expansion_table({"truncation_error": expansion_values()["truncation_error"]})
    v = judge_c8(only_errors)
    assert v.verdict == NOT_MEASURED and v.evidence[-1].startswith("not measured")
    values = expansion_values(correction_ratio_median=lambda c, s, e, t: 0.05 * jitter(s),
                              correction_ratio=lambda c, s, e, t: 0.05 * jitter(s))
    partial = expansion_table(values).columns
    keep = ~((partial["cell"] == "multi_gate") & (partial["metric"] ==
                                                  "correction_ratio_median"))
    v = judge_c8(ResultsTable({k: c[keep] for k, c in partial.items()}))
    assert v.verdict == SUPPORTED  # scalar_gate is measured and passes
    assert any("not measured for: multi_gate" in line for line in v.evidence)


@pytest.mark.parametrize("judge", PROFILE_JUDGES + ANISOTROPY_JUDGES + (judge_c8,))
def test_every_judge_says_what_is_missing_on_an_empty_table(judge):
    v = judge(EMPTY)
    assert v.verdict == NOT_MEASURED
    assert v.evidence and v.evidence[-1].startswith("not measured")


# --- sections ---------------------------------------------------------------------------


def test_analogy_sections_report_measured_numbers():
    schedule, momentum, adam = analogy_sections(profiles_table(), anisotropy_table(),
                                                alpha=0.8, lr={"sgd": 0.01},
                                                gated=GATED_CELLS)
    assert "η = 0.01" in schedule.lines[0] and len(schedule.lines) == 3  # lags 1 and 5
    assert any("vs (1-α)^ℓ = 0.2" in line for line in momentum.lines)
    assert any("0.2 [IQR" in line for line in momentum.lines)  # leaky's kernel at ℓ=1
    assert any("multi_gate+sgd" in line and "CV 0 [IQR" in line for line in adam.lines)
    assert {schedule.figures[0], momentum.figures[0], adam.figures[0]} == \
        {"analogy_schedule", "analogy_momentum", "analogy_adam"}


def test_analogy_sections_estimate_alpha_and_lr_and_say_what_is_missing():
    _, momentum, _ = analogy_sections(profiles_table(), None, gated=GATED_CELLS)
    assert "α = 0.8" in momentum.lines[0]
    assert all("not measured" in s.lines[0]
               for s in analogy_sections(None, None, gated=GATED_CELLS))


def test_fidelity_section_reports_the_shift_of_each_switch():
    default = profiles_table(cells=GATED)
    shifted = profiles_table(profile_values(fit_slope=lambda c, st, s, *a: 1.5 * jitter(s)),
                             cells=GATED)
    section = fidelity_section({"product_order": (default, shifted)})
    slope = [line for line in section.lines if "fit_slope scalar_gate/update" in line]
    assert len(slope) == 1 and "shift of the median +1" in slope[0]
    assert any(line.startswith("gate_term: not measured") for line in section.lines)
    assert any(line.startswith("fixed_batch: not measured") for line in section.lines)


def test_fidelity_lines_name_a_numeric_column_by_its_value():
    """Guards fidelity_lines on a switch whose rows are told apart by the lag (spectrum_epsilon:
    jacobian_ai/jacobian_ce per lag): the key prints as 'lag 4' (it crashed joining floats)."""
    default = anisotropy_table(tasks=("adding",))
    shifted = anisotropy_table(anisotropy_values(
        jacobian_ce=lambda k, c, o, st, s, lag: 1e-7 if c == "plain" else 0.9), tasks=("adding",))
    section = fidelity_section({"spectrum_epsilon": (default, shifted)})
    ce = [line for line in section.lines if "jacobian_ce adding/plain/adam/lag 4:" in line]
    assert len(ce) == 1 and "paper code 1e-07" in ce[0], section.lines


# --- figures ----------------------------------------------------------------------------


def test_every_figure_is_written_as_png_and_pdf(tmp_path):
    profiles = profiles_table(steps=(0, 20))
    anisotropy = anisotropy_table(tasks=("adding",), steps=(0, 20))
    figs = profiles_figures(profiles, tmp_path, alpha=0.8, lr=0.01, gated=GATED_CELLS)
    figs |= anisotropy_figures(anisotropy, tmp_path)
    assert set(figs) == {
        "profiles_profile", "profiles_heatmap", "profiles_fit", "profiles_rate_dispersion",
        "analogy_schedule", "analogy_momentum", "anisotropy_jacobian", "anisotropy_gradcov",
        "anisotropy_gradcov_training", "anisotropy_alignment", "analogy_adam"}
    for name, paths in figs.items():
        assert [p.suffix for p in paths] == [".png", ".pdf"], name
        assert all(p.exists() and p.stat().st_size > 0 for p in paths), name
    cited = {f for judge in PROFILE_JUDGES for f in judge(profiles).figures}
    cited |= {f for judge in ANISOTROPY_JUDGES for f in judge(anisotropy).figures}
    cited |= {f for s in analogy_sections(profiles, anisotropy, gated=GATED_CELLS)
              for f in s.figures}
    assert cited <= set(figs)


def test_figures_skip_what_the_table_lacks(tmp_path):
    assert profiles_figures(EMPTY, tmp_path, gated=GATED_CELLS) == {}
    assert anisotropy_figures(EMPTY, tmp_path) == {}
