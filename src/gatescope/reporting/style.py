"""Shared figure style: readable in grey-scale (line styles and markers carry identity, not
colour alone), spread across seeds as a band, and every figure saved as PNG and PDF."""

from __future__ import annotations

from itertools import cycle
from pathlib import Path

import matplotlib

from ..atomic import atomic_write

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "x")
COLOURS = ("0.0", "0.35", "0.6", "#1f77b4", "#d62728", "#2ca02c")


def series_styles():
    """An endless supply of distinct (colour, linestyle, marker) triples."""
    return cycle(zip(COLOURS, LINESTYLES * 2, MARKERS, strict=False))


def band(ax, x, values, label, style, log=False, markevery=None):
    """Median across seeds as a line and the IQR as a shaded band.

    Args:
        x: ``(P,)`` points.
        values: ``(seeds, P)``; nothing is drawn when it is empty.
        markevery: passed to ``ax.plot`` (thin the markers of long series).
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0 or not np.isfinite(values).any():
        return
    colour, linestyle, marker = style
    q25, med, q75 = _quartiles(values)
    n = values.shape[0]
    ax.plot(x, med, color=colour, linestyle=linestyle, marker=marker, markersize=3,
            markevery=markevery, label=f"{label} (median, n={n})")
    ax.fill_between(x, q25, q75, color=colour, alpha=0.2, linewidth=0)
    if log:
        ax.set_yscale("log")


def bands(ax, series: dict, along: str, styles: dict, log: bool = False) -> None:
    """One :func:`band` per series against the column ``along``.

    Args:
        series: ``{label: ResultsTable}``, each a selection with one value per seed and
            point of ``along``.
        styles: ``{label: style}``.
    """
    for label, rows in series.items():
        if len(rows):
            x, values = rows.by_seed(along)
            band(ax, x, values, label, styles[label], log=log,
                 markevery=max(1, len(x) // 12))


def _quartiles(values: np.ndarray) -> np.ndarray:
    """``(3, P)`` 25th, 50th and 75th percentiles over axis 0, NaN for all-NaN columns."""
    out = np.full((3, values.shape[1]), np.nan)
    ok = np.isfinite(values).any(axis=0)
    if ok.any():
        out[:, ok] = np.nanpercentile(values[:, ok], [25, 50, 75], axis=0)
    return out


def save(fig, out: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically into ``out``; close the figure."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        paths.append(atomic_write(out / f"{stem}.{ext}", lambda f, ext=ext: fig.savefig(
            f, dpi=130 if ext == "png" else None, bbox_inches="tight", format=ext)))
    plt.close(fig)
    return paths


def save_all(draws: dict, table, out: Path) -> dict[str, list[Path]]:
    """Call each ``draws[name](table)`` and save the figure it returns (None: nothing to
    draw, skipped); returns ``{name: [png, pdf]}``."""
    figs = {}
    for name, draw in draws.items():
        fig = draw(table)
        if fig is not None:
            figs[name] = save(fig, out, name)
    return figs


def figure(ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.2,
           layout: str | None = None):
    """A figure with a grid of axes (always a 2-D array); ``layout="constrained"`` keeps
    titles, labels and colour bars of many panels from overlapping."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             squeeze=False, layout=layout)
    return fig, axes


HATCHES = ("", "//", "..", "xx", "\\\\", "--")


def styles_for(keys) -> dict:
    """The same (colour, linestyle, marker) for a key in every panel of a figure."""
    return dict(zip(keys, series_styles(), strict=False))


def legend(ax, **kwargs) -> None:
    """A small legend, only where the axes have labelled artists."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=kwargs.pop("fontsize", 6), **kwargs)


def log_if_wide(ax, values, decades: float = 2.0) -> None:
    """Logarithmic y axis where the positive values span at least ``decades`` decades."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size and v.max() >= 10 ** decades * v.min():
        ax.set_yscale("log")


def reference_line(ax, y: float, label: str) -> None:
    """A thin grey dotted horizontal line (a threshold or a baseline)."""
    if np.isfinite(y):
        ax.axhline(y, color="0.4", linewidth=0.8, linestyle=(0, (1, 2)), label=label)


def grouped_bars(ax, groups: list[str], spreads: dict, log: bool = False) -> None:
    """Bars of medians with IQR error bars: one cluster per group, one bar per series.

    Args:
        groups: cluster labels along x.
        spreads: ``{series label: [Spread per group]}``; series are told apart by hatching
            and grey level, so the figure reads in grey-scale.
    """
    width = 0.8 / max(len(spreads), 1)
    x = np.arange(len(groups))
    for i, (label, row) in enumerate(spreads.items()):
        med = np.array([s.median for s in row])
        err = np.array([[s.median - s.q25 for s in row], [s.q75 - s.median for s in row]])
        n = max((s.n for s in row), default=0)
        grey = str(0.25 + 0.6 * i / max(len(spreads) - 1, 1))
        ax.bar(x + (i - (len(spreads) - 1) / 2) * width, med, width, yerr=np.nan_to_num(err),
               capsize=2, color=grey, hatch=HATCHES[i % len(HATCHES)], edgecolor="0.0",
               linewidth=0.5, label=f"{label} (median, IQR, n={n})")
    ax.set_xticks(x, groups, fontsize=7)
    if log:
        ax.set_yscale("log")


def heatmap(fig, ax, z, xlabels, ylabels, label: str, cmap: str = "viridis") -> None:
    """``z[i, j]`` at row ``ylabels[i]`` (bottom up) and column ``xlabels[j]``, with a colour
    bar labelled ``label``. viridis is monotonic in lightness, so it reads in grey-scale."""
    z = np.asarray(z, dtype=float)
    image = ax.imshow(z, origin="lower", aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_xticks(range(len(xlabels)), [f"{v:g}" for v in xlabels], fontsize=7)
    rows = np.unique(np.linspace(0, len(ylabels) - 1, min(8, len(ylabels))).round().astype(int))
    ax.set_yticks(rows, [f"{ylabels[i]:g}" for i in rows], fontsize=7)
    fig.colorbar(image, ax=ax, label=label)
