"""``train``: train a grid of tasks × cells × optimizers over seeds (seed ensembles).

Each group trains every seed at once with :class:`~gatescope.training.EnsembleTrainer`
(fresh batches each step, per-seed data streams), checkpointing at the ``checkpoints``
steps (the last step always included) so an interrupted group resumes.

Rows (docs/outputs.md#resultscsv columns; ``lag`` empty):

* ``loss`` — the training loss of step ``s`` (the batch loss before update ``s + 1``), every
  ``log_every`` steps and at the last step, until a seed diverges;
* ``eval_loss`` — at each checkpoint, the loss on a fixed evaluation batch of
  ``eval_batch`` sequences per seed (stream ``"eval"`` of the seed), for live seeds;
* ``diverged`` — for a seed whose loss or gradient stopped being finite: ``step`` and
  ``value`` are the step it happened.

``summary.json``: per group, the task's baseline loss (predicting the mean), the final
``eval_loss`` median and IQR across the live seeds, their ratio to the baseline, and the
diverged seeds with their steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from ..training import (
    EVAL_STREAM,
    EnsembleTrainer,
    stream_generator,
    train_resumable,
)
from .base import Experiment, Group, Progress
from .grid import GridSettings
from .losses import logged_steps, record_losses
from .registry import register_experiment
from .rows import RowWriter
from .settings import MAX_BATCH, BatchSize, StepCount


class TrainSettings(GridSettings):
    """Settings of the ``train`` experiment: the grid, plus how often to log."""

    log_every: StepCount = Field(10, description="record the training loss every k steps")
    eval_batch: BatchSize = Field(256, description=f"evaluation sequences per seed "
                                  f"(<= {MAX_BATCH})")

    def largest_tensors(self) -> list[tuple[str, list[tuple[str, int]]]]:
        return [*super().largest_tensors(),
                ("the evaluation batch's hidden states",
                 [("seeds", len(self.seeds)), ("eval_batch", self.eval_batch),
                  ("seq_len", self.seq_len), ("hidden_size", self.hidden_size)])]


@register_experiment("train")
class TrainExperiment(Experiment):
    """Train tasks × cells × optimizers over seeds; loss curves and final losses."""

    description = ("train tasks x cells x optimizers over seeds (ensembles): loss curves, "
                   "final loss vs the task's baseline, divergence")
    settings_model = TrainSettings

    def groups(self, settings: TrainSettings) -> list[Group]:
        return settings.grid()

    def run_group(self, settings: TrainSettings, group: Group, workdir: Path,
                  progress: Progress) -> list[dict[str, Any]]:
        trainer = settings.trainer(group)
        rows = RowWriter(self.name, group.task, group.cell, group.optimizer)
        held_out = trainer.sample_batch([stream_generator(s, EVAL_STREAM) for s in trainer.seeds],
                                        settings.eval_batch)

        def evaluate(t: EnsembleTrainer) -> list[dict[str, Any]]:
            at = RowWriter(self.name, group.task, group.cell, group.optimizer)
            losses = t.losses_on(held_out).cpu().tolist()
            for seed, loss, alive in zip(t.seeds, losses, t.alive.tolist(), strict=True):
                if alive:
                    at.add(seed, t.steps_done, "eval_loss", loss)
            return at.rows

        rows.rows.extend(train_resumable(trainer, settings.steps, settings.checkpoint_steps(),
                                         workdir / "checkpoints", evaluate, progress))
        record_losses(rows, trainer, logged_steps(settings.steps, settings.log_every))
        return rows.rows

    def summarize(self, settings: TrainSettings, rows: list[dict[str, Any]]) -> dict[str, Any]:
        final: dict[tuple[str, str, str], list[float]] = {}
        diverged: dict[tuple[str, str, str], dict[int, int]] = {}
        for row in rows:
            key = (row["task"], row["cell"], row["optimizer"])
            if row["metric"] == "eval_loss" and row["step"] == settings.steps:
                final.setdefault(key, []).append(row["value"])
            elif row["metric"] == "diverged":
                diverged.setdefault(key, {})[row["seed"]] = row["step"]
        groups = []
        for group in self.groups(settings):
            key = (group.task, group.cell, group.optimizer)
            baseline = settings.task(group.task).baseline_loss
            values = final.get(key, [])
            entry: dict[str, Any] = {
                "task": group.task, "cell": group.cell, "optimizer": group.optimizer,
                "seeds": len(settings.seeds), "baseline_loss": baseline,
                "diverged": {str(s): step for s, step in diverged.get(key, {}).items()},
                "final_eval_loss": None, "median_over_baseline": None,
            }
            if values:
                q25, median, q75 = np.percentile(values, [25, 50, 75]).tolist()
                entry["final_eval_loss"] = {"median": median, "q25": q25, "q75": q75,
                                            "n": len(values)}
                entry["median_over_baseline"] = median / baseline
            groups.append(entry)
        return {"experiment": self.name, "steps": settings.steps, "groups": groups}
