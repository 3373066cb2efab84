"""Verdict on claim C8 from the ``expansion`` experiment."""

from __future__ import annotations

from .. import metrics as M
from ..results import ResultsTable, Spread
from .profiles_verdicts import not_measured
from .verdicts import Verdict, combine

SLOPE_RANGE = (1.8, 2.2)


def judge_c8(table: ResultsTable) -> Verdict:
    """C8: the first-order expansion is accurate; the gate correction is small.

    Rule: for every cell, the median over seeds of the small-ε slope of ``E(ε)`` lies in
    [1.8, 2.2] and the median over seeds of the per-seed median ``ρ_j`` is below 1. A cell
    without both rows is not measured (said in the evidence), not a failed check.
    """
    v = Verdict.of(
        "C8",
        f"small-ε log-log slope of the truncation error in {list(SLOPE_RANGE)}; median "
        "ρ_j = ‖B_j‖₂/‖A_j‖₂ below 1 (per cell, across seeds)",
        figures=["expansion_error", "expansion_ratios"],
    )
    have = [set(table.select(metric=m).unique("cell"))
            for m in (M.ERROR_SLOPE, M.CORRECTION_RATIO_MEDIAN)]
    cells = sorted(set.intersection(*have))
    if not cells:
        return not_measured(v, "no cell with both error_slope and correction_ratio_median rows")
    if missing := [c for c in table.unique("cell") if c not in cells]:
        v.evidence.append(f"not measured for: {', '.join(missing)} (no error_slope or "
                          "correction_ratio_median rows)")
    checks = []
    for cell in cells:
        slope = table.select(cell=cell, metric=M.ERROR_SLOPE).spread()
        rho = table.select(cell=cell, metric=M.CORRECTION_RATIO_MEDIAN).spread()
        checks += [SLOPE_RANGE[0] <= slope.median <= SLOPE_RANGE[1], rho.median < 1]
        v.evidence.append(f"{cell}: slope {slope}; median ρ_j {rho}")
        c2 = table.select(cell=cell, metric=M.REMAINDER_C2, eps=1.0)
        if len(c2):
            v.evidence.append(f"{cell}: C₂(1) {Spread.of(c2.columns['value'])}")
    v.verdict = combine(checks)
    return v
