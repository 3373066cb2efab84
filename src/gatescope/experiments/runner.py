"""Run an experiment: validate, run its groups (in parallel, resuming), write the results.

:func:`run_experiment` is what ``gatescope run`` calls. It

1. validates the settings (a :class:`~gatescope.experiments.settings.SettingsError`
   before any work),
2. claims the folder (a non-empty folder that gatescope did not make is refused unless
   ``force``), takes its run lock and writes ``config.json``,
3. skips every group already finished with the same settings (see
   :mod:`~gatescope.experiments.storage`; a truncated results file is redone),
4. runs the other groups, in this process (``jobs=1``) or in ``jobs`` spawned worker
   processes with one torch thread each; a group resumes from the checkpoints in its work
   folder, so a killed run loses at most the steps since the last checkpoint,
5. assembles ``results.csv`` and ``summary.json``.

A group that raises does not stop the others; the run then ends with a :class:`RunError`
naming every failed group (their finished siblings are kept and reused by the next run).
Progress bars go to stderr (one for the groups, one per running group); ``quiet``
silences them. Worker processes exit when the main process dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue as queue_module
import sys
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..atomic import atomic_write_json
from ..results import read_rows
from ..training import flush_denormals
from .base import Experiment, Group, Progress, Settings
from .registry import get_experiment
from .settings import build_settings, settings_hash
from .storage import (
    GroupFolder,
    GroupTiming,
    assemble_results,
    claim_folder,
    is_run_folder,
    run_lock,
)

logger = logging.getLogger(__name__)

#: Where ``run_experiment`` writes when no folder is given: ``gatescope-results/NAME``.
DEFAULT_ROOT = Path("gatescope-results")
#: Seconds between progress messages a worker sends.
_REPORT_EVERY = 0.25


class RunError(RuntimeError):
    """Some groups failed; ``failures`` maps group key -> error message."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        lines = "\n".join(f"  {key}: {msg}" for key, msg in failures.items())
        super().__init__(f"{len(failures)} group(s) failed:\n{lines}")


@dataclass
class RunResult:
    """What :func:`run_experiment` did.

    Attributes:
        out: the run folder.
        ran: keys of the groups run (or resumed) now.
        skipped: keys of the groups already finished.
        rows: number of rows in ``results.csv``.
        summary: the content of ``summary.json``.
    """

    out: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rows: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


def run_experiment(name: str, settings: Settings | Mapping[str, Any] | None = None,
                   out: str | os.PathLike | None = None, *, jobs: int = 1,
                   quiet: bool = False, force: bool = False) -> RunResult:
    """Run (or finish) the experiment registered as ``name``.

    Args:
        name: a registered experiment (see :func:`list_experiments`).
        settings: its settings model, or a mapping of setting overrides (validated).
        out: the run folder; default ``gatescope-results/NAME``. It must be new, empty or
            a run folder (which is resumed); an empty string is refused.
        jobs: worker processes for the groups (1: run in this process).
        quiet: no progress bars.
        force: also write into a non-empty folder that gatescope did not make (files of
            the run's names are replaced).

    Raises:
        ValueError: unknown experiment or ``jobs < 1``.
        SettingsError: invalid settings (nothing is written).
        OutputFolderError: ``out`` may not or cannot be written (before any work).
        RunLocked: another run is writing to ``out``.
        RunError: some groups failed (the others' results are kept).
    """
    experiment = get_experiment(name)
    if not isinstance(settings, experiment.settings_model):
        settings = build_settings(experiment.settings_model, dict(settings or {}),
                                  experiment=name)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1; got {jobs}")
    groups = experiment.groups(settings)
    if len({g.key for g in groups}) != len(groups):
        raise ValueError(f"experiment {name!r} produced repeated groups")
    digest = settings_hash(name, settings)
    out = claim_folder(DEFAULT_ROOT / name if out is None else out, "run", force=force,
                       legacy=is_run_folder)
    result = RunResult(out)
    from .. import __version__  # here, not at import: gatescope/__init__ may import us
    with run_lock(out):
        for stale in ("results.csv", "summary.json"):  # they described the previous settings
            (out / stale).unlink(missing_ok=True)
        atomic_write_json(out / "config.json", {
            "experiment": name, "settings": settings.model_dump(mode="json"),
            "settings_hash": digest, "groups": [g.key for g in groups],
            "gatescope_version": __version__, "torch_version": torch.__version__,
        })
        folders = [GroupFolder(out, g) for g in groups]
        todo = []
        for folder in folders:
            reason = folder.check(digest)
            if reason is None:
                result.skipped.append(folder.group.key)
            else:
                if reason == GroupFolder.OTHER_SETTINGS:
                    logger.info("group %s: %s; redoing it", folder.group.key, reason)
                elif reason != GroupFolder.NOT_RUN:
                    logger.warning("group %s: %s; redoing it", folder.group.key, reason)
                todo.append(folder.group)
        if result.skipped:
            logger.info("skipping %d finished group(s)", len(result.skipped))
        job = (type(experiment), settings, digest, out, time.time())  # time: this invocation
        with _Board(name, len(groups), len(result.skipped), quiet) as board:
            if jobs > 1 and len(todo) > 1:
                failures = _run_parallel(job, todo, board, jobs)
            else:
                failures = _run_here(job, todo, board)
        result.ran = [g.key for g in todo if g.key not in failures]
        if failures:
            raise RunError(failures)
        assemble_results(out, folders)
        rows = read_rows(out / "results.csv")
        result.rows = len(rows)
        result.summary = experiment.summarize(settings, rows)
        atomic_write_json(out / "summary.json", result.summary)
    return result


