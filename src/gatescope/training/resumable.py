"""Training that survives being killed: checkpoints in a folder, resumed from the newest.

:func:`train_resumable` is the loop an experiment's group runs. At each checkpoint step it
calls ``measure(trainer)`` for that checkpoint's result rows, then saves the trainer and
every row so far in one atomic checkpoint file. Run again on the same folder (after a
crash, ``SIGKILL``, or a finished run), it restores the newest checkpoint and continues, so
the rows returned equal those of one uninterrupted run. A checkpoint that no longer matches
its recorded sha256 (see :mod:`.checkpoints`) is skipped with a warning, and the steps since
the previous good one are trained again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from .checkpoints import checkpoint_path, restore_latest, save_checkpoint
from .ensemble import EnsembleTrainer

logger = logging.getLogger(__name__)

#: ``measure(trainer) -> rows`` at a checkpoint; rows are dicts of plain values.
Measure = Callable[[EnsembleTrainer], list[dict[str, Any]]]


def train_resumable(trainer: EnsembleTrainer, steps: int, checkpoints: Iterable[int],
                    directory: str | os.PathLike, measure: Measure | None = None,
                    progress: Callable[[int, int], None] | None = None
                    ) -> list[dict[str, Any]]:
    """Train ``trainer`` to ``steps``, checkpointing into ``directory`` and resuming from it.

    Args:
        trainer: a freshly built trainer (its state is replaced by the newest checkpoint
            in ``directory``, if any).
        steps: total number of steps.
        checkpoints: steps at which to measure and save (``steps`` is always one, so a
            finished run restores without training).
        directory: the checkpoint folder (``step-XXXXXXXX.pt`` files).
        measure: rows to record at each checkpoint (e.g. an evaluation loss).
        progress: ``progress(done, steps)`` after restoring and after every step.

    Returns:
        The rows of every checkpoint, in order.
    """
    marks = sorted({*map(int, checkpoints), int(steps)})
    step, extra = restore_latest(directory, trainer)
    rows: list[dict[str, Any]] = [] if extra is None else list(extra["rows"])
    if step >= 0:
        logger.info("resuming from the checkpoint at step %d in %s", step, directory)
    if progress is not None:
        progress(trainer.steps_done, steps)

    def on_checkpoint(t: EnsembleTrainer) -> None:
        if measure is not None:
            rows.extend(measure(t))
        save_checkpoint(checkpoint_path(directory, t.steps_done), t, {"rows": rows})

    trainer.train(steps, marks, on_checkpoint, progress)
    return rows
