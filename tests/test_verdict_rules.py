"""Verdicts that can fail: for each of the paper's claims C1–C8 a synthetic results table on
which the claim is false for the reason its rule tests (the verdict must be "not supported")
and one on which it is true ("supported"), plus the statistics the rules share (the exact
sign test, the combination of check outcomes, C1's held-out error).

Each rule states a null model and must beat it (issue 17): before, C1 passed a profile that a
gate-free geometric decay fits as well, C3 a multi_gate CV that neuron-permuted gates give
too, C8 any ρ_j < 1 and a slope of 2 that is an identity, C2 compared paired changes with the
spread of levels, and C4 counted CE values saturated at 1. Tables are built row by row with
the metric names the experiments write, with 8 seeds unless a test is about fewer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gatescope.reporting.anisotropy_verdicts import judge_c4, judge_c5, judge_c6, judge_c7
from gatescope.reporting.expansion_verdicts import judge_c8
from gatescope.reporting.profiles_verdicts import held_out_rmse, judge_c1, judge_c2, judge_c3
from gatescope.reporting.report import render_markdown
from gatescope.reporting.verdicts import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    MIXED,
    NOT_MEASURED,
    NOT_SUPPORTED,
    SUPPORTED,
    UNINFORMATIVE,
    combine_outcomes,
    sign_test,
)
from gatescope.results import ResultsTable

SEEDS = tuple(range(8))
GATED = ("scalar_gate", "multi_gate")
PROFILE_CELLS = ("leaky", *GATED)
LAGS = tuple(range(1, 17))


def wobble(seed: int, k: int = 0) -> float:
    """A fixed pseudo-random number in [-1, 1] per ``(seed, k)`` (no RNG state)."""
    return math.sin(12.9898 * (seed + 1) + 78.233 * (k + 1)) * 0.999


# --- the shared statistics ----------------------------------------------------------------


@pytest.mark.parametrize("d, two_sided, wins, p, outcome", [
    ([1] * 4, False, 4, 0.0625, INCONCLUSIVE),  # 4 seeds cannot reach α = 0.05
    ([1] * 5, False, 5, 0.03125, HOLDS),
    ([1] * 5, True, 5, 0.0625, INCONCLUSIVE),
    ([1] * 6, True, 6, 0.03125, HOLDS),
    ([1] * 8, False, 8, 1 / 256, HOLDS),
    ([1, 1, -1, -1], True, 2, 1.0, FAILS),
    ([0] * 8, True, 0, 1.0, FAILS),  # no change is on neither side
    ([1] * 6 + [-1] * 2, False, 6, 37 / 256, INCONCLUSIVE),
    ([np.nan, 1, 1, 1, 1, 1], False, 5, 0.03125, HOLDS),
], ids=["4-of-4", "5-of-5", "5-of-5-two-sided", "6-of-6-two-sided", "8-of-8", "tie",
        "zeros", "6-of-8", "nan-left-out"])
def test_sign_test_is_exact(d, two_sided, wins, p, outcome):
    test = sign_test(d, two_sided=two_sided)
    assert (test.wins, test.p, test.outcome) == (wins, pytest.approx(p), outcome)
    assert ("cannot reach" in str(test)) == (test.smallest_p > 0.05)


@pytest.mark.parametrize("outcomes, verdict", [
    ([HOLDS, HOLDS], SUPPORTED), ([FAILS, FAILS], NOT_SUPPORTED), ([HOLDS, FAILS], MIXED),
    ([HOLDS, INCONCLUSIVE], MIXED), ([FAILS, INCONCLUSIVE], MIXED),
    ([INCONCLUSIVE, INCONCLUSIVE], NOT_MEASURED), ([UNINFORMATIVE], NOT_MEASURED),
    ([HOLDS, UNINFORMATIVE], SUPPORTED), ([FAILS, UNINFORMATIVE], NOT_SUPPORTED),
    ([], NOT_MEASURED)], ids=str)
def test_combine_outcomes(outcomes, verdict):
    """Inconclusive checks never count as failures, uninformative ones not at all."""
    assert combine_outcomes(outcomes) == verdict


def test_held_out_rmse_fits_the_first_half_and_scores_the_second():
    lags = np.arange(1, 11, dtype=float)
    x = -(lags - 1)
    assert held_out_rmse(0.3 * x, x) == pytest.approx(0.0, abs=1e-15)  # exact predictor
    # a bend in the held-out half is not seen by the fit: s = 0.3 from the first five lags
    y = np.where(lags <= 5, 0.3 * x, 0.3 * x - 1.0)
    assert held_out_rmse(y, x) == pytest.approx(1.0)
    # by hand: fit s = Σxy/Σx² on lags 1-2, RMSE on lags 3-4
    y, x = np.array([0.0, -1.0, -2.5, -2.0]), np.array([0.0, -2.0, -4.0, -6.0])
    s = (x[:2] @ y[:2]) / (x[:2] @ x[:2])
    assert held_out_rmse(y, x) == pytest.approx(np.sqrt(np.mean((y[2:] - s * x[2:]) ** 2)))
    y[3] = np.nan  # a non-finite pair is left out of its half
    assert held_out_rmse(y, x) == pytest.approx(abs(y[2] - s * x[2]))
    assert math.isnan(held_out_rmse(np.zeros(4), np.zeros(4)))  # nothing to fit
    with pytest.raises(ValueError, match="one length"):
        held_out_rmse(np.zeros(3), np.zeros(4))


# --- profiles tables (C1–C3) --------------------------------------------------------------


def profiles_table(profile, zeroth=None, slope=None, cv0=None, cv0_null=None,
                   cells=PROFILE_CELLS, steps=(0, 100), seeds=SEEDS, lags=LAGS,
                   rate_lags=(1, 2, 4, 8)):
    """A profiles table from value functions: ``profile(cell, step, seed, lag)`` (μ̃, 1 at
    ℓ = 1), ``zeroth`` the retention predictor's ``P̄(ℓ)/P̄(1)`` (default: the profile),
    ``slope(cell, step, seed)`` the fitted power, ``cv0``/``cv0_null(cell, step, seed,
    lag)`` the zeroth-order CV and its neuron-permuted null (rows only where given)."""
    zeroth = zeroth or profile
    rows = []

    def add(cell, step, seed, metric, value, lag=None, predictor=None):
        rows.append({"experiment": "profiles", "task": "adding", "cell": cell,
                     "optimizer": "sgd", "seed": seed, "step": step, "metric": metric,
                     "lag": lag, "predictor": predictor, "value": value})

    for cell in cells:
        for step in steps:
            for seed in seeds:
                for lag in lags:
                    add(cell, step, seed, "sensitivity_profile", profile(cell, step, seed, lag),
                        lag)
                    for p in ("update", "retention"):
                        add(cell, step, seed, "zeroth_order_profile",
                            zeroth(cell, step, seed, lag), lag, p)
                for p in ("update", "retention"):
                    add(cell, step, seed, "fit_slope",
                        slope(cell, step, seed) if slope else 0.5, predictor=p)
                for lag in rate_lags:
                    for metric, f in (("rate_cv_order0", cv0), ("rate_cv_order0_null", cv0_null)):
                        if f is not None:
                            add(cell, step, seed, metric, f(cell, step, seed, lag), lag)
    return ResultsTable.from_rows(rows)


def geometric(c, st, s, lag):
    """A geometric profile ``0.6^(ℓ-1)`` with a seed-dependent base."""
    return math.exp(-(0.5 + 0.02 * wobble(s)) * (lag - 1))


def curved(c, st, s, lag):
    """A profile that a geometric decay cannot extrapolate: ``ln μ̃ ∝ -(ℓ-1)^1.5``."""
    return math.exp(-(0.2 + 0.01 * wobble(s)) * (lag - 1) ** 1.5)


def test_c1_gate_free_null_wins_is_not_supported():
    """The profile is exactly geometric and the gate products are noisy: a gate-free
    one-parameter decay predicts the held-out lags better than the gates in every seed, so
    C1 is not supported although the profile decays (the old rule passed it: R² of a decaying
    profile on a noisy-but-decaying predictor is high, and the better of two was taken)."""
    def noisy(c, st, s, lag):
        return geometric(c, st, s, lag) * math.exp(0.8 * wobble(s, lag) * (lag > 1))

    v = judge_c1(profiles_table(geometric, zeroth=noisy))
    assert v.verdict == NOT_SUPPORTED, v.evidence
    assert sum("gate product lower" in line and "0/8 seeds" in line for line in v.evidence) == 4
    assert "geometric" in v.null and "beats geometric in 0/8" in v.margin


def test_c1_flat_profile_is_not_supported():
    """No lag dependence at all (μ̃ = 1): the decay precondition fails in every seed."""
    v = judge_c1(profiles_table(lambda *a: 1.0))
    assert v.verdict == NOT_SUPPORTED
    assert any("leaky: decay rate" in line and "0/8 seeds" in line for line in v.evidence)


def test_c1_gate_product_that_predicts_a_curved_profile_is_supported():
    """The gated cells' profile follows their gate product's curved shape exactly (power
    0.8), which neither a geometric decay nor leaky's geometric kernel can extrapolate."""
    def profile(c, st, s, lag):
        return geometric(c, st, s, lag) if c == "leaky" else curved(c, st, s, lag) ** 0.8

    v = judge_c1(profiles_table(profile, zeroth=curved))
    assert v.verdict == SUPPORTED, v.evidence
    assert "beats leaky in 8/8" in v.margin and "multi_gate decays in 8/8 seeds" in v.margin