# ---------------------------------------------------------------------- running groups


def run_group_job(experiment_cls: type[Experiment], settings: Settings, digest: str,
                  out: str | Path, invocation: float, group: Group, progress: Progress) -> int:
    """Run one group into its folder (resuming from its work folder); returns its rows.

    ``invocation`` (the Unix time the run started) goes into the group's marker with the
    group's own start time and wall seconds.
    """
    started, start = time.time(), time.perf_counter()
    folder = GroupFolder(out, group)
    workdir = folder.prepare(digest)
    with flush_denormals():  # vanishing gradients would otherwise crawl (see the module)
        rows = list(experiment_cls().run_group(settings, group, workdir, progress))
    return folder.write(rows, digest, GroupTiming(invocation, started,
                                                  time.perf_counter() - start))


def _run_here(job: tuple, todo: list[Group], board: _Board) -> dict[str, str]:
    """Run the groups one after another in this process; returns the failures."""
    failures = {}
    for group in todo:
        try:
            run_group_job(*job, group,
                          lambda done, total, key=group.key: board.update(key, done, total))
        except Exception as err:  # one failed group must not stop the grid
            failures[group.key] = _failed(group.key, err)
        board.finish(group.key)
    return failures


def _run_parallel(job: tuple, todo: list[Group], board: _Board, jobs: int) -> dict[str, str]:
    """Run the groups in ``jobs`` spawned worker processes; returns the failures."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    failures = {}
    level = logging.getLogger("gatescope").getEffectiveLevel()
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=context,
                             initializer=_init_worker, initargs=(messages, level)) as pool:
        futures = {pool.submit(_worker_job, *job, group): group.key for group in todo}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(messages, board)
            for future in finished:
                key = futures[future]
                try:
                    future.result()
                except Exception as err:
                    failures[key] = _failed(key, err)
                board.finish(key)
    return failures


def _failed(key: str, err: Exception) -> str:
    message = f"{type(err).__name__}: {err}"
    logger.error("group %s failed: %s", key, message)
    return message


def _drain(messages, board) -> None:
    while True:
        try:
            key, done, total = messages.get_nowait()
        except queue_module.Empty:
            return
        board.update(key, done, total)


# ---------------------------------------------------------------------- worker side

_WORKER: dict[str, Any] = {}


def _init_worker(messages, log_level: int) -> None:
    torch.set_num_threads(1)
    logging.basicConfig(stream=sys.stderr, format="gatescope: %(message)s")
    logging.getLogger("gatescope").setLevel(log_level)
    _WORKER.update(messages=messages, parent=os.getppid(), last=0.0)


def _worker_job(experiment_cls: type[Experiment], settings: Settings, digest: str,
                out: Path, invocation: float, group: Group) -> int:
    def report(done: int, total: int) -> None:
        if os.getppid() != _WORKER["parent"]:  # the run was killed: stop, keep checkpoints
            os._exit(1)
        now = time.monotonic()
        if done >= total or now - _WORKER["last"] >= _REPORT_EVERY:
            _WORKER["last"] = now
            _WORKER["messages"].put((group.key, done, total))

    return run_group_job(experiment_cls, settings, digest, out, invocation, group, report)


# ---------------------------------------------------------------------- progress bars


class _Board:
    """Progress bars on stderr: the groups done, and one bar per running group."""

    def __init__(self, name: str, total: int, done: int, quiet: bool) -> None:
        self.quiet = quiet
        self.groups = tqdm(total=total, initial=done, desc=name, unit="group",
                           file=sys.stderr, disable=quiet, dynamic_ncols=True)
        self.bars: dict[str, tqdm] = {}

    def update(self, key: str, done: int, total: int) -> None:
        bar = self.bars.get(key)
        if bar is None:
            bar = self.bars[key] = tqdm(total=total, desc=key, unit="step", leave=False,
                                        file=sys.stderr, disable=self.quiet,
                                        dynamic_ncols=True)
        bar.total = total
        bar.update(done - bar.n)

    def finish(self, key: str) -> None:
        bar = self.bars.pop(key, None)
        if bar is not None:
            bar.close()
        self.groups.update(1)

    def __enter__(self) -> _Board:
        return self

    def __exit__(self, *exc) -> None:
        for bar in self.bars.values():
            bar.close()
        self.groups.close()
