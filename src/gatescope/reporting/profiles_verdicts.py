"""Verdicts on claims C1–C3 from the ``profiles`` experiment.

Every number comes from the results table; a verdict whose rows are absent is "not measured"
with a line saying which rows are missing. Checkpoints are the training steps at which the
metric was measured (the ``loss`` rows' steps are not checkpoints).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection

import numpy as np

from .. import metrics as M
from ..results import ResultsTable, Spread
from .verdicts import (
    ALPHA,
    FAILS,
    HOLDS,
    MIXED,
    NOT_MEASURED,
    SUPPORTED,
    SignTest,
    Verdict,
    judge,
    sign_test,
)

#: The cells C1 names, in report order.
PROFILE_CELLS = ("leaky", "scalar_gate", "multi_gate")
#: The control cell of C2: a constant gate.
CONTROL = "leaky"
#: The gate-product predictor C1 and C2 judge, chosen before looking at the data: the
#: retention ``r`` is what the transport's zeroth order is made of (``diag(J_j) ≈ r_j``, the
#: effective rates ``μ⁰ = ∏ r_j``, docs/maths.md), so it is the theory's predictor; "update"
#: (``∏ g``, what the paper's code fits) is reported beside it but never judged, so the rule
#: does not take the better of two.
PREDICTOR = "retention"
#: C3: multi_gate's across-neuron CV of ``μ⁰`` must be at least this many times the CV of
#: its neuron-permuted null in every seed: dispersion from persistent neuron identity at
#: least as large again as what the same gate values without identity give.
CV_NULL_FACTOR = 2.0
#: C3: the shortest lag the CV is compared at. At ``ℓ = 1`` the window is one step, whose
#: across-neuron CV a permutation of that step's neurons leaves unchanged (the ratio is 1 by
#: construction), so only ``ℓ ≥ 2`` can tell identity from noise.
CV_MIN_LAG = 2
#: C3's sanity line: scalar_gate's zeroth-order CV is zero when every row is at most this.
CV_ZERO = 1e-9


def not_measured(v: Verdict, missing: str) -> Verdict:
    """Mark ``v`` not measured, saying what is missing."""
    v.verdict = NOT_MEASURED
    v.evidence.append(f"not measured: {missing}")
    return v


def _present(table: ResultsTable, wanted, metric: str) -> list[str]:
    have = set(table.select(metric=metric).unique("cell"))
    return [c for c in wanted if c in have]


def series(rows: ResultsTable, lags: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(lags, values)`` of one seed's per-lag rows, sorted by lag; with ``lags`` given, the
    values at those lags (NaN where a lag has no row)."""
    have = dict(zip(rows.columns["lag"].tolist(), rows.columns["value"].tolist(), strict=True)) \
        if len(rows) else {}
    lags = np.array(sorted(have)) if lags is None else np.asarray(lags, dtype=float)
    return lags, np.array([have.get(float(lag), np.nan) for lag in lags])


def _log(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.where(values > 0, values, np.nan))


def decay_rate(rows: ResultsTable) -> float:
    """The least-squares slope of ``ln μ̃(ℓ)`` on ``ℓ`` of one seed's profile rows (negative:
    decays; NaN with fewer than two positive values)."""
    lag, value = series(rows)
    y = _log(value)
    ok = np.isfinite(y)
    return float(np.polyfit(lag[ok], y[ok], 1)[0]) if ok.sum() >= 2 else float("nan")


def decay_rates(profile: ResultsTable) -> np.ndarray:
    """Per seed, :func:`decay_rate` of the seed's rows of ``profile``."""
    return np.array([decay_rate(profile.select(seed=seed)) for seed in profile.unique("seed")])


