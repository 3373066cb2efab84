"""Shared figure style: readable in grey-scale (line styles and markers carry identity, not
colour alone), spread across seeds as a band, and every figure saved as PNG and PDF."""

from __future__ import annotations

import os
import tempfile
from itertools import cycle
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "x")
COLOURS = ("0.0", "0.35", "0.6", "#1f77b4", "#d62728", "#2ca02c")


def series_styles():
    """An endless supply of distinct (colour, linestyle, marker) triples."""
    return cycle(zip(COLOURS, LINESTYLES * 2, MARKERS, strict=False))


def band(ax, x, values, label, style, log=False):
    """Median across seeds as a line and the IQR as a shaded band.

    Args:
        x: ``(P,)`` points.
        values: ``(seeds, P)``.
    """
    colour, linestyle, marker = style
    with np.errstate(all="ignore"):
        q25, med, q75 = np.nanpercentile(values, [25, 50, 75], axis=0)
    n = values.shape[0]
    ax.plot(x, med, color=colour, linestyle=linestyle, marker=marker, markersize=3,
            label=f"{label} (median, n={n})")
    ax.fill_between(x, q25, q75, color=colour, alpha=0.2, linewidth=0)
    if log:
        ax.set_yscale("log")


def save(fig, out: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically into ``out``; close the figure."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        target = out / f"{stem}.{ext}"
        fd, tmp = tempfile.mkstemp(dir=out, suffix=f".{ext}")
        os.close(fd)
        fig.savefig(tmp, dpi=130 if ext == "png" else None, bbox_inches="tight", format=ext)
        os.replace(tmp, target)
        paths.append(target)
    plt.close(fig)
    return paths


def figure(ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.2):
    """A figure with a grid of axes (always a 2-D array)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             squeeze=False)
    return fig, axes
