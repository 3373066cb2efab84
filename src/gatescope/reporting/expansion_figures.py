"""Figures of the ``expansion`` experiment: truncation error and ``C_2`` against ``ε``, and
the per-step correction ratios ``ρ_j`` (histogram and time series), each with seed spread."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import metrics as M
from ..results import ResultsTable
from .style import band, figure, save, series_styles


def expansion_figures(table: ResultsTable, out: Path) -> dict[str, list[Path]]:
    """Draw every expansion figure; returns ``{name: [png, pdf]}``."""
    cells = table.unique("cell")
    figs = {}

    fig, axes = figure(2)
    for cell, style in zip(cells, series_styles(), strict=False):
        for ax, metric in zip(axes[0], (M.TRUNCATION_ERROR, M.REMAINDER_C2), strict=True):
            eps, vals = table.select(cell=cell, metric=metric).by_seed("eps")
            band(ax, eps, vals, cell, style, log=True)
            ax.set_xscale("log")
            ax.set_xlabel("ε")
    eps = np.array(table.unique("eps"))
    if eps.size:
        ref = table.select(metric=M.TRUNCATION_ERROR).by_seed("eps")[1]
        anchor = np.nanmedian(ref[:, 0]) if ref.size else 1.0
        axes[0, 0].plot(eps, anchor * (eps / eps[0]) ** 2, color="0.5", linewidth=0.8,
                        linestyle=(0, (1, 3)), label="slope 2")
    axes[0, 0].set_ylabel("E(ε) = ‖F(ε) − F(0) − εL‖_F")
    axes[0, 1].set_ylabel("C₂(ε) = E(ε)/ε²")
    for ax in axes[0]:
        ax.legend(fontsize=7)
    figs["expansion_error"] = save(fig, out, "expansion_error")

    fig, axes = figure(2)
    for cell, style in zip(cells, series_styles(), strict=False):
        sel = table.select(cell=cell, metric=M.CORRECTION_RATIO)
        colour, linestyle, _ = style
        axes[0, 0].hist(sel.columns["value"], bins=40, histtype="step", color=colour,
                        linestyle=linestyle, label=cell)
        time, vals = sel.by_seed("time")
        band(axes[0, 1], time, vals, cell, style)
    axes[0, 0].set_xlabel("ρ_j = ‖B_j‖₂ / ‖A_j‖₂ (all seeds, all steps)")
    axes[0, 0].set_ylabel("count")
    axes[0, 1].set_xlabel("step j")
    axes[0, 1].set_ylabel("ρ_j")
    for ax in axes[0]:
        ax.legend(fontsize=7)
    figs["expansion_ratios"] = save(fig, out, "expansion_ratios")
    return figs
