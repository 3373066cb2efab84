"""Figures of the ``anisotropy`` experiment (claims C4–C7) and of the Adam analogy.

One series per arm (``cell+optimizer``), drawn in the same style in every figure; curves are
medians across seeds with the IQR as a band, bars are medians with IQR error bars. Unless a
title says otherwise, a figure shows the last checkpoint.

Figures: ``anisotropy_jacobian`` (Jacobian-product AI and CE against lag, per task),
``anisotropy_gradcov`` (gradient-covariance AI and CE per task and arm),
``anisotropy_gradcov_training`` (the same over checkpoints), ``anisotropy_alignment``
(``a_r`` against lag with the ``r/N`` baseline) and ``analogy_adam`` (gate-induced rate
dispersion beside Adam's per-parameter step dispersion).
"""

from __future__ import annotations

from pathlib import Path

from .. import metrics as M
from ..results import ResultsTable, Spread
from .anisotropy_verdicts import arm_name, last_step
from .style import (
    bands,
    figure,
    grouped_bars,
    legend,
    reference_line,
    save_all,
    styles_for,
)


def arm_series(table: ResultsTable, task: str, metric: str, arms, step: float | None = None
               ) -> dict[str, ResultsTable]:
    """``{arm name: rows}`` of one task and metric (at ``step`` if given)."""
    at = {} if step is None else {"step": step}
    return {arm_name(a): table.select(task=task, cell=a[0], optimizer=a[1], metric=metric,
                                      **at) for a in arms}


def spread_of(table: ResultsTable, task: str, arm, metric: str, step: float) -> Spread:
    """Spread across seeds of one task, arm and metric (per-lag metrics: per-seed median
    over lags)."""
    return Spread.of(table.select(task=task, cell=arm[0], optimizer=arm[1], metric=metric,
                                  step=step).per_seed())


def lag_panels(table: ResultsTable, metrics: list[tuple[str, str, bool]], styles: dict):
    """Rows: tasks; columns: ``metrics`` ``(metric, label, log)`` against lag at the last
    checkpoint, one band per arm with rows of the metric.

    Returns:
        ``(fig, axes, tasks, step)``, or None when the first metric has no rows.
    """
    first = metrics[0][0]
    tasks, step = table.select(metric=first).unique("task"), last_step(table, first)
    if step is None:
        return None
    fig, axes = figure(len(metrics), len(tasks), layout="constrained")
    for i, task in enumerate(tasks):
        for j, (metric, label, log) in enumerate(metrics):
            ax = axes[i, j]
            arms = table.select(metric=metric).combos("cell", "optimizer")
            bands(ax, arm_series(table, task, metric, arms, step), "lag", styles, log=log)
            ax.set_title(f"{task}, step {step:g}", fontsize=8)
            ax.set_xlabel("lag ℓ")
            ax.set_ylabel(label)
        legend(axes[i, 0])
    return fig, axes, tasks, step


def draw_jacobian(table: ResultsTable, styles: dict):
    """Jacobian-product AI (log) and CE against lag, per task."""
    drawn = lag_panels(table, [(M.JACOBIAN_AI, "Jacobian-product AI_r = σ₁/σ_r", True),
                               (M.JACOBIAN_CE, "Jacobian-product CE_r", False)], styles)
    return None if drawn is None else drawn[0]


def draw_gradcov(table: ResultsTable, styles: dict):
    """Gradient-covariance AI (log) and CE as grouped bars: tasks × arms."""
    step = last_step(table, M.GRADCOV_AI)
    if step is None:
        return None
    tasks = table.select(metric=M.GRADCOV_AI).unique("task")
    fig, axes = figure(2, width=5.0, layout="constrained")
    for ax, metric, label, log in ((axes[0, 0], M.GRADCOV_AI, "gradient-covariance AI_r", True),
                                   (axes[0, 1], M.GRADCOV_CE, "gradient-covariance CE_r", False)):
        arms = table.select(metric=metric).combos("cell", "optimizer")
        grouped_bars(ax, tasks, {arm_name(a): [spread_of(table, t, a, metric, step)
                                               for t in tasks] for a in arms}, log=log)
        ax.set_ylabel(label)
        ax.set_title(f"step {step:g}", fontsize=8)
    legend(axes[0, 0])
    return fig