def test_c1_without_leaky_judges_the_geometric_null_only_and_is_mixed_at_best():
    def profile(c, st, s, lag):
        return curved(c, st, s, lag) ** 0.8

    v = judge_c1(profiles_table(profile, zeroth=curved, cells=GATED))
    assert v.verdict == MIXED  # the claim is about all three cells
    assert not any("leaky kernel" in line for line in v.evidence)


def changing(rate_change=0.1, slope_change=0.2, leaky_change=0.0):
    """Profiles value functions whose decay rate and slope move between the checkpoints by
    the given amounts per seed (jittered), and leaky's rate by ``leaky_change``."""
    def rate(c, st, s):
        moved = leaky_change if c == "leaky" else rate_change
        return 0.3 + 0.2 * wobble(s) + (moved * (1 + 0.1 * wobble(s, 1)) if st else 0.0)

    def profile(c, st, s, lag):
        return math.exp(-rate(c, st, s) * (lag - 1))

    def slope(c, st, s):
        moved = 0.0 if c == "leaky" else slope_change
        return 0.5 + 0.3 * wobble(s, 2) + (moved * (1 + 0.1 * wobble(s, 3)) if st else 0.0)

    return profile, slope


def test_c2_nothing_changes_is_not_supported():
    profile, slope = changing(0.0, 0.0)
    v = judge_c2(profiles_table(profile, slope=slope), gated=GATED)
    assert v.verdict == NOT_SUPPORTED, v.evidence
    assert "no change" not in v.null and "leaky" in v.null


