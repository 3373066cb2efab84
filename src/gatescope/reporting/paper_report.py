"""The ``reproduce`` report: draw every figure, judge C1–C8, and write ``REPORT.md``,
``report.html`` and ``verdicts.json`` from each run's results table and a plain description
of the runs (:class:`ReproductionDescription`).

Reporting reads results only: which runs there were, their settings and timings, and which
cells are gated come in through the description (built by :mod:`gatescope.reproduce`), the
paper's names from :mod:`gatescope.paper`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..paper import CITATION, PAPER_ARMS
from ..results import ResultsTable
from .analogies import analogy_sections, fidelity_section
from .anisotropy_figures import anisotropy_figures
from .anisotropy_verdicts import judge_c4, judge_c5, judge_c6, judge_c7
from .description import ReproductionDescription
from .expansion_figures import expansion_figures
from .expansion_verdicts import judge_c8
from .profiles_figures import profiles_figures
from .profiles_verdicts import judge_c1, judge_c2, judge_c3
from .report import Section, write_report
from .verdicts import Verdict


def _matching(default: ResultsTable, variant: ResultsTable) -> ResultsTable:
    """The rows of ``default`` from the groups and seeds that ``variant`` ran."""
    key_columns = ("task", "cell", "optimizer", "seed")
    keys = set(zip(*(variant.columns[c] for c in key_columns), strict=True))
    mask = np.array([k in keys for k in zip(*(default.columns[c] for c in key_columns),
                                            strict=True)], dtype=bool)
    return ResultsTable({name: col[mask] for name, col in default.columns.items()})


def _verdicts(tables: Mapping[str, ResultsTable], gated: tuple[str, ...]) -> list[Verdict]:
    """C1–C8 from the main runs' tables ``{experiment: table}``."""
    prof, aniso = tables["profiles"], tables["anisotropy"]
    return [judge_c1(prof), judge_c2(prof, gated=gated), judge_c3(prof),
            judge_c4(aniso, gated=gated), judge_c5(aniso), judge_c6(aniso, gated=gated),
            judge_c7(aniso, gated=gated), judge_c8(tables["expansion"])]


def _fidelity_pairs(description: ReproductionDescription, tables: Mapping[str, ResultsTable]
                    ) -> dict[str, tuple[ResultsTable, ResultsTable]]:
    """``{switch: (the main run's matching rows, the fidelity run's rows)}``."""
    main = description.main_runs()
    pairs = {}
    for run in description.runs:
        if run.switch is not None:
            variant = tables[run.folder]
            pairs[run.switch] = (_matching(tables[main[run.experiment].folder], variant),
                                 variant)
    return pairs


def settings_section(description: ReproductionDescription) -> Section:
    """The "Settings and run times" section: the preset's trade-offs, each run's settings
    and times, and the time of the paper's own arms."""
    lines = [f"{description.preset} preset trade-off: {t}" for t in description.trade_offs]
    lines += [run.line() for run in description.runs]
    lines.append(
        f"the paper's own arms (expansion, profiles, and the anisotropy groups of "
        f"{', '.join('+'.join(a) for a in PAPER_ARMS)}, which start first) took "
        f"{description.paper_arms} (from the groups' markers: each run's "
        "first group start to last group finish, and the groups' wall seconds; a group "
        "resumed from checkpoints counts only the run that finished it)")
    return Section("Settings and run times", lines)


def _intro(description: ReproductionDescription) -> list[str]:
    return [
        f"{CITATION}: each claim below is tested by a measurement of this "
        f"run (gatescope {description.version}, preset \"{description.preset}\"); numbers "
        "are medians with the interquartile range across seeds and the number of seeds.",
        "Verdicts follow the stated rules; a claim that the measurements do not bear out is "
        "reported as such.",
    ]


def build_paper_report(out: Path, description: ReproductionDescription,
                       tables: Mapping[str, ResultsTable]) -> list[Path]:
    """Figures, verdicts and report of a finished reproduction.

    Args:
        out: the output folder (figures go to ``out/figures``).
        description: the runs, their settings and times, and the gated cells.
        tables: each run's results, keyed by :attr:`RunDescription.folder`.

    Returns:
        Every file written: ``REPORT.md``, ``report.html``, ``verdicts.json``, then each
        figure's PNG and PDF.
    """
    main = {name: tables[run.folder] for name, run in description.main_runs().items()}
    profiles = description.main_runs()["profiles"].settings
    alpha, lr, gated = profiles["alpha"], profiles["lr"], description.gated_cells
    figdir = out / "figures"
    figures: dict[str, list[Path]] = {}
    figures |= expansion_figures(main["expansion"], figdir)
    figures |= profiles_figures(main["profiles"], figdir, alpha=alpha, gated=gated)
    figures |= anisotropy_figures(main["anisotropy"], figdir)

    sections = analogy_sections(main["profiles"], main["anisotropy"], alpha=alpha, lr=lr,
                                gated=gated)
    sections.append(fidelity_section(_fidelity_pairs(description, tables)))
    sections.append(settings_section(description))
    png = {name: paths[0] for name, paths in figures.items()}
    written = write_report(out, "gatescope reproduction report", _intro(description),
                           _verdicts(main, gated), sections, png)
    return [*written, *(path for paths in figures.values() for path in paths)]
