"""A name -> task-class registry that users extend with their own tasks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .base import Task, TaskInfo

_TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator that makes a :class:`Task` subclass available by ``name``.

    A class that is not yet a dataclass is made a frozen one, so its annotated attributes
    with defaults become its options. Registering a name again replaces the earlier class.

    Example:
        >>> @register_task("my_task")
        ... class MyTask(Task):
        ...     gain: float = 1.0
        ...     def _generate(self, batch, generator): ...
    """

    def decorate(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task({name!r}) expects a Task subclass; got {cls!r}")
        if "__dataclass_fields__" not in cls.__dict__:
            cls = dataclasses.dataclass(frozen=True)(cls)
        cls.name = name
        _TASKS[name] = cls
        return cls

    return decorate


def list_tasks() -> list[str]:
    """Names of the registered tasks, in registration order."""
    return list(_TASKS)


def task_class(name: str) -> type[Task]:
    """The class registered as ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return _TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; choose one of {list(_TASKS)}") from None


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
