"""Figures of the ``profiles`` experiment (claims C1–C3) and of the schedule and momentum
analogies. Every curve is the median across seeds with the IQR as a band; series are told
apart by line style and marker so the figures read in grey-scale.

Figures: ``profiles_profile`` (per cell and checkpoint: the sensitivity profile with both
predictors' fitted and zeroth-order predictions), ``profiles_heatmap`` (lag × checkpoint,
median and IQR of the profile), ``profiles_fit`` (slope ``s`` and ``R²`` over training),
``profiles_rate_dispersion`` (across-neuron CV of the effective rates, and their envelope),
``analogy_schedule`` and ``analogy_momentum``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from functools import partial
from pathlib import Path

import numpy as np

from .. import metrics as M
from ..results import ResultsTable
from .analogies import kernel, leak_alpha, step_size
from .profiles_verdicts import CONTROL, PROFILE_CELLS
from .style import (
    band,
    bands,
    figure,
    heatmap,
    legend,
    log_if_wide,
    reference_line,
    save_all,
    styles_for,
)

PREDICTION_METRICS = ((M.PREDICTED_PROFILE, "fitted"), (M.ZEROTH_ORDER_PROFILE, "zeroth order"))


def cells_of(table: ResultsTable, metric: str) -> list[str]:
    """Cells with rows of ``metric``: the paper's cells first, then any others."""
    have = table.select(metric=metric).unique("cell")
    return [c for c in PROFILE_CELLS if c in have] + [c for c in have if c not in PROFILE_CELLS]


def draw_profiles(table: ResultsTable):
    """Per cell (rows) and checkpoint (columns): the measured profile and every prediction."""
    cells, steps = cells_of(table, M.SENSITIVITY_PROFILE), table.checkpoints(M.SENSITIVITY_PROFILE)
    if not cells:
        return None
    predictors = table.select(metric=M.PREDICTED_PROFILE).unique("predictor")
    labels = ["measured μ̃_eff"] + [f"{name}, {p}" for _, name in PREDICTION_METRICS
                                   for p in predictors]
    styles = styles_for(labels)
    fig, axes = figure(len(steps), len(cells), width=3.4, height=2.7, layout="constrained")
    for i, cell in enumerate(cells):
        for j, step in enumerate(steps):
            at = table.select(cell=cell, step=step)
            series = {labels[0]: at.select(metric=M.SENSITIVITY_PROFILE)}
            series |= {f"{name}, {p}": at.select(metric=metric, predictor=p)
                       for metric, name in PREDICTION_METRICS for p in predictors}
            ax = axes[i, j]
            bands(ax, series, "lag", styles, log=True)
            ax.set_title(f"{cell}, step {step:g}", fontsize=8)
            ax.set_xlabel("lag ℓ")
    for ax in axes[:, 0]:
        ax.set_ylabel("μ̃_eff(ℓ) (normalised at ℓ=1)")
    legend(axes[0, 0])
    return fig


def log_profile_quartiles(rows: ResultsTable, lags: np.ndarray) -> np.ndarray:
    """``(3, len(lags))`` quartiles across seeds of ``log10 μ̃`` (NaN where missing)."""
    out = np.full((3, len(lags)), np.nan)
    points, values = rows.by_seed("lag")
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(np.where(values > 0, values, np.nan))
    for k, lag in enumerate(points):
        col = logs[:, k][np.isfinite(logs[:, k])]
        if col.size:
            out[:, np.searchsorted(lags, lag)] = np.percentile(col, [25, 50, 75])
    return out


