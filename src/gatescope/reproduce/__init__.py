"""``gatescope reproduce``: the paper's experiments end to end, with figures and a report."""

from __future__ import annotations

import os
from pathlib import Path

from ..experiments.runner import check_backend
from ..experiments.storage import check_folder, claim_folder, is_run_folder
from ..paper import EXPERIMENTS
from .followups import FOLLOWUP_PRESETS, reproduce_followup
from .pipeline import DEFAULT_OUT, PlannedRun, plan, run_all
from .presets import PRESETS, QUICK_TRADE_OFFS, FidelityRun, Preset
from .report_inputs import build_report


def reproduce(preset: str | Preset = "quick", out: str | os.PathLike = DEFAULT_OUT, *,
              seeds: int | None = None, device: str | None = None, jobs: int = 1,
              quiet: bool = False, force: bool = False, backend: str = "local",
              address: str | None = None) -> Path:
    """Run every experiment of the preset (resuming earlier work in ``out``), then draw the
    figures and write ``REPORT.md``/``report.html``.

    Args:
        preset: ``"quick"`` (minutes on a laptop CPU), ``"paper"`` (the paper's protocol) or
            a :class:`Preset`.
        out: output folder; one subfolder per run, ``figures/`` and the reports. It must be
            new, empty or an earlier ``reproduce`` folder (which is resumed).
        seeds: override the number of seeds of the main runs.
        device: override the device (``cpu``, ``cuda``, ``auto``).
        jobs: groups run at once, per run.
        quiet: no progress bars.
        force: also write into non-empty folders that gatescope did not make.
        backend, address: where the groups run (``"local"`` or ``"ray"``), as for
            :func:`~gatescope.experiments.run_experiment`.

    Returns:
        The path of ``REPORT.md``.

    Raises:
        SettingsError: a setting is invalid (before any work).
        OutputFolderError: ``out`` or a run's subfolder may not or cannot be written
            (before any work).
        RunError: some groups failed (their siblings' results are kept).
        BackendError: an unknown backend, or Ray not installed (before any work).
    """
    check_backend(backend, address)
    preset = PRESETS[preset] if isinstance(preset, str) and preset in PRESETS else preset
    runs = plan(preset, out, seeds=seeds, device=device)
    _claim_folders(out, runs, force)
    timings = run_all(runs, jobs=jobs, quiet=quiet, backend=backend, address=address)
    return build_report(Path(out), preset, runs, timings)


def _claim_folders(out: str | os.PathLike, runs: list[PlannedRun], force: bool) -> None:
    """Check ``out`` and every run's folder, then claim them all, so that a refused folder
    stops the pipeline before its first run (an unmarked ``out`` holding an earlier
    pipeline's runs is resumed)."""
    folders = [(out, "reproduce", lambda _: any(is_run_folder(r.folder) for r in runs)),
               *((r.folder, "run", is_run_folder) for r in runs)]
    for folder, kind, legacy in folders:
        check_folder(folder, kind, force=force, legacy=legacy)
    for folder, kind, legacy in folders:
        claim_folder(folder, kind, force=force, legacy=legacy)


__all__ = ["DEFAULT_OUT", "EXPERIMENTS", "FOLLOWUP_PRESETS", "PRESETS", "QUICK_TRADE_OFFS",
           "FidelityRun", "PlannedRun", "Preset", "plan", "reproduce", "reproduce_followup",
           "run_all"]