def held_out_rmse(y: np.ndarray, x: np.ndarray) -> float:
    """Out-of-sample error of the one-parameter predictor ``y ≈ s·x``.

    ``s`` is the least-squares fit through the origin on the first half of the lags
    (``s = Σxy/Σx²``); the score is the root-mean-square error of ``y - s·x`` on the second,
    held-out half. Every predictor of C1 has this form and one fitted parameter (``ln μ̃(1)
    = 0`` and each regressor is 0 at ``ℓ = 1``, so no intercept is fitted).

    Args:
        y: ``(L,)`` ``ln μ̃(ℓ)`` at lags ``1..L`` in order.
        x: ``(L,)`` the predictor's regressor at the same lags.

    Returns:
        The held-out RMSE; NaN when either half has no pair with finite ``x`` and ``y`` or
        the fitted half's ``x`` is all zero. The halves split the lags by position (the
        first ``⌊L/2⌋``), before non-finite pairs are left out.
    """
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    if y.shape != x.shape or y.ndim != 1:
        raise ValueError(f"y and x must be 1-d of one length, got shapes {y.shape} and {x.shape}")
    half = y.size // 2
    ok = np.isfinite(x) & np.isfinite(y)
    fit, test = ok.copy(), ok.copy()
    fit[half:], test[:half] = False, False
    den = float(x[fit] @ x[fit])
    if not test.any() or den == 0:
        return float("nan")
    slope = float(x[fit] @ y[fit]) / den
    return float(np.sqrt(np.mean((y[test] - slope * x[test]) ** 2)))


#: C1's gate-free nulls, by name: each a function of ``(lags, leaky's profile at the same
#: checkpoint and seed)`` giving the regressor ``x(ℓ)`` of ``ln μ̃ ≈ s·x``.
C1_NULLS = {
    "geometric (ℓ-1)·ln q": lambda lags, leaky: lags - 1,
    "leaky kernel s·ln K(ℓ)": lambda lags, leaky: _log(leaky),
}


def held_out_errors(rows: ResultsTable, leaky: ResultsTable | None) -> dict[str, float]:
    """C1's held-out errors (:func:`held_out_rmse`) of one cell, checkpoint and seed.

    Args:
        rows: the seed's rows at that checkpoint (its profile and zeroth-order predictions).
        leaky: leaky's profile rows at the same checkpoint and seed (None: not run).

    Returns:
        ``{"gate": ..., null name: ...}``: the gate product ``s·ln(P̄(ℓ)/P̄(1))`` of
        :data:`PREDICTOR`, and each of :data:`C1_NULLS` (the leaky kernel only with leaky).
    """
    lags, profile = series(rows.select(metric=M.SENSITIVITY_PROFILE))
    y = _log(profile)
    _, gate = series(rows.select(metric=M.ZEROTH_ORDER_PROFILE, predictor=PREDICTOR), lags)
    kernel = None if leaky is None else series(leaky, lags)[1]
    out = {"gate": held_out_rmse(y, _log(gate))}
    for name, regressor in C1_NULLS.items():
        if kernel is not None or "leaky" not in name:
            out[name] = held_out_rmse(y, regressor(lags, kernel))
    return out


def _nanmedian(x, axis=None):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(x, axis=axis)


def _decay_check(v: Verdict, cell: str, profile: ResultsTable) -> SignTest:
    """C1's decay check of one cell: per seed the largest decay rate over the checkpoints
    (negative: the profile decays at every checkpoint), sign-tested against a flat profile."""
    steps, seeds = profile.checkpoints(), profile.unique("seed")
    rates = np.array([[decay_rate(profile.select(step=st, seed=sd)) for st in steps]
                      for sd in seeds])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        worst = np.nanmax(rates, axis=1)
    test = sign_test(-worst)
    per_step = ", ".join(f"step {st:g} {Spread.of(rates[:, i])}" for i, st in enumerate(steps))
    v.evidence.append(f"{cell}: decay rate d ln μ̃/dℓ {per_step}; null: flat profile (rate "
                      f"0); largest rate over checkpoints per seed {Spread.of(worst)}, below 0 "
                      f"in {test}")
    return test


