"""Model factories: the model a task calls for, built from a cell name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..cells import make_cell
from ..model import SequenceModel
from ..tasks import Task


def task_model_factory(task: Task, cell: str, hidden_size: int,
                       **cell_options: Any) -> Callable[[], SequenceModel]:
    """A factory of fresh ``SequenceModel`` s for ``task`` (CPU, torch's default dtype).

    The model reads ``task.input_size`` inputs and has the task's readout (``"last"`` or
    ``"all"``), loss and output size. The readout has a bias exactly when ``bias=True`` is
    among the cell options, or when they do not say (the paper's models, ``bias=False``,
    have none anywhere: docs/fidelity.md#readout-bias).

    Args:
        task: the task the model is trained on.
        cell: a registered cell name (see :func:`gatescope.list_cells`).
        hidden_size: ``n``.
        **cell_options: passed to :func:`gatescope.make_cell` (e.g. ``bias=``, ``alpha=``).
    """
    readout_bias = bool(cell_options.get("bias", True))

    def build() -> SequenceModel:
        return SequenceModel(make_cell(cell, task.input_size, hidden_size, **cell_options),
                             output_size=task.output_size, readout=task.readout,
                             loss=task.loss, bias=readout_bias)

    return build
