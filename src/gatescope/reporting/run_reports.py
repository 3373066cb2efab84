"""The reports ``gatescope run NAME`` writes after a run, per experiment name (the paper's
experiments are reported by ``gatescope reproduce`` instead)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .families_report import write_families_report
from .learnability_report import write_learnability_report
from .timescales_report import write_timescales_report

#: ``{experiment name: writer of REPORT.md and report.html from the run folder}``.
RUN_REPORTS: dict[str, Callable[[Path], tuple[Path, ...]]] = {
    "families": write_families_report,
    "learnability": write_learnability_report,
    "timescales": write_timescales_report,
}


def write_run_report(experiment: str, out: Path) -> Path | None:
    """Write the report of the ``experiment`` run in ``out``; its ``REPORT.md``, or None for
    an experiment without one."""
    writer = RUN_REPORTS.get(experiment)
    return None if writer is None else writer(out)[0]