def test_c2_consistent_paired_changes_are_supported_beyond_a_wide_spread_of_levels():
    """Guards the paired test: each seed's slope and profile move by a small, consistent
    amount while the levels differ across seeds by far more (slope levels 0.2–0.8 against a
    change of 0.02). The old rule compared the median change with the IQR of the levels and
    called such a change "within noise"."""
    profile, slope = changing(rate_change=0.01, slope_change=0.02)
    v = judge_c2(profiles_table(profile, slope=slope), gated=GATED)
    assert v.verdict == SUPPORTED, v.evidence
    assert any("beyond leaky 8/8" in part for part in v.margin.split("; "))


def test_c2_gated_cells_changing_no_more_than_leaky_is_mixed():
    profile, slope = changing(rate_change=0.1, leaky_change=0.2)
    v = judge_c2(profiles_table(profile, slope=slope), gated=GATED)
    assert v.verdict == MIXED
    assert any("vs the leaky control" in line and "0/8 seeds" in line for line in v.evidence)


def test_c2_too_few_seeds_is_not_measured_not_unsupported():
    """Four seeds cannot reach α = 0.05 two-sided (smallest p 0.125) even when every seed
    changes the same way: the verdict says so instead of "not supported"."""
    profile, slope = changing()
    v = judge_c2(profiles_table(profile, slope=slope, seeds=range(4)), gated=GATED)
    assert v.verdict == NOT_MEASURED
    assert any("cannot reach α = 0.05" in line for line in v.evidence)
    assert v.evidence[-1].startswith("not measured: every sign test is inconclusive")


