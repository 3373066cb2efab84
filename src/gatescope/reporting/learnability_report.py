"""The report of a ``learnability`` run: claims L1–L3 of the learnability-window follow-up
(docs/followups.md#learnability), judged from its ``results.csv`` at the last checkpoint.

Rules (each check is one seed of one arm; :func:`~gatescope.reporting.verdicts.
combine_outcomes` turns the checks into a verdict):

* **L1** ``N(ℓ) ∝ f(ℓ)^{-κ_α}``: the slope of ``log N_required(ℓ)`` on ``-κ_α̂ log f(ℓ)``
  holds when it lies within a factor 2 of 1 (``[0.5, 2]``) with ``R² ≥ 0.5``, fails
  otherwise; not informative with fewer than :data:`MIN_LAGS` detected lags. Null: ``N(ℓ)``
  unrelated to the envelope (slope 0).
* **L2** heavier tails shrink ``H_N``: an arm with α-stable task noise against the Gaussian
  arm of the same cell and seed; holds when its window, averaged over the detection grid, is
  shorter, fails when longer, not informative when equal. Null: the windows are equal.
* **L3** broader spectra enlarge ``H_N``: an arm with a spread of gate biases against the
  same cell with equal biases, seed by seed; holds when the grid-averaged window is longer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import metrics as M
from ..paper import FOLLOWUP_CITATIONS
from ..results import ResultsTable, Spread
from .report import Section, write_report
from .style import band, figure, save, series_styles
from .verdicts import FAILS, HOLDS, UNINFORMATIVE, Verdict, judge

#: L1's check: the slope within ``[1/SLOPE_FACTOR, SLOPE_FACTOR]`` with ``R² ≥ MIN_R2``,
#: from at least ``MIN_LAGS`` detected rate lags.
SLOPE_FACTOR, MIN_R2, MIN_LAGS = 2.0, 0.5, 3
#: The sample size the report quotes ``H_N`` at.
REFERENCE_N = 1e4


def _text(s: Spread) -> str:
    return f"{s.median:.3g} [{s.q25:.3g}, {s.q75:.3g}]" if s.n else "n/a"


class _Last:
    """The rows at the last checkpoint, and per-arm, per-seed readers of them."""

    def __init__(self, table: ResultsTable) -> None:
        self.step = max(table.checkpoints(M.SCALING_SLOPE.name) or [0.0])
        self.table = table.select(step=self.step)
        self.arms = self.table.select(metric=M.SCALING_SLOPE).combos("task", "cell")
        self.seeds = table.unique("seed")

    def per_seed(self, arm: tuple[str, str], metric: M.Metric, **extra) -> np.ndarray:
        task, cell = arm
        return self.table.select(task=task, cell=cell, metric=metric, **extra).per_seed(
            self.seeds)

    def windows(self, arm: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        """``(N grid, H_N (seeds, G))``."""
        task, cell = arm
        rows = self.table.select(task=task, cell=cell, metric=M.LEARNABILITY_WINDOW)
        if not len(rows):
            return np.array([]), np.zeros((len(self.seeds), 0))
        grid, values = rows.by_seed("samples")
        return grid, values

    def mean_window(self, arm: tuple[str, str]) -> np.ndarray:
        """Each seed's ``H_N`` averaged over the detection grid (NaN without rows)."""
        _, values = self.windows(arm)
        return values.mean(1) if values.shape[1] else np.full(len(self.seeds), np.nan)

    def window_at(self, arm: tuple[str, str], n: float) -> np.ndarray:
        grid, values = self.windows(arm)
        if not grid.size:
            return np.full(len(self.seeds), np.nan)
        return values[:, int(np.argmin(np.abs(np.log(grid) - np.log(n))))]


def _arm_name(arm: tuple[str, str]) -> str:
    return f"{arm[1]} / {arm[0]}"


def judge_l1(last: _Last) -> Verdict:
    """L1 (module notes)."""
    v = Verdict.of("L1", f"per arm and seed, the slope of log N_required(ℓ) on -κ_α̂ log f(ℓ) "
                   f"over the detected rate lags; a check holds for a slope in "
                   f"[{1 / SLOPE_FACTOR:g}, {SLOPE_FACTOR:g}] with R² ≥ {MIN_R2:g}",
                   ["learnability_windows"],
                   null="N(ℓ) unrelated to the envelope: slope 0")
    outcomes = []
    for arm in last.arms:
        slopes, r2 = last.per_seed(arm, M.SCALING_SLOPE), last.per_seed(arm, M.SCALING_R2)
        used = last.per_seed(arm, M.SCALING_LAGS)
        mine = []
        for s, r, k in zip(slopes, r2, used, strict=True):
            if not (np.isfinite(s) and k >= MIN_LAGS):
                mine.append(UNINFORMATIVE)
            else:
                fits = 1 / SLOPE_FACTOR <= s <= SLOPE_FACTOR and r >= MIN_R2
                mine.append(HOLDS if fits else FAILS)
        outcomes += mine
        v.evidence.append(
            f"{_arm_name(arm)}: slope {_text(Spread.of(slopes))}, R² {_text(Spread.of(r2))}, "
            f"lags used {_text(Spread.of(used))}; checks " + ", ".join(mine))
    held = outcomes.count(HOLDS)
    decided = held + outcomes.count(FAILS)
    return judge(v, outcomes, f"{held} of {decided} decided checks have a slope within a "
                 f"factor {SLOPE_FACTOR:g} of 1")


