"""A probe's declared quantities in TensorBoard and Weights & Biases, beside its JSON + NPZ.

Give a logger to a :class:`~gatescope.Probe` (``Probe(..., loggers=[logger])``: every record
as it is made) or replay saved results (``gs.load_probe(path).log_to(logger)``). Each
recorded metric is written by its declaration in :mod:`gatescope.metrics`, under the tag
``PREFIX/NAME`` at the probe's step (:func:`log_items`):

* a scalar metric (no axes), e.g. ``probe_loss``: a **scalar**;
* a spectrum across the state's neurons (axis ``neuron`` or ``exponent``), e.g.
  ``time_scales``: a **histogram**;
* a curve along every lag or time step (axis ``profile_lag`` or ``time``), e.g.
  ``sensitivity_profile`` (one line) or ``predicted_profile`` (one line per predictor): an
  **image** of the curve;
* any other per-lag (or per-level, per-predictor) metric, e.g. ``envelope``: one **scalar
  per coordinate**, tagged ``PREFIX/NAME/AXIS=VALUE`` (``gatescope/envelope/rate_lag=4``).

NaN entries (a quantity undefined there, e.g. a lag longer than the elapsed time) are left
out. :class:`TensorBoardProbeLogger` needs ``gatescope[tensorboard]`` and
:class:`WandbProbeLogger` ``gatescope[wandb]``; both import their package only when built.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..metrics import Metric, get_metric
from .extras import require

#: Axes over the state's directions: their metric is a spectrum, logged as a histogram.
HISTOGRAM_AXES = ("neuron", "exponent")
#: Axes over every lag or time step: their metric is a curve, logged as an image.
IMAGE_AXES = ("profile_lag", "time")
#: Pixels of a curve's image (width, height).
IMAGE_SIZE = (480, 320)

SCALAR, HISTOGRAM, IMAGE = "scalar", "histogram", "image"


@dataclass(frozen=True)
class LogItem:
    """One thing to log at a step.

    Attributes:
        kind: ``"scalar"``, ``"histogram"`` or ``"image"``.
        tag: ``PREFIX/NAME`` or, for one coordinate, ``PREFIX/NAME/AXIS=VALUE``.
        value: a float (scalar), ``(K,)`` finite float64 values (histogram) or an
            ``(H, W, 3)`` uint8 RGB image.
    """

    kind: str
    tag: str
    value: Any


def log_items(record: Mapping[str, Any], coords: Mapping[str, list],
              prefix: str = "gatescope") -> list[LogItem]:
    """What a record becomes in a logger, by each metric's declared axes (module notes).

    Args:
        record: ``{metric name: array}`` as a probe records it.
        coords: ``{axis name: coordinates}`` (a probe's ``metadata()["coords"]``); an axis
            without them is numbered ``0..K-1``.
        prefix: the first part of every tag.

    Raises:
        ValueError: a metric name that is not declared.
    """
    items = []
    for name, value in record.items():
        metric = get_metric(name)
        value = np.asarray(value, dtype=np.float64)
        tag = f"{prefix}/{name}"
        if not metric.axes:
            if not np.isnan(value):
                items.append(LogItem(SCALAR, tag, float(value)))
        elif any(axis in IMAGE_AXES for axis in metric.axes):
            if not np.isnan(value).all():
                items.append(LogItem(IMAGE, tag, render_curve(metric, value, coords)))
        elif len(metric.axes) == 1 and metric.axes[0] in HISTOGRAM_AXES:
            finite = value[np.isfinite(value)]
            if finite.size:
                items.append(LogItem(HISTOGRAM, tag, finite))
        else:
            items += _per_coordinate(tag, metric, value, coords)
    return items


def _axis_coords(axis: str, size: int, coords: Mapping[str, list]) -> list:
    known = coords.get(axis)
    return list(known) if known is not None and len(known) == size else list(range(size))


def _per_coordinate(tag: str, metric: Metric, value: np.ndarray,
                    coords: Mapping[str, list]) -> list[LogItem]:
    """One scalar per entry of ``value``, tagged with its coordinate on every axis."""
    labels = [_axis_coords(axis, size, coords) for axis, size in zip(metric.axes, value.shape,
                                                                     strict=True)]
    items = []
    for index in np.ndindex(value.shape):
        if np.isnan(value[index]):
            continue
        where = "/".join(f"{axis}={labels[k][i]}" for k, (axis, i) in
                         enumerate(zip(metric.axes, index, strict=True)))
        items.append(LogItem(SCALAR, f"{tag}/{where}", float(value[index])))
    return items


def render_curve(metric: Metric, value: np.ndarray, coords: Mapping[str, list]) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image of ``value`` along its lag or time axis (one line per
    coordinate of its other axis), log-log when the values are positive.

    Args:
        metric: the metric, with one axis in :data:`IMAGE_AXES` and at most one other.
        value: its array, shaped by ``metric.axes``.
        coords: ``{axis name: coordinates}``.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    along = next(k for k, axis in enumerate(metric.axes) if axis in IMAGE_AXES)
    curves = np.moveaxis(value, along, -1).reshape(-1, value.shape[along])
    x = np.asarray(_axis_coords(metric.axes[along], value.shape[along], coords), float)
    others = [a for k, a in enumerate(metric.axes) if k != along]
    names = (_axis_coords(others[0], curves.shape[0], coords) if others else [None])
    width, height = IMAGE_SIZE
    fig = Figure(figsize=(width / 80, height / 80), dpi=80)
    ax = fig.add_subplot()
    for label, curve in zip(names, curves, strict=True):
        ax.plot(x, curve, label=None if label is None else f"{others[0]}={label}")
    finite = curves[np.isfinite(curves)]
    if finite.size and (finite > 0).all() and (x > 0).all():
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(metric.axes[along])
    ax.set_ylabel(f"{metric.name} [{metric.unit}]")
    ax.set_title(metric.name)
    if others:
        ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="rgba", dpi=80)
    rgba = np.frombuffer(buffer.getvalue(), np.uint8).reshape(height, width, 4)
    return np.ascontiguousarray(rgba[..., :3])


# ---------------------------------------------------------------------- the loggers


class _ItemLogger:
    """A probe logger that writes :func:`log_items` through one writer function per kind."""

    def __init__(self, prefix: str) -> None:
        if not (isinstance(prefix, str) and prefix):
            raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
        self.prefix = prefix

    def log(self, step: int, record: Mapping[str, Any], coords: Mapping[str, list]) -> None:
        """Write one probe record at ``step`` (see the module notes)."""
        self._write(int(step), log_items(record, coords, self.prefix))

    def _write(self, step: int, items: list[LogItem]) -> None:
        raise NotImplementedError


class TensorBoardProbeLogger(_ItemLogger):
    """Writes probe records as TensorBoard scalars, histograms and images
    (:class:`torch.utils.tensorboard.SummaryWriter`).

    Example:
        ``probe = gs.Probe(model, u, y, loggers=[TensorBoardProbeLogger("runs/probe")])``

    Args:
        log_dir: the folder of the event files (a new ``SummaryWriter``); or
        writer: an existing ``SummaryWriter`` (e.g. Lightning's
            ``TensorBoardLogger.experiment``), which :meth:`close` leaves open.
        prefix: the first part of every tag.

    Raises:
        MissingExtra: TensorBoard is not installed (``pip install 'gatescope[tensorboard]'``).
        ValueError: both or neither of ``log_dir`` and ``writer``.
    """

    def __init__(self, log_dir: str | None = None, *, writer: Any = None,
                 prefix: str = "gatescope") -> None:
        super().__init__(prefix)
        if (log_dir is None) == (writer is None):
            raise ValueError("give exactly one of log_dir and writer")
        self._owned = writer is None
        if writer is None:
            tensorboard = require("torch.utils.tensorboard", "tensorboard",
                                  "TensorBoardProbeLogger")
            writer = tensorboard.SummaryWriter(str(log_dir))
        self.writer = writer

    def _write(self, step: int, items: list[LogItem]) -> None:
        add: dict[str, Callable] = {
            SCALAR: self.writer.add_scalar, HISTOGRAM: self.writer.add_histogram,
            IMAGE: lambda tag, image, step: self.writer.add_image(tag, image, step,
                                                                  dataformats="HWC")}
        for item in items:
            add[item.kind](item.tag, item.value, step)

    def flush(self) -> None:
        """Write what is buffered to the event file."""
        self.writer.flush()

    def close(self) -> None:
        """Flush, and close the writer if this logger made it."""
        self.writer.flush()
        if self._owned:
            self.writer.close()


class WandbProbeLogger(_ItemLogger):
    """Writes probe records to a Weights & Biases run: scalars, ``wandb.Histogram`` s and
    ``wandb.Image`` s, one ``run.log`` per record.

    Example:
        ``WandbProbeLogger(project="gates", mode="offline")`` (a new run), or
        ``WandbProbeLogger(run=wandb.run)``.

    Args:
        run: an existing run (e.g. Lightning's ``WandbLogger.experiment``); without it,
            ``wandb.init(**init)`` starts one, which :meth:`close` finishes.
        prefix: the first part of every key.
        step_key: ``None``: log at W&B's ``step=`` the probe's step (it must increase, as
            probe steps do); else log the step as this key instead (Lightning's
            ``"trainer/global_step"``), so the run's own step is left to its owner.
        init: keyword arguments of ``wandb.init`` (``project``, ``dir``, ``mode`` ...).

    Raises:
        MissingExtra: wandb is not installed (``pip install 'gatescope[wandb]'``).
    """

    def __init__(self, run: Any = None, *, prefix: str = "gatescope",
                 step_key: str | None = None, **init: Any) -> None:
        super().__init__(prefix)
        self._wandb = require("wandb", "wandb", "WandbProbeLogger")
        if run is not None and init:
            raise ValueError(f"give run or wandb.init arguments, not both (got {sorted(init)})")
        self._owned = run is None
        self.run = self._wandb.init(**init) if run is None else run
        self.step_key = step_key

    def _write(self, step: int, items: list[LogItem]) -> None:
        wrap = {SCALAR: lambda v: v, HISTOGRAM: self._wandb.Histogram,
                IMAGE: self._wandb.Image}
        data = {item.tag: wrap[item.kind](item.value) for item in items}
        if self.step_key is None:
            self.run.log(data, step=step)
        else:
            self.run.log({**data, self.step_key: step})

    def close(self) -> None:
        """Finish the run if this logger started it."""
        if self._owned:
            self.run.finish()


class MetricsProbeLogger(_ItemLogger):
    """Writes the scalar items of probe records through any ``log_metrics(metrics, step)``
    (a Lightning logger such as ``CSVLogger``); histograms and images are left out.

    Args:
        target: an object with ``log_metrics(dict[str, float], step)``.
        prefix: the first part of every key.
    """

    def __init__(self, target: Any, *, prefix: str = "gatescope") -> None:
        super().__init__(prefix)
        if not callable(getattr(target, "log_metrics", None)):
            raise ValueError(f"target must have a log_metrics(metrics, step) method, "
                             f"got {target!r}")
        self.target = target

    def _write(self, step: int, items: list[LogItem]) -> None:
        scalars = {item.tag: item.value for item in items if item.kind == SCALAR}
        if scalars:
            self.target.log_metrics(scalars, step)
