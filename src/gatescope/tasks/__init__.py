"""Seeded sequence tasks, by name: ``make_task("adding", seq_len=80, input_size=4)``.

Each task is a :class:`Task`; ``task.sample(batch, generator)`` returns a fresh ``(u, y)``
(or ``(u, y, mask)``) batch and ``task.baseline_loss`` the loss of the best input-independent
predictor. :func:`describe_tasks` gives the table behind ``gatescope list``.
"""

# isort: off
# Importing the task modules registers the tasks, in the order of the paper's list.
from . import memory, filters, narma, autoregressive, multilag  # noqa: F401

# isort: on
from .autoregressive import AR2, AR2Driven
from .base import MC_SAMPLES, MC_SEED, Task, TaskInfo
from .filters import DelaySum, MovingAvg, Short, SinMix
from .memory import Adding, AddingClassic, Copy, Recall
from .multilag import MultiLag
from .narma import Narma10, Narma20
from .registry import describe_tasks, list_tasks, make_task, register_task, task_class

__all__ = [
    "AR2",
    "AR2Driven",
    "Adding",
    "AddingClassic",
    "Copy",
    "DelaySum",
    "MC_SAMPLES",
    "MC_SEED",
    "MovingAvg",
    "MultiLag",
    "Narma10",
    "Narma20",
    "Recall",
    "Short",
    "SinMix",
    "Task",
    "TaskInfo",
    "describe_tasks",
    "list_tasks",
    "make_task",
    "register_task",
    "task_class",
]