def _cv(value):
    return lambda c, st, s, lag: 0.0 if c == "scalar_gate" else value * (1 + 0.05 * wobble(s))


def test_c3_dispersion_that_permuted_gates_also_give_is_not_supported():
    """multi_gate's CV is large (1.0, which the old bar CV ≥ 0.01 passed 100×) but the
    neuron-permuted null gives the same: the dispersion is gate noise, not neuron identity."""
    v = judge_c3(profiles_table(geometric, cv0=_cv(1.0), cv0_null=_cv(1.0)))
    assert v.verdict == NOT_SUPPORTED
    assert any(line.startswith("sanity (zero by definition") for line in v.evidence)


def test_c3_neuron_identity_beyond_the_null_is_supported():
    """CV five times its null at lags ≥ 2; at ℓ = 1 both are equal (a one-step window's CV is
    permutation-invariant), which the rule leaves out."""
    def null(c, st, s, lag):
        return _cv(1.0)(c, st, s, lag) if lag == 1 else _cv(0.2)(c, st, s, lag)

    v = judge_c3(profiles_table(geometric, cv0=_cv(1.0), cv0_null=null))
    assert v.verdict == SUPPORTED, v.evidence
    assert "smallest per-seed CV ratio" in v.margin


def test_c3_one_seed_below_the_factor_fails_its_checkpoint():
    def null(c, st, s, lag):
        return 0.8 if (s == 3 and st == 100) else 0.2

    v = judge_c3(profiles_table(geometric, cv0=_cv(1.0), cv0_null=null))
    assert v.verdict == MIXED


def test_c3_needs_the_null():
    v = judge_c3(profiles_table(geometric, cv0=_cv(1.0)))
    assert v.verdict == NOT_MEASURED and "rate_cv_order0_null" in v.evidence[-1]


# --- anisotropy tables (C4–C7) ------------------------------------------------------------

ARMS = tuple((c, o) for c in ("plain", *GATED) for o in ("sgd", "adam"))


def anisotropy_table(values, arms=ARMS, tasks=("adding",), steps=(0, 10), seeds=SEEDS[:3],
                     lags=(1, 2, 4, 8)):
    """An anisotropy table from ``{metric: f(task, cell, optimizer, step, seed, lag)}``; the
    per-lag metrics get a row per lag."""
    per_lag = {"jacobian_ai", "jacobian_ce", "alignment"}
    rows = [{"experiment": "anisotropy", "task": task, "cell": arm[0], "optimizer": arm[1],
             "seed": seed, "step": step, "metric": metric, "lag": lag,
             "value": f(task, *arm, step, seed, lag)}
            for task in tasks for arm in arms for step in steps for seed in seeds
            for metric, f in values.items() for lag in (lags if metric in per_lag else (None,))]
    return ResultsTable.from_rows(rows)


def by_cell(gated, plain, metric_seed=0.01):
    """``f`` giving gated arms ``gated`` and plain ``plain``, with a small seed jitter."""
    return lambda k, c, o, st, s, lag: (plain if c == "plain" else gated) * (1 + metric_seed * s)


