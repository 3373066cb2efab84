"""The Ray backend of the runner: each group of a run is one Ray task.

``gatescope run|reproduce --backend ray [--address ADDR]`` (or ``run_experiment(...,
backend="ray", address=...)``) hands every group to :class:`RayPool`, which the runner's
scheduler drives exactly like its local worker processes (at most ``jobs`` groups in flight,
in the experiment's order). Each task

* declares its resources: one CPU (it runs one torch thread) and, when the run's device is
  CUDA, one GPU, so Ray places it on a node that has them;
* writes the group's rows, marker and checkpoints into the run folder itself, so the files
  are those of the local backend and a run started with one backend is finished or
  reused by the other (the backend is no setting);
* is retried :data:`MAX_RETRIES` times if its worker process or node dies; the retry
  resumes from the group's last checkpoint, so the rows are those of an uninterrupted run.

On a cluster every node must see the run folder at the same path (a shared file system);
a worker that does not see it fails its group with a message that says so. Start the
cluster with ``ray start --head`` on one machine and ``ray start --address=HEAD:6379`` on
each other one, then run with ``--address HEAD:6379`` (or ``auto`` on a node of it).
Without ``--address`` the runner uses the Ray instance this process is already connected
to, else ``RAY_ADDRESS``, else starts a local one with this machine's CPUs.

Needs the extra ``gatescope[ray]``; ``ray`` is imported only when a pool is opened.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from .extras import require

#: Times Ray reruns a group whose worker died (an error the group raises is not retried).
MAX_RETRIES = 3
#: Bytes of Ray's object store when this module starts a local instance (tasks return only
#: a row count, so a small store leaves the memory to the groups).
LOCAL_OBJECT_STORE = 256 * 1024**2


def import_ray() -> ModuleType:
    """``ray``, or :class:`~gatescope.integrations.extras.MissingExtra` naming
    ``gatescope[ray]``."""
    return require("ray", "ray", "--backend ray")


def connect(address: str | None = None) -> ModuleType:
    """Join the Ray cluster at ``address`` (see the module notes), once per process.

    Raises:
        ConnectionError: no cluster at ``address``.
    """
    ray = import_ray()
    if not ray.is_initialized():
        local = address is None and not _env_address()
        try:
            ray.init(address=address, include_dashboard=False, configure_logging=False,
                     **({"object_store_memory": LOCAL_OBJECT_STORE} if local else {}))
        except Exception as err:  # no cluster there, or an unparsable address
            raise ConnectionError(f"cannot connect to the Ray cluster at {address!r}: "
                                  f"{err}") from err
    return ray


def _env_address() -> str | None:
    return os.environ.get("RAY_ADDRESS") or None


def _run_task(task: Any, messages: Any) -> int:
    """The body of every task: run the group, sending progress to the driver's queue."""
    def send(key: str, done: int, total: int) -> None:
        if messages is not None:
            messages.put_nowait((key, done, total))

    return task.in_worker(send)


class RayPool:
    """Groups as Ray tasks, behind the runner's ``Pool`` interface (see
    :class:`gatescope.experiments.runner.Pool`).

    Args:
        address: the cluster to join (``None``: see :func:`connect`).
        num_cpus: CPUs each task declares.
        num_gpus: GPUs each task declares (one for a CUDA run).
        progress: send the groups' step progress to the driver (through a queue actor).
    """

    def __init__(self, address: str | None = None, *, num_cpus: float = 1,
                 num_gpus: float = 0, progress: bool = True) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.progress = progress

    def __enter__(self) -> RayPool:
        ray = self._ray = connect(self.address)
        self._queue = None
        if self.progress:
            from ray.util.queue import Queue

            self._queue = Queue(actor_options={"num_cpus": 0})
        self._remote = ray.remote(_run_task)
        self._submitted: list[Any] = []
        return self

    def __exit__(self, *exc: object) -> None:
        for ref in self._submitted:  # an interrupted run: stop its tasks (checkpoints stay)
            self._ray.cancel(ref, force=True)
        if self._queue is not None:
            self._queue.shutdown(force=True)

    def submit(self, task: Any) -> Any:
        ref = self._remote.options(
            name=f"gatescope:{task.key}", num_cpus=self.num_cpus, num_gpus=self.num_gpus,
            max_retries=MAX_RETRIES, retry_exceptions=False).remote(task, self._queue)
        self._submitted.append(ref)
        return ref

    def wait(self, handles: set, timeout: float) -> tuple[set, set]:
        done, pending = self._ray.wait(list(handles), num_returns=len(handles),
                                       timeout=timeout, fetch_local=False)
        return set(done), set(pending)

    def result(self, handle: Any) -> int:
        """The task's value; the group's own error (not Ray's wrapper) if it raised."""
        self._submitted.remove(handle)
        try:
            return self._ray.get(handle)
        except self._ray.exceptions.RayTaskError as err:
            cause = err.cause
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def messages(self) -> list[tuple[str, int, int]]:
        if self._queue is None or self._queue.empty():
            return []
        return self._queue.get_nowait_batch(self._queue.qsize())
