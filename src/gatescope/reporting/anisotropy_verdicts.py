"""Verdicts on claims C4–C7 from the ``anisotropy`` experiment.

An *arm* is a ``(cell, optimizer)`` pair. The Jacobian-product metrics are per lag; where an
arm needs one number per seed (C5, C6) it is the seed's median over lags. Unless a rule says
otherwise, the verdict reads the last checkpoint (the trained networks). Gated arms are
compared with the plain cell under the same optimizer; where the design has no such arm
(the paper's three arms: plain only with Adam) with the plain arm it does have, and the
evidence line says "across optimizers".
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from .. import metrics as M
from ..results import ResultsTable, Spread
from .profiles_verdicts import not_measured
from .verdicts import FAILS, HOLDS, UNINFORMATIVE, Verdict, judge

PLAIN = "plain"
#: C5's arms: multi-gate with SGD against the plain cell with Adam.
C5_GATED, C5_ADAM = ("multi_gate", "sgd"), ("plain", "adam")
#: C5's metrics: update anisotropy and (lag-median) propagation anisotropy.
C5_METRICS = (M.GRADCOV_AI, M.JACOBIAN_AI)
#: C6: the optimizer moves gradient-covariance anisotropy "far more" than Jacobian-product
#: anisotropy when its effect is at least this many times larger.
FAR = 2.0
#: C4: a CE at or above this on both sides of a comparison is saturated (all the energy in
#: the top ``r`` directions for both arms): it cannot tell the arms apart, so the comparison
#: is "not informative" and counted neither way.
CE_SATURATED = 0.999

Arm = tuple[str, str]


def arm_name(arm: Arm) -> str:
    """``cell+optimizer``."""
    return "+".join(arm)


def gated_arms(table: ResultsTable, metric: str, gated: Collection[str]) -> list[Arm]:
    """Arms of a cell in ``gated`` (the gated cells) with rows of ``metric``."""
    return [a for a in table.select(metric=metric).combos("cell", "optimizer")
            if a[0] in gated]


def comparator(table: ResultsTable, arm: Arm, metric: str) -> tuple[Arm | None, bool]:
    """The plain arm a gated ``arm`` is compared with, and whether it shares the optimizer."""
    plains = [a for a in table.select(metric=metric).combos("cell", "optimizer")
              if a[0] == PLAIN]
    if (PLAIN, arm[1]) in plains:
        return (PLAIN, arm[1]), True
    return (plains[0], False) if plains else (None, False)


def last_step(table: ResultsTable, metric: str) -> float | None:
    """The last checkpoint at which ``metric`` was measured (None if never)."""
    steps = table.checkpoints(metric)
    return steps[-1] if steps else None


def at_arm(table: ResultsTable, task: str, arm: Arm, metric: str, step: float
           ) -> ResultsTable:
    """Rows of one task, arm, metric and checkpoint."""
    return table.select(task=task, cell=arm[0], optimizer=arm[1], metric=metric, step=step)


def lags_above(a: ResultsTable, b: ResultsTable, saturated: float | None = None
               ) -> tuple[int, int]:
    """``(k, L)``: at ``k`` of the ``L`` lags both measured, ``a``'s median over seeds
    exceeds ``b``'s; with ``saturated``, lags where both medians are at or above it are
    left out of ``L`` (they cannot tell ``a`` from ``b``)."""
    lags = sorted(set(a.unique("lag")) & set(b.unique("lag")))
    pairs = [(a.select(lag=x).spread().median, b.select(lag=x).spread().median) for x in lags]
    if saturated is not None:
        pairs = [(x, y) for x, y in pairs if not (x >= saturated and y >= saturated)]
    return int(sum(x > y for x, y in pairs)), len(pairs)


def _ratio(a: float, b: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(a) / np.float64(b))


def majority(k: int, n: int) -> bool:
    """More than half (and at least one)."""
    return n > 0 and k > n / 2


def _label(arm: Arm, plain: Arm, same: bool) -> str:
    return f"{arm_name(arm)} vs {arm_name(plain)}" + ("" if same else " (across optimizers)")


def _c4_per_lag(table: ResultsTable, task: str, arm: Arm, plain: Arm, metric: str,
                step: float) -> tuple[str, str]:
    """One per-lag C4 check: ``(outcome, evidence)``; ``outcome`` is None when an arm is
    missing, "not informative" when every lag's CE is saturated on both sides."""
    mine, theirs = (at_arm(table, task, x, metric, step) for x in (arm, plain))
    saturated = CE_SATURATED if metric == M.JACOBIAN_CE else None
    k, n = lags_above(mine, theirs, saturated)
    total = lags_above(mine, theirs)[1]
    if not total:  # an arm missing for this task is not a failed check
        return None, f"{metric} not measured for both arms"
    skipped = total - n
    note = f" ({skipped} saturated lags ≥ {CE_SATURATED:g} not informative)" if skipped else ""
    if not n:
        return UNINFORMATIVE, f"{metric} saturated at every lag: not informative"
    ratio = _ratio(Spread.of(mine.per_seed()).median, Spread.of(theirs.per_seed()).median)
    return (HOLDS if majority(k, n) else FAILS,
            f"{metric} higher at {k}/{n} lags{note}, lag-median ratio {ratio:.3g}")


