"""The report of a ``families`` run (docs/experiments.md#families), from its ``results.csv``.

Per model (family × layers) and optimizer, at the last checkpoint: the sensitivity profile
``μ̃(ℓ)`` (a figure, median and IQR over seeds), its value at the reference lag ``ℓ*`` (half
the longest lag: the smaller, the faster the profile decays), the fitted power ``s`` of the
profile on the retention product, the first-order rate CV across channels at the largest
rate lag, the gradient covariance's ``AI_r`` and ``CE_r``, and the final training loss; each
as median [q25, q75] over seeds. The findings compare these medians and say where the
quartile ranges overlap (a difference that the seeds do not separate).
"""

from __future__ import annotations

from pathlib import Path

from .. import metrics as M
from ..results import ResultsTable, Spread
from .report import Section, write_report
from .style import band, figure, save, series_styles

#: The predictor whose fitted power the report shows (the retention product).
PREDICTOR = "retention"
#: The families whose cells have a learned, data-dependent update gate (their cells'
#: ``gated`` flag; reporting reads results only, so it names them): ``leaky`` and ``lru``
#: retain at fixed (learned, input-independent) rates.
GATED = ("gru", "lstm", "min_gru", "mamba")


def _spread(table: ResultsTable) -> Spread:
    return Spread.of(table.per_seed())


def _text(s: Spread) -> str:
    return f"{s.median:.3g} [{s.q25:.3g}, {s.q75:.3g}]" if s.n else "n/a"


def _separated(a: Spread, b: Spread) -> bool:
    """Whether two quartile ranges do not overlap."""
    return bool(a.n and b.n and (a.q75 < b.q25 or b.q75 < a.q25))


def _model(cell: str) -> tuple[str, int]:
    family, _, layers = cell.rpartition(".L")
    return family, int(layers)


