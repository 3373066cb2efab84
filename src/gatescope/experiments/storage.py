"""An experiment run on disk: per-group results with integrity markers, assembled atomically.

Layout of a run folder (every file written atomically, see :mod:`gatescope.atomic`)::

    OUT/config.json              every setting, the settings hash, versions, the groups
    OUT/results.csv              all groups' rows in the experiment's group order (rebuilt by
                                 every run)
    OUT/summary.json             the experiment's aggregates across seeds
    OUT/groups/KEY/rows.csv      one group's rows
    OUT/groups/KEY/done.json     its marker: settings hash, sha256 and row count of rows.csv,
                                 and its GroupTiming
    OUT/groups/KEY/work/         the group's private folder (training checkpoints)

A group counts as finished only if its marker names the current settings hash *and*
``rows.csv`` still has the sha256 and row count the marker recorded; a truncated, edited
or missing file is redone, never trusted. ``rows.csv`` is written before the marker, so a
crash between the two also leads to a redo. ``work/`` is tagged with the settings hash and
wiped when the settings change, so checkpoints of other settings are never resumed.

Columns, types and the CSV and JSON conventions are the results schema of
:mod:`gatescope.results`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes, atomic_write_json
from ..results import columns_of, read_table, rows_to_csv
from .base import Group

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no run lock
    fcntl = None

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------- one group


@dataclasses.dataclass(frozen=True)
class GroupTiming:
    """When and for how long the run that finished a group computed it.

    Attributes:
        invocation: when that run (one ``run_experiment`` call) started, Unix time.
        started: when it started this group, Unix time.
        seconds: the group's wall seconds in that run; a group resumed from checkpoints
            counts only the run that finished it.
    """

    invocation: float
    started: float
    seconds: float


def wall_span(timings: Iterable[GroupTiming]) -> float:
    """Wall seconds the groups took: per run, first group start to last group finish, summed
    over the runs (an interrupted and resumed experiment does not count the pause)."""
    runs: dict[float, list[GroupTiming]] = {}
    for t in timings:
        runs.setdefault(t.invocation, []).append(t)
    return sum(max(t.started + t.seconds for t in ts) - min(t.started for t in ts)
               for ts in runs.values())


class GroupFolder:
    """``OUT/groups/KEY``: one group's rows, marker and work folder."""

    #: Reasons of :meth:`check` that are expected, not signs of damage.
    NOT_RUN = "not run yet"
    OTHER_SETTINGS = "finished with other settings"

    def __init__(self, out: str | Path, group: Group) -> None:
        self.group = group
        self.path = Path(out) / "groups" / group.key
        self.rows_path = self.path / "rows.csv"
        self.marker_path = self.path / "done.json"
        self.workdir = self.path / "work"

    def check(self, settings_hash: str) -> str | None:
        """``None`` if the group is finished for these settings, else why it is not."""
        try:
            marker = json.loads(self.marker_path.read_text())
        except FileNotFoundError:
            return self.NOT_RUN
        except (OSError, ValueError) as err:
            return f"unreadable marker ({err})"
        if not isinstance(marker, dict) or marker.get("settings_hash") != settings_hash:
            return self.OTHER_SETTINGS
        try:
            data = self.rows_path.read_bytes()
            _, body = read_table(self.rows_path)
        except (OSError, csv.Error, UnicodeDecodeError) as err:
            return f"results unreadable ({err})"
        if hashlib.sha256(data).hexdigest() != marker.get("sha256") or len(body) != marker.get(
                "rows"):
            return "results file does not match its marker (truncated or edited)"
        return None

    def prepare(self, settings_hash: str) -> Path:
        """The work folder, emptied if it holds work of other settings; drops the marker."""
        self.marker_path.unlink(missing_ok=True)
        tag = self.workdir / "settings_hash"
        if self.workdir.exists() and (not tag.exists() or tag.read_text() != settings_hash):
            shutil.rmtree(self.workdir)
        if not self.workdir.exists():
            self.workdir.mkdir(parents=True)
            atomic_write_bytes(tag, settings_hash.encode())
        return self.workdir

    def write(self, rows: list[dict[str, Any]], settings_hash: str,
              timing: GroupTiming) -> int:
        """Write ``rows.csv`` and then the marker; returns the row count."""
        data = rows_to_csv(rows, columns_of(rows))
        atomic_write_bytes(self.rows_path, data)
        atomic_write_json(self.marker_path, {"settings_hash": settings_hash,
                                      "sha256": hashlib.sha256(data).hexdigest(),
                                      "rows": len(rows), "group": self.group.key,
                                      **dataclasses.asdict(timing)})
        return len(rows)

    def timing(self) -> GroupTiming | None:
        """The marker's :class:`GroupTiming`, ``None`` without one."""
        try:
            marker = json.loads(self.marker_path.read_text())
            return GroupTiming(*(float(marker[f.name])
                                 for f in dataclasses.fields(GroupTiming)))
        except (OSError, ValueError, TypeError, KeyError):
            return None


# ---------------------------------------------------------------------- the whole run


def assemble_results(out: str | Path, folders: list[GroupFolder]) -> Path:
    """Concatenate the groups' ``rows.csv`` (in ``folders`` order) into ``OUT/results.csv``.

    Cells are copied as text, so values are exactly those the groups wrote.
    """
    tables = [read_table(f.rows_path) for f in folders]
    columns = columns_of({c: None} for header, _ in tables for c in header)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for header, body in tables:
        index = [header.index(c) if c in header else None for c in columns]
        writer.writerows([row[i] if i is not None else "" for i in index] for row in body)
    return atomic_write_bytes(Path(out) / "results.csv", buf.getvalue().encode())


class RunLocked(RuntimeError):
    """Another process is running an experiment into the same folder."""


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[None]:
    """Hold ``OUT/.lock`` (an OS lock, released when the process dies) for one run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(out / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"another gatescope run is writing to {out}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
