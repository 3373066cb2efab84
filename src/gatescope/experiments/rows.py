"""Building tidy result rows (docs/outputs.md#resultscsv) without repeating the fixed columns."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class RowWriter:
    """Collects rows that share ``experiment, task, cell, optimizer`` and a current
    ``seed``/``step``; every row gets ``lag`` (None where it does not apply) and ``value``.
    """

    def __init__(self, experiment: str, task: str, cell: str, optimizer: str) -> None:
        self.fixed = {"experiment": experiment, "task": task, "cell": cell,
                      "optimizer": optimizer}
        self.rows: list[dict[str, Any]] = []

    def add(self, seed: int, step: int, metric: str, value: float, lag: int | None = None,
            **extra: Any) -> None:
        self.rows.append({**self.fixed, "seed": seed, "step": step, "metric": metric,
                          "lag": lag, "value": float(value), **extra})

    def add_series(self, seed: int, step: int, metric: str, lags: Iterable[int],
                   values: Iterable[float], **extra: Any) -> None:
        """One row per lag."""
        for lag, value in zip(lags, values, strict=True):
            self.add(seed, step, metric, value, lag=int(lag), **extra)