def _predictor_checks(v: Verdict, cell: str, table: ResultsTable) -> list[tuple[str, SignTest]]:
    """C1's out-of-sample checks of one gated cell: per null, the sign test over seeds of
    the median over checkpoints of (null's held-out error − gate product's)."""
    mine = table.select(cell=cell)
    steps, seeds = mine.checkpoints(M.SENSITIVITY_PROFILE), mine.unique("seed")
    leaky = table.select(cell=CONTROL, metric=M.SENSITIVITY_PROFILE)
    errors = [[held_out_errors(mine.select(step=st, seed=sd),
                               leaky.select(step=st, seed=sd) if len(leaky) else None)
               for st in steps] for sd in seeds]
    gate = np.array([[e["gate"] for e in row] for row in errors])  # (seeds, steps)
    out = []
    for name in [n for n in C1_NULLS if n in errors[0][0]]:
        null = np.array([[e[name] for e in row] for row in errors])
        test = sign_test(_nanmedian(null - gate, axis=1))
        out.append((name, test))
        v.evidence.append(
            f"{cell}: held-out RMSE of ln μ̃ (median over checkpoints and seeds) {PREDICTOR} "
            f"gate product {_nanmedian(gate):.3g} vs null {name} {_nanmedian(null):.3g}; "
            f"gate product lower (per seed, median over checkpoints) in {test}")
    return out


def judge_c1(table: ResultsTable) -> Verdict:
    """C1: lag-dependent effective learning rates under fixed-step SGD.

    Rule, every check an exact sign test over seeds at ``α = 0.05``
    (:class:`~gatescope.reporting.verdicts.SignTest`):

    * decay, for each of leaky, scalar_gate and multi_gate: per seed the largest, over the
      checkpoints, least-squares slope of ``ln μ̃`` on ``ℓ`` is below 0 (one-sided; null: a
      flat profile, slope 0). A precondition, not evidence: contracting transport decays
      whatever the gates do, so a holding decay check is reported but not counted, while a
      failing or inconclusive one counts as such;
    * the gates predict it, for scalar_gate and multi_gate: per seed and checkpoint,
      :func:`held_out_rmse` (fit ``s`` on the first half of the lags, RMSE of ``ln μ̃`` on the
      second) of the :data:`PREDICTOR` gate product ``s·ln(P̄(ℓ)/P̄(1))`` against each
      gate-free null with one fitted parameter: the geometric decay ``(ℓ-1)·ln q`` and
      (when leaky was run) the leaky control's kernel ``s·ln K(ℓ)``, ``K`` leaky's profile
      at the same checkpoint and seed. The gate product wins a seed when the median over
      checkpoints of (null error − gate error) is positive; one-sided test per (cell, null).

    Verdict by :func:`~gatescope.reporting.verdicts.combine_outcomes`; with a cell missing
    it is at best mixed (the claim is about all three). The update predictor is not judged.
    """
    v = Verdict.of(
        "C1",
        f"per-seed decay of μ̃_eff(ℓ) at every checkpoint (leaky, scalar_gate, multi_gate), "
        f"and for the gated cells the {PREDICTOR} gate product's out-of-sample error (one "
        "parameter fitted on the first half of the lags, RMSE of ln μ̃ on the second) below "
        "that of gate-free one-parameter predictors; exact sign tests over seeds, α = "
        f"{ALPHA:g}",
        figures=["profiles_profile", "profiles_heatmap", "profiles_fit"],
        null="a flat profile (decay rate 0); a gate-free predictor with the same one fitted "
             "parameter predicts the held-out lags as well as the gate product: the geometric "
             "decay (ℓ-1)·ln q, and the leaky control's measured kernel")
    cells = _present(table, PROFILE_CELLS, M.SENSITIVITY_PROFILE)
    if not cells:
        return not_measured(v, "no sensitivity_profile rows for leaky, scalar_gate or "
                               "multi_gate")
    if missing := [c for c in PROFILE_CELLS if c not in cells]:
        v.evidence.append(f"not measured for: {', '.join(missing)} (no sensitivity_profile "
                          "rows)")
    outcomes, margins = [], []
    for cell in cells:
        test = _decay_check(v, cell, table.select(cell=cell, metric=M.SENSITIVITY_PROFILE))
        if test.outcome != HOLDS:  # a precondition: only its failure (or doubt) counts
            outcomes.append(test.outcome)
        margins.append(f"{cell} decays in {test.wins}/{test.n} seeds")
    for cell in [c for c in cells if c != CONTROL]:
        if not len(table.select(cell=cell, metric=M.ZEROTH_ORDER_PROFILE, predictor=PREDICTOR)):
            v.evidence.append(f"{cell}: not measured (no zeroth_order_profile rows of the "
                              f"{PREDICTOR} predictor)")
            continue
        for name, test in _predictor_checks(v, cell, table):
            outcomes.append(test.outcome)
            margins.append(f"{cell} gate product beats {name.split()[0]} in {test.wins}/"
                           f"{test.n} (p = {test.p:.3g})")
    judge(v, outcomes, "; ".join(margins))
    if missing and v.verdict == SUPPORTED:  # the claim is about all three cells
        v.verdict = MIXED
    return v


