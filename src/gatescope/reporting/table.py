"""A tidy results table (``results.csv``) as numpy columns, with the selections and
across-seed aggregates the figures and the report need.

The table has one row per measurement (docs/outputs.md#resultscsv); a selection fixes some
columns and returns
a smaller table, and :meth:`ResultsTable.by_seed` turns a selection into a ``(seeds, points)``
array so every figure and verdict shows the spread across seeds.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUMERIC = ("seed", "step", "lag", "value", "eps", "time")


@dataclass(frozen=True)
class Spread:
    """Median and interquartile range across seeds (NaNs ignored)."""

    median: float
    q25: float
    q75: float
    n: int

    @classmethod
    def of(cls, values) -> Spread:
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        q25, med, q75 = np.percentile(v, [25, 50, 75])
        return cls(float(med), float(q25), float(q75), int(v.size))

    @property
    def iqr(self) -> float:
        """Width of the interquartile range, ``q75 - q25``."""
        return self.q75 - self.q25

    def __str__(self) -> str:
        return f"{self.median:.3g} [IQR {self.q25:.3g}–{self.q75:.3g}, n={self.n}]"


class ResultsTable:
    """Columns of a results table, each a numpy array of equal length."""

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        self.columns = columns

    @classmethod
    def read_csv(cls, path: Path) -> ResultsTable:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        names = list(rows[0]) if rows else []
        return cls.from_rows(rows, names)

    @classmethod
    def from_rows(cls, rows: list[dict], names: list[str] | None = None) -> ResultsTable:
        names = names or sorted({k for r in rows for k in r})
        cols = {}
        for name in names:
            raw = [r.get(name) for r in rows]
            if name in NUMERIC:
                cols[name] = np.array([np.nan if v in (None, "") else float(v) for v in raw])
            else:
                cols[name] = np.array(["" if v is None else str(v) for v in raw], dtype=object)
        return cls(cols)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def select(self, **conditions) -> ResultsTable:
        """Rows where every ``column == value`` (numeric columns compare as floats)."""
        keep = np.ones(len(self), dtype=bool)
        for name, value in conditions.items():
            if name not in self.columns:
                return ResultsTable({k: v[:0] for k, v in self.columns.items()})
            col = self.columns[name]
            keep &= (col == float(value)) if name in NUMERIC else (col == str(value))
        return ResultsTable({k: v[keep] for k, v in self.columns.items()})

    def unique(self, column: str) -> list:
        """Sorted distinct values of a column (NaN dropped)."""
        col = self.columns.get(column, np.array([]))
        if column in NUMERIC:
            return sorted({float(x) for x in col if np.isfinite(x)})
        return sorted(set(col.tolist()))

    def by_seed(self, along: str) -> tuple[np.ndarray, np.ndarray]:
        """``(points, values)`` with ``values[s, i]`` the value of seed ``s`` at
        ``points[i]`` of column ``along`` (NaN where missing)."""
        points = np.array(self.unique(along))
        seeds = self.unique("seed")
        out = np.full((len(seeds), len(points)), np.nan)
        s_idx = np.searchsorted(seeds, self.columns["seed"])
        p_idx = np.searchsorted(points, self.columns[along])
        out[s_idx, p_idx] = self.columns["value"]
        return points, out

    def spread(self) -> Spread:
        """Median/IQR of the ``value`` column (one value per seed expected)."""
        return Spread.of(self.columns.get("value", []))

    def combos(self, *columns: str) -> list[tuple]:
        """Sorted distinct combinations of ``columns`` (e.g. the ``(cell, optimizer)`` arms)."""
        if not len(self) or any(c not in self.columns for c in columns):
            return []
        return sorted(set(zip(*(self.columns[c].tolist() for c in columns), strict=True)))

    def checkpoints(self, metric: str | None = None) -> list[float]:
        """Sorted training steps at which ``metric`` (any metric if None) was measured."""
        return (self if metric is None else self.select(metric=metric)).unique("step")

    def per_seed(self, seeds=None) -> np.ndarray:
        """One value per seed: the seed's value, or the median of its values where it has
        several (e.g. across lags or times).

        Args:
            seeds: the seeds to return, in order (default: this table's); NaN for a seed
                without rows.
        """
        seeds = self.unique("seed") if seeds is None else list(seeds)
        col, values = self.columns.get("seed", np.array([])), self.columns.get("value")
        out = np.full(len(seeds), np.nan)
        for i, seed in enumerate(seeds):
            mine = values[col == float(seed)] if values is not None else np.array([])
            mine = mine[np.isfinite(mine)]
            if mine.size:
                out[i] = np.median(mine)
        return out

    def per_seed_series(self, along: str, seeds=None) -> tuple[np.ndarray, np.ndarray]:
        """``(points, values)`` with ``values[s, i]`` the median over the other columns of
        seed ``s``'s rows at ``points[i]`` of ``along`` (e.g. a time series per lag reduced
        to one value per lag); NaN where missing."""
        points = np.array(self.unique(along))
        seeds = self.unique("seed") if seeds is None else list(seeds)
        out = np.full((len(seeds), len(points)), np.nan)
        for j, point in enumerate(points):
            out[:, j] = self.select(**{along: point}).per_seed(seeds)
        return points, out
