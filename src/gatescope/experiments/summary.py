"""Aggregates across seeds for ``summary.json``: one entry per measured quantity."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

#: Columns that, with the metric, identify one quantity measured on every seed.
KEY_COLUMNS = ("task", "cell", "optimizer", "step", "metric", "lag", "predictor", "eps")


def seed_aggregates(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median, quartiles and count across seeds of every quantity (rows with a ``time``
    column are per-step series for figures and are left out).

    Returns:
        One dict per quantity: its key columns (those present), ``median``, ``q25``,
        ``q75``, ``n`` (finite values) and ``seeds`` (rows).
    """
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        if row.get("time") not in (None, ""):
            continue
        key = tuple(row.get(c) for c in KEY_COLUMNS)
        groups[key].append(float(row["value"]))
    out = []
    for key, values in groups.items():
        finite = [v for v in values if math.isfinite(v)]
        entry = {c: k for c, k in zip(KEY_COLUMNS, key, strict=True) if k not in (None, "")}
        if finite:
            q25, med, q75 = np.percentile(finite, [25, 50, 75]).tolist()
        else:
            q25 = med = q75 = math.nan
        entry.update(median=med, q25=q25, q75=q75, n=len(finite), seeds=len(values))
        out.append(entry)
    return out
