"""The follow-ups' verdicts can fail: for each of L1–L3 and A1–A3 a synthetic results table
on which the claim holds ("supported") and one on which it fails for the reason its rule
tests ("not supported"), built with the metric names the experiments write
(docs/followups.md#running-and-judging)."""

from __future__ import annotations

import numpy as np
import pytest

from gatescope import metrics as M
from gatescope.measures.detection import DETECTION_GRID
from gatescope.reporting.learnability_report import _Last, judge_l1, judge_l2, judge_l3
from gatescope.reporting.timescales_report import _Spectra, judge_a1, judge_a2, judge_a3
from gatescope.reporting.verdicts import MIXED, NOT_SUPPORTED, SUPPORTED
from gatescope.results import ResultsTable

SEEDS = range(4)
STEP = 200


def _row(metric, value, seed, task="multilag_seq", cell="multi_gate", optimizer="adamw",
         step=STEP, **axes):
    return {"experiment": "x", "task": task, "cell": cell, "optimizer": optimizer,
            "seed": seed, "step": step, "metric": metric.name, "value": float(value), **axes}


def _learnability(slope=1.0, r2=0.9, heavy_shift=-2.0, spread_shift=3.0) -> _Last:
    """Arms: Gaussian multi_gate, its α = 1.5 twin, its spread twin; windows ``4 log10 N``
    shifted by ``heavy_shift`` / ``spread_shift``."""
    rows = []
    arms = {("multilag_seq", "multi_gate"): 0.0, ("multilag_seq.alpha1.5", "multi_gate"):
            heavy_shift, ("multilag_seq", "multi_gate.spread1"): spread_shift}
    for (task, cell), shift in arms.items():
        for seed in SEEDS:
            kw = dict(task=task, cell=cell)
            rows += [_row(M.SCALING_SLOPE, slope + 0.01 * seed, seed, **kw),
                     _row(M.SCALING_R2, r2, seed, **kw), _row(M.SCALING_LAGS, 5, seed, **kw),
                     _row(M.MATCHED_ALPHA, 1.8, seed, lag=4, **kw)]
            rows += [_row(M.LEARNABILITY_WINDOW, max(0.0, 4 * np.log10(n) + shift), seed,
                          samples=n, **kw) for n in DETECTION_GRID]
    return _Last(ResultsTable.from_rows(rows))


def test_l1_holds_for_slope_one_and_fails_for_no_relation():
    assert judge_l1(_learnability(slope=1.0)).verdict == SUPPORTED
    assert judge_l1(_learnability(slope=0.05)).verdict == NOT_SUPPORTED
    assert judge_l1(_learnability(slope=1.0, r2=0.1)).verdict == NOT_SUPPORTED


@pytest.mark.parametrize("shift, verdict", [(-2.0, SUPPORTED), (2.0, NOT_SUPPORTED)])
def test_l2_heavier_tails_must_shrink_the_window(shift, verdict):
    assert judge_l2(_learnability(heavy_shift=shift)).verdict == verdict


@pytest.mark.parametrize("shift, verdict", [(3.0, SUPPORTED), (-3.0, NOT_SUPPORTED)])
def test_l3_broader_spectra_must_enlarge_the_window(shift, verdict):
    assert judge_l3(_learnability(spread_shift=shift)).verdict == verdict


def _timescales(multi_end="broad", leaky_end="collapsed", forced_end="collapsed",
                model_change=True, scalar_end="collapsed") -> _Spectra:
    rows = []
    ends = {("leaky", "adamw"): leaky_end, ("scalar_gate", "adamw"): scalar_end,
            ("multi_gate", "adamw"): multi_end, ("leaky", "adamw+forcing"): forced_end}
    for (cell, optimizer), end in ends.items():
        for seed in SEEDS:
            kw = dict(cell=cell, optimizer=optimizer)
            for step, label, model in ((0, "collapsed", 0),
                                       (STEP, end, 1 if model_change else 0)):
                rows += [_row(M.PHASE, M.PHASE_LABELS.index(label), seed, step=step, **kw),
                         _row(M.ENVELOPE_MODEL, model, seed, step=step, **kw)]
                rows += [_row(m, 1.0, seed, step=step, **kw) for m in
                         (M.TAIL_BETA, M.TAIL_BETA_LOW, M.TAIL_BETA_HIGH, M.TAIL_BELOW_ONE)]
    return _Spectra(ResultsTable.from_rows(rows))


def test_a1_needs_the_class_to_change_in_training():
    assert judge_a1(_timescales(model_change=True)).verdict == SUPPORTED
    fixed = _timescales(multi_end="collapsed", model_change=False)
    assert judge_a1(fixed).verdict == NOT_SUPPORTED


def test_a2_needs_multi_gate_broad_and_the_others_collapsed():
    assert judge_a2(_timescales()).verdict == SUPPORTED
    assert judge_a2(_timescales(multi_end="collapsed")).verdict == MIXED
    assert judge_a2(_timescales(multi_end="collapsed", leaky_end="broad",
                                scalar_end="boundary")).verdict == NOT_SUPPORTED


@pytest.mark.parametrize("end, verdict", [("collapsed", SUPPORTED), ("broad", NOT_SUPPORTED)])
def test_a3_forcing_must_not_rescue_the_constant_gate(end, verdict):
    assert judge_a3(_timescales(forced_end=end)).verdict == verdict
