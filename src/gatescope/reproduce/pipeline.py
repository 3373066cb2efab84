"""``gatescope reproduce``: run the paper's experiments and the fidelity runs, then report.

Every run goes through :func:`gatescope.experiments.run_experiment`, so a rerun into the same
folder skips finished groups and resumes interrupted ones; the report is rebuilt only when
the results it reads have changed or a file it wrote is missing
(:mod:`~gatescope.reproduce.report_inputs`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..experiments import build_settings, get_experiment, run_experiment
from ..experiments.base import Settings
from ..paper import EXPERIMENTS
from .presets import PRESETS, FidelityRun, Preset

DEFAULT_OUT = Path("gatescope-results") / "reproduce"


@dataclass(frozen=True)
class PlannedRun:
    """One experiment run of the pipeline: where it writes and with which settings."""

    experiment: str
    folder: Path
    settings: Settings
    fidelity: FidelityRun | None = None


def plan(preset: str | Preset = "quick", out: str | os.PathLike = DEFAULT_OUT,
         seeds: int | None = None, device: str | None = None) -> list[PlannedRun]:
    """Validate every run's settings before any work (``SettingsError`` otherwise).

    Args:
        preset: ``"quick"``, ``"paper"`` or a :class:`Preset`.
        out: the output folder.
        seeds: override the number of seeds of the main runs.
        device: override the device of every run.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        preset = PRESETS[preset]
    out = Path(out)
    common: dict[str, Any] = {} if device is None else {"device": device}
    main_seeds = {} if seeds is None else {"seeds": seeds}

    def settings(name: str, *layers: dict[str, Any]) -> Settings:
        return build_settings(get_experiment(name).settings_model,
                              preset.settings.get(name, {}), *layers, common, experiment=name)

    runs = [PlannedRun(name, out / name, settings(name, main_seeds)) for name in EXPERIMENTS]
    runs += [PlannedRun(f.experiment, out / "fidelity" / f.switch,
                        settings(f.experiment, f.overrides), f) for f in preset.fidelity]
    return runs


def run_all(runs: list[PlannedRun], jobs: int = 1, quiet: bool = False,
            backend: str = "local", address: str | None = None) -> dict[str, float]:
    """Run (or finish) every planned run; returns their wall times in seconds by folder.

    ``backend`` and ``address`` choose where the groups run (see
    :func:`~gatescope.experiments.run_experiment`).
    """
    timings = {}
    for run in runs:
        start = time.perf_counter()
        run_experiment(run.experiment, run.settings, run.folder, jobs=jobs, quiet=quiet,
                       backend=backend, address=address)
        timings[run.folder.as_posix()] = time.perf_counter() - start
    return timings
