"""What the paper's experiments measure at each checkpoint: registered quantities
(:mod:`gatescope.probes`) computed on each live seed's fixed probe batch, written as rows.

Seeds are measured one after another: each seed's probe batch is already a large batched
computation (tens of thousands of transport products), and holding every seed's Jacobians at
once would dominate the memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..metrics import Metric
from ..probes import ProbeContext, get_quantity
from ..probes.measure import measure
from ..training import EnsembleTrainer, train_resumable
from .base import Group, Progress
from .losses import live_models, logged_steps, record_losses
from .rows import RowWriter

#: ``{quantity name: the metrics an experiment keeps}``; ``None`` keeps all of them.
MeasurementPlan = Mapping[str, Sequence[Metric] | None]


def plan_with(plan: MeasurementPlan, extra: Iterable[str]) -> dict[str, Sequence[Metric] | None]:
    """``plan`` plus every metric of the ``extra`` quantities (names from a setting)."""
    return {**plan, **dict.fromkeys(extra)}


def record_measurements(writer: RowWriter, seeds: Sequence[int], step: int,
                        contexts: Iterable[ProbeContext], plan: MeasurementPlan) -> None:
    """Measure each seed's context with the planned quantities and add their rows.

    Args:
        seeds: the live seeds, in the order of ``contexts``.
        contexts: one :class:`~gatescope.probes.ProbeContext` per seed (an iterable, so each
            is built and released in turn).
        plan: which quantities, and which of their metrics, become rows.
    """
    quantities = [get_quantity(name) for name in plan]
    kept = {m.name for q in quantities for m in (plan[q.name] or q.metrics)}
    for seed, ctx in zip(seeds, contexts, strict=True):
        record, _ = measure(ctx, quantities)
        writer.add_record(seed, step, {k: v for k, v in record.items() if k in kept},
                          ctx.coords())


#: ``contexts(trainer, indices, seeds, models)``: one probe context per live seed.
ContextsOf = Callable[[EnsembleTrainer, list[int], list[int], list], Iterable[ProbeContext]]


def train_measured(experiment: str, group: Group, trainer: EnsembleTrainer, settings: Any,
                   workdir: Path, progress: Progress, contexts: ContextsOf,
                   plan: MeasurementPlan) -> list[dict[str, Any]]:
    """Train ``trainer`` for ``settings.steps`` (resumably, checkpoints in
    ``workdir/checkpoints``), measure the live seeds' ``contexts`` with ``plan`` at each of
    ``settings.checkpoint_steps()``, then add the training-loss rows every
    ``settings.log_every`` steps: the rows of one group of ``experiment``."""
    def at_checkpoint(t: EnsembleTrainer) -> list[dict[str, Any]]:
        writer = RowWriter(experiment, group.task, group.cell, group.optimizer)
        idx, seeds, models = live_models(t)
        record_measurements(writer, seeds, t.steps_done, contexts(t, idx, seeds, models), plan)
        return writer.rows

    rows = train_resumable(trainer, settings.steps, settings.checkpoint_steps(),
                           workdir / "checkpoints", at_checkpoint, progress)
    writer = RowWriter(experiment, group.task, group.cell, group.optimizer)
    record_losses(writer, trainer, logged_steps(settings.steps, settings.log_every))
    return rows + writer.rows