def profile_change(profile: ResultsTable, first: float, last: float, seeds) -> np.ndarray:
    """Per seed, the median over lags of ``ln μ̃_last(ℓ) − ln μ̃_first(ℓ)`` (lags where
    either is missing or not positive left out): ``(len(seeds),)``, NaN for a seed without
    both."""
    logs = []
    for step in (first, last):
        points, vals = profile.select(step=step).per_seed_series("lag", seeds)
        logs.append(dict(zip(points.tolist(), _log(vals).T, strict=True)))
    lags = sorted(set(logs[0]) & set(logs[1]))
    if not lags:
        return np.full(len(list(seeds)), np.nan)
    diff = np.stack([logs[1][lag] - logs[0][lag] for lag in lags], axis=1)
    return _nanmedian(diff, axis=1)


def _changes(mine: ResultsTable, first: float, last: float, seeds) -> dict[str, np.ndarray]:
    """C2's per-seed paired changes of one cell between two checkpoints: the fitted slope
    of :data:`PREDICTOR` and the lag-median change of ``ln μ̃``."""
    s = mine.select(metric=M.FIT_SLOPE, predictor=PREDICTOR)
    return {"slope": s.select(step=last).per_seed(seeds) - s.select(step=first).per_seed(seeds),
            "profile": profile_change(mine.select(metric=M.SENSITIVITY_PROFILE), first, last,
                                      seeds)}