def _paired(v: Verdict, last: _Last, pairs: list[tuple[tuple, tuple]], what: str,
            longer: bool) -> Verdict:
    """Seed-by-seed comparison of the grid-averaged windows of ``(treated, control)`` arm
    pairs: holds where the treated window is longer (``longer``) or shorter."""
    outcomes = []
    for treated, control in pairs:
        diff = last.mean_window(treated) - last.mean_window(control)
        mine = [UNINFORMATIVE if not np.isfinite(d) or d == 0 else
                HOLDS if (d > 0) == longer else FAILS for d in diff]
        outcomes += mine
        v.evidence.append(
            f"{_arm_name(treated)} against {_arm_name(control)}: H_N at N = {REFERENCE_N:g} "
            f"{_text(Spread.of(last.window_at(treated, REFERENCE_N)))} against "
            f"{_text(Spread.of(last.window_at(control, REFERENCE_N)))}; grid-averaged "
            f"difference {_text(Spread.of(diff))}; ψ tail index α̂ (median over lags) "
            f"{_text(Spread.of(last.per_seed(treated, M.MATCHED_ALPHA)))} against "
            f"{_text(Spread.of(last.per_seed(control, M.MATCHED_ALPHA)))}; checks "
            + ", ".join(mine))
    if not pairs:
        v.evidence.append(f"no {what} arm beside its control in this run")
    held = outcomes.count(HOLDS)
    return judge(v, outcomes, f"{held} of {held + outcomes.count(FAILS)} decided seed pairs "
                 f"have a {'longer' if longer else 'shorter'} window")


def _control(arm: tuple[str, str], task: str | None = None, cell: str | None = None
             ) -> tuple[str, str]:
    return (task or arm[0], cell or arm[1])


def judge_l2(last: _Last) -> Verdict:
    """L2 (module notes)."""
    v = Verdict.of("L2", "per seed, H_N averaged over the detection grid of an arm with "
                   "α-stable task noise against the Gaussian-noise arm of the same cell; a "
                   "check holds when the heavy-tailed window is shorter",
                   ["learnability_windows"], null="the windows are equal")
    arms = set(last.arms)
    pairs = [(a, _control(a, task=a[0].split(".alpha")[0])) for a in last.arms
             if ".alpha" in a[0]]
    return _paired(v, last, [p for p in pairs if p[1] in arms], "heavy-tailed", longer=False)


def judge_l3(last: _Last) -> Verdict:
    """L3 (module notes)."""
    v = Verdict.of("L3", "per seed, H_N averaged over the detection grid of an arm whose "
                   "gate biases are spread against the same cell with equal biases; a check "
                   "holds when the spread window is longer", ["learnability_windows"],
                   null="the windows are equal")
    arms = set(last.arms)
    pairs = [(a, _control(a, cell=a[1].split(".spread")[0])) for a in last.arms
             if ".spread" in a[1]]
    return _paired(v, last, [p for p in pairs if p[1] in arms], "spread", longer=True)


def transport_lines(last: _Last) -> list[str]:
    """The exact-transport envelope against the first-order one, per arm."""
    lines = ["The first-order envelope against the exact transport's diagonal on the same "
             "(b, t) (the follow-up's own diagnostics: rank correlation ≈ 0.998, log-slopes "
             "steeper by 1.2–6 for the approximation)."]
    for arm in last.arms:
        rho = Spread.of(last.per_seed(arm, M.ENVELOPE_RANK_CORRELATION))
        ratio = Spread.of(last.per_seed(arm, M.ENVELOPE_SLOPE_RATIO))
        lines.append(f"{_arm_name(arm)}: rank correlation {_text(rho)}, log-slope ratio "
                     f"(first order / exact) {_text(ratio)}")
    return lines


def windows_figure(last: _Last, out: Path) -> Path:
    """``H_N`` against ``N`` per arm: median and IQR over seeds."""
    fig, axes = figure(width=5.0)
    ax = axes[0, 0]
    for arm, style in zip(last.arms, series_styles(), strict=False):
        grid, values = last.windows(arm)
        band(ax, grid, values, _arm_name(arm), style)
    ax.set_xscale("log")
    ax.set_xlabel("samples N")
    ax.set_ylabel("learnability window H_N (steps)")
    ax.legend(fontsize=6)
    return save(fig, out, "learnability_windows")[0]


def write_learnability_report(out: Path) -> tuple[Path, Path, Path]:
    """``REPORT.md``, ``report.html`` and ``verdicts.json`` of the ``learnability`` run in
    ``out``."""
    last = _Last(ResultsTable.read_csv(out / "results.csv"))
    verdicts = [judge_l1(last), judge_l2(last), judge_l3(last)]
    figures = {"learnability_windows": windows_figure(last, out / "figures")}
    intro = [f"Claims of {FOLLOWUP_CITATIONS['learnability']}, judged at training step "
             f"{last.step:g} over {len(last.seeds)} seeds (median [q25, q75]); rules in "
             "docs/followups.md#learnability."]
    sections = [Section("Exact transport against the first-order envelope",
                        transport_lines(last))]
    return write_report(out, "gatescope learnability", intro, verdicts, sections, figures)
