"""What an experiment is, for the runner: a settings model, a grid of groups, and the work of
one group.

An experiment is a grid of ``(task, cell, optimizer)`` :class:`Group` s, each trained or
probed over all seeds (the seeds of a group run together as one ensemble). The runner
(``gatescope.experiments.runner``) validates the settings, runs the groups (in parallel
processes, resuming finished ones), and writes ``config.json``, ``results.csv`` and
``summary.json``; reporting draws figures from those files. Data flows one way:
settings -> groups -> rows -> summary -> figures/report.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from .summary import seed_aggregates

#: The columns every results row has (docs/outputs.md#resultscsv); experiments may add more
#: (``eps``, ...).
RESULT_COLUMNS = ("experiment", "task", "cell", "optimizer", "seed", "step", "metric", "lag",
                  "value")


class Settings(BaseModel):
    """Base of every experiment's settings: typed, validated, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


_SAFE_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


@dataclass(frozen=True)
class Group:
    """One cell of the experiment grid; all seeds of a group run as one ensemble.

    Names are those of the registries (``optimizer="none"`` where nothing is trained) and
    must be file-system safe: letters, digits and ``_ . + -``.
    """

    task: str
    cell: str
    optimizer: str

    def __post_init__(self) -> None:
        for field in ("task", "cell", "optimizer"):
            value = getattr(self, field)
            if not (isinstance(value, str) and _SAFE_NAME.fullmatch(value)):
                raise ValueError(f"group {field} {value!r} must be letters, digits and _ . + -")

    @property
    def key(self) -> str:
        """A file-system-safe identifier, e.g. ``adding__multi_gate__sgd``."""
        return f"{self.task}__{self.cell}__{self.optimizer}"


#: ``progress(done, total)``: called by a group as it works (the runner draws the bar).
Progress = Callable[[int, int], None]


class Experiment(ABC):
    """Subclass, set ``description``/``settings_model``, and register it with
    :func:`gatescope.experiments.register_experiment` (which sets ``name``).

    The runner calls :meth:`groups` and :meth:`summarize` in the main process and
    :meth:`run_group` in worker processes (a fresh instance per group), so an experiment
    keeps no state between calls and its class must be importable by its module path.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    settings_model: ClassVar[type[Settings]]

    @abstractmethod
    def groups(self, settings: Settings) -> list[Group]:
        """The grid, in a deterministic order."""

    @abstractmethod
    def run_group(self, settings: Settings, group: Group, workdir: Path,
                  progress: Progress) -> Iterable[dict[str, Any]]:
        """Run every seed of ``group`` and return its tidy rows (keys ``RESULT_COLUMNS`` plus
        experiment-specific ones). ``workdir`` is the group's private folder: checkpoints
        kept there let an interrupted group resume. A diverging seed is reported as rows
        with ``metric="diverged"`` (``value`` = the step), never as an exception."""

    def summarize(self, settings: Settings, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Aggregates across seeds for ``summary.json`` (default: median, quartiles and count
        of every quantity, :func:`~gatescope.experiments.summary.seed_aggregates`)."""
        return {"experiment": self.name, "quantities": seed_aggregates(rows)}