def judge_c2(table: ResultsTable, *, gated: Collection[str]) -> Verdict:
    """C2: learned gates reshape the profile during training.

    Rule, between the first and the last checkpoint, per gated cell (scalar_gate,
    multi_gate), seeds paired, exact sign tests at ``α = 0.05``:

    * slope: the per-seed change ``Δs`` of the :data:`PREDICTOR` fit's power has a
      consistent sign (two-sided);
    * profile: the per-seed median over lags of ``Δ ln μ̃(ℓ)`` has a consistent sign
      (two-sided);
    * control (when leaky was run): per seed, the cell's ``|profile change|`` exceeds
      leaky's of the same seed index (one-sided).

    A zero change is on neither side, so no change in any seed fails. Verdict by
    :func:`~gatescope.reporting.verdicts.combine_outcomes`: a test that its seeds cannot
    bring to ``α`` (fewer than 6 seeds two-sided, 5 one-sided) is inconclusive, never "not
    supported"; with every test inconclusive the claim is "not measured" and the evidence
    says so. Leaky's own changes are reported beside them.

    Args:
        table: the profiles experiment's results.
        gated: the names of the cells with a learned gate, in report order (the cells whose
            class has ``gated = True``).
    """
    v = Verdict.of(
        "C2",
        f"per-seed paired changes between the first and last checkpoint of the fitted slope s "
        f"({PREDICTOR} predictor) and of ln μ̃_eff(ℓ) (median over lags) for scalar_gate and "
        "multi_gate (two-sided sign tests), and their |profile change| against leaky's, the "
        f"constant-gate control (one-sided); α = {ALPHA:g}",
        figures=["profiles_fit", "profiles_heatmap", "profiles_profile"],
        null="training leaves the profile's shape alone: each per-seed change as likely "
             "positive as negative, and a gated cell's profile change no larger than leaky's")
    measured = _present(table, gated, M.FIT_SLOPE)
    if not measured:
        return not_measured(v, "no fit_slope rows for a gated cell")
    cells = measured + _present(table, (CONTROL,), M.FIT_SLOPE)
    changes, outcomes, margins = {}, [], []
    for cell in cells:
        mine = table.select(cell=cell)
        steps = mine.checkpoints(M.FIT_SLOPE)
        if len(steps) < 2:
            v.evidence.append(f"not measured for {cell}: fewer than two checkpoints")
            continue
        seeds = mine.unique("seed")
        changes[cell] = dict(zip(seeds, np.abs(_changes(mine, steps[0], steps[-1], seeds)
                                               ["profile"]), strict=True))
        parts = []
        for name, d in _changes(mine, steps[0], steps[-1], seeds).items():
            test = sign_test(d, two_sided=True)
            parts.append(f"{name} change {Spread.of(d)}: {test}")
            if cell != CONTROL:
                outcomes.append(test.outcome)
                margins.append(f"{cell} {name} {test.wins}/{test.n} (p = {test.p:.3g})")
        v.evidence.append(f"{cell}, step {steps[0]:g} → {steps[-1]:g}: " + "; ".join(parts))
    if not outcomes:
        return not_measured(v, "fewer than two checkpoints for every gated cell")
    if CONTROL in changes:
        for cell in [c for c in changes if c != CONTROL]:
            seeds = sorted(set(changes[cell]) & set(changes[CONTROL]))
            mine = np.array([changes[cell][s] for s in seeds])
            theirs = np.array([changes[CONTROL][s] for s in seeds])
            test = sign_test(mine - theirs)
            outcomes.append(test.outcome)
            margins.append(f"{cell} beyond leaky {test.wins}/{test.n} (p = {test.p:.3g})")
            v.evidence.append(f"{cell} |profile change| {Spread.of(mine)} vs the leaky control "
                              f"{Spread.of(theirs)}: larger in {test}")
    else:
        v.evidence.append("no leaky control in the table: the control check is skipped")
    return judge(v, outcomes, "; ".join(margins))


def _long_lags(rows: ResultsTable) -> ResultsTable:
    """The rows at lags ``≥ CV_MIN_LAG`` (those C3 compares)."""
    keep = rows.columns["lag"] >= CV_MIN_LAG
    return ResultsTable({k: c[keep] for k, c in rows.columns.items()})


def _cv_ratios(cv: ResultsTable, null: ResultsTable, seeds) -> np.ndarray:
    """Per seed, the median over lags ``≥ CV_MIN_LAG`` of ``CV / null CV`` (a null of 0
    gives ``inf`` for a positive CV and 0 for a zero one): ``(len(seeds),)``."""
    out = []
    for seed in seeds:
        lags, mine = series(cv.select(seed=seed))
        keep = lags >= CV_MIN_LAG
        _, base = series(null.select(seed=seed), lags[keep])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(base > 0, mine[keep] / base, np.where(mine[keep] > 0, np.inf, 0.0))
        out.append(_nanmedian(np.where(np.isfinite(mine[keep]) & np.isfinite(base), ratio,
                                       np.nan)) if keep.any() else np.nan)
    return np.array(out, dtype=float)