def c4_values(ai=(4.0, 2.0), ce=(0.9, 0.5)):
    return {"jacobian_ai": by_cell(*ai), "jacobian_ce": by_cell(*ce),
            "gradcov_ai": by_cell(*ai), "gradcov_ce": by_cell(*ce)}


def test_c4_plain_more_anisotropic_is_not_supported():
    v = judge_c4(anisotropy_table(c4_values(ai=(2.0, 4.0), ce=(0.5, 0.9))), gated=GATED)
    assert v.verdict == NOT_SUPPORTED and "equally anisotropic" in v.null


def test_c4_gated_more_anisotropic_is_supported():
    v = judge_c4(anisotropy_table(c4_values()), gated=GATED)
    assert v.verdict == SUPPORTED and v.margin.startswith("16 of 16 checks hold")


def test_c4_saturated_ce_is_not_informative_not_a_check():
    """Guards the saturation rule: CE at 0.9995 on both sides cannot tell the arms apart.
    Gated CE "higher" (0.9999 vs 0.9995) used to count as a pass; it is now left out, so the
    AI checks alone decide (here: plain more anisotropic → not supported)."""
    values = c4_values(ai=(2.0, 4.0), ce=(0.9999, 0.9995))
    values["jacobian_ce"] = values["gradcov_ce"] = lambda k, c, o, st, s, lag: \
        0.9999 if c != "plain" else 0.9995
    v = judge_c4(anisotropy_table(values), gated=GATED)
    assert v.verdict == NOT_SUPPORTED
    assert "8 not informative" in v.margin
    assert any("saturated at every lag: not informative" in line for line in v.evidence)


def test_c4_every_check_saturated_says_so():
    values = {m: (lambda k, c, o, st, s, lag: 1.0) for m in ("jacobian_ce", "gradcov_ce")}
    v = judge_c4(anisotropy_table(values), gated=GATED)
    assert v.verdict == NOT_MEASURED
    assert v.evidence[-1] == "not measured: every check is not informative"


def c5_values(gated_factor):
    """multi_gate+SGD at ``gated_factor`` times plain+Adam's AI (others at plain+Adam's)."""
    def f(k, c, o, st, s, lag):
        return 10.0 * (1 + 0.1 * s) * (gated_factor if (c, o) == ("multi_gate", "sgd") else 1)

    return {"gradcov_ai": f, "jacobian_ai": f}


def test_c5_multi_gate_below_adam_is_not_supported():
    v = judge_c5(anisotropy_table(c5_values(0.5)))
    assert v.verdict == NOT_SUPPORTED and "lower quartile" in v.null
    assert "0/2 (task, metric) pairs" in v.margin


def test_c5_multi_gate_at_or_above_adam_is_supported():
    v = judge_c5(anisotropy_table(c5_values(2.0)))
    assert v.verdict == SUPPORTED and "(needs ≥ 1)" in v.margin


def test_c6_optimizer_moving_transport_as_much_and_no_cell_effect_is_not_supported():
    same = {m: (lambda k, c, o, st, s, lag: 3.0 if o == "adam" else 1.0)
            for m in ("gradcov_ai", "jacobian_ai")}
    v = judge_c6(anisotropy_table(same), gated=GATED)
    assert v.verdict == NOT_SUPPORTED and "seed noise" in v.null


def test_c6_optimizer_shapes_updates_and_cells_shape_both_is_supported():
    def jitter(s):
        return 1 + 0.01 * s

    values = {
        "gradcov_ai": lambda k, c, o, st, s, lag: (4.0 if c != "plain" else 1.0)
        * (3.0 if o == "adam" else 1.0) * jitter(s),
        "jacobian_ai": lambda k, c, o, st, s, lag: (4.0 if c != "plain" else 1.0) * lag
        * jitter(s)}
    v = judge_c6(anisotropy_table(values), gated=GATED)
    assert v.verdict == SUPPORTED and "optimizer effect/noise" in v.margin


