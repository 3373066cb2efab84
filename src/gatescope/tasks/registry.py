"""A name -> task-class registry that users extend with their own tasks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..registry import Registry
from .base import Task, TaskInfo

_TASKS: Registry[type[Task]] = Registry("task", Task)


def _as_frozen_dataclass(cls: type[Task]) -> type[Task]:
    """``cls`` itself if it is already a dataclass, else made a frozen one."""
    if "__dataclass_fields__" in cls.__dict__:
        return cls
    return dataclasses.dataclass(frozen=True)(cls)


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator that makes a :class:`Task` subclass available by ``name``.

    A class that is not yet a dataclass is made a frozen one, so its annotated attributes
    with defaults become its options. Registering a name again replaces the earlier class.

    Example:
        >>> @register_task("my_task")
        ... class MyTask(Task):
        ...     gain: float = 1.0
        ...     def _generate(self, batch, generator):
        ...         u = torch.randn(batch, self.seq_len, self.input_size, generator=generator,
        ...                         dtype=torch.float64)
        ...         return u, self.gain * u[:, -1, :1]
        >>> task = make_task("my_task", seq_len=5, input_size=2, gain=2.0)
        >>> u, y = task.sample(3, torch.Generator().manual_seed(0))
        >>> tuple(u.shape), tuple(y.shape), torch.equal(y, 2.0 * u[:, -1, :1])
        ((3, 5, 2), (3, 1), True)
    """
    return _TASKS.register(name, _as_frozen_dataclass)


def list_tasks() -> list[str]:
    """Names of the registered tasks, in registration order."""
    return _TASKS.names()


def task_class(name: str) -> type[Task]:
    """The class registered as ``name``; ``ValueError`` naming the choices otherwise."""
    return _TASKS.lookup(name)


def make_task(name: str, seq_len: int, input_size: int | None = None, **options: Any) -> Task:
    """Build a registered task.

    Args:
        name: registry name (see :func:`list_tasks`).
        seq_len: ``T`` (for ``copy``, the delay: inputs then have ``T + 20`` steps).
        input_size: ``m``, the number of input channels; ``None`` picks the task's smallest
            allowed (the fixed size for ``copy`` and ``adding_classic``).
        **options: task-specific options, e.g. ``delays=(4, 12, 24, 36)`` for ``delaysum``
            (see :func:`describe_tasks` for every task's options and defaults).

    Raises:
        ValueError: unknown task or option, or an argument out of range; the message names
            the argument and what is allowed.
    """
    cls = task_class(name)
    allowed = list(cls.option_defaults())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"it takes {allowed}" if allowed else "it takes no options"
        raise ValueError(f"task {name!r}: unknown option(s) {unknown}; {takes}")
    return cls(seq_len, input_size, **options)


def describe_tasks() -> list[TaskInfo]:
    """Metadata of every registered task, in registration order (``gatescope list``)."""
    return [cls.info() for cls in _TASKS.values()]
