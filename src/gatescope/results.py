"""The results schema: one tidy row per measurement, its columns and types, reading and
writing ``results.csv``, and the aggregate across seeds that ``summary.json`` and the report
both use.

Columns (``docs/outputs.md``): :data:`RESULT_COLUMNS` in every row, then the axis columns a
metric fills (:data:`gatescope.metrics.AXIS_COLUMNS`: ``eps``, ``level``, ``neuron``,
``predictor``, ``samples``, ``time``), sorted by name; a row that lacks one leaves it empty.

CSV conventions: ``None`` is an empty cell; floats are written with ``repr`` (an exact round
trip, ``nan``/``inf`` included); text columns read back as text, ``value`` as float, other
columns as int, float or text. The numpy view (:class:`ResultsTable`) reads empty numeric
cells as NaN. JSON files (``summary.json``, ``verdicts.json``, markers) write non-finite
numbers as ``null`` (:func:`gatescope.atomic.atomic_write_json`).

This module needs numpy only, so reporting can read results without the experiment layer.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The columns every results row has; metrics with axes add their columns.
RESULT_COLUMNS = ("experiment", "task", "cell", "optimizer", "seed", "step", "metric", "lag",
                  "value")
#: Columns always read back as text.
TEXT_COLUMNS = ("experiment", "task", "cell", "optimizer", "metric", "predictor")
#: Columns the numpy view holds as floats (NaN where empty).
NUMERIC_COLUMNS = ("seed", "step", "lag", "value", "eps", "time", "neuron", "level",
                   "samples")
#: Columns that, with the metric, identify one quantity measured on every seed (``time``
#: series are per-step data for figures and are not aggregated).
KEY_COLUMNS = ("task", "cell", "optimizer", "step", "metric", "lag", "predictor", "eps",
               "neuron", "level", "samples")


# ---------------------------------------------------------------------- CSV


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_cell(column: str, text: str) -> Any:
    """A CSV cell as its typed value (see the module notes)."""
    if column in TEXT_COLUMNS:
        return text
    if text == "":
        return None
    if column == "value":
        return float(text)
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def columns_of(rows: Iterable[dict[str, Any]]) -> list[str]:
    """``RESULT_COLUMNS`` followed by every other key of ``rows``, sorted."""
    extra = {key for row in rows for key in row} - set(RESULT_COLUMNS)
    return [*RESULT_COLUMNS, *sorted(extra)]


def rows_to_csv(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    """The CSV bytes of ``rows`` under ``columns`` (header first)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_cell(row.get(c)) for c in columns] for row in rows)
    return buf.getvalue().encode()


def read_table(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """``(header, body)`` of a CSV file as text cells."""
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    return (lines[0], lines[1:]) if lines else ([], [])


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a results CSV with typed values (see the module notes)."""
    header, body = read_table(path)
    return [{c: parse_cell(c, v) for c, v in zip(header, row, strict=True)} for row in body]


# ---------------------------------------------------------------------- across seeds


@dataclass(frozen=True)
class Spread:
    """Median and interquartile range across seeds (non-finite values left out).

    Attributes:
        median, q25, q75: numpy's linearly interpolated percentiles 50, 25, 75.
        n: how many finite values they summarise.
    """

    median: float
    q25: float
    q75: float
    n: int

    @classmethod
    def of(cls, values) -> Spread:
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        q25, med, q75 = np.percentile(v, [25, 50, 75])
        return cls(float(med), float(q25), float(q75), int(v.size))

    @property
    def iqr(self) -> float:
        """Width of the interquartile range, ``q75 - q25``."""
        return self.q75 - self.q25

    def __str__(self) -> str:
        return f"{self.median:.3g} [IQR {self.q25:.3g}–{self.q75:.3g}, n={self.n}]"


def seed_aggregates(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:class:`Spread` across seeds of every quantity (rows with a ``time`` are left out).

    Returns:
        One dict per quantity: its :data:`KEY_COLUMNS` that are set, ``median``, ``q25``,
        ``q75``, ``n`` (finite values) and ``seeds`` (rows).
    """
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        if row.get("time") in (None, ""):
            groups[tuple(row.get(c) for c in KEY_COLUMNS)].append(float(row["value"]))
    out = []
    for key, values in groups.items():
        entry = {c: k for c, k in zip(KEY_COLUMNS, key, strict=True) if k not in (None, "")}
        s = Spread.of(values)
        entry.update(median=s.median, q25=s.q25, q75=s.q75, n=s.n, seeds=len(values))
        out.append(entry)
    return out


# ---------------------------------------------------------------------- numpy view


class ResultsTable:
    """Columns of a results table, each a numpy array of equal length: numeric columns as
    float (NaN where empty), the others as text; selections return smaller tables, and
    :meth:`by_seed` turns a selection into a ``(seeds, points)`` array so every figure and
    verdict shows the spread across seeds."""

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        self.columns = columns

    @classmethod
    def read_csv(cls, path: str | Path) -> ResultsTable:
        header, body = read_table(path)
        return cls.from_rows([dict(zip(header, row, strict=True)) for row in body], header)

    @classmethod
    def from_rows(cls, rows: list[dict], names: list[str] | None = None) -> ResultsTable:
        names = names or sorted({k for r in rows for k in r})
        cols = {}
        for name in names:
            raw = [r.get(name) for r in rows]
            if name in NUMERIC_COLUMNS:
                cols[name] = np.array([np.nan if v in (None, "") else float(v) for v in raw])
            else:
                cols[name] = np.array(["" if v is None else str(v) for v in raw], dtype=object)
        return cls(cols)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def select(self, **conditions) -> ResultsTable:
        """Rows where every ``column == value`` (numeric columns compare as floats, others
        as text, so a declared :class:`~gatescope.metrics.Metric` selects by its name)."""
        keep = np.ones(len(self), dtype=bool)
        for name, value in conditions.items():
            if name not in self.columns:
                return ResultsTable({k: v[:0] for k, v in self.columns.items()})
            col = self.columns[name]
            keep &= (col == float(value)) if name in NUMERIC_COLUMNS else (col == str(value))
        return ResultsTable({k: v[keep] for k, v in self.columns.items()})

    def unique(self, column: str) -> list:
        """Sorted distinct values of a column (NaN dropped)."""
        col = self.columns.get(column, np.array([]))
        if column in NUMERIC_COLUMNS:
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
        """:class:`Spread` of the ``value`` column (one value per seed expected)."""
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
