"""The report of a ``timescales`` run: claims A1–A3 of the anti-collapse follow-up
(docs/followups.md#anti-collapse), judged from its ``results.csv``.

Each arm is ``(cell, optimizer)`` (``adamw+forcing`` the forced arm); each check is one
seed of one arm. Rules:

* **A1** the decay class emerges in training: the envelope's AIC law or the phase at the
  last checkpoint differs from those at step 0 (holds) or not (fails). Null: the class is
  the architecture's, fixed from the start.
* **A2** per-neuron gates hold a broad spectrum where constant and shared gates collapse:
  per seed, the unforced ``multi_gate`` arm is not collapsed at the last checkpoint (holds)
  and each unforced ``leaky`` and ``scalar_gate`` arm is collapsed (holds).
* **A3** forcing alone does not rescue a constant gate: the forced ``leaky`` arm is collapsed
  at the last checkpoint (holds) or not (fails).
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

COLLAPSED = M.PHASE_LABELS.index("collapsed")


class _Spectra:
    """Per-arm, per-seed readers of the spectrum's rows at any checkpoint."""

    def __init__(self, table: ResultsTable) -> None:
        self.table = table
        self.steps = table.checkpoints(M.PHASE.name)
        self.first, self.last = (self.steps[0], self.steps[-1]) if self.steps else (0.0, 0.0)
        self.arms = table.select(metric=M.PHASE).combos("cell", "optimizer")
        self.seeds = table.unique("seed")

    def per_seed(self, arm: tuple[str, str], metric: M.Metric, step: float) -> np.ndarray:
        cell, optimizer = arm
        return self.table.select(cell=cell, optimizer=optimizer, metric=metric,
                                 step=step).per_seed(self.seeds)

    def phases(self, arm: tuple[str, str], step: float) -> list[str]:
        return [M.label_of(M.PHASE_LABELS, c) for c in self.per_seed(arm, M.PHASE, step)]

    def models(self, arm: tuple[str, str], step: float) -> list[str]:
        return [M.label_of(M.ENVELOPE_MODEL_LABELS, c)
                for c in self.per_seed(arm, M.ENVELOPE_MODEL, step)]

    def line(self, arm: tuple[str, str]) -> str:
        beta = Spread.of(self.per_seed(arm, M.TAIL_BETA, self.last))
        low = Spread.of(self.per_seed(arm, M.TAIL_BETA_LOW, self.last))
        high = Spread.of(self.per_seed(arm, M.TAIL_BETA_HIGH, self.last))
        below = Spread.of(self.per_seed(arm, M.TAIL_BELOW_ONE, self.last))
        return (f"{arm[0]} / {arm[1]}: phase by seed at step {self.first:g} → {self.last:g}: "
                f"{', '.join(self.phases(arm, self.first))} → "
                f"{', '.join(self.phases(arm, self.last))}; envelope law "
                f"{', '.join(self.models(arm, self.first))} → "
                f"{', '.join(self.models(arm, self.last))}; β {beta} (90% interval from "
                f"{low.median:.3g} to {high.median:.3g}, medians), P(β < 1) {below}")


def judge_a1(s: _Spectra) -> Verdict:
    """A1 (module notes)."""
    v = Verdict.of("A1", f"per arm and seed, the envelope's AIC law and the phase at step "
                   f"{s.last:g} against step {s.first:g}; a check holds when either changed",
                   ["timescales_beta"], null="the decay class is fixed from initialisation")
    outcomes = []
    for arm in s.arms:
        start = list(zip(s.models(arm, s.first), s.phases(arm, s.first), strict=True))
        end = list(zip(s.models(arm, s.last), s.phases(arm, s.last), strict=True))
        mine = [UNINFORMATIVE if "none" in a + b else HOLDS if a != b else FAILS
                for a, b in zip(start, end, strict=True)]
        outcomes += mine
        v.evidence.append(s.line(arm) + "; checks " + ", ".join(mine))
    held = outcomes.count(HOLDS)
    return judge(v, outcomes, f"the class changed in training in {held} of "
                 f"{held + outcomes.count(FAILS)} decided seeds")


