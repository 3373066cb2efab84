"""The plain description of a reproduction that the ``reproduce`` report reads besides the
results tables: the runs, their settings and times, the preset's trade-offs and the gated
cells. Frozen values only; :mod:`gatescope.reproduce` builds them from the run folders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any


@dataclass(frozen=True)
class TimeSpent:
    """How long a set of groups took, from their markers.

    Attributes:
        groups: how many groups.
        untimed: how many of them have no timing (no marker).
        worker_seconds: the timed groups' wall seconds, summed.
        wall_seconds: per run, first group start to last group finish, summed over runs.
    """

    groups: int
    untimed: int
    worker_seconds: float
    wall_seconds: float

    def __str__(self) -> str:
        untimed = f" ({self.untimed} of {self.groups} groups untimed)" if self.untimed else ""
        return (f"{self.worker_seconds:.0f} worker-seconds and "
                f"{self.wall_seconds / 60:.1f} min of wall time{untimed}")


@dataclass(frozen=True)
class RunDescription:
    """One run of the reproduction, as the report describes it.

    Attributes:
        experiment: the experiment's name.
        folder: the run's folder relative to the output folder (POSIX), which holds its
            ``config.json``; also the key of its results table.
        settings: every setting of the run (plain values).
        groups: how long its groups took.
        switch: the fidelity switch the run turns on; ``None`` for a main run.
        seconds: this invocation's wall seconds on the run (0 when resumed; ``None``:
            unknown).
    """

    experiment: str
    folder: str
    settings: Mapping[str, Any]
    groups: TimeSpent
    switch: str | None = None
    seconds: float | None = None

    @property
    def label(self) -> str:
        """``profiles``, or ``profiles with the paper code's product_order``."""
        return self.experiment if self.switch is None else \
            f"{self.experiment} with the paper code's {self.switch}"

    def line(self) -> str:
        """Its line of the "Settings and run times" section."""
        took = f"; {self.seconds:.0f} s this time (0 when resumed)" \
            if self.seconds is not None else ""
        return (f"{self.label}: settings in {PurePosixPath(self.folder).name}/config.json"
                f"{took}; its groups took {self.groups}; "
                + ", ".join(f"{k}={v}" for k, v in self.settings.items()))


@dataclass(frozen=True)
class ReproductionDescription:
    """Everything the report says about the reproduction besides the results.

    Attributes:
        version: the gatescope version.
        preset: the preset's name.
        trade_offs: what the preset gives up against the paper's protocol (one line each).
        runs: every run, main runs (one per experiment) and fidelity runs.
        paper_arms: how long the paper's own arms took (every expansion and profiles group,
            and the anisotropy groups of :data:`gatescope.paper.PAPER_ARMS`).
        gated_cells: the names of the cells with a learned gate, in report order.
    """

    version: str
    preset: str
    trade_offs: tuple[str, ...]
    runs: tuple[RunDescription, ...]
    paper_arms: TimeSpent
    gated_cells: tuple[str, ...]

    def main_runs(self) -> dict[str, RunDescription]:
        """``{experiment: its main run}``."""
        return {r.experiment: r for r in self.runs if r.switch is None}
