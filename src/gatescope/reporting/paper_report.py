"""The ``reproduce`` report: read each run's results, draw every figure, judge C1–C8, and
write ``REPORT.md``/``report.html``. It is rebuilt only when the results it reads changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import atomic_write_bytes
from ..experiments import get_experiment
from ..experiments.anisotropy import PAPER_ARMS
from ..experiments.base import Group
from ..experiments.storage import GroupFolder, GroupTiming, wall_span
from ..reproduce.pipeline import PlannedRun
from ..reproduce.presets import QUICK_TRADE_OFFS, Preset
from ..results import ResultsTable
from .analogies import analogy_sections, fidelity_section
from .anisotropy_figures import anisotropy_figures
from .anisotropy_verdicts import judge_c4, judge_c5, judge_c6, judge_c7
from .expansion_figures import expansion_figures
from .expansion_verdicts import judge_c8
from .profiles_figures import profiles_figures
from .profiles_verdicts import judge_c1, judge_c2, judge_c3
from .report import Section, write_report

STAMP = "report_stamp.json"


def _stamp(runs: list[PlannedRun], preset: Preset) -> str:
    digest = hashlib.sha256(f"{__version__}/{preset.name}".encode())
    for run in runs:
        digest.update((run.folder / "results.csv").read_bytes())
    return digest.hexdigest()


def _matching(default: ResultsTable, variant: ResultsTable) -> ResultsTable:
    """The rows of ``default`` from the groups and seeds that ``variant`` ran."""
    key_columns = ("task", "cell", "optimizer", "seed")
    keys = set(zip(*(variant.columns[c] for c in key_columns), strict=True))
    mask = np.array([k in keys for k in zip(*(default.columns[c] for c in key_columns),
                                            strict=True)], dtype=bool)
    return ResultsTable({name: col[mask] for name, col in default.columns.items()})


def build_paper_report(out: Path, preset: Preset, runs: list[PlannedRun],
                       timings: dict[str, float]) -> Path:
    """Figures, verdicts and report for a finished :func:`~gatescope.reproduce.reproduce`.

    Returns:
        The path of ``REPORT.md``.
    """
    stamp = _stamp(runs, preset)
    report = out / "REPORT.md"
    stamp_file = out / STAMP
    if report.exists() and stamp_file.exists() and \
            json.loads(stamp_file.read_text()).get("stamp") == stamp:
        return report
    main = {r.experiment: r for r in runs if r.fidelity is None}
    tables = {name: ResultsTable.read_csv(r.folder / "results.csv") for name, r in main.items()}
    settings = {name: r.settings for name, r in main.items()}
    figdir = out / "figures"
    figures: dict[str, list[Path]] = {}
    figures |= expansion_figures(tables["expansion"], figdir)
    figures |= profiles_figures(tables["profiles"], figdir, alpha=settings["profiles"].alpha)
    figures |= anisotropy_figures(tables["anisotropy"], figdir)

    prof, aniso = tables["profiles"], tables["anisotropy"]
    verdicts = [judge_c1(prof), judge_c2(prof), judge_c3(prof), judge_c4(aniso),
                judge_c5(aniso), judge_c6(aniso), judge_c7(aniso), judge_c8(tables["expansion"])]

    fidelity_pairs = {}
    for run in runs:
        if run.fidelity is not None:
            variant = ResultsTable.read_csv(run.folder / "results.csv")
            fidelity_pairs[run.fidelity.switch] = (
                _matching(tables[run.experiment], variant), variant)
    sections = analogy_sections(prof, aniso, alpha=settings["profiles"].alpha,
                                lr=settings["profiles"].lr)
    sections.append(fidelity_section(fidelity_pairs))
    sections.append(_settings_section(preset, runs, timings))
    intro = [
        "L. Livi, \"Time-Scale Coupling Between States and Parameters in Recurrent Neural "
        "Networks\" (arXiv 2508.12121): each claim below is tested by a measurement of this "
        f"run (gatescope {__version__}, preset \"{preset.name}\"); numbers are medians with "
        "the interquartile range across seeds and the number of seeds.",
        "Verdicts follow the stated rules; a claim that the measurements do not bear out is "
        "reported as such.",
    ]
    png = {name: paths[0] for name, paths in figures.items()}
    md, _ = write_report(out, "gatescope reproduction report", intro, verdicts, sections, png)
    atomic_write_bytes(stamp_file, json.dumps({"stamp": stamp}).encode())
    return md


def group_timings(run: PlannedRun) -> dict[Group, GroupTiming | None]:
    """Each group of ``run`` with the timing its marker recorded (``None`` without one)."""
    return {g: GroupFolder(run.folder, g).timing()
            for g in get_experiment(run.experiment).groups(run.settings)}


def _time_spent(timings: list[GroupTiming | None]) -> str:
    timed = [t for t in timings if t is not None]
    untimed = f" ({len(timings) - len(timed)} of {len(timings)} groups untimed)" \
        if len(timed) < len(timings) else ""
    return (f"{sum(t.seconds for t in timed):.0f} worker-seconds and "
            f"{wall_span(timed) / 60:.1f} min of wall time{untimed}")


def _settings_section(preset: Preset, runs: list[PlannedRun], timings: dict[str, float]
                      ) -> Section:
    lines = []
    if preset.name == "quick":
        lines += [f"quick preset trade-off: {t}" for t in QUICK_TRADE_OFFS]
    paper_arms: list[GroupTiming | None] = []
    for run in runs:
        label = run.experiment if run.fidelity is None else \
            f"{run.experiment} with the paper code's {run.fidelity.switch}"
        seconds = timings.get(run.folder.as_posix())
        took = f"; {seconds:.0f} s this time (0 when resumed)" if seconds is not None else ""
        groups = group_timings(run)
        lines.append(f"{label}: settings in {run.folder.name}/config.json{took}; its groups "
                     f"took {_time_spent(list(groups.values()))}; "
                     + ", ".join(f"{k}={v}" for k, v in run.settings.model_dump().items()))
        if run.fidelity is None:
            paper_arms += [t for g, t in groups.items() if run.experiment != "anisotropy"
                           or (g.cell, g.optimizer) in PAPER_ARMS]
    lines.append(
        f"the paper's own arms (expansion, profiles, and the anisotropy groups of "
        f"{', '.join('+'.join(a) for a in PAPER_ARMS)}, which start first) took "
        f"{_time_spent(paper_arms)} (from the groups' markers: each run's "
        "first group start to last group finish, and the groups' wall seconds; a group "
        "resumed from checkpoints counts only the run that finished it)")
    return Section("Settings and run times", lines)
