"""``gatescope reproduce --paper learnability|anticollapse``: a follow-up's experiment run
with a preset, then its judged report (docs/followups.md#running-and-judging).

The seed paper's pipeline (:func:`gatescope.reproduce.reproduce`) runs three experiments and
the fidelity runs; each follow-up is one experiment, so this is that run and its report,
resumable like every run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..experiments import run_experiment
from ..experiments.learnability import PAPER as LEARNABILITY_PAPER
from ..experiments.timescales import PAPER as TIMESCALES_PAPER
from ..paper import FOLLOWUP_EXPERIMENTS
from ..reporting.run_reports import write_run_report

#: ``{follow-up: {preset: settings}}``: ``quick`` is the experiment's laptop default.
FOLLOWUP_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "learnability": {"quick": {}, "paper": LEARNABILITY_PAPER},
    "anticollapse": {"quick": {}, "paper": TIMESCALES_PAPER},
}


def reproduce_followup(paper: str, preset: str = "quick",
                       out: str | os.PathLike | None = None, *, seeds: int | None = None,
                       device: str | None = None, jobs: int = 1, quiet: bool = False,
                       force: bool = False, backend: str = "local",
                       address: str | None = None) -> Path:
    """Run the follow-up ``paper``'s experiment at ``preset`` into ``out`` and write its
    report.

    Args:
        paper: ``"learnability"`` or ``"anticollapse"`` (keys of
            :data:`gatescope.paper.FOLLOWUP_EXPERIMENTS`).
        preset: ``"quick"`` (the laptop default) or ``"paper"`` (the follow-up's protocol).
        out: the run folder; default ``gatescope-results/PAPER``.
        seeds, device: override the preset's seeds and device.
        jobs, quiet, force, backend, address: as for
            :func:`~gatescope.experiments.run_experiment`.

    Returns:
        The path of ``REPORT.md``.

    Raises:
        ValueError: an unknown ``paper`` or ``preset`` (before any work); otherwise what
            :func:`~gatescope.experiments.run_experiment` raises.
    """
    if paper not in FOLLOWUP_PRESETS:
        raise ValueError(f"paper must be one of {sorted(FOLLOWUP_PRESETS)}, got {paper!r}")
    if preset not in FOLLOWUP_PRESETS[paper]:
        raise ValueError(f"preset must be one of {sorted(FOLLOWUP_PRESETS[paper])}, got "
                         f"{preset!r}")
    settings = dict(FOLLOWUP_PRESETS[paper][preset])
    settings.update({k: v for k, v in (("seeds", seeds), ("device", device)) if v is not None})
    experiment = FOLLOWUP_EXPERIMENTS[paper]
    out = Path("gatescope-results") / paper if out is None else Path(out)
    result = run_experiment(experiment, settings, out, jobs=jobs, quiet=quiet, force=force,
                            backend=backend, address=address)
    return write_run_report(experiment, result.out)
