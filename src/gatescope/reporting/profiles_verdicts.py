"""Verdicts on claims C1–C3 from the ``profiles`` experiment.

Every number comes from the results table; a verdict whose rows are absent is "not measured"
with a line saying which rows are missing. Checkpoints are the training steps at which the
metric was measured (the ``loss`` rows' steps are not checkpoints).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from .. import metrics as M
from ..results import ResultsTable, Spread
from .verdicts import MIXED, NOT_MEASURED, SUPPORTED, Verdict, combine

#: The cells C1 names, in report order.
PROFILE_CELLS = ("leaky", "scalar_gate", "multi_gate")
#: The control cell of C2: a constant gate.
CONTROL = "leaky"
#: C1: the fitted predictor explains the profile when its median R² reaches this.
R2_MIN = 0.9
#: C3: multi_gate's across-neuron CV must be this many times scalar_gate's ...
CV_RATIO = 10.0
#: ... where a CV below this counts as zero (so "10 × 0" is not met by a rounding error).
CV_FLOOR = 1e-3
#: C3: scalar_gate's zeroth-order CV is zero when every row is at most this in size.
CV_ZERO = 1e-9


def not_measured(v: Verdict, missing: str) -> Verdict:
    """Mark ``v`` not measured, saying what is missing."""
    v.verdict = NOT_MEASURED
    v.evidence.append(f"not measured: {missing}")
    return v


def _present(table: ResultsTable, wanted, metric: str) -> list[str]:
    have = set(table.select(metric=metric).unique("cell"))
    return [c for c in wanted if c in have]


def decay_rates(profile: ResultsTable) -> np.ndarray:
    """Per seed, the least-squares slope of ``ln μ̃(ℓ)`` on ``ℓ`` (negative: decays)."""
    out = []
    for seed in profile.unique("seed"):
        mine = profile.select(seed=seed)
        lag, value = mine.columns["lag"], mine.columns["value"]
        ok = np.isfinite(value) & (value > 0) & np.isfinite(lag)
        out.append(np.polyfit(lag[ok], np.log(value[ok]), 1)[0] if ok.sum() >= 2 else np.nan)
    return np.array(out)


def judge_c1(table: ResultsTable) -> Verdict:
    """C1: lag-dependent effective learning rates under fixed-step SGD.

    Rule: for each of leaky, scalar_gate and multi_gate, at every checkpoint, the profile
    decays (median over seeds of the per-seed least-squares slope of ``ln μ̃`` on ``ℓ`` is
    negative) and the better of the two predictors at that checkpoint has median ``R²`` over
    seeds ≥ 0.9. All (cell, checkpoint) pairs hold: supported; none: not supported;
    otherwise mixed. Which predictor fits better is the one with the higher median ``R²``
    over all checkpoints and seeds of the cell (reported, not part of the verdict).
    """
    v = Verdict.of(
        "C1",
        f"sensitivity profile μ̃_eff(ℓ) decays with ℓ (per-seed slope of ln μ̃ on ℓ, median < "
        f"0) and the fitted gate-product predictor explains it (median R² ≥ {R2_MIN} for the "
        "better predictor) for leaky, scalar_gate and multi_gate at every checkpoint",
        figures=["profiles_profile", "profiles_heatmap", "profiles_fit"])
    cells = _present(table, PROFILE_CELLS, M.FIT_R2)
    if not cells:
        return not_measured(v, "no fit_r2 rows for leaky, scalar_gate or multi_gate")
    if missing := [c for c in PROFILE_CELLS if c not in cells]:
        v.evidence.append(f"not measured for: {', '.join(missing)} (no fit_r2 rows)")
    checks, per_predictor = [], {}
    for cell in cells:
        mine = table.select(cell=cell)
        predictors = mine.select(metric=M.FIT_R2).unique("predictor")
        for step in mine.checkpoints(M.FIT_R2):
            at = mine.select(step=step)
            decay = Spread.of(decay_rates(at.select(metric=M.SENSITIVITY_PROFILE)))
            r2 = {p: at.select(metric=M.FIT_R2, predictor=p).spread() for p in predictors}
            best = max(predictors, key=lambda p: np.nan_to_num(r2[p].median, nan=-np.inf))
            ok = decay.median < 0 and r2[best].median >= R2_MIN
            checks.append(ok)
            for p in predictors:
                per_predictor.setdefault(p, []).append(r2[p].median >= R2_MIN)
            fits = "; ".join(f"R² {p} {r2[p]}" for p in predictors)
            v.evidence.append(f"{cell}, step {step:g}: decay rate d ln μ̃/dℓ {decay}; {fits}"
                              f" → {'holds' if ok else 'fails'}")
        overall = {p: mine.select(metric=M.FIT_R2, predictor=p).spread() for p in predictors}
        best = max(predictors, key=lambda p: np.nan_to_num(overall[p].median, nan=-np.inf))
        v.evidence.append(f"{cell}: better-fitting predictor {best} (median R² over "
                          "checkpoints and seeds: " +
                          ", ".join(f"{p} {overall[p]}" for p in predictors) + ")")
    for p, ok in per_predictor.items():
        v.evidence.append(f"{p} predictor alone: R² ≥ {R2_MIN} at {sum(ok)}/{len(ok)} "
                          "(cell, checkpoint) pairs")
    v.verdict = combine(checks)
    if missing and v.verdict == SUPPORTED:  # the claim is about all three cells
        v.verdict = MIXED
    return v


def shift(first: np.ndarray, last: np.ndarray) -> tuple[float, float]:
    """``(median change, spread)`` of a per-seed quantity between two checkpoints.

    Args:
        first, last: per-seed values aligned on the same seeds (NaN where missing).

    Returns:
        The median over seeds of the paired change ``last - first``, and the seed-to-seed
        spread: the larger of the two checkpoints' IQRs across seeds.
    """
    change = Spread.of(np.asarray(last) - np.asarray(first)).median
    return change, max(Spread.of(first).iqr, Spread.of(last).iqr)


def profile_shift(table: ResultsTable, first: float, last: float, seeds) -> tuple[float, float]:
    """Profile change between two checkpoints: the median over lags of the absolute
    :func:`shift` of ``ln μ̃(ℓ)``, and the median over lags of its spread."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = []
        for step in (first, last):
            points, vals = table.select(step=step).per_seed_series("lag", seeds)
            logs.append(dict(zip(points.tolist(), np.log(np.where(vals > 0, vals, np.nan)).T,
                                 strict=True)))
    lags = sorted(set(logs[0]) & set(logs[1]))
    pairs = [shift(logs[0][lag], logs[1][lag]) for lag in lags]
    if not pairs:
        return float("nan"), float("nan")
    return (float(np.nanmedian([abs(c) for c, _ in pairs])),
            float(np.nanmedian([s for _, s in pairs])))


