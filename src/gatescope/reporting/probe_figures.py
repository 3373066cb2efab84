"""Figures of a probe's recordings: one figure per quantity, one panel per recorded key,
drawn over the training steps.

How a metric is drawn follows its per-step shape and its declared axes
(``results.metadata["axes"]``):

* a scalar: one line over the steps;
* a vector over ``"lag"`` or ``"level"``, or any unlabelled vector of at most
  :data:`MAX_LINES` entries: one line per entry over the steps (at most :data:`MAX_LINES`,
  evenly chosen);
* a vector over ``"neuron"`` (or a longer unlabelled one): the median across entries with
  their interquartile range as a band;
* a vector over ``"profile_lag"``: the profile against the lag, one line per recorded step
  (at most :data:`MAX_LINES`, evenly chosen), darker for later steps.

The y axis is logarithmic where the positive values span at least two decades. Steps where a
quantity was skipped are gaps, explained in the figure's title. A metric with two axes (a
predictor, then lags) gets one panel per coordinate of the first; larger ones are not drawn.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .style import COLOURS, LINESTYLES, MARKERS, band, figure, save


class ProbeRecord(Protocol):
    """What :func:`plot_probe` reads: the shape of :class:`gatescope.probes.ProbeResults`
    (reporting reads results; it does not import the probes that record them)."""

    steps: np.ndarray
    metadata: dict[str, Any]

    @property
    def quantities(self) -> list[str]: ...

    @property
    def notes(self) -> dict[str, dict[str, list[int]]]: ...

    def quantity(self, name: str) -> dict[str, np.ndarray]: ...


class LiveProbe(Protocol):
    """A live :class:`gatescope.probes.Probe`: what it recorded so far is ``results()``."""

    def results(self) -> ProbeRecord: ...

#: The most lines one panel draws (longer vectors show evenly spaced entries).
MAX_LINES = 12
_LABELS = {"lag": "ℓ={}", "rate_lag": "ℓ={}", "level": "q={}"}


def _evenly(count: int) -> np.ndarray:
    """At most MAX_LINES evenly spaced indices of ``range(count)``, first and last included."""
    return np.unique(np.linspace(0, count - 1, min(MAX_LINES, count)).round().astype(int))


def _log_if_wide(ax, values: np.ndarray) -> None:
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size and positive.max() >= 100 * positive.min():
        ax.set_yscale("log")


def _style(i: int) -> tuple[str, str, str]:
    """Line ``i``'s (colour, linestyle, marker); distinct for the first 12 lines."""
    return COLOURS[i % len(COLOURS)], LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)]


def _lines_over_steps(ax, steps, values, labels) -> None:
    """``values`` ``(R, K)``: one line per column."""
    for i, (column, label) in enumerate(zip(values.T, labels, strict=True)):
        colour, linestyle, marker = _style(i)
        ax.plot(steps, column, color=colour, linestyle=linestyle, marker=marker, markersize=3,
                label=label)


def _profile_per_step(ax, steps, values, lags) -> None:
    """``values`` ``(R, T-1)``: the profile against the lag for up to MAX_LINES steps."""
    rows = _evenly(len(steps))
    for i, row in enumerate(rows):
        grey = 0.75 * (1 - i / max(len(rows) - 1, 1))
        ax.plot(lags, values[row], color=str(grey), linestyle=LINESTYLES[i % len(LINESTYLES)],
                marker=MARKERS[i % len(MARKERS)], markersize=2, label=f"step {steps[row]}")
    ax.set_xlabel("lag ℓ")


def _draw(ax, steps, values, axis, coords) -> None:
    """Draw one panel's values ``(R,)`` or ``(R, K)`` into ``ax``."""
    if values.ndim == 1:
        _lines_over_steps(ax, steps, values[:, None], [None])
    elif axis == "profile_lag":
        _profile_per_step(ax, steps, values, coords[axis])
    elif axis == "neuron" or (axis is None and values.shape[1] > MAX_LINES):
        band(ax, steps, values.T, "neurons" if axis == "neuron" else "entries", _style(0))
    else:
        template = _LABELS.get(axis, "[{}]")
        names = coords.get(axis, range(values.shape[1]))
        columns = _evenly(values.shape[1])
        _lines_over_steps(ax, steps, values[:, columns],
                          [template.format(names[c]) for c in columns])
    if axis != "profile_lag":
        ax.set_xlabel("training step")
    _log_if_wide(ax, values)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=6)


def _panels(name: str, values: np.ndarray, axes: list[str], coords: dict
            ) -> dict[str, tuple[np.ndarray, str | None]]:
    """``{panel title: ((R,) or (R, K) values, axis)}`` of one metric: one panel, or one per
    coordinate of a leading axis (a predictor) when it has two axes; none beyond that."""
    if values.ndim <= 2:
        return {name: (values, axes[0] if axes else None)}
    if values.ndim == 3 and len(axes) == 2:
        labels = coords.get(axes[0], range(values.shape[1]))
        return {f"{name}[{label}]": (values[:, i], axes[1]) for i, label in enumerate(labels)}
    return {}


def plot_probe(results: ProbeRecord | LiveProbe, out_dir: str | os.PathLike,
               ncols: int = 3) -> dict[str, list[Path]]:
    """Draw every recorded quantity over the training steps (see the module notes).

    Args:
        results: loaded :class:`~gatescope.probes.ProbeResults` or a live
            :class:`~gatescope.probes.Probe`.
        out_dir: folder for the figures (created).
        ncols: panels per row.

    Returns:
        ``{"probe_<quantity>": [png, pdf]}`` for each recorded quantity with a drawable
        metric.
    """
    snapshot = getattr(results, "results", None)
    if callable(snapshot):  # a live Probe
        results = snapshot()
    axes_of, coords = results.metadata["axes"], results.metadata["coords"]
    figures = {}
    for quantity in results.quantities:
        keys = {}
        for name, values in results.quantity(quantity).items():
            keys |= _panels(name, values, axes_of.get(name, []), coords)
        if not keys:
            continue
        fig, grid = figure(min(ncols, len(keys)), math.ceil(len(keys) / ncols))
        panels = grid.flatten()
        for (key, (values, axis)), ax in zip(keys.items(), panels, strict=False):
            _draw(ax, results.steps, values, axis, coords)
            ax.set_title(f"{quantity}: {key}", fontsize=8)
        for ax in panels[len(keys):]:
            ax.set_visible(False)
        skipped = "; ".join(f"skipped at steps {steps}: {message}"
                            for message, steps in results.notes.get(quantity, {}).items())
        if skipped:
            fig.suptitle(skipped, fontsize=7)
        fig.tight_layout()
        figures[f"probe_{quantity}"] = save(fig, Path(out_dir), f"probe_{quantity}")
    return figures
