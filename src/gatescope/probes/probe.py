"""``Probe``: call it once per training step; on its schedule it computes the chosen
quantities on a fixed probe batch and keeps them as plain arrays.

A probe call never changes the model's parameters, their ``.grad``, the optimizer's state
or torch's random number generators (CPU, and the probe batch's CUDA device): quantities run
under ``torch.no_grad()`` (the few that differentiate do so with ``torch.autograd.grad`` or
``torch.func``, which leave ``.grad`` alone) inside ``torch.random.fork_rng``. The model is
run in whatever mode (train/eval) it is in.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from ..checks import as_int, as_int_tuple
from ..model import SequenceModel
from .context import ProbeContext
from .measure import measure
from .registry import resolve_quantities
from .results import ProbeResults
from .schedule import Schedule

#: The lags a probe uses when given none (those up to the sequence length).
DEFAULT_LAGS = (1, 2, 4, 8, 16)


@runtime_checkable
class RecordLogger(Protocol):
    """Receives each record a probe makes, e.g. to write it to TensorBoard or W&B
    (:mod:`gatescope.integrations.loggers`)."""

    def log(self, step: int, record: Mapping[str, np.ndarray],
            coords: Mapping[str, list]) -> None:
        """Take one record.

        Args:
            step: the training step recorded.
            record: ``{metric name: array}``, each shaped by its metric's declared axes.
            coords: ``{axis name: coordinates}`` of those axes.
        """


def _versions() -> dict[str, str]:
    from .. import __version__  # the package finishes importing before any probe is built

    return {"gatescope": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


class Probe:
    """Records chosen quantities of a training run on a fixed probe batch.

    Example:
        >>> import tempfile
        >>> model = gs.SequenceModel(gs.make_cell("multi_gate", input_size=2, hidden_size=4))
        >>> u, y = torch.randn(8, 6, 2), torch.randn(8, 1)
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> probe = gs.Probe(model, u, y, optimizer=opt, quantities="cheap",
        ...                  schedule=gs.Schedule.every(10))
        >>> for step in range(21):
        ...     _ = probe(step)              # records at 0, 10, 20
        ...     opt.zero_grad()
        ...     model.loss(u, y).backward()
        ...     opt.step()
        >>> probe.steps.tolist()
        [0, 10, 20]
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = probe.save(f"{folder}/probe")  # probe.json + probe.npz
        ...     saved = gs.load_probe(f"{folder}/probe")
        >>> saved.steps.tolist(), saved.quantities == probe.results().quantities
        ([0, 10, 20], True)

    Args:
        model: a :class:`~gatescope.SequenceModel`.
        u: ``(B, T, m)`` probe inputs (copied, and cast to the model's device and dtype).
        y: probe targets as for :meth:`~gatescope.SequenceModel.loss`, batch first (copied,
            moved to the model's device).
        mask: optional ``(B, T)`` step weights.
        optimizer: the training optimizer, read by ``optimizer_steps``; ``None`` skips it.
        quantities: a preset (``"cheap"``, ``"full"``) or a list of registered names
            (:func:`~gatescope.probes.list_quantities`).
        schedule: when to record; default :meth:`Schedule.every(10) <Schedule.every>`.
        lags: the lags of the lag-resolved quantities, distinct, each in ``1..T``;
            ``None`` for :data:`DEFAULT_LAGS` up to ``T``.
        rank: the ``r`` of ``AI_r``/``CE_r`` and of the alignment subspace (capped at the
            size of each spectrum).
        samples_per_lag: transport products sampled per lag by ``propagation_anisotropy``.
        loggers: :class:`RecordLogger` s that receive every record as it is made (beside
            what :meth:`save` writes), e.g.
            :class:`~gatescope.integrations.loggers.TensorBoardProbeLogger`.

    Raises:
        ValueError: naming the argument that is invalid.
    """

    def __init__(self, model: SequenceModel, u: Tensor, y: Tensor, mask: Tensor | None = None,
                 optimizer: torch.optim.Optimizer | None = None,
                 quantities: str | Sequence[str] = "cheap", schedule: Schedule | None = None,
                 lags: Iterable[int] | None = None, rank: int = 10,
                 samples_per_lag: int = 64, loggers: Sequence[RecordLogger] = ()) -> None:
        if not isinstance(model, SequenceModel):
            raise ValueError(f"model must be a gatescope SequenceModel, got {type(model)}")
        param = next(model.parameters())
        cell = model.cell
        if not isinstance(u, Tensor) or u.dim() != 3 or u.shape[-1] != cell.input_size:
            raise ValueError(f"u must be a tensor of shape (B, T, input_size={cell.input_size}), "
                             f"got {getattr(u, 'shape', u)!r}")
        B, T = u.shape[:2]
        if not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != B:
            raise ValueError(f"y must be a tensor with batch size {B} first, "
                             f"got {getattr(y, 'shape', y)!r}")
        if mask is not None and (not isinstance(mask, Tensor) or mask.shape[0] != B):
            raise ValueError(f"mask must be None or a tensor with batch size {B} first, "
                             f"got {getattr(mask, 'shape', mask)!r}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, "
                             f"got {type(optimizer)}")
        if not isinstance(schedule, Schedule | None):
            raise ValueError(f"schedule must be a gatescope Schedule, got {schedule!r}")
        if lags is None:
            lags = tuple(x for x in DEFAULT_LAGS if x <= T)
        lags = as_int_tuple("lags", lags, minimum=1)
        if max(lags) > T:
            raise ValueError(f"lags must lie in [1, T={T}], got {lags}")
        loggers = tuple(loggers)
        for lg in loggers:
            if not isinstance(lg, RecordLogger):
                raise ValueError(f"loggers must have a log(step, record, coords) method, "
                                 f"got {lg!r}")
        self.model = model
        self.u = u.detach().to(param.device, param.dtype, copy=True)
        self.y = y.detach().to(param.device, copy=True)
        self.mask = None if mask is None else mask.detach().to(param.device, copy=True)
        self.optimizer = optimizer
        self.quantities = resolve_quantities(quantities)
        self.schedule = Schedule.every(10) if schedule is None else schedule
        self.lags = lags
        self.rank = as_int("rank", rank, minimum=1)
        self.samples_per_lag = as_int("samples_per_lag", samples_per_lag, minimum=1)
        self.loggers = loggers
        self._steps: list[int] = []
        self._records: list[dict[str, np.ndarray]] = []
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._notes: dict[str, dict[str, list[int]]] = {}

    def __call__(self, step: int, force: bool = False) -> dict[str, np.ndarray] | None:
        """Record at ``step`` if it is on the schedule (or ``force``).

        Args:
            step: the training step, an integer ``>= 0``; recorded steps must increase.
            force: record even when ``step`` is not on the schedule.

        Returns:
            The new record ``{metric name: array}``, or ``None`` when not recording.
        """
        step = as_int("step", step, minimum=0)
        if not force and step not in self.schedule:
            return None
        if self._steps and step <= self._steps[-1]:
            raise ValueError(f"step must increase between records: {step} after "
                             f"{self._steps[-1]}")
        record, skipped = self._compute(step)
        for key, value in record.items():
            if self._shapes.get(key, value.shape) != value.shape:
                raise ValueError(f"{key!r} changed shape from {self._shapes[key]} to "
                                 f"{value.shape} at step {step}")
        for key, value in record.items():
            self._shapes.setdefault(key, value.shape)
        for name, message in skipped.items():
            self._notes.setdefault(name, {}).setdefault(message, []).append(step)
        self._steps.append(step)
        self._records.append(record)
        if self.loggers:
            coords = self._context(step).coords()
            for lg in self.loggers:
                lg.log(step, record, coords)
        return record

    step = __call__

    def _compute(self, step: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Every quantity at ``step``: the record and ``{quantity: why it was skipped}``."""
        ctx = self._context(step)
        devices = [self.u.device] if self.u.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return measure(ctx, self.quantities)

    def _context(self, step: int) -> ProbeContext:
        return ProbeContext(self.model, self.u, self.y, self.mask, self.optimizer, self.lags,
                            self.rank, self.samples_per_lag, step)

    @property
    def steps(self) -> np.ndarray:
        """``(R,)`` int64, the recorded steps."""
        return np.array(self._steps, dtype=np.int64)

    @property
    def history(self) -> dict[str, np.ndarray]:
        """``{metric name: (R, ...) float64}`` stacked over the recorded steps, NaN at
        the steps where the quantity was skipped."""
        return {key: np.stack([rec.get(key, np.full(shape, np.nan)) for rec in self._records])
                for key, shape in self._shapes.items()}

    @property
    def notes(self) -> dict[str, dict[str, list[int]]]:
        """``{quantity: {message: [steps]}}``: why a quantity was skipped, and when."""
        return {name: {m: list(s) for m, s in notes.items()} for name, notes in self._notes.items()}

    def metadata(self) -> dict[str, Any]:
        """The JSON-ready description saved beside the arrays (see :class:`ProbeResults`)."""
        cell, (B, T, m) = self.model.cell, self.u.shape
        recorded = {q.name: [x.name for x in q.metrics if x.name in self._shapes]
                    for q in self.quantities}
        axes = {x.name: list(x.axes) for q in self.quantities for x in q.metrics
                if x.name in self._shapes}
        return {
            "quantities": [q.name for q in self.quantities],
            "costs": {q.name: q.cost for q in self.quantities},
            "metrics": recorded,
            "lags": list(self.lags),
            "schedule": self.schedule.to_dict(),
            "settings": {
                "rank": self.rank, "samples_per_lag": self.samples_per_lag, "batch_size": B,
                "seq_len": T, "input_size": m, "hidden_size": cell.hidden_size,
                "state_size": cell.state_size, "cell": cell.name,
                "readout": self.model.readout_kind, "loss": self.model.loss_kind,
                "optimizer": None if self.optimizer is None else type(self.optimizer).__name__,
                "dtype": str(self.u.dtype).removeprefix("torch."), "device": str(self.u.device),
            },
            "versions": _versions(),
            "notes": self.notes,
            "axes": axes,
            "coords": self._context(0).coords(),
        }

    def results(self) -> ProbeResults:
        """A snapshot of what has been recorded."""
        return ProbeResults(self.steps, self.history, self.metadata())

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.npz`` (see :meth:`ProbeResults.save`)."""
        return self.results().save(path)

    @staticmethod
    def load(path: str | os.PathLike) -> ProbeResults:
        """Load saved results; no model needed (see :meth:`ProbeResults.load`)."""
        return ProbeResults.load(path)
