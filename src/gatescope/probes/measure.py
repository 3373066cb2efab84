"""Compute a list of quantities on one context: the one road every measured number takes,
whether a :class:`~gatescope.Probe` keeps it as an array or an experiment writes it as rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .context import ProbeContext
from .registry import Quantity, SkipQuantity


def as_array(key: str, value: Any) -> np.ndarray:
    """A recorded value as a float64 numpy array on the CPU (always a copy)."""
    if isinstance(value, Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    try:
        return np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"quantity value {key!r} is not numeric: {value!r}") from None


def measure(ctx: ProbeContext, quantities: Sequence[Quantity]
            ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every quantity on ``ctx``, under ``torch.no_grad()``.

    Returns:
        ``({metric name: array}, {quantity name: why it was skipped})``; each array has one
        dimension per axis of its declared metric.

    Raises:
        ValueError: a quantity returned a metric it does not declare, or an array whose
            dimensions do not match the metric's axes.
    """
    record, skipped = {}, {}
    with torch.no_grad():
        for quantity in quantities:
            try:
                values = quantity.function(ctx)
            except SkipQuantity as reason:
                skipped[quantity.name] = str(reason)
                continue
            for name, value in values.items():
                metric = quantity.metric(name)
                array = as_array(name, value)
                if array.ndim != len(metric.axes):
                    raise ValueError(f"quantity {quantity.name!r}: {name!r} has shape "
                                     f"{array.shape}, but its axes are {metric.axes}")
                record[name] = array
    return record, skipped
