"""The paper's three analogies (schedule, momentum, Adam) as measured numbers, and the
fidelity section: how far each of the paper code's defects moves the headline numbers.

No verdicts here: each section lists measured quantities (median [IQR, n] across seeds) and
names the figures that show them. The helpers that turn rows into the analogies' quantities
(:func:`leak_alpha`, :func:`step_size`, :func:`kernel`) are shared with the figures.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from .. import metrics as M
from ..paper import FIDELITY
from ..results import ResultsTable, Spread
from .anisotropy_verdicts import arm_name, last_step
from .profiles_verdicts import CONTROL
from .report import Section


def leak_alpha(table: ResultsTable | None, alpha: float | None = None) -> float | None:
    """Leaky's ``α``: as given, else ``1 -`` its measured mean retention (None if neither)."""
    if alpha is not None:
        return float(alpha)
    if table is None:
        return None
    beta = table.select(cell=CONTROL, metric=M.RETENTION_MEAN).spread().median
    return None if np.isnan(beta) else 1.0 - beta


def step_size(table: ResultsTable | None, lr: float | Mapping | None = None,
              alpha: float | None = None) -> float | None:
    """SGD's step ``η``: the ``lr`` setting (its ``"sgd"`` entry when it is a table), else
    estimated from leaky's implied multiplier ``η (1-α)^ℓ`` at its smallest lag (None when
    neither is available)."""
    if isinstance(lr, Mapping):
        lr = lr.get("sgd")
    if lr is not None:
        return float(lr)
    alpha = leak_alpha(table, alpha)
    if table is None or alpha is None or alpha >= 1:
        return None
    rows = table.select(cell=CONTROL, metric=M.SCHEDULE_MULTIPLIER)
    if not len(rows):
        return None
    lag = rows.unique("lag")[0]
    return rows.select(lag=lag).spread().median / (1 - alpha) ** lag


def kernel(table: ResultsTable, cell: str, step: float, eta: float | None
           ) -> tuple[np.ndarray, np.ndarray]:
    """The cell's zeroth-order lag kernel ``mean μ⁰(ℓ)``: per seed, the median over time of
    the implied multiplier ``η μ⁰_{t,ℓ}`` divided by ``η`` (kept as ``η μ⁰`` if ``η`` is
    unknown). Returns ``(lags, values (seeds, lags))``."""
    rows = table.select(cell=cell, metric=M.SCHEDULE_MULTIPLIER, step=step)
    lags, values = rows.per_seed_series("lag")
    return lags, values / (eta or 1.0)


def time_ratio(rows: ResultsTable) -> np.ndarray:
    """Per seed, the 90th/10th percentile ratio of a series along time (how much it varies)."""
    _, values = rows.by_seed("time")
    with np.errstate(all="ignore"):
        q10, q90 = np.nanpercentile(values, [10, 90], axis=1) if values.size else ([], [])
        return np.asarray(q90) / np.asarray(q10)


def schedule_section(table: ResultsTable | None, lr=None) -> Section:
    """Schedule analogy: scalar_gate's implied global multiplier ``η μ⁰_{t,ℓ}`` along ``t``."""
    s = Section("Analogy: gates as a learning-rate schedule", figures=["analogy_schedule"])
    rows = None if table is None else table.select(cell="scalar_gate",
                                                   metric=M.SCHEDULE_MULTIPLIER)
    if rows is None or not len(rows):
        s.lines.append("not measured: no schedule_multiplier rows for scalar_gate")
        return s
    eta = step_size(table, lr)
    steps = rows.checkpoints()
    s.lines.append("scalar_gate has one gate for all neurons, so η μ⁰_{t,ℓ} is one global "
                   "step size for the lag-ℓ contribution ending at t: an implicit schedule "
                   + (f"around the fixed step η = {eta:.3g}" if eta else "(η unknown)"))
    for lag in rows.unique("lag"):
        parts = []
        for step in (steps[0], steps[-1]) if len(steps) > 1 else steps:
            at = rows.select(lag=lag, step=step)
            parts.append(f"step {step:g}: median over t {Spread.of(at.per_seed())}, p90/p10 "
                         f"along t {Spread.of(time_ratio(at))}")
        s.lines.append(f"ℓ = {lag:g}: " + "; ".join(parts))
    return s