def _c4_gradcov(table: ResultsTable, task: str, arm: Arm, plain: Arm, metric: str,
                step: float) -> tuple[str, str]:
    """One gradient-covariance C4 check: ``(outcome, evidence)`` as :func:`_c4_per_lag`."""
    g = at_arm(table, task, arm, metric, step).spread()
    p = at_arm(table, task, plain, metric, step).spread()
    if not (g.n and p.n):
        return None, f"{metric} not measured for both arms"
    if metric == M.GRADCOV_CE and g.median >= CE_SATURATED and p.median >= CE_SATURATED:
        return UNINFORMATIVE, f"{metric} {g} vs {p}: saturated, not informative"
    return (HOLDS if g.median > p.median else FAILS,
            f"{metric} {g} vs {p} (ratio {_ratio(g.median, p.median):.3g})")


def judge_c4(table: ResultsTable, *, gated: Collection[str]) -> Verdict:
    """C4: gates concentrate gradient flow into low-dimensional subspaces.

    Rule: at the last checkpoint, for each task and gated arm against its plain comparator
    (same optimizer where the design has it), four checks: the Jacobian-product AI and CE
    medians over seeds exceed plain's at more than half of the lags, and the gradient-
    covariance AI and CE medians exceed plain's. A CE comparison whose two medians are both
    ≥ :data:`CE_SATURATED` (0.999) is not informative: a Jacobian-CE lag like that is left
    out of the lag count, and a check with no informative lag left (or a saturated
    gradient-covariance CE) is counted neither way. Verdict by
    :func:`~gatescope.reporting.verdicts.combine_outcomes` (every check not informative:
    "not measured", said in the evidence).

    Args:
        table: the anisotropy experiment's results.
        gated: the names of the cells with a learned gate (whose class has ``gated = True``).
    """
    v = Verdict.of(
        "C4",
        "at the last checkpoint, gated arm vs plain (same optimizer where the design allows): "
        "Jacobian-product AI_r and CE_r higher at most lags, gradient-covariance AI_r and CE_r "
        f"higher (medians over seeds); CE saturated at ≥ {CE_SATURATED:g} on both sides is "
        "not informative",
        figures=["anisotropy_jacobian", "anisotropy_gradcov", "anisotropy_gradcov_training"],
        null="gated and plain arms are equally anisotropic: the gated arm's median is above "
             "plain's at no more than half of the lags (or not above it)")
    # the arms and checkpoint come from the Jacobian-product rows (AI, else CE alone)
    key = M.JACOBIAN_AI if len(table.select(metric=M.JACOBIAN_AI)) else M.JACOBIAN_CE
    step = last_step(table, key)
    arms = gated_arms(table, key, gated)
    if step is None or not arms or comparator(table, arms[0], key)[0] is None:
        return not_measured(v, "jacobian_ai rows for a gated cell and for plain")
    outcomes = []
    for task in table.select(metric=key).unique("task"):
        for arm in arms:
            plain, same = comparator(table, arm, key)
            parts = []
            for check, metrics in ((_c4_per_lag, (M.JACOBIAN_AI, M.JACOBIAN_CE)),
                                   (_c4_gradcov, (M.GRADCOV_AI, M.GRADCOV_CE))):
                for metric in metrics:
                    outcome, text = check(table, task, arm, plain, metric, step)
                    if outcome is not None:
                        outcomes.append(outcome)
                        text += "" if outcome == UNINFORMATIVE else f" → {outcome}"
                    parts.append(text)
            v.evidence.append(f"{task}, step {step:g}, {_label(arm, plain, same)}: "
                              + "; ".join(parts))
    margin = (f"{outcomes.count(HOLDS)} of {len(outcomes)} checks hold, "
              f"{outcomes.count(FAILS)} fail, {outcomes.count(UNINFORMATIVE)} not informative "
              "(saturated CE)")
    return judge(v, outcomes, margin)