def draw_heatmap(table: ResultsTable):
    """Lag × checkpoint of the median profile per cell (top) and its IQR across seeds in
    decades (bottom)."""
    rows = table.select(metric=M.SENSITIVITY_PROFILE)
    cells, steps, lags = cells_of(table, M.SENSITIVITY_PROFILE), rows.checkpoints(), \
        np.array(rows.unique("lag"))
    if not cells:
        return None
    fig, axes = figure(len(cells), 2, width=4.0, height=3.2, layout="constrained")
    for j, cell in enumerate(cells):
        q = np.stack([log_profile_quartiles(rows.select(cell=cell, step=s), lags)
                      for s in steps], axis=-1)  # (3, lags, steps)
        n = len(rows.select(cell=cell).unique("seed"))
        heatmap(fig, axes[0, j], q[1], steps, lags, "median log₁₀ μ̃_eff")
        heatmap(fig, axes[1, j], q[2] - q[0], steps, lags, "IQR of log₁₀ μ̃_eff (decades)",
                cmap="gray_r")
        axes[0, j].set_title(f"{cell}: median over {n} seeds", fontsize=8)
        axes[1, j].set_title(f"{cell}: spread across seeds", fontsize=8)
        for ax in axes[:, j]:
            ax.set_xlabel("checkpoint (training step)")
            ax.set_ylabel("lag ℓ")
    return fig


def draw_fit(table: ResultsTable):
    """The fitted power ``s`` and its ``R²`` over training, per cell and predictor."""
    cells = cells_of(table, M.FIT_SLOPE)
    if not cells:
        return None
    predictors = table.select(metric=M.FIT_SLOPE).unique("predictor")
    keys = [f"{c}, {p}" for c in cells for p in predictors]
    styles = styles_for(keys)
    fig, axes = figure(2, layout="constrained")
    for ax, metric, label in ((axes[0, 0], M.FIT_SLOPE, "fitted power s"),
                              (axes[0, 1], M.FIT_R2, "R² of the fit")):
        bands(ax, {f"{c}, {p}": table.select(cell=c, predictor=p, metric=metric)
                   for c in cells for p in predictors}, "step", styles)
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
    legend(axes[0, 0])
    legend(axes[0, 1])
    return fig


