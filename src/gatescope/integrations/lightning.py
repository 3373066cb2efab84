"""A Lightning callback that probes a fixed batch every k steps of ``Trainer.fit``.

Example::

    from gatescope.integrations.lightning import ProbeCallback

    trainer = lightning.pytorch.Trainer(max_steps=500, logger=TensorBoardLogger("runs"),
                                        callbacks=[ProbeCallback(u, y, every_n_steps=50)])
    trainer.fit(module)      # module holds a gs.SequenceModel (found by type)

At every ``global_step`` that is a multiple of ``every_n_steps`` (before that step's update,
as a :class:`~gatescope.Probe` in a hand-written loop), the callback records the chosen
quantities on ``(u, y)`` and logs them through each of the trainer's loggers: a
``TensorBoardLogger`` gets scalars, histograms and images
(:class:`~gatescope.integrations.loggers.TensorBoardProbeLogger` on its writer), a
``WandbLogger`` the same as W&B media at key ``trainer/global_step``
(:class:`~gatescope.integrations.loggers.WandbProbeLogger`), any other logger the scalars
through its ``log_metrics``. The probe is :attr:`ProbeCallback.probe`; ``save=PATH`` also
writes its JSON + NPZ when training ends. Only the global-zero process probes.

Needs the extra ``gatescope[lightning]`` (the ``lightning`` package); importing this module
without it raises :class:`~gatescope.integrations.extras.MissingExtra`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from ..checks import as_int
from ..model import SequenceModel
from ..probes import Probe, Schedule
from ..probes.registry import resolve_quantities
from .extras import require
from .loggers import MetricsProbeLogger, TensorBoardProbeLogger, WandbProbeLogger

_pl = require("lightning.pytorch", "lightning", "gatescope.integrations.lightning")


def probe_logger(logger: Any, prefix: str = "gatescope") -> Any:
    """The probe logger that writes through a Lightning ``logger`` (module notes)."""
    loggers = _pl.loggers
    if isinstance(logger, loggers.TensorBoardLogger):
        return TensorBoardProbeLogger(writer=logger.experiment, prefix=prefix)
    if isinstance(logger, loggers.WandbLogger):
        return WandbProbeLogger(run=logger.experiment, prefix=prefix,
                                step_key="trainer/global_step")
    return MetricsProbeLogger(logger, prefix=prefix)


class ProbeCallback(_pl.Callback):
    """Runs a :class:`~gatescope.Probe` on a fixed batch every ``every_n_steps`` training
    steps and logs its records through the trainer's loggers.

    Args:
        u: ``(B, T, m)`` probe inputs.
        y: probe targets, batch first.
        every_n_steps: record at global steps ``0, k, 2k, ...``.
        quantities: a preset (``"cheap"``, ``"full"``) or registered quantity names.
        model: the :class:`~gatescope.SequenceModel` to probe; default: the LightningModule
            itself if it is one, else its only ``SequenceModel`` submodule.
        mask: optional ``(B, T)`` step weights.
        lags, rank, samples_per_lag: as for :class:`~gatescope.Probe`.
        prefix: the first part of every logged tag.
        save: a path stem: write the probe's JSON + NPZ there when training ends.

    Raises:
        ValueError: naming the invalid argument (at construction; the model and the batch
            shapes when training starts, before the first step).
    """

    def __init__(self, u: Tensor, y: Tensor, every_n_steps: int = 50,
                 quantities: str | Sequence[str] = "cheap", *,
                 model: SequenceModel | None = None, mask: Tensor | None = None,
                 lags: Iterable[int] | None = None, rank: int = 10,
                 samples_per_lag: int = 64, prefix: str = "gatescope",
                 save: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.every_n_steps = as_int("every_n_steps", every_n_steps, minimum=1)
        resolve_quantities(quantities)  # unknown names fail here, not in the first step
        if model is not None and not isinstance(model, SequenceModel):
            raise ValueError(f"model must be a gatescope SequenceModel or None, "
                             f"got {type(model)}")
        self.u, self.y, self.mask, self.model = u, y, mask, model
        self.quantities, self.lags, self.rank = quantities, lags, rank
        self.samples_per_lag, self.prefix, self.save = samples_per_lag, prefix, save
        self.probe: Probe | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Build the probe on the module's device, with the trainer's first optimizer."""
        optimizers = trainer.optimizers
        loggers = [probe_logger(lg, self.prefix) for lg in trainer.loggers] \
            if trainer.is_global_zero else []
        self.probe = Probe(self._find_model(pl_module), self.u, self.y, mask=self.mask,
                           optimizer=optimizers[0] if optimizers else None,
                           quantities=self.quantities,
                           schedule=Schedule.every(self.every_n_steps), lags=self.lags,
                           rank=self.rank, samples_per_lag=self.samples_per_lag,
                           loggers=loggers)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        """Record at this global step if it is on the schedule (once per step, also with
        gradient accumulation)."""
        step = trainer.global_step
        if self.probe is None or not trainer.is_global_zero:
            return
        if self.probe.steps.size and step <= self.probe.steps[-1]:
            return
        self.probe(step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Flush the loggers and write ``save`` (global zero only)."""
        if self.probe is None or not trainer.is_global_zero:
            return
        for lg in self.probe.loggers:
            flush = getattr(lg, "flush", None)
            if flush is not None:
                flush()
        if self.save is not None:
            self.probe.save(self.save)

    def _find_model(self, pl_module: Any) -> SequenceModel:
        if self.model is not None:
            return self.model
        if isinstance(pl_module, SequenceModel):
            return pl_module
        found = [m for m in pl_module.modules() if isinstance(m, SequenceModel)]
        if len(found) != 1:
            raise ValueError(f"model: the LightningModule holds {len(found)} gatescope "
                             "SequenceModels; pass model= the one to probe")
        return found[0]