def seed_values(table: ResultsTable, task: str, arm: Arm, metric: str, step: float
                ) -> np.ndarray:
    """Per seed, the metric (its median over lags for per-lag metrics)."""
    return at_arm(table, task, arm, metric, step).per_seed()


def judge_c5(table: ResultsTable) -> Verdict:
    """C5: multi-gate with SGD matches or exceeds the anisotropy that Adam induces.

    Rule: per task and metric — the gradient-covariance AI and the Jacobian-product AI (per
    seed, median over lags) — at every checkpoint after training began (step > 0) where both
    arms were measured: multi_gate+SGD's median over seeds *exceeds* plain+Adam's upper
    quartile, or *matches* it (at or above plain+Adam's lower quartile); below the lower
    quartile it falls short. A (task, metric) pair holds when no checkpoint falls short.
    Every pair holds: supported; none: not supported; some (e.g. some tasks only, or one
    metric only): mixed.
    """
    v = Verdict.of(
        "C5",
        "per task and checkpoint (step > 0): multi_gate+SGD's median gradient-covariance AI "
        "and lag-median Jacobian AI at or above plain+Adam's lower quartile (matches) or above "
        "its upper quartile (exceeds)",
        figures=["anisotropy_gradcov", "anisotropy_gradcov_training", "anisotropy_jacobian"],
        null="multi_gate+SGD less anisotropic than plain+Adam beyond the seed spread: its "
             "median below plain+Adam's lower quartile")
    arms = table.combos("cell", "optimizer")
    if C5_GATED not in arms or C5_ADAM not in arms:
        return not_measured(v, f"the arms {arm_name(C5_GATED)} and {arm_name(C5_ADAM)}")
    checks, ratios = [], []
    for task in table.unique("task"):
        for metric in C5_METRICS:
            outcomes = []
            steps = [s for s in table.select(task=task).checkpoints(metric) if s > 0]
            for step in steps:
                g = Spread.of(seed_values(table, task, C5_GATED, metric, step))
                a = Spread.of(seed_values(table, task, C5_ADAM, metric, step))
                if not (g.n and a.n):
                    continue
                outcome = ("exceeds" if g.median > a.q75 else
                           "matches" if g.median >= a.q25 else "falls short")
                outcomes.append(outcome)
                ratios.append(_ratio(g.median, a.q25))
                v.evidence.append(f"{task}, step {step:g}, {metric}: {arm_name(C5_GATED)} {g} "
                                  f"vs {arm_name(C5_ADAM)} {a}; margin over the null's bound "
                                  f"(median / plain+Adam's q25) {ratios[-1]:.3g} → {outcome}")
            if outcomes:
                checks.append(HOLDS if "falls short" not in outcomes else FAILS)
    if not checks:
        return not_measured(v, "a checkpoint after step 0 with both arms measured")
    return judge(v, checks, f"{checks.count(HOLDS)}/{len(checks)} (task, metric) pairs never "
                 f"fall short; smallest median / plain+Adam's q25 {min(ratios):.3g} (needs ≥ 1)")


