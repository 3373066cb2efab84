"""``gatescope reproduce``: the paper's experiments end to end, with figures and a report."""

from __future__ import annotations

import os
from pathlib import Path

from ..paper import EXPERIMENTS
from .pipeline import DEFAULT_OUT, PlannedRun, plan, run_all
from .presets import PRESETS, QUICK_TRADE_OFFS, FidelityRun, Preset
from .report_inputs import build_report


def reproduce(preset: str | Preset = "quick", out: str | os.PathLike = DEFAULT_OUT, *,
              seeds: int | None = None, device: str | None = None, jobs: int = 1,
              quiet: bool = False) -> Path:
    """Run every experiment of the preset (resuming earlier work in ``out``), then draw the
    figures and write ``REPORT.md``/``report.html``.

    Args:
        preset: ``"quick"`` (minutes on a laptop CPU), ``"paper"`` (the paper's protocol) or
            a :class:`Preset`.
        out: output folder; one subfolder per run, ``figures/`` and the reports.
        seeds: override the number of seeds of the main runs.
        device: override the device (``cpu``, ``cuda``, ``auto``).
        jobs: worker processes per run.
        quiet: no progress bars.

    Returns:
        The path of ``REPORT.md``.

    Raises:
        SettingsError: a setting is invalid (before any work).
        RunError: some groups failed (their siblings' results are kept).
    """
    preset = PRESETS[preset] if isinstance(preset, str) and preset in PRESETS else preset
    runs = plan(preset, out, seeds=seeds, device=device)
    timings = run_all(runs, jobs=jobs, quiet=quiet)
    return build_report(Path(out), preset, runs, timings)


__all__ = ["DEFAULT_OUT", "EXPERIMENTS", "PRESETS", "QUICK_TRADE_OFFS", "FidelityRun",
           "PlannedRun", "Preset", "plan", "reproduce", "run_all"]