def c7_values(gated_alignment, jitter=0.01):
    return {"alignment": by_cell(gated_alignment, 0.3, jitter),
            "alignment_baseline": lambda *a: 0.25}


def test_c7_alignment_at_the_random_baseline_is_not_supported():
    """The gated arms align exactly as a random direction does (r/N), below plain."""
    v = judge_c7(anisotropy_table(c7_values(0.25, jitter=0.0)), gated=GATED)
    assert v.verdict == NOT_SUPPORTED and "r/N" in v.null


def test_c7_alignment_above_baseline_and_plain_is_supported():
    v = judge_c7(anisotropy_table(c7_values(0.6)), gated=GATED)
    assert v.verdict == SUPPORTED and "from 2.4" in v.margin


# --- expansion tables (C8) ----------------------------------------------------------------


def expansion_table(rho, slope=lambda c, s: 2.0, cells=GATED, seeds=SEEDS[:5], T=20):
    """An expansion table: per seed the slope, the per-step ``ρ_j = rho(cell, seed, j)`` and
    its median (interpolated, as the experiment writes it)."""
    rows = []

    def add(cell, seed, metric, value, **axes):
        rows.append({"experiment": "expansion", "task": "sinusoid", "cell": cell,
                     "optimizer": "none", "seed": seed, "step": 0, "metric": metric,
                     "lag": None, "eps": axes.get("eps"), "time": axes.get("time"),
                     "value": value})

    for cell in cells:
        for seed in seeds:
            ratios = [rho(cell, seed, t) for t in range(1, T + 1)]
            for t, r in enumerate(ratios, 1):
                add(cell, seed, "correction_ratio", r, time=t)
            add(cell, seed, "correction_ratio_median", float(np.median(ratios)))
            add(cell, seed, "error_slope", slope(cell, seed))
            add(cell, seed, "remainder_c2", 1.0, eps=1.0)
    return ResultsTable.from_rows(rows)


def test_c8_correction_below_one_but_not_small_nor_systematic_is_not_supported():
    """Guards the new thresholds: ρ_j around 0.5 with its size set by the seed (0.1 to 0.9)
    and a slope of exactly 2 passed the old rule (slope in [1.8, 2.2], ρ < 1)."""
    v = judge_c8(expansion_table(lambda c, s, t: 0.1 + 0.2 * s))
    assert v.verdict == NOT_SUPPORTED, v.evidence
    assert all("sanity" in line for line in v.evidence if "slope" in line)


def test_c8_small_consistent_correction_is_supported():
    v = judge_c8(expansion_table(lambda c, s, t: 0.03 * (1 + 0.2 * wobble(s, t))))
    assert v.verdict == SUPPORTED, v.evidence
    assert "(< 0.1)" in v.margin and "across-seed CV" in v.margin


def test_c8_sporadic_correction_is_mixed():
    """Small, but present at only half the steps in one seed: not systematic."""
    v = judge_c8(expansion_table(lambda c, s, t: 0.0 if (s == 0 and t % 2) else 0.03))
    assert v.verdict == MIXED
    assert any("systematic" in line and "→ fails" in line for line in v.evidence)


def test_c8_slope_off_range_is_a_sanity_line_not_a_check():
    """The slope of 2 is an identity; one out of range flags the measurement in the
    evidence and leaves the verdict to ρ."""
    v = judge_c8(expansion_table(lambda c, s, t: 0.03, slope=lambda c, s: 1.0))
    assert v.verdict == SUPPORTED
    assert any("NOT in — check the measurement" in line for line in v.evidence)


# --- the report prints the null and the margin --------------------------------------------


def test_report_prints_each_rules_null_and_margin(tmp_path):
    v = judge_c8(expansion_table(lambda c, s, t: 0.03))
    md = render_markdown("t", [], [v], [], {}, tmp_path)
    section = md.split("### C8:")[1]
    assert f"Null: {v.null}." in section and f"Margin: {v.margin}." in section
    assert section.index("Measured:") < section.index("Null:") < section.index("Margin:")
