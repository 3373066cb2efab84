"""Run an experiment: validate, run its groups (in parallel, resuming), write the results.

:func:`run_experiment` is what ``gatescope run`` calls. It

1. validates the settings (a :class:`~gatescope.experiments.settings.SettingsError`
   before any work),
2. claims the folder (a non-empty folder that gatescope did not make is refused unless
   ``force``), takes its run lock and writes ``config.json``,
3. skips every group already finished with the same settings (see
   :mod:`~gatescope.experiments.storage`; a truncated results file is redone),
4. runs the other groups, in this process (``jobs=1``) or ``jobs`` at a time in worker
   processes with one torch thread each: spawned here (``backend="local"``) or Ray tasks
   (``backend="ray"``, :mod:`gatescope.integrations.ray_backend`), both behind one small
   :class:`Pool` interface and one scheduler; a group resumes from the checkpoints in its
   work folder, so a killed run loses at most the steps since the last checkpoint,
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
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
    OutputFolderError,
    assemble_results,
    claim_folder,
    folder_kind,
    is_run_folder,
    run_lock,
)

logger = logging.getLogger(__name__)

#: Where ``run_experiment`` writes when no folder is given: ``gatescope-results/NAME``.
DEFAULT_ROOT = Path("gatescope-results")
#: Seconds between progress messages a worker sends.
_REPORT_EVERY = 0.25
#: Where groups can run: ``local`` worker processes (the default) or ``ray`` tasks
#: (:mod:`gatescope.integrations.ray_backend`, extra ``gatescope[ray]``).
BACKENDS = ("local", "ray")


class BackendError(ValueError):
    """A backend that cannot be used (unknown, not installed, unreachable), raised before
    any work."""


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
                   quiet: bool = False, force: bool = False, backend: str = "local",
                   address: str | None = None) -> RunResult:
    """Run (or finish) the experiment registered as ``name``.

    Args:
        name: a registered experiment (see :func:`list_experiments`).
        settings: its settings model, or a mapping of setting overrides (validated).
        out: the run folder; default ``gatescope-results/NAME``. It must be new, empty or
            a run folder (which is resumed); an empty string is refused.
        jobs: groups run at once in worker processes (1 with the local backend: run in
            this process).
        quiet: no progress bars.
        force: also write into a non-empty folder that gatescope did not make (files of
            the run's names are replaced).
        backend: ``"local"`` (worker processes of this machine) or ``"ray"`` (each group a
            Ray task of one CPU, and one GPU when the device is CUDA, retried if its
            worker dies; see :mod:`gatescope.integrations.ray_backend`). Both write the
            same files, so either resumes the other's run.
        address: the Ray cluster to join (``ray`` only); default: the one this process
            is connected to, else ``RAY_ADDRESS``, else a new local instance.

    Raises:
        ValueError: unknown experiment or ``jobs < 1``.
        BackendError: an unknown backend, or Ray not installed (before any work).
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
    check_backend(backend, address)
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
        invocation = time.time()
        level = logging.getLogger("gatescope").getEffectiveLevel()
        tasks = [GroupTask(type(experiment), settings, digest, out, invocation, group, level)
                 for group in todo]
        with _Board(name, len(groups), len(result.skipped), quiet) as board:
            if backend == "local" and (jobs == 1 or len(todo) <= 1):
                failures = _run_here(tasks, board)
            elif tasks:
                pool = _make_pool(backend, address, min(jobs, len(tasks)), settings, quiet)
                failures = _run_pooled(pool, tasks, board, jobs)
            else:
                failures = {}
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

    Raises:
        OutputFolderError: ``out`` is not a claimed run folder here (a worker of another
            machine that does not share the folder), before any work.
    """
    if folder_kind(out) != "run":
        raise OutputFolderError(out, "is not a run folder on this machine; a worker on "
                                "another machine needs the folder on a file system it shares")
    started, start = time.time(), time.perf_counter()
    folder = GroupFolder(out, group)
    workdir = folder.prepare(digest)
    with flush_denormals():  # vanishing gradients would otherwise crawl (see the module)
        rows = list(experiment_cls().run_group(settings, group, workdir, progress))
    return folder.write(rows, digest, GroupTiming(invocation, started,
                                                  time.perf_counter() - start))


@dataclass(frozen=True)
class GroupTask:
    """One group of a run, picklable: what a backend hands to a worker.

    Attributes:
        experiment_cls, settings, digest, out, invocation: as for :func:`run_group_job`.
        group: the group to run.
        log_level: the level of the ``gatescope`` logger in the worker.
    """

    experiment_cls: type[Experiment]
    settings: Settings
    digest: str
    out: Path
    invocation: float
    group: Group
    log_level: int = logging.INFO

    @property
    def key(self) -> str:
        """The group's key."""
        return self.group.key

    def run(self, progress: Progress) -> int:
        """Run the group here; returns its row count."""
        return run_group_job(self.experiment_cls, self.settings, self.digest, self.out,
                             self.invocation, self.group, progress)

    def in_worker(self, send: Callable[[str, int, int], None]) -> int:
        """Run the group in a worker process: one torch thread, the run's log level, and
        ``(key, done, total)`` progress messages to ``send`` at most every
        :data:`_REPORT_EVERY` seconds (and at the end)."""
        torch.set_num_threads(1)
        if not logging.getLogger().handlers:
            logging.basicConfig(stream=sys.stderr, format="gatescope: %(message)s")
        logging.getLogger("gatescope").setLevel(self.log_level)
        last = [0.0]

        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if done >= total or now - last[0] >= _REPORT_EVERY:
                last[0] = now
                send(self.key, done, total)

        return self.run(report)


class Pool(Protocol):
    """Where a backend runs groups: the one interface the scheduler of
    :func:`_run_pooled` talks to (:class:`LocalPool`;
    :class:`~gatescope.integrations.ray_backend.RayPool`).

    A pool is a context manager; inside it, ``submit`` starts a task (a handle back),
    ``wait`` returns ``(finished, pending)`` handles after at most ``timeout`` seconds,
    ``result`` returns a finished task's value or raises its error, and ``messages`` drains
    the ``(key, done, total)`` progress messages the workers sent.
    """

    def __enter__(self) -> Pool: ...

    def __exit__(self, *exc: object) -> None: ...

    def submit(self, task: GroupTask) -> Any: ...

    def wait(self, handles: set, timeout: float) -> tuple[set, set]: ...

    def result(self, handle: Any) -> int: ...

    def messages(self) -> list[tuple[str, int, int]]: ...


def _run_here(tasks: list[GroupTask], board: _Board) -> dict[str, str]:
    """Run the groups one after another in this process; returns the failures."""
    failures = {}
    for task in tasks:
        try:
            task.run(lambda done, total, key=task.key: board.update(key, done, total))
        except Exception as err:  # one failed group must not stop the grid
            failures[task.key] = _failed(task.key, err)
        board.finish(task.key)
    return failures


def _run_pooled(pool: Pool, tasks: list[GroupTask], board: _Board,
                jobs: int) -> dict[str, str]:
    """Run the groups in ``pool``, at most ``jobs`` at a time, in the given order; returns
    the failures (a group whose task raises, or cannot be started, does not stop the
    others)."""
    failures: dict[str, str] = {}
    waiting, running = list(reversed(tasks)), {}
    with pool:
        while waiting or running:
            while waiting and len(running) < jobs:
                task = waiting.pop()
                try:
                    running[pool.submit(task)] = task.key
                except Exception as err:
                    failures[task.key] = _failed(task.key, err)
                    board.finish(task.key)
            if not running:
                continue
            finished, _ = pool.wait(set(running), timeout=0.2)
            for key, done, total in pool.messages():
                board.update(key, done, total)
            for handle in finished:
                key = running.pop(handle)
                try:
                    pool.result(handle)
                except Exception as err:
                    failures[key] = _failed(key, err)
                board.finish(key)
    return failures


def _failed(key: str, err: Exception) -> str:
    message = f"{type(err).__name__}: {err}"
    logger.error("group %s failed: %s", key, message)
    return message


# ---------------------------------------------------------------------- the local backend


class LocalPool:
    """``jobs`` spawned worker processes of this machine (the default backend); a worker
    exits when the main process dies."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs

    def __enter__(self) -> LocalPool:
        context = multiprocessing.get_context("spawn")
        self._messages = context.Queue()
        self._executor = ProcessPoolExecutor(max_workers=self.jobs, mp_context=context,
                                             initializer=_init_worker,
                                             initargs=(self._messages,))
        return self

    def __exit__(self, *exc: object) -> None:
        self._executor.shutdown(cancel_futures=True)

    def submit(self, task: GroupTask) -> Future:
        return self._executor.submit(_local_worker_job, task)

    def wait(self, handles: set, timeout: float) -> tuple[set, set]:
        done, pending = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return set(done), set(pending)

    def result(self, handle: Future) -> int:
        return handle.result()

    def messages(self) -> list[tuple[str, int, int]]:
        found = []
        while True:
            try:
                found.append(self._messages.get_nowait())
            except queue_module.Empty:
                return found


_WORKER: dict[str, Any] = {}


def _init_worker(messages) -> None:
    _WORKER.update(messages=messages, parent=os.getppid())


def _local_send(key: str, done: int, total: int) -> None:
    if os.getppid() != _WORKER["parent"]:  # the run was killed: stop, keep checkpoints
        os._exit(1)
    _WORKER["messages"].put((key, done, total))


def _local_worker_job(task: GroupTask) -> int:
    return task.in_worker(_local_send)


# ---------------------------------------------------------------------- choosing a backend


def check_backend(backend: str, address: str | None = None) -> None:
    """Before any work: refuse an unknown backend or an address without Ray; for Ray, join
    the cluster (once per process; a local instance is started without ``address``).

    Raises:
        BackendError: naming the argument and the allowed values, the extra to install
            when Ray is missing, or the address that has no cluster.
    """
    if backend not in BACKENDS:
        raise BackendError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; "
                           f"got {backend!r}")
    if address is not None and backend != "ray":
        raise BackendError(f"address is only for backend 'ray'; got backend {backend!r}")
    if backend == "ray":
        from ..integrations.extras import MissingExtra
        from ..integrations.ray_backend import connect

        try:
            connect(address)
        except (MissingExtra, ConnectionError) as err:
            raise BackendError(str(err)) from None


def _make_pool(backend: str, address: str | None, jobs: int, settings: Settings,
               quiet: bool) -> Pool:
    """The pool of ``backend``: each Ray task declares one CPU and, for a CUDA device, one
    GPU."""
    if backend == "local":
        return LocalPool(jobs)
    from ..integrations.ray_backend import RayPool

    device = str(getattr(settings, "device", "cpu"))
    return RayPool(address, num_cpus=1, num_gpus=1 if device.startswith("cuda") else 0,
                   progress=not quiet)


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