def _log_median(values: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return Spread.of(np.log(values)).median


def _log_iqr(values: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return Spread.of(np.log(values)).iqr


def effects(table: ResultsTable, task: str, metric: str, step: float,
            gated: Collection[str]) -> tuple[float, float, float]:
    """C6's effect sizes of one task and metric, in ``|Δ median ln metric|``; ``gated``
    names the gated cells.

    Returns:
        ``(optimizer, cell, noise)``: the optimizer's effect (median over cells run with
        both optimizers of Adam vs SGD), the cell's effect (median over optimizers and gated
        cells of gated vs plain under the same optimizer), and the noise (median over arms
        of the IQR of ``ln metric`` across seeds).
    """
    arms = table.select(task=task, metric=metric, step=step).combos("cell", "optimizer")
    vals = {a: seed_values(table, task, a, metric, step) for a in arms}
    optimizer = [abs(_log_median(vals[(c, "adam")]) - _log_median(vals[(c, "sgd")]))
                 for c, o in arms if o == "sgd" and (c, "adam") in vals]
    cell = [abs(_log_median(vals[(c, o)]) - _log_median(vals[(PLAIN, o)]))
            for c, o in arms if c in gated and (PLAIN, o) in vals]
    return (float(np.nanmedian(optimizer)) if optimizer else float("nan"),
            float(np.nanmedian(cell)) if cell else float("nan"),
            float(np.nanmedian([_log_iqr(x) for x in vals.values()])))


def judge_c6(table: ResultsTable, *, gated: Collection[str]) -> Verdict:
    """C6: gates shape transport, optimizers shape updates.

    Rule (needs the factorial cell × optimizer design), per task at the last checkpoint,
    with effects measured as ``|Δ median ln AI|`` (see :func:`effects`) for the gradient-
    covariance AI (updates) and the lag-median Jacobian-product AI (transport):

    * the optimizer shapes updates, not transport: its effect on the gradient-covariance AI
      exceeds that metric's seed noise and is at least 2 × its effect on the Jacobian AI;
    * the cell shapes both: its effect on each metric exceeds that metric's seed noise.

    All checks hold: supported; none: not supported; otherwise mixed.

    Args:
        table: the anisotropy experiment's results.
        gated: the names of the cells with a learned gate (whose class has ``gated = True``).
    """
    v = Verdict.of(
        "C6",
        f"factorial design, last checkpoint, effects as |Δ median ln AI|: the optimizer's "
        f"effect (Adam vs SGD, same cell) on gradient-covariance AI exceeds its seed noise and "
        f"is ≥ {FAR:g} × its effect on the lag-median Jacobian AI; the cell's effect (gated vs "
        "plain, same optimizer) exceeds the seed noise on both",
        figures=["anisotropy_gradcov", "anisotropy_jacobian"],
        null="each effect no larger than the seed noise (the IQR of ln AI across seeds), and "
             "the optimizer moving transport as much as updates")
    arms = table.select(metric=M.GRADCOV_AI).combos("cell", "optimizer")
    both_opts = {c for c, o in arms if o == "sgd" and (c, "adam") in arms}
    same_opt_plain = {o for c, o in arms if c in gated and (PLAIN, o) in arms}
    if not both_opts or not same_opt_plain:
        return not_measured(v, "the factorial design (a cell trained with both SGD and Adam, "
                               "and plain beside a gated cell under one optimizer); arms: "
                               + ", ".join(arm_name(a) for a in arms))
    step = last_step(table, M.GRADCOV_AI)
    checks, margins = [], []
    for task in table.select(metric=M.GRADCOV_AI).unique("task"):
        g_opt, g_cell, g_noise = effects(table, task, M.GRADCOV_AI, step, gated)
        j_opt, j_cell, j_noise = effects(table, task, M.JACOBIAN_AI, step, gated)
        updates = g_opt > g_noise and g_opt >= FAR * j_opt
        both = g_cell > g_noise and j_cell > j_noise
        checks += [HOLDS if updates else FAILS, HOLDS if both else FAILS]
        margin = (f"{task}: optimizer effect/noise {_ratio(g_opt, g_noise):.3g}, gradcov/"
                  f"Jacobian {_ratio(g_opt, j_opt):.3g} (needs > 1 and ≥ {FAR:g}); cell "
                  f"effect/noise {_ratio(g_cell, g_noise):.3g} / {_ratio(j_cell, j_noise):.3g} "
                  "(needs > 1)")
        margins.append(margin)
        v.evidence.append(
            f"{task}, step {step:g}: optimizer effect on gradcov AI {g_opt:.3g} vs Jacobian "
            f"AI {j_opt:.3g} (noise {g_noise:.3g} / {j_noise:.3g}) → "
            f"{'optimizer shapes updates' if updates else 'not borne out'}; cell effect on "
            f"gradcov AI {g_cell:.3g}, on Jacobian AI {j_cell:.3g} → "
            f"{'cell shapes both' if both else 'not borne out'}; margin {margin}")
        for arm in arms:
            g = Spread.of(seed_values(table, task, arm, M.GRADCOV_AI, step))
            j = Spread.of(seed_values(table, task, arm, M.JACOBIAN_AI, step))
            v.evidence.append(f"{task}, {arm_name(arm)}: gradcov AI {g}; lag-median "
                              f"Jacobian AI {j}")
    return judge(v, checks, "; ".join(margins))


def judge_c7(table: ResultsTable, *, gated: Collection[str]) -> Verdict:
    """C7: gates align transport with loss-relevant directions.

    Rule: at the last checkpoint, per task and gated arm: the alignment ``a_r``'s median
    over seeds is above the random baseline ``r/N`` at more than half of the lags, and above
    the plain comparator's (same optimizer where the design has it) at more than half of the
    lags. All checks hold: supported; none: not supported; otherwise mixed. Plain's own
    position against the baseline is reported.

    Args:
        table: the anisotropy experiment's results.
        gated: the names of the cells with a learned gate (whose class has ``gated = True``).
    """
    v = Verdict.of(
        "C7",
        "at the last checkpoint, alignment a_r (median over seeds) above the random baseline "
        "r/N at most lags, and above plain's (same optimizer where the design allows) at most "
        "lags, for every gated arm and task",
        figures=["anisotropy_alignment"],
        null="a random direction's alignment r/N (alignment_baseline), and the plain "
             "comparator's alignment: the gated arm above either at no more than half of "
             "the lags")
    step = last_step(table, M.ALIGNMENT)
    arms = gated_arms(table, M.ALIGNMENT, gated)
    if step is None or not arms or not len(table.select(metric=M.ALIGNMENT_BASELINE)):
        return not_measured(v, "alignment rows for a gated cell and alignment_baseline rows")
    checks, ratios = [], []
    for task in table.select(metric=M.ALIGNMENT).unique("task"):
        flat = table.select(task=task, metric=M.ALIGNMENT_BASELINE, step=step)
        base = flat.spread()
        for arm in arms:
            mine = at_arm(table, task, arm, M.ALIGNMENT, step)
            above = _versus_baseline(mine, flat)
            if not above[1]:
                v.evidence.append(f"{task}, {arm_name(arm)}: alignment not measured")
                continue
            checks.append(HOLDS if majority(*above) else FAILS)
            ratios.append(_ratio(Spread.of(mine.per_seed()).median, base.median))
            line = (f"{task}, step {step:g}, {arm_name(arm)}: a_r above r/N = {base.median:.3g}"
                    f" at {above[0]}/{above[1]} lags (lag-median a_r "
                    f"{Spread.of(mine.per_seed())}, {ratios[-1]:.3g} × r/N)")
            plain, same = comparator(table, arm, M.ALIGNMENT)
            if plain is not None:
                theirs = at_arm(table, task, plain, M.ALIGNMENT, step)
                k, n = lags_above(mine, theirs)
                if n:
                    checks.append(HOLDS if majority(k, n) else FAILS)
                line += (f"; above {arm_name(plain)}{'' if same else ' (across optimizers)'} "
                         f"at {k}/{n} lags ({arm_name(plain)} above r/N at "
                         f"{_versus_baseline(theirs, flat)[0]}/{n} lags)")
            v.evidence.append(line)
    margin = (f"lag-median a_r / (r/N) from {min(ratios):.3g} to {max(ratios):.3g} over "
              f"(task, gated arm); {checks.count(HOLDS)}/{len(checks)} checks hold"
              if ratios else "")
    return judge(v, checks, margin)


def _versus_baseline(alignment: ResultsTable, baseline: ResultsTable) -> tuple[int, int]:
    """``(k, L)``: lags whose median alignment exceeds the median baseline."""
    b = baseline.spread().median
    lags = alignment.unique("lag")
    return sum(alignment.select(lag=x).spread().median > b for x in lags), len(lags)
