"""An experiment run on disk: per-group results with integrity markers, assembled atomically.

Layout of a run folder (every file written atomically, see :mod:`gatescope.atomic`)::

    OUT/.gatescope               marks the folder as a run's (see claim_folder), written first
    OUT/.lock                    the run lock (see run_lock)
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

Before writing, a run claims its folder (:func:`claim_folder`): a non-empty folder that
gatescope did not make is refused unless forced, so a user's own files are never replaced.

Columns, types and the CSV and JSON conventions are the results schema of
:mod:`gatescope.results`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
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


class OutputFolderError(ValueError):
    """An output folder gatescope must not or cannot write (raised before any work).

    Attributes:
        folder: the folder, as given.
        problem: what is wrong with it, e.g. ``"is a file, not a folder"``.
        forceable: whether ``force=True`` (``--force``) would write there anyway.
    """

    def __init__(self, folder: str | os.PathLike, problem: str, forceable: bool = False) -> None:
        self.folder = os.fspath(folder)
        self.problem = problem
        self.forceable = forceable
        hint = "; pass force=True to write into it anyway" if forceable else ""
        super().__init__(f"output folder {self.folder!r}: {problem}{hint}")


# ---------------------------------------------------------------------- claiming a folder

#: The file that marks a folder as gatescope's: ``{"kind": KIND}``, written before any other
#: output. Kinds: ``"run"`` (:func:`~gatescope.experiments.run_experiment`) and
#: ``"reproduce"`` (:func:`~gatescope.reproduce.reproduce`).
FOLDER_MARKER = ".gatescope"
#: The run lock's file name in a run folder.
LOCK_NAME = ".lock"
#: Config keys that identify a run folder written before :data:`FOLDER_MARKER` existed.
_CONFIG_KEYS = ("experiment", "settings_hash", "groups")


def _own_entry(name: str) -> bool:
    """Whether a folder entry is gatescope's bookkeeping (an empty folder may hold them)."""
    return name in (FOLDER_MARKER, LOCK_NAME) or (
        name.startswith(f"{FOLDER_MARKER}.") and name.endswith(".tmp"))


def folder_kind(folder: str | Path) -> str | None:
    """The kind recorded in ``folder``'s :data:`FOLDER_MARKER`, ``None`` without one."""
    try:
        marker = json.loads((Path(folder) / FOLDER_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker.get("kind") if isinstance(marker, dict) else None


def is_run_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a run: marked so, or with a gatescope ``config.json`` (the
    layout of runs made before the marker existed)."""
    if folder_kind(folder) == "run":
        return True
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and all(key in config for key in _CONFIG_KEYS)


def check_folder(out: str | os.PathLike, kind: str, *, force: bool = False,
                 legacy: Callable[[Path], bool] | None = None) -> Path:
    """Refuse ``out`` unless gatescope may write its ``kind`` of output there; writes nothing.

    Allowed: a folder that does not exist yet, one that is empty (but for gatescope's own
    marker and lock), one whose :data:`FOLDER_MARKER` names ``kind``, one ``legacy`` accepts
    (a gatescope folder made before the marker existed), or, with ``force``, any folder.

    Args:
        out: the output folder (an empty string is refused: it would mean the current one).
        kind: ``"run"`` or ``"reproduce"``.
        force: write into a non-empty folder that gatescope did not make.
        legacy: recognises an unmarked gatescope folder of this kind.

    Returns:
        ``out`` as a path.

    Raises:
        OutputFolderError: ``out`` is empty, a file, unreadable, or (unless ``force``) a
            non-empty folder that is not gatescope's ``kind`` of output.
    """
    if os.fspath(out) == "":
        raise OutputFolderError(out, "an empty path names no folder (use '.' for the "
                                "current one)")
    path = Path(out)
    try:
        if not path.exists():
            return path
        if not path.is_dir():
            raise OutputFolderError(out, "is a file, not a folder")
        if force:
            return path
        found = folder_kind(path)
        if found == kind or (found is None and legacy is not None and legacy(path)):
            return path
        foreign = sorted(p.name for p in path.iterdir() if not _own_entry(p.name))
    except OSError as err:
        raise OutputFolderError(out, f"cannot be read ({err.strerror})") from None
    if found is not None:
        raise OutputFolderError(out, f"holds the output of `gatescope {found}`, not of "
                                f"`gatescope {kind}`", forceable=True)
    if foreign:
        raise OutputFolderError(out, f"is not empty and gatescope did not make it (it holds "
                                f"{foreign[0]!r})", forceable=True)
    return path


def claim_folder(out: str | os.PathLike, kind: str, *, force: bool = False,
                 legacy: Callable[[Path], bool] | None = None) -> Path:
    """:func:`check_folder`, then create ``out`` and (re)write its :data:`FOLDER_MARKER`,
    which also proves, before any work, that the folder can be written.

    Returns:
        ``out`` as a path.

    Raises:
        OutputFolderError: as :func:`check_folder`, or the folder cannot be created or
            written (a read-only parent or folder, a path through a file).
    """
    path = check_folder(out, kind, force=force, legacy=legacy)
    try:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path / FOLDER_MARKER, {"kind": kind})
    except OSError as err:
        raise OutputFolderError(out, f"cannot be written ({err.strerror})") from None
    return path


# ---------------------------------------------------------------------- the run lock

#: ``os.open`` flags of the lock: never follow a link, never truncate.
_LOCK_FLAGS = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_CLOEXEC", 0))


def _open_lock(out: Path) -> int:
    """Open (creating it if needed) ``OUT/.lock``; returns its file descriptor.

    Raises:
        OutputFolderError: the lock is a symbolic link or not a regular file, or cannot be
            opened.
    """
    path = out / LOCK_NAME
    try:
        fd = os.open(path, _LOCK_FLAGS, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OutputFolderError(out, f"its lock {LOCK_NAME} is a symbolic link; remove "
                                    "it") from None
        raise OutputFolderError(out, f"its lock {LOCK_NAME} cannot be opened "
                                f"({err.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputFolderError(out, f"its lock {LOCK_NAME} is not a regular file; remove it")
    return fd


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[None]:
    """Hold ``OUT/.lock`` (an OS lock, released when the process dies) for one run.

    Raises:
        RunLocked: another process holds it.
        OutputFolderError: the lock file is a link or not a regular file (a link's target is
            never opened, let alone truncated).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = _open_lock(out)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"another gatescope run is writing to {out}") from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