def _beyond(change: float, spread: float) -> bool:
    return bool(np.isfinite(change) and abs(change) > np.nan_to_num(spread))


def judge_c2(table: ResultsTable, *, gated: Collection[str]) -> Verdict:
    """C2: learned gates reshape the profile during training.

    Rule, between the first and the last checkpoint, per gated cell (scalar_gate,
    multi_gate), with seeds paired:

    * profile: the median over lags of ``|median over seeds of Δ ln μ̃(ℓ)|`` exceeds the
      median over lags of the seed spread (the larger IQR of ``ln μ̃(ℓ)`` across seeds at
      the two checkpoints);
    * slope, per predictor: ``|median over seeds of Δs|`` exceeds the larger IQR of ``s``
      across seeds at the two checkpoints;
    * control: the cell's profile change exceeds leaky's (the constant-gate control; only
      when leaky was run).

    Every check holds: supported; none: not supported; otherwise mixed. Leaky's own changes
    are reported beside them.

    Args:
        table: the profiles experiment's results.
        gated: the names of the cells with a learned gate, in report order (the cells whose
            class has ``gated = True``).
    """
    v = Verdict.of(
        "C2",
        "between the first and last checkpoint, the change of the fitted slope s (per "
        "predictor) and of ln μ̃_eff(ℓ) (median over lags) exceeds the seed-to-seed spread "
        "(larger IQR of the two checkpoints) for scalar_gate and multi_gate, and their profile "
        "change exceeds that of leaky, the constant-gate control",
        figures=["profiles_fit", "profiles_heatmap", "profiles_profile"])
    measured = _present(table, gated, M.FIT_SLOPE)
    if not measured:
        return not_measured(v, "no fit_slope rows for a gated cell")
    cells = measured + _present(table, (CONTROL,), M.FIT_SLOPE)
    changes, checks = {}, []
    for cell in cells:
        mine = table.select(cell=cell)
        steps = mine.checkpoints(M.FIT_SLOPE)
        if len(steps) < 2:
            v.evidence.append(f"not measured for {cell}: fewer than two checkpoints")
            continue
        first, last, seeds = steps[0], steps[-1], mine.unique("seed")
        d, w = profile_shift(mine.select(metric=M.SENSITIVITY_PROFILE), first, last, seeds)
        changes[cell] = d
        line = [f"{cell}, step {first:g} → {last:g}: profile median |Δ ln μ̃| {d:.3g} vs "
                f"spread {w:.3g} ({'beyond' if _beyond(d, w) else 'within'})"]
        slope_checks = []
        for p in mine.select(metric=M.FIT_SLOPE).unique("predictor"):
            s = mine.select(metric=M.FIT_SLOPE, predictor=p)
            a, b = s.select(step=first), s.select(step=last)
            c, sp = shift(a.per_seed(seeds), b.per_seed(seeds))
            slope_checks.append(_beyond(c, sp))
            line.append(f"s ({p}) {a.spread()} → {b.spread()}, median Δs {c:.3g} vs spread "
                        f"{sp:.3g} ({'beyond' if slope_checks[-1] else 'within'})")
        v.evidence.append("; ".join(line))
        if cell != CONTROL:
            checks += [_beyond(d, w), *slope_checks]
    if not checks:
        return not_measured(v, "fewer than two checkpoints for every gated cell")
    if CONTROL in changes:
        for cell in [c for c in changes if c != CONTROL]:
            checks.append(changes[cell] > changes[CONTROL])
            v.evidence.append(f"{cell} profile change {changes[cell]:.3g} vs the leaky control "
                              f"{changes[CONTROL]:.3g}")
    else:
        v.evidence.append("no leaky control in the table: the control check is skipped")
    v.verdict = combine(checks)
    return v