def draw_rate_dispersion(table: ResultsTable):
    """At the last checkpoint, per cell against lag: the across-neuron CV of ``μ⁰`` and of
    ``μ`` (first order), and the envelope ``f(ℓ)``."""
    panels = ((M.RATE_CV_ORDER0, "across-neuron CV of μ⁰ (zeroth order)"),
              (M.RATE_CV_ORDER1, "across-neuron CV of μ (first order)"),
              (M.ENVELOPE, "envelope f(ℓ) = mean |μ|"))
    cells = cells_of(table, M.RATE_CV_ORDER1)
    if not cells:
        return None
    step = table.checkpoints(M.RATE_CV_ORDER1)[-1]
    styles = styles_for(cells)
    fig, axes = figure(len(panels), layout="constrained")
    for ax, (metric, label) in zip(axes[0], panels, strict=True):
        series = {c: table.select(cell=c, metric=metric, step=step) for c in cells}
        bands(ax, series, "lag", styles)
        log_if_wide(ax, table.select(metric=metric, step=step).columns["value"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("lag ℓ")
        ax.set_ylabel(label)
        ax.set_title(f"step {step:g}", fontsize=8)
        legend(ax)
    return fig


def draw_schedule(table: ResultsTable, lr=None):
    """scalar_gate's implied global multiplier ``η μ⁰_{t,ℓ}`` along ``t``: one panel per lag,
    one line per checkpoint."""
    rows = table.select(cell="scalar_gate", metric=M.SCHEDULE_MULTIPLIER)
    if not len(rows):
        return None
    lags, steps = rows.unique("lag"), rows.checkpoints()
    labels = [f"step {s:g}" for s in steps]
    styles = styles_for(labels)
    eta = step_size(table, lr)
    fig, axes = figure(len(lags), width=3.4, layout="constrained")
    for ax, lag in zip(axes[0], lags, strict=True):
        at = rows.select(lag=lag)
        bands(ax, {label: at.select(step=s) for label, s in zip(labels, steps, strict=True)},
              "time", styles)
        log_if_wide(ax, at.columns["value"], decades=1)
        ax.set_title(f"scalar_gate, ℓ = {lag:g}", fontsize=8)
        ax.set_xlabel("end time t")
    if eta:
        reference_line(axes[0, 0], eta, f"fixed step η = {eta:.3g}")
    axes[0, 0].set_ylabel("implied step η μ⁰_(t,ℓ)")
    legend(axes[0, 0])
    return fig


def draw_momentum(table: ResultsTable, alpha=None, lr=None, *, gated: Collection[str]):
    """Left: leaky's kernel ``(1-α)^ℓ``, heavy-ball's ``β^ℓ`` (``β = 1-α``) and each cell's
    measured kernel ``mean μ⁰(ℓ)``. Right: the retention ``β_t`` along time of the cells in
    ``gated`` (the gated cells) at the first and last checkpoint, with leaky's constant
    ``β``."""
    if not len(table.select(metric=M.RETENTION_MEAN)):
        return None
    alpha, eta = leak_alpha(table, alpha), step_size(table, lr, alpha)
    fig, axes = figure(2, width=4.6, layout="constrained")
    ax = axes[0, 0]
    cells = cells_of(table, M.SCHEDULE_MULTIPLIER)
    styles = styles_for(cells)
    lag_max = max(table.select(metric=M.SCHEDULE_MULTIPLIER).unique("lag"), default=20)
    if alpha is not None:
        ell = np.arange(int(lag_max) + 1)
        ax.plot(ell, (1 - alpha) ** ell, color="0.6", linewidth=4.0, alpha=0.5,
                label=f"leaky (1-α)^ℓ, α = {alpha:.3g}")
        ax.plot(ell[::2], (1 - alpha) ** ell[::2], linestyle="none", marker="x", color="0.3",
                label=f"heavy-ball β^ℓ, β = {1 - alpha:.3g}")
    last = table.checkpoints(M.SCHEDULE_MULTIPLIER)[-1:]
    for cell, step in ((c, s) for c in cells for s in last):
        lags, values = kernel(table, cell, step, eta)
        band(ax, lags, values, f"{cell} measured mean μ⁰ (step {step:g})", styles[cell])
    ax.set_yscale("log")
    ax.set_xlabel("lag ℓ")
    ax.set_ylabel("weight of the lag-ℓ gradient" + ("" if eta else " (× η, η unknown)"))
    legend(ax)
    ax = axes[0, 1]
    rows = table.select(metric=M.RETENTION_MEAN)
    shown = [c for c in cells_of(table, M.RETENTION_MEAN) if c in gated]
    steps = rows.checkpoints()
    ends = sorted({steps[0], steps[-1]})
    keys = [(c, s) for c in shown for s in ends]
    labels = {k: f"{k[0]} β_t, step {k[1]:g}" for k in keys}
    bands(ax, {labels[k]: rows.select(cell=k[0], step=k[1]) for k in keys}, "time",
          styles_for(labels.values()))
    if alpha is not None:
        reference_line(ax, 1 - alpha, f"{CONTROL} β = 1-α = {1 - alpha:.3g}")
    ax.set_xlabel("time t")
    ax.set_ylabel("retention β_t = mean(1-g_t)")
    legend(ax)
    return fig


def profiles_figures(table: ResultsTable, out: Path, alpha: float | None = None,
                     lr: float | Mapping | None = None, *,
                     gated: Collection[str]) -> dict[str, list[Path]]:
    """Draw every profiles figure that the table has rows for.

    Args:
        table: the profiles experiment's results.
        out: folder for the PNG and PDF files.
        alpha: leaky's ``α`` of the run (default: measured from leaky's retention).
        lr: the run's ``lr`` setting (default: estimated from leaky's implied multiplier).
        gated: the names of the cells with a learned gate (whose class has
            ``gated = True``).

    Returns:
        ``{name: [png, pdf]}``.
    """
    draws: dict[str, Callable[[ResultsTable], object]] = {
        "profiles_profile": draw_profiles,
        "profiles_heatmap": draw_heatmap,
        "profiles_fit": draw_fit,
        "profiles_rate_dispersion": draw_rate_dispersion,
        "analogy_schedule": partial(draw_schedule, lr=lr),
        "analogy_momentum": partial(draw_momentum, alpha=alpha, lr=lr, gated=gated),
    }
    return save_all(draws, table, out)