def momentum_section(table: ResultsTable | None, alpha=None, lr=None, *,
                     gated: Collection[str]) -> Section:
    """Momentum analogy: leaky's ``(1-α)^ℓ`` against heavy-ball ``β^ℓ``, ``β = 1-α``, and the
    data-dependent retention ``β_t`` of the cells in ``gated`` (the gated cells, in report
    order)."""
    s = Section("Analogy: leaky integration as momentum", figures=["analogy_momentum"])
    if table is None or not len(table.select(metric=M.RETENTION_MEAN)):
        s.lines.append("not measured: no retention_mean rows")
        return s
    alpha, eta = leak_alpha(table, alpha), step_size(table, lr, alpha)
    if alpha is not None:
        s.lines.append(f"leaky's lag kernel (1-α)^ℓ with α = {alpha:.3g} is heavy-ball "
                       f"momentum's weighting β^ℓ of past gradients with β = 1-α = "
                       f"{1 - alpha:.3g}")
    leaky = table.select(cell=CONTROL, metric=M.RETENTION_MEAN)
    if len(leaky):
        s.lines.append(f"leaky: measured retention β_t {Spread.of(leaky.per_seed())} (per "
                       "seed, median over t and checkpoints)")
        step = leaky.checkpoints()[-1]
        lags, k = kernel(table, CONTROL, step, eta)
        for j, lag in enumerate(lags):
            expected = f" vs (1-α)^ℓ = {(1 - alpha) ** lag:.3g}" if alpha is not None else ""
            s.lines.append(f"leaky, step {step:g}, ℓ = {lag:g}: measured kernel mean μ⁰ "
                           f"{Spread.of(k[:, j])}{expected}")
    for cell in [c for c in gated if c in table.unique("cell")]:
        rows = table.select(cell=cell, metric=M.RETENTION_MEAN)
        if not len(rows):
            continue
        step = rows.checkpoints()[-1]
        at = rows.select(step=step)
        _, series = at.by_seed("time")
        with np.errstate(all="ignore"):
            iqr_t = np.nanpercentile(series, 75, axis=1) - np.nanpercentile(series, 25, axis=1)
        line = (f"{cell}, step {step:g}: β_t = mean(1-g_t) median over t "
                f"{Spread.of(at.per_seed())}, its IQR along t {Spread.of(iqr_t)}")
        lags, k = kernel(table, cell, step, eta)
        if lags.size and eta:
            with np.errstate(all="ignore"):
                beta = k[:, -1] ** (1 / lags[-1])
            line += f"; effective β = (mean μ⁰(ℓ))^(1/ℓ) at ℓ = {lags[-1]:g}: {Spread.of(beta)}"
        s.lines.append(line)
    return s


def adam_section(table: ResultsTable | None) -> Section:
    """Adam analogy: gate-induced per-neuron rate dispersion beside Adam's per-parameter step
    dispersion, at the last checkpoint."""
    s = Section("Analogy: per-neuron gates as Adam-like preconditioning",
                figures=["analogy_adam"])
    if table is None or not len(table.select(metric=M.RATE_CV_ORDER0)) or \
            not len(table.select(metric=M.STEP_CV)):
        s.lines.append("not measured: needs rate_cv_order0 rows (cells with retention) and "
                       "step_cv rows (optimizer step sizes)")
        return s
    step = last_step(table, M.STEP_CV)
    for task in table.unique("task"):
        gated = table.select(task=task, metric=M.RATE_CV_ORDER0).combos("cell", "optimizer")
        rates = [f"{arm_name(a)} {_arm(table, task, a, M.RATE_CV_ORDER0, step)}" for a in gated]
        steps = [f"{arm_name(a)} CV {_arm(table, task, a, M.STEP_CV, step)}, AI "
                 f"{_arm(table, task, a, M.STEP_AI, step)}"
                 for a in table.select(task=task, metric=M.STEP_CV).combos("cell", "optimizer")]
        s.lines.append(f"{task}, step {step:g}: gate-induced per-neuron rate CV (median over "
                       f"lags) — {'; '.join(rates)}")
        s.lines.append(f"{task}, step {step:g}: optimizer per-parameter step η/(√v̂+ε) "
                       f"dispersion — {'; '.join(steps)}")
    return s