def draw_gradcov_training(table: ResultsTable, styles: dict):
    """Gradient-covariance AI (log) and CE over the checkpoints, per task and arm."""
    tasks = table.select(metric=M.GRADCOV_AI).unique("task")
    if not tasks:
        return None
    fig, axes = figure(2, len(tasks), layout="constrained")
    for i, task in enumerate(tasks):
        for ax, metric, log in ((axes[i, 0], M.GRADCOV_AI, True),
                                (axes[i, 1], M.GRADCOV_CE, False)):
            arms = table.select(metric=metric).combos("cell", "optimizer")
            bands(ax, arm_series(table, task, metric, arms), "step", styles, log=log)
            ax.set_title(task, fontsize=8)
            ax.set_xlabel("training step")
            ax.set_ylabel(f"gradient-covariance {metric.name.split('_')[1].upper()}_r")
        legend(axes[i, 0])
    return fig


def draw_alignment(table: ResultsTable, styles: dict):
    """Alignment ``a_r`` against lag per arm, with the random baseline ``r/N``."""
    drawn = lag_panels(table, [(M.ALIGNMENT, "alignment a_r = ‖U_rᵀδ_T‖²/‖δ_T‖²", False)],
                       styles)
    if not drawn:
        return None
    fig, axes, tasks, step = drawn
    for i, task in enumerate(tasks):
        base = table.select(task=task, metric=M.ALIGNMENT_BASELINE, step=step).spread()
        reference_line(axes[i, 0], base.median, f"random baseline r/N = {base.median:.3g}")
        legend(axes[i, 0])
    return fig


def draw_adam(table: ResultsTable, styles: dict):
    """Per task: the gated arms' per-neuron rate CV against lag; beside it, per arm, the
    optimizer's per-parameter step CV next to the lag-median gate-rate CV, and the step AI."""
    rate_arms = table.select(metric=M.RATE_CV_ORDER0).combos("cell", "optimizer")
    step = last_step(table, M.STEP_CV)
    if not rate_arms or step is None:
        return None
    tasks = table.select(metric=M.STEP_CV).unique("task")
    arms = table.select(metric=M.STEP_CV).combos("cell", "optimizer")
    groups = [arm_name(a).replace("+", "\n") for a in arms]
    fig, axes = figure(3, len(tasks), layout="constrained")
    for i, task in enumerate(tasks):
        bands(axes[i, 0], arm_series(table, task, M.RATE_CV_ORDER0, rate_arms, step), "lag", styles)
        axes[i, 0].set_xlabel("lag ℓ")
        axes[i, 0].set_ylabel("gate-induced per-neuron rate CV (μ⁰)")
        per_arm = {metric: [spread_of(table, task, a, metric, step) for a in arms]
                   for metric in (M.STEP_CV, M.RATE_CV_ORDER0, M.STEP_AI)}
        grouped_bars(axes[i, 1], groups, {"optimizer step CV, η/(√v̂+ε)": per_arm[M.STEP_CV],
                                          "gate rate CV, median over ℓ": per_arm[M.RATE_CV_ORDER0]})
        axes[i, 1].set_ylabel("coefficient of variation")
        grouped_bars(axes[i, 2], groups, {"optimizer step AI": per_arm[M.STEP_AI]})
        axes[i, 2].set_ylabel("anisotropy index of the step sizes")
        for ax in axes[i]:
            ax.set_title(f"{task}, step {step:g}", fontsize=8)
            legend(ax)
    return fig


def anisotropy_figures(table: ResultsTable, out: Path) -> dict[str, list[Path]]:
    """Draw every anisotropy figure that the table has rows for; returns
    ``{name: [png, pdf]}``."""
    styles = styles_for(arm_name(a) for a in table.combos("cell", "optimizer"))
    draws = {name: (lambda t, d=draw: d(t, styles)) for name, draw in (
        ("anisotropy_jacobian", draw_jacobian),
        ("anisotropy_gradcov", draw_gradcov),
        ("anisotropy_gradcov_training", draw_gradcov_training),
        ("anisotropy_alignment", draw_alignment),
        ("analogy_adam", draw_adam),
    )}
    return save_all(draws, table, out)