def _collapsed_checks(s: _Spectra, arm: tuple[str, str], collapsed: bool) -> list[str]:
    return [UNINFORMATIVE if p == "none" else HOLDS if (p == "collapsed") == collapsed
            else FAILS for p in s.phases(arm, s.last)]


def judge_a2(s: _Spectra) -> Verdict:
    """A2 (module notes)."""
    v = Verdict.of("A2", f"phases at step {s.last:g} of the unforced arms: per seed, a check "
                   "holds when multi_gate is not collapsed, and one per leaky and scalar_gate "
                   "arm when it is collapsed", ["timescales_beta"],
                   null="the gate type does not decide the phase")
    outcomes = []
    for cell, collapsed in (("multi_gate", False), ("leaky", True), ("scalar_gate", True)):
        arm = next((a for a in s.arms if a[0] == cell and "forcing" not in a[1]), None)
        if arm is None:
            v.evidence.append(f"{cell}: not in this run")
            continue
        mine = _collapsed_checks(s, arm, collapsed)
        outcomes += mine
        v.evidence.append(f"{cell} ({'collapsed' if collapsed else 'not collapsed'} "
                          f"expected): phases {', '.join(s.phases(arm, s.last))}; checks "
                          + ", ".join(mine))
    held = outcomes.count(HOLDS)
    return judge(v, outcomes, f"{held} of {held + outcomes.count(FAILS)} decided checks go "
                 "the claim's way")


def judge_a3(s: _Spectra) -> Verdict:
    """A3 (module notes)."""
    v = Verdict.of("A3", f"the forced leaky arm's phase at step {s.last:g}, per seed: a check "
                   "holds when it is collapsed", ["timescales_beta"],
                   null="forcing rescues the constant gate (not collapsed)")
    arm = next((a for a in s.arms if a[0] == "leaky" and "forcing" in a[1]), None)
    if arm is None:
        v.evidence.append("no forced leaky arm in this run")
        return judge(v, [], "")
    outcomes = _collapsed_checks(s, arm, collapsed=True)
    v.evidence.append(s.line(arm) + "; checks " + ", ".join(outcomes))
    return judge(v, outcomes, f"collapsed in {outcomes.count(HOLDS)} of "
                 f"{outcomes.count(HOLDS) + outcomes.count(FAILS)} decided seeds")


def beta_figure(s: _Spectra, out: Path) -> Path:
    """β over training per arm: median and IQR over seeds."""
    fig, axes = figure(width=5.0)
    ax = axes[0, 0]
    for arm, style in zip(s.arms, series_styles(), strict=False):
        cell, optimizer = arm
        rows = s.table.select(cell=cell, optimizer=optimizer, metric=M.TAIL_BETA)
        steps, values = rows.by_seed("step")
        band(ax, steps, values, f"{cell} / {optimizer}", style)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("training step")
    ax.set_ylabel("CCDF tail exponent β of τ")
    ax.legend(fontsize=6)
    return save(fig, out, "timescales_beta")[0]


def write_timescales_report(out: Path) -> tuple[Path, Path, Path]:
    """``REPORT.md``, ``report.html`` and ``verdicts.json`` of the ``timescales`` run in
    ``out``."""
    s = _Spectra(ResultsTable.read_csv(out / "results.csv"))
    verdicts = [judge_a1(s), judge_a2(s), judge_a3(s)]
    figures = {"timescales_beta": beta_figure(s, out / "figures")}
    intro = [f"Claims of {FOLLOWUP_CITATIONS['anticollapse']}, over {len(s.seeds)} seeds "
             f"(median [q25, q75]); phases by seed; rules in "
             "docs/followups.md#anti-collapse."]
    sections = [Section("Spectra per arm", [s.line(arm) for arm in s.arms])]
    return write_report(out, "gatescope timescales", intro, verdicts, sections, figures)