def _arm(table: ResultsTable, task: str, arm, metric: str, step: float) -> Spread:
    """Spread across seeds of one arm's metric (per seed, its median over lags)."""
    return Spread.of(table.select(task=task, cell=arm[0], optimizer=arm[1], metric=metric,
                                  step=step).per_seed())


def analogy_sections(profiles_table: ResultsTable | None,
                     anisotropy_table: ResultsTable | None, alpha: float | None = None,
                     lr: float | Mapping | None = None, *,
                     gated: Collection[str]) -> list[Section]:
    """The schedule, momentum and Adam sections.

    Args:
        profiles_table, anisotropy_table: the two experiments' results (None if not run).
        alpha: leaky's ``α`` of the profiles run (default: measured from its retention).
        lr: the profiles run's ``lr`` setting, a number or ``{optimizer: lr}`` (default:
            estimated from leaky's implied multiplier).
        gated: the names of the cells with a learned gate (whose class has
            ``gated = True``), in report order.
    """
    return [schedule_section(profiles_table, lr),
            momentum_section(profiles_table, alpha, lr, gated=gated),
            adam_section(anisotropy_table)]


def _column_text(column: str, value) -> str:
    """A results column's value in a report line: ``lag 40`` for a number, the name as is."""
    if isinstance(value, str):
        return value
    number = float(value)
    return f"{column} {int(number) if number.is_integer() else number:g}"


def fidelity_lines(switch: str, default: ResultsTable, variant: ResultsTable) -> list[str]:
    """One line per headline number that ``switch`` changes: default and paper-code values
    at each run's last checkpoint, and the shift of the median in units of the default's
    IQR across seeds."""
    experiment, metrics = FIDELITY[switch].experiment, FIDELITY[switch].metrics
    lines = []
    for metric, columns in metrics:
        d_step, v_step = last_step(default, metric), last_step(variant, metric)
        for key in variant.select(metric=metric).combos(*columns):
            where = dict(zip(columns, key, strict=True))
            d = default.select(metric=metric, step=d_step, **where).spread()
            v = variant.select(metric=metric, step=v_step, **where).spread()
            delta = v.median - d.median
            scale = f" = {delta / d.iqr:.3g} × the default IQR" if d.iqr > 0 else ""
            label = "/".join(_column_text(column, value)
                             for column, value in zip(columns, key, strict=True))
            lines.append(f"{switch} ({experiment}), {metric} {label}: default {d} → "
                         f"paper code {v}; shift of the median {delta:+.3g}{scale}")
    return lines or [f"{switch}: the paired runs share no rows of "
                     f"{', '.join(m for m, _ in metrics)}"]


def fidelity_section(pairs: Mapping[str, tuple[ResultsTable, ResultsTable]]) -> Section:
    """How much each paper-code defect moves the headline numbers.

    Args:
        pairs: ``{switch: (default table, table with the switch on)}`` for the runs of
            :data:`gatescope.paper.FIDELITY` (each names the headline metrics it moves).
            A switch without a pair is listed as not measured.
    """
    s = Section("Fidelity: the paper code's defects and protocol details, switched on one "
                "run at a time (docs/fidelity.md)")
    for switch in FIDELITY:
        if switch in pairs:
            s.lines += fidelity_lines(switch, *pairs[switch])
        else:
            s.lines.append(f"{switch}: not measured (no run with the switch on)")
    for switch in sorted(set(pairs) - set(FIDELITY)):
        s.lines.append(f"{switch}: not a known fidelity switch; skipped")
    return s