def judge_c3(table: ResultsTable) -> Verdict:
    """C3: multi-dimensional gates give neuron-specific effective rates.

    Rule: at every checkpoint, in every seed, multi_gate's zeroth-order across-neuron CV
    (``rate_cv_order0``) is at least :data:`CV_NULL_FACTOR` = 2 times the CV of its null
    (``rate_cv_order0_null``: the same CV with the retention's neuron index permuted at
    random at every (example, time) step, which keeps each step's gate values and removes
    neuron identity), per seed the median over the rate lags ``ℓ ≥ 2`` of the ratio (at
    ``ℓ = 1`` the ratio is 1 by construction). A checkpoint holds or fails; the verdict is
    :func:`~gatescope.reporting.verdicts.combine_outcomes` of the checkpoints. scalar_gate's
    CV, zero by definition (one gate for every neuron), is a sanity line, not evidence; the
    first-order CV (``rate_cv_order1``) is reported beside it.
    """
    v = Verdict.of(
        "C3",
        f"multi_gate's across-neuron CV of μ⁰_(t,ℓ,·) against its neuron-permuted null: "
        f"≥ {CV_NULL_FACTOR:g} × the null's in every seed (median over lags ℓ ≥ {CV_MIN_LAG} "
        "of the per-seed ratio) at every checkpoint",
        figures=["profiles_rate_dispersion"],
        null="random gates with the same values: the retention's neuron index permuted "
             "independently at every (example, time) step, so the rates differ across "
             "neurons only by gate noise, not by neuron identity")
    multi = table.select(metric=M.RATE_CV_ORDER0, cell="multi_gate")
    null = table.select(metric=M.RATE_CV_ORDER0_NULL, cell="multi_gate")
    if not len(multi):
        return not_measured(v, "no rate_cv_order0 rows for multi_gate")
    if not len(null):
        return not_measured(v, "no rate_cv_order0_null rows for multi_gate (the "
                               "neuron-permuted null, quantity zeroth_order_rates_null)")
    scalar = table.select(metric=M.RATE_CV_ORDER0, cell="scalar_gate")
    if len(scalar):
        largest = float(np.nanmax(np.abs(scalar.columns["value"])))
        v.evidence.append(f"sanity (zero by definition, not evidence): scalar_gate's largest "
                          f"|order-0 CV| {largest:.3g} "
                          f"({'zero' if largest <= CV_ZERO else 'NOT zero: check the cell'})")
    outcomes, smallest = [], []
    for step in multi.checkpoints():
        mine, base = multi.select(step=step), null.select(step=step)
        ratios = _cv_ratios(mine, base, mine.unique("seed"))
        if not np.isfinite(ratios).any() and not np.isinf(ratios).any():
            v.evidence.append(f"step {step:g}: not measured (no lag ≥ {CV_MIN_LAG} with both "
                              "CVs)")
            continue
        ok = bool(np.all(np.nan_to_num(ratios, nan=0.0) >= CV_NULL_FACTOR))
        outcomes.append(HOLDS if ok else FAILS)
        smallest.append(float(np.nanmin(ratios)))
        v.evidence.append(
            f"step {step:g}: multi_gate order-0 CV (ℓ ≥ {CV_MIN_LAG}, lag-median) "
            f"{Spread.of(_long_lags(mine).per_seed())} vs null "
            f"{Spread.of(_long_lags(base).per_seed())}; ratio {Spread.of(ratios)}, "
            f"smallest {smallest[-1]:.3g} → {HOLDS if ok else FAILS} (≥ {CV_NULL_FACTOR:g} in "
            "every seed)")
    last = multi.checkpoints()[-1]
    for metric in (M.RATE_CV_ORDER0, M.RATE_CV_ORDER0_NULL, M.RATE_CV_ORDER1):
        at = table.select(cell="multi_gate", metric=metric, step=last)
        per_lag = ", ".join(f"ℓ={lag:g}: {at.select(lag=lag).spread()}"
                            for lag in at.unique("lag"))
        v.evidence.append(f"multi_gate {metric} at step {last:g}: {per_lag}")
    margin = (f"smallest per-seed CV ratio over the null {min(smallest):.3g} (needs ≥ "
              f"{CV_NULL_FACTOR:g}) at {outcomes.count(HOLDS)}/{len(outcomes)} checkpoints "
              "holding" if smallest else "")
    return judge(v, outcomes, margin)