def judge_c3(table: ResultsTable) -> Verdict:
    """C3: multi-dimensional gates give neuron-specific effective rates.

    Rule: scalar_gate's zeroth-order across-neuron CV (``rate_cv_order0``) is zero in every
    row (|CV| ≤ 1e-9), and at every checkpoint and lag multi_gate's median zeroth-order CV
    is at least 10 × max(scalar_gate's median, 1e-3), the floor making "10 × 0" mean a
    CV of at least 0.01. All checks hold: supported; none: not supported; otherwise mixed.
    The first-order CV (``rate_cv_order1``) is reported beside it.
    """
    v = Verdict.of(
        "C3",
        f"across-neuron coefficient of variation of μ⁰_(t,ℓ,·): exactly 0 for scalar_gate; "
        f"multi_gate ≥ {CV_RATIO:g} × max(scalar_gate, {CV_FLOOR:g}) at every checkpoint and "
        "lag (medians over seeds)",
        figures=["profiles_rate_dispersion"])
    cv0 = table.select(metric=M.RATE_CV_ORDER0)
    missing = [c for c in ("scalar_gate", "multi_gate") if not len(cv0.select(cell=c))]
    if missing:
        return not_measured(v, f"no rate_cv_order0 rows for {', '.join(missing)}")
    scalar, multi = cv0.select(cell="scalar_gate"), cv0.select(cell="multi_gate")
    largest = float(np.nanmax(np.abs(scalar.columns["value"])))
    checks = [largest <= CV_ZERO]
    v.evidence.append(f"scalar_gate: largest |order-0 CV| over all rows {largest:.3g} "
                      f"({'zero' if checks[0] else 'not zero'})")
    ratios = []
    for step in multi.checkpoints():
        for lag in multi.select(step=step).unique("lag"):
            m = multi.select(step=step, lag=lag).spread()
            s = scalar.select(step=step, lag=lag).spread()
            if not s.n:  # no scalar_gate comparator here: not a pass, not a failure
                v.evidence.append(f"step {step:g}, ℓ={lag:g}: scalar_gate not measured")
                continue
            checks.append(m.median >= CV_RATIO * max(s.median, CV_FLOOR))
            ratios.append(m.median / max(s.median, CV_FLOOR))
    last = multi.checkpoints()[-1]
    for cell in ("multi_gate", "scalar_gate"):
        for metric in (M.RATE_CV_ORDER0, M.RATE_CV_ORDER1):
            at = table.select(cell=cell, metric=metric, step=last)
            per_lag = ", ".join(f"ℓ={lag:g}: {at.select(lag=lag).spread()}"
                                for lag in at.unique("lag"))
            v.evidence.append(f"{cell} {metric} at step {last:g}: {per_lag}")
    v.evidence.append(f"multi_gate/max(scalar_gate, {CV_FLOOR:g}) order-0 CV ≥ {CV_RATIO:g} "
                      f"at {sum(checks[1:])}/{len(checks) - 1} (checkpoint, lag) pairs; "
                      f"smallest ratio {min(ratios, default=float('nan')):.3g}")
    v.verdict = combine(checks)
    return v
