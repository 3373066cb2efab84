"""Building tidy result rows (docs/outputs.md#resultscsv) without repeating the fixed columns;
every row's metric is one declared in :mod:`gatescope.metrics`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from itertools import product
from typing import Any

import numpy as np

from ..metrics import AXIS_COLUMNS, Metric, get_metric


class RowWriter:
    """Collects rows that share ``experiment, task, cell, optimizer`` and a current
    ``seed``/``step``; every row gets ``lag`` (None where it does not apply) and ``value``.

    Raises:
        ValueError: for a metric that is not declared in :mod:`gatescope.metrics`.
    """

    def __init__(self, experiment: str, task: str, cell: str, optimizer: str) -> None:
        self.fixed = {"experiment": experiment, "task": task, "cell": cell,
                      "optimizer": optimizer}
        self.rows: list[dict[str, Any]] = []

    def add(self, seed: int, step: int, metric: Metric | str, value: float,
            lag: int | None = None, **extra: Any) -> None:
        """One row of a declared metric (``extra``: its axis columns, ``eps``, ``time``...)."""
        name = get_metric(str(metric)).name
        self.rows.append({**self.fixed, "seed": seed, "step": step, "metric": name,
                          "lag": lag, "value": float(value), **extra})

    def add_series(self, seed: int, step: int, metric: Metric | str, lags: Iterable[int],
                   values: Iterable[float], **extra: Any) -> None:
        """One row per lag."""
        for lag, value in zip(lags, values, strict=True):
            self.add(seed, step, metric, value, lag=int(lag), **extra)

    def add_record(self, seed: int, step: int, record: Mapping[str, np.ndarray],
                   coords: Mapping[str, list]) -> None:
        """One row per entry of each measured metric, its axes' coordinates in their columns.

        Args:
            record: ``{metric name: array}`` as :func:`gatescope.probes.measure` returns.
            coords: ``{axis: coordinates}`` (:meth:`ProbeContext.coords`).
        """
        for name, array in record.items():
            metric = get_metric(name)
            axes = [coords[a] for a in metric.axes]
            for index in product(*(range(n) for n in array.shape)):
                value = float(array[index])
                if metric.omit_undefined and math.isnan(value):
                    continue
                columns = {AXIS_COLUMNS[a]: axes[i][j]
                           for i, (a, j) in enumerate(zip(metric.axes, index, strict=True))}
                self.add(seed, step, metric, value, **columns)
