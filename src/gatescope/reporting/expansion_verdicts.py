"""Verdict on claim C8 from the ``expansion`` experiment."""

from __future__ import annotations

import numpy as np

from .. import metrics as M
from ..results import ResultsTable, Spread
from .profiles_verdicts import not_measured
from .verdicts import FAILS, HOLDS, Verdict, judge

#: The small-ε log-log slope of ``E(ε)`` a first-order-exact expansion has. It is 2 for any
#: product with a non-zero second-order term (``E(ε) = ε²‖F''(0)/2‖ + O(ε³)``), so it is a
#: sanity line, not evidence for C8.
SLOPE_RANGE = (1.8, 2.2)
#: "Small": the median over seeds of the per-seed median ``ρ_j = ‖B_j‖₂/‖A_j‖₂`` is below
#: this. A gate term a tenth of the time-scale term is an order of magnitude below it, so
#: dropping it changes each step's factor by at most ~10%: the usual meaning of a small
#: first-order correction (``ρ < 1`` only says it is not the larger of the two).
RHO_SMALL = 0.1
#: "Systematic", at every step: in every seed ``ρ_j > 0`` at at least this fraction of the
#: steps (a correction present at only some steps is sporadic).
PRESENT_FRACTION = 0.9
#: "Systematic", across seeds: the CV (population std / mean) across seeds of the per-seed
#: median ``ρ_j`` is at most this (the correction's size is a property of the cell, not of
#: one seed's draw; 0.5 allows a factor of about 3 between seeds).
SEED_CV_MAX = 0.5


def _per_seed_ratios(rows: ResultsTable) -> list[np.ndarray]:
    """Each seed's ``ρ_j`` along time (finite values), in seed order."""
    out = []
    for seed in rows.unique("seed"):
        v = rows.select(seed=seed).columns["value"]
        out.append(v[np.isfinite(v)])
    return out


def _c8_cell(v: Verdict, cell: str, table: ResultsTable) -> tuple[list[str], str]:
    """C8's checks of one cell: ``(outcomes, margin)``, with its evidence lines."""
    mine = table.select(cell=cell)
    slope = mine.select(metric=M.ERROR_SLOPE).spread()
    sane = SLOPE_RANGE[0] <= slope.median <= SLOPE_RANGE[1]
    v.evidence.append(f"{cell}: sanity (an identity for a non-zero second-order term, not "
                      f"evidence): small-ε slope {slope} "
                      f"{'in' if sane else 'NOT in — check the measurement'} "
                      f"{list(SLOPE_RANGE)}")
    medians = mine.select(metric=M.CORRECTION_RATIO_MEDIAN).per_seed()
    rho = Spread.of(medians)
    small = rho.median < RHO_SMALL
    outcomes = [HOLDS if small else FAILS]
    v.evidence.append(f"{cell}: small: median ρ_j per seed {rho} vs threshold {RHO_SMALL:g} "
                      f"(margin ×{rho.median / RHO_SMALL:.3g} of it) → "
                      f"{HOLDS if small else FAILS}")
    margin = f"{cell} median ρ {rho.median:.3g} (< {RHO_SMALL:g})"
    finite = medians[np.isfinite(medians)]
    cv = float(np.std(finite) / np.mean(finite)) if finite.size and np.mean(finite) > 0 \
        else float("nan")
    steps = _per_seed_ratios(mine.select(metric=M.CORRECTION_RATIO))
    if steps:
        present = min(float(np.mean(r > 0)) if r.size else 0.0 for r in steps)
        ok = present >= PRESENT_FRACTION and cv <= SEED_CV_MAX
        outcomes.append(HOLDS if ok else FAILS)
        v.evidence.append(
            f"{cell}: systematic: ρ_j > 0 at ≥ {present:.3g} of the steps in every seed "
            f"(needs ≥ {PRESENT_FRACTION:g}); across-seed CV of the per-seed median ρ_j "
            f"{cv:.3g} (needs ≤ {SEED_CV_MAX:g}) → {HOLDS if ok else FAILS}")
        margin += f", across-seed CV {cv:.3g} (≤ {SEED_CV_MAX:g})"
    else:
        v.evidence.append(f"{cell}: systematic: not measured (no correction_ratio rows "
                          "along time)")
    c2 = mine.select(metric=M.REMAINDER_C2, eps=1.0)
    if len(c2):
        v.evidence.append(f"{cell}: C₂(1) {Spread.of(c2.columns['value'])}")
    return outcomes, margin


def judge_c8(table: ResultsTable) -> Verdict:
    """C8: the first-order expansion is accurate; the gate correction is small but
    systematic.

    Rule, for every cell:

    * small: the median over seeds of the per-seed median ``ρ_j = ‖B_j‖₂/‖A_j‖₂``
      (``correction_ratio_median``) is below :data:`RHO_SMALL` = 0.1;
    * systematic (needs the per-step ``correction_ratio`` rows): in every seed ``ρ_j > 0``
      at ≥ :data:`PRESENT_FRACTION` of the steps, and the across-seed CV of the per-seed
      median ``ρ_j`` is ≤ :data:`SEED_CV_MAX`.

    Every check holds: supported; none: not supported; otherwise mixed. The small-ε slope of
    ``E(ε)`` (2 by construction, :data:`SLOPE_RANGE`) is a sanity line, not a check. A cell
    without ``correction_ratio_median`` rows is not measured (said in the evidence), not a
    failed check.
    """
    v = Verdict.of(
        "C8",
        f"median ρ_j = ‖B_j‖₂/‖A_j‖₂ (per seed, then across seeds) below {RHO_SMALL:g} "
        f"(small), ρ_j > 0 at ≥ {PRESENT_FRACTION:g} of the steps in every seed and "
        f"across-seed CV of the per-seed median ≤ {SEED_CV_MAX:g} (systematic), per cell; "
        f"small-ε slope of the truncation error (2 by construction) reported as a sanity line",
        figures=["expansion_error", "expansion_ratios"],
        null=f"a gate correction that is not small (median ρ_j ≥ {RHO_SMALL:g}) or not "
             "systematic (absent at many steps, or its size set by the seed)",
    )
    cells = sorted(table.select(metric=M.CORRECTION_RATIO_MEDIAN).unique("cell"))
    if not cells:
        return not_measured(v, "no cell with correction_ratio_median rows")
    if missing := [c for c in table.unique("cell") if c not in cells]:
        v.evidence.append(f"not measured for: {', '.join(missing)} (no "
                          "correction_ratio_median rows)")
    outcomes, margins = [], []
    for cell in cells:
        mine, margin = _c8_cell(v, cell, table)
        outcomes += mine
        margins.append(margin)
    return judge(v, outcomes, "; ".join(margins))