class _Stats:
    """The report's numbers, per ``(cell, optimizer)``, at the last checkpoint."""

    def __init__(self, table: ResultsTable) -> None:
        self.table = table
        prof = table.select(metric=M.SENSITIVITY_PROFILE)
        self.step = max(prof.checkpoints()) if len(prof) else 0.0
        lags = prof.unique("lag")
        self.ref_lag = int(max(lags) // 2) if lags else 1
        rate_lags = table.select(metric=M.RATE_CV_ORDER1).unique("lag")
        self.rate_lag = int(max(rate_lags)) if rate_lags else 1

    def at(self, cell: str, optimizer: str, metric, **extra) -> Spread:
        return _spread(self.table.select(cell=cell, optimizer=optimizer, metric=metric,
                                         step=self.step, **extra))

    def decay(self, cell: str, optimizer: str) -> Spread:
        return self.at(cell, optimizer, M.SENSITIVITY_PROFILE, lag=self.ref_lag)

    def loss(self, cell: str, optimizer: str) -> Spread:
        last = max(self.table.select(cell=cell, optimizer=optimizer, metric=M.LOSS)
                   .unique("step"), default=0.0)
        return _spread(self.table.select(cell=cell, optimizer=optimizer, metric=M.LOSS,
                                         step=last))

    def line(self, cell: str, optimizer: str) -> str:
        family, layers = _model(cell)
        return (f"{family}, {layers} layer(s), {optimizer}: μ̃({self.ref_lag}) "
                f"{_text(self.decay(cell, optimizer))}; fitted power s "
                f"{_text(self.at(cell, optimizer, M.FIT_SLOPE, predictor=PREDICTOR))} (R² "
                f"{_text(self.at(cell, optimizer, M.FIT_R2, predictor=PREDICTOR))}); rate CV "
                f"at ℓ={self.rate_lag} "
                f"{_text(self.at(cell, optimizer, M.RATE_CV_ORDER1, lag=self.rate_lag))}; "
                f"gradient AI_r {_text(self.at(cell, optimizer, M.GRADCOV_AI))}, CE_r "
                f"{_text(self.at(cell, optimizer, M.GRADCOV_CE))}; final training loss "
                f"{_text(self.loss(cell, optimizer))}")


def _compare(what: str, pairs: list[tuple[str, Spread, Spread]], first: str, second: str
             ) -> str:
    """How often ``second``'s median is below and above ``first``'s, each with the models
    whose quartile ranges over seeds do not overlap."""
    valid = [(name, a, b) for name, a, b in pairs if a.n and b.n]

    def side(below: bool) -> str:
        names = [n for n, a, b in valid if (b.median < a.median) == below]
        apart = [n for n, a, b in valid if (b.median < a.median) == below and _separated(a, b)]
        return (f"{'lower' if below else 'not lower'} in {len(names)} "
                f"({', '.join(names) or 'none'}; quartile ranges apart in {len(apart)}: "
                f"{', '.join(apart) or 'none'})")

    return f"{what}: of {len(valid)} models, {second} is {side(True)}; {side(False)}"


def findings(stats: _Stats, cells: list[str], optimizers: list[str]) -> list[str]:
    """The measured findings, each a comparison of medians with its seed spread."""
    out = []
    for opt in optimizers:
        ranked = sorted((c for c in cells if stats.decay(c, opt).n),
                        key=lambda c: stats.decay(c, opt).median)
        if ranked:
            out.append(f"{opt}: profiles by μ̃({stats.ref_lag}), fastest decay first: "
                       + ", ".join(f"{c} {stats.decay(c, opt).median:.3g}" for c in ranked))
    if {"sgd", "adam"} <= set(optimizers):
        out.append(_compare("gradient AI_r, Adam against SGD",
                            [(c, stats.at(c, "sgd", M.GRADCOV_AI),
                              stats.at(c, "adam", M.GRADCOV_AI)) for c in cells],
                            "sgd", "adam"))
    pairs = []
    for cell in cells:
        family, layers = _model(cell)
        if layers == 2 and f"{family}.L1" in cells:
            for opt in optimizers:
                pairs.append((f"{family}/{opt}", f"{family}.L1", cell, opt))
    if pairs:
        out.append(_compare(f"μ̃({stats.ref_lag}), 2 layers against 1",
                            [(n, stats.decay(a, o), stats.decay(b, o)) for n, a, b, o in pairs],
                            "1 layer", "2 layers"))
        out.append(_compare("gradient AI_r, 2 layers against 1",
                            [(n, stats.at(a, o, M.GRADCOV_AI), stats.at(b, o, M.GRADCOV_AI))
                             for n, a, b, o in pairs], "1 layer", "2 layers"))
    leaky = [c for c in cells if _model(c)[0] == "leaky"]
    for cell in leaky:
        for opt in optimizers:
            base = stats.at(cell, opt, M.RATE_CV_ORDER1, lag=stats.rate_lag)
            gated = [c for c in cells if _model(c)[1] == _model(cell)[1]
                     and _model(c)[0] in GATED]
            below = [c for c in gated if stats.at(c, opt, M.RATE_CV_ORDER1,
                                                   lag=stats.rate_lag).median <= base.median]
            out.append(
                f"the paper expects gates to disperse effective rates across channels more "
                f"than an ungated cell; {opt}, {_model(cell)[1]} layer(s): {len(below)} of "
                f"{len(gated)} gated families have a rate CV at ℓ={stats.rate_lag} at or below "
                f"the leaky cell's {base.median:.3g}"
                + (f" ({', '.join(below)}), contrary to that expectation" if below else ""))
    return out


def profile_figure(stats: _Stats, cells: list[str], optimizers: list[str], out: Path
                   ) -> list[Path]:
    """One panel per family: ``μ̃(ℓ)`` at the last checkpoint per layers × optimizer."""
    families = list(dict.fromkeys(_model(c)[0] for c in cells))
    fig, axes = figure(min(3, len(families)), -(-len(families) // 3), layout="constrained")
    for ax, family in zip(axes.flat, families, strict=False):
        mine = [c for c in cells if _model(c)[0] == family]
        keys = [(c, o) for c in mine for o in optimizers]
        for (cell, opt), style in zip(keys, series_styles(), strict=False):
            sel = stats.table.select(cell=cell, optimizer=opt, metric=M.SENSITIVITY_PROFILE,
                                     step=stats.step)
            lags, values = sel.by_seed("lag")
            band(ax, lags, values, f"L{_model(cell)[1]} {opt}", style, log=True)
        ax.set_title(family)
        ax.set_xlabel("lag ℓ")
        ax.set_ylabel("μ̃(ℓ)")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(families):]:
        ax.set_visible(False)
    return save(fig, out, "families_profiles")


def families_section(table: ResultsTable, out: Path) -> tuple[Section, dict[str, Path]]:
    """The report section of a ``families`` run and its figure (``{name: png}``)."""
    stats = _Stats(table)
    cells = sorted(table.unique("cell"), key=lambda c: (_model(c)[0], _model(c)[1]))
    optimizers = table.unique("optimizer")
    paths = profile_figure(stats, cells, optimizers, out / "figures")
    seeds = len(table.unique("seed"))
    lines = [f"At training step {stats.step:g}, medians [q25, q75] over {seeds} seeds; μ̃(ℓ*) "
             f"at ℓ* = {stats.ref_lag} (smaller: faster decay); s the fitted power of the "
             f"profile on the {PREDICTOR} product."]
    lines += [stats.line(c, o) for c in cells for o in optimizers]
    lines += [f"Finding: {f}" for f in findings(stats, cells, optimizers)]
    section = Section("Gate coupling across model families", lines, ["families_profiles"])
    return section, {"families_profiles": paths[0]}


def write_families_report(out: Path) -> tuple[Path, Path, Path]:
    """``REPORT.md`` and ``report.html`` of the ``families`` run in ``out``."""
    table = ResultsTable.read_csv(out / "results.csv")
    section, figures = families_section(table, out)
    intro = ["Where the paper's coupling lives in the gated recurrences trained today: "
             "the §VII-A sensitivity profile, the effective-rate dispersion across channels "
             "and the gradient-covariance anisotropy per family, layers and optimizer, as "
             "measured (docs/experiments.md#families)."]
    return write_report(out, "gatescope families", intro, [], [section], figures)
