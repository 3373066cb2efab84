"""Training-loss and divergence rows shared by every training experiment."""

from __future__ import annotations

from collections.abc import Iterable

from ..training import EnsembleTrainer
from .rows import RowWriter


def logged_steps(steps: int, every: int) -> list[int]:
    """Steps whose training loss becomes a row: every ``every`` steps and the last one."""
    return sorted({*range(0, steps, every), steps - 1})


def record_losses(writer: RowWriter, trainer: EnsembleTrainer, steps: Iterable[int]) -> None:
    """``loss`` rows (the batch loss before update ``s + 1``) at ``steps`` until a seed
    diverges, and a ``diverged`` row (``step`` = ``value`` = the step) for each seed that did.
    """
    losses = trainer.losses
    steps = list(steps)
    for k, (seed, diverged) in enumerate(zip(trainer.seeds, trainer.diverged_at, strict=True)):
        for step in steps:
            if step < losses.shape[1] and (diverged is None or step < diverged):
                writer.add(seed, step, "loss", losses[k, step].item())
        if diverged is not None:
            writer.add(seed, diverged, "diverged", diverged)


def live_models(trainer: EnsembleTrainer) -> tuple[list[int], list[int], list]:
    """``(indices, seeds, models)`` of the seeds that have not diverged."""
    idx = [k for k, alive in enumerate(trainer.alive.tolist()) if alive]
    return idx, [trainer.seeds[k] for k in idx], [trainer.model(k) for k in idx]
