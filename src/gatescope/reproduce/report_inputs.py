"""What the ``reproduce`` report is built from, and whether it must be built again.

The report itself (:mod:`gatescope.reporting.paper_report`) reads results only. This module
gathers its inputs from the runs: each run's results table, settings and group timings
(from the groups' markers), the preset's trade-offs, and which cells are gated (their
``gated`` trait). It rebuilds the report only when the results it reads changed or a file
it wrote is missing; ``report_stamp.json`` records both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import MappingProxyType

from .. import __version__
from ..atomic import atomic_write_bytes
from ..cells import cell_class, list_cells
from ..experiments import get_experiment
from ..experiments.base import Group
from ..experiments.storage import GroupFolder, GroupTiming, wall_span
from ..paper import PAPER_ARMS, PAPER_ARMS_EXPERIMENT
from ..reporting.description import ReproductionDescription, RunDescription, TimeSpent
from ..results import ResultsTable
from .pipeline import PlannedRun
from .presets import Preset

STAMP = "report_stamp.json"


def gated_cells() -> tuple[str, ...]:
    """The registered cells whose class declares a learned gate (``gated = True``), in
    registration order."""
    return tuple(name for name in list_cells() if getattr(cell_class(name), "gated", False))


def group_timings(run: PlannedRun) -> dict[Group, GroupTiming | None]:
    """Each group of ``run`` with the timing its marker recorded (``None`` without one)."""
    return {g: GroupFolder(run.folder, g).timing()
            for g in get_experiment(run.experiment).groups(run.settings)}


def time_spent(timings: list[GroupTiming | None]) -> TimeSpent:
    """The groups' total worker seconds and wall span (markers absent: untimed)."""
    timed = [t for t in timings if t is not None]
    return TimeSpent(len(timings), len(timings) - len(timed),
                     sum(t.seconds for t in timed), wall_span(timed))


def _paper_arm(run: PlannedRun, group: Group) -> bool:
    """Whether ``group`` of ``run`` is one of the paper's own arms."""
    return run.fidelity is None and (run.experiment != PAPER_ARMS_EXPERIMENT
                                     or (group.cell, group.optimizer) in PAPER_ARMS)


def describe(out: Path, preset: Preset, runs: list[PlannedRun], timings: dict[str, float]
             ) -> ReproductionDescription:
    """The plain description of the reproduction the report reads.

    Args:
        out: the output folder.
        preset: the preset that was run.
        runs: every planned run.
        timings: this invocation's wall seconds per run, keyed by the run folder's POSIX
            path (as :func:`~gatescope.reproduce.pipeline.run_all` returns them).
    """
    described, paper_arms = [], []
    for run in runs:
        groups = group_timings(run)
        paper_arms += [t for g, t in groups.items() if _paper_arm(run, g)]
        described.append(RunDescription(
            run.experiment, run.folder.relative_to(out).as_posix(),
            MappingProxyType(run.settings.model_dump()), time_spent(list(groups.values())),
            switch=None if run.fidelity is None else run.fidelity.switch,
            seconds=timings.get(run.folder.as_posix())))
    return ReproductionDescription(__version__, preset.name, preset.trade_offs,
                                   tuple(described), time_spent(paper_arms), gated_cells())


def results_stamp(runs: list[PlannedRun], preset: Preset) -> str:
    """A digest of what the report reads: the version, the preset and every results.csv."""
    digest = hashlib.sha256(f"{__version__}/{preset.name}".encode())
    for run in runs:
        digest.update((run.folder / "results.csv").read_bytes())
    return digest.hexdigest()


def up_to_date(out: Path, stamp: str) -> Path | None:
    """``REPORT.md`` when the report in ``out`` was built from results with this ``stamp``
    and every file it wrote is still there; otherwise ``None``."""
    try:
        recorded = json.loads((out / STAMP).read_text())
        outputs = [out / name for name in recorded["outputs"]]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if recorded.get("stamp") != stamp or not outputs or \
            not all(path.is_file() for path in outputs):
        return None
    return outputs[0]


def build_report(out: Path, preset: Preset, runs: list[PlannedRun],
                 timings: dict[str, float]) -> Path:
    """The report of a finished reproduction, rebuilt unless :func:`up_to_date`.

    Args:
        out: the output folder.
        preset: the preset that was run.
        runs: every planned run (all finished).
        timings: this invocation's wall seconds per run folder.

    Returns:
        The path of ``REPORT.md``.
    """
    from ..reporting.paper_report import build_paper_report  # matplotlib only when drawing

    stamp = results_stamp(runs, preset)
    report = up_to_date(out, stamp)
    if report is not None:
        return report
    tables = {run.folder.relative_to(out).as_posix():
              ResultsTable.read_csv(run.folder / "results.csv") for run in runs}
    written = build_paper_report(out, describe(out, preset, runs, timings), tables)
    outputs = [path.relative_to(out).as_posix() for path in written]
    atomic_write_bytes(out / STAMP, json.dumps({"stamp": stamp, "outputs": outputs}).encode())
    return written[0]
