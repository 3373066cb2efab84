"""The report of ``gatescope inspect``: ``REPORT.md``, a self-contained ``report.html``
(figures embedded as base64 PNG), ``inspect.json`` and one PNG per figure.

Pure rendering of the plain summary :func:`gatescope.inspect` returns (numbers and lists
only). Both documents are built from one list of blocks, so they say the same things.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_write, atomic_write_bytes, atomic_write_json
from .style import figure, plt

TITLE = "gatescope inspect: how the model uses time"


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if math.isinf(x):
            return "∞"
        if math.isnan(x):
            return "NaN"
        return f"{x:.{digits}g}"
    return str(x)


def _save_png(fig, out: Path, stem: str) -> Path:
    path = atomic_write(out / f"{stem}.png", lambda f: fig.savefig(
        f, dpi=120, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def _lags(span: list[int]) -> np.ndarray:
    return np.arange(span[0], span[1] + 1)


def _values(xs) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in xs], dtype=float)


def _positive_curve(span: list[int], values):
    """A figure's axes and the ``(lags, values)`` points a log axis can show (finite and
    positive), or ``None`` when there is none."""
    lags, y = _lags(span), _values(values)
    ok = np.isfinite(y) & (y > 0)
    if not ok.any():
        return None
    fig, ax = figure()
    return fig, ax[0, 0], lags[ok], y[ok]


def _fig_time_scales(unit: dict):
    ts = unit["time_scales"]
    if ts is None or not ts["histogram_counts"]:
        return None
    fig, ax = figure()
    ax = ax[0, 0]
    edges = np.asarray(ts["histogram_log10_edges"])
    ax.bar(edges[:-1], ts["histogram_counts"], width=np.diff(edges), align="edge",
           color="0.4")
    ax.set_xlabel("log10 τ (steps), τ = −1/log r")
    ax.set_ylabel("count of (sequence, step, neuron)")
    ax.set_title(f"{unit['label']}: time-scale spectrum")
    return fig


def _fig_envelope(unit: dict):
    env = unit["envelope"]
    if env is None:
        return None
    curve = _positive_curve(env["lags"], env["values"])
    if curve is None:
        return None
    fig, ax, lags, f = curve
    ax.loglog(lags, f, color="0.0", label="f(ℓ)")
    ax.set_xlabel("lag ℓ")
    ax.set_ylabel("f(ℓ) = mean |μ|")
    ax.set_title(f"{unit['label']}: envelope ({env['fit']['class']})")
    ax.legend(fontsize=7)
    return fig


def _fig_lookback(unit: dict):
    lb = unit["lookback"]
    curve = _positive_curve(lb["lags"], lb["values"])
    if curve is None:
        return None
    fig, ax, lags, g = curve
    ax.semilogy(lags, g, color="0.0", label="‖∂h_T/∂u_{T−ℓ}‖ (RMS)")
    peak = np.nanmax(_values(lb["values"]))
    ax.axhline(lb["horizon_threshold"] * peak, color="0.5", linestyle=":",
               label=f"{lb['horizon_threshold']:g} × peak")
    if lb["horizon"] is not None:
        ax.axvline(lb["horizon"], color="#d62728", linestyle="--",
                   label=f"horizon ℓ = {lb['horizon']}")
    ax.set_xlabel("lag ℓ")
    ax.set_ylabel("norm")
    ax.set_title(f"{unit['label']}: how far back the output looks")
    ax.legend(fontsize=7)
    return fig


def _fig_dispersion(unit: dict):
    disp = unit["dispersion"]
    if disp is None:
        return None
    cv = _values(disp["cv"])
    if not np.isfinite(cv).any():
        return None
    fig, ax = figure()
    ax = ax[0, 0]
    ax.semilogx(disp["lags"], cv, color="0.0", marker="o", markersize=3)
    ax.set_xlabel("lag ℓ")
    ax.set_ylabel("CV of |μ| across neurons (median)")
    ax.set_title(f"{unit['label']}: effective-rate dispersion")
    return fig


def _fig_transport(unit: dict):
    tr = unit.get("transport")
    if tr is None:
        return None
    lags, norms = np.asarray(tr["lags"], dtype=float), _values(tr["norms"])
    ok = np.isfinite(norms) & (norms > 0)
    if not ok.any():
        return None
    fig, ax = figure()
    ax = ax[0, 0]
    ax.loglog(lags[ok], norms[ok], color="0.0", marker="o", markersize=3)
    ax.set_xlabel("lag ℓ")
    ax.set_ylabel("‖M_{t,t−ℓ}‖₂ (median)")
    ax.set_title(f"{unit['label']}: transport sensitivity (matrix-free)")
    return fig


FIGURES = {"time_scales": _fig_time_scales, "envelope": _fig_envelope,
           "lookback": _fig_lookback, "dispersion": _fig_dispersion,
           "transport": _fig_transport}


def _step_size_blocks(steps: dict | None) -> list[tuple]:
    """Mamba's step sizes ``Δ`` (``None``: the cell has none): quantiles over every entry and
    the spread of the channels' medians."""
    if steps is None:
        return []
    medians = _values(steps["per_channel_median"])
    return [("h3", "Step sizes Δ (Mamba)"),
            ("table", ["quantile", *map(_fmt, steps["levels"])],
             [["Δ", *map(_fmt, steps["quantiles"])]]),
            ("li", f"per channel (median over sequences and steps): from "
                   f"{_fmt(float(np.nanmin(medians)))} to {_fmt(float(np.nanmax(medians)))}, "
                   f"median {_fmt(float(np.nanmedian(medians)))} over {medians.size} channels; "
                   "the retention is exp(Δ A), so channels with small Δ keep their state "
                   "longest.")]


def _unit_blocks(unit: dict, figures: dict[str, Path], stem: str) -> list[tuple]:
    """The report blocks of one analysis unit: ``("h2"|"h3"|"p"|"li", text)``,
    ``("table", header, rows)`` and ``("img", figure name)``."""
    b: list[tuple] = [("h2", f"{unit['label']} ({unit['cell']}, n = {unit['hidden_size']}, "
                             f"state N = {unit['state_size']})")]
    ts = unit["time_scales"]
    b.append(("h3", "Time-scale spectrum of the gates"))
    if ts is None:
        b.append(("p", f"Not measured: {unit['skipped'].get('time_scale_spectrum', '')}."))
    else:
        b.append(("table", ["quantile", *map(_fmt, ts["levels"])],
                  [["τ (steps)", *map(_fmt, ts["quantiles"])]]))
        per = _values(ts["per_neuron"])
        b.append(("li", f"τ = −1/log r over {ts['count_total']} (sequence, step, neuron) "
                        f"entries; {ts['count_infinite']} infinite (r = 1), "
                        f"{ts['count_zero']} zero (r = 0)."))
        b.append(("li", f"per neuron (mean retention): median τ_q = "
                        f"{_fmt(float(np.nanmedian(per)))}, max {_fmt(float(np.nanmax(per)))}."))
    b += _img(figures, f"{stem}_time_scales")
    b += _step_size_blocks(unit.get("step_sizes"))
    env = unit["envelope"]
    b.append(("h3", "Envelope f(ℓ) of the effective rates"))
    if env is not None:
        fit = env["fit"]
        b.append(("li", f"decay class: **{fit['class']}** ({fit['criterion']})."))
        b.append(("li", f"exponential: decay length {_fmt(fit['exponential']['decay_length'])} "
                        f"steps, R² {_fmt(fit['exponential']['r2'])}; power law: exponent "
                        f"{_fmt(fit['power law']['exponent'])}, R² "
                        f"{_fmt(fit['power law']['r2'])}."))
        b.append(("li", f"averaged over the {len(env['end_times'])} sampled end times "
                        f"{env['end_times']} (first-order μ), lags {env['lags'][0]}.."
                        f"{env['lags'][1]}."))
    spectrum = unit.get("spectrum")
    if spectrum is not None:
        low, high = spectrum["interval"]
        b.append(("li", f"phase (docs/followups.md): **{spectrum['phase']}**; the envelope's "
                        f"AIC law at the rate lags: {spectrum['envelope_law']}; CCDF tail "
                        f"exponent of the fitted τ_q: β = {_fmt(spectrum['beta'])} (90% "
                        f"interval {_fmt(low)}–{_fmt(high)}, P(β < 1) "
                        f"{_fmt(spectrum['prob_below_one'])}, R² {_fmt(spectrum['tail_r2'])}); "
                        f"median fitted τ_q {_fmt(spectrum['fitted_tau_median'])} steps."))
    b += _img(figures, f"{stem}_envelope")
    lb = unit["lookback"]
    b.append(("h3", "How far back the output looks"))
    horizon = "beyond the sequence" if lb["horizon"] is None else f"ℓ = {lb['horizon']}"
    b.append(("li", f"memory horizon: **{horizon}** (the longest lag at which "
                    f"‖∂h_T/∂u_{{T−ℓ}}‖ is still ≥ {lb['horizon_threshold']:g} × its peak)."))
    b.append(("li", f"‖·‖ is the Frobenius norm, RMS over the sequences; {lb['method']}; one "
                    "backward sweep of per-step VJPs (no Jacobian formed)."))
    b += _img(figures, f"{stem}_lookback")
    disp = unit["dispersion"]
    b.append(("h3", "Effective-rate dispersion across neurons"))
    if disp is not None:
        b.append(("table", ["lag ℓ", *map(str, disp["lags"])],
                  [["CV", *(_fmt(v, 2) for v in disp["cv"])]]))
    b += _img(figures, f"{stem}_dispersion")
    b += _transport_blocks(unit, figures, stem)
    b += _lyapunov_blocks(unit)
    b.append(("h3", "Gate saturation"))
    rows = [[name, v["kind"], _fmt(v["low"]), _fmt(v["high"])]
            for name, v in unit["saturation"].items()]
    b.append(("table", ["gate", "kind", "fraction < 0.05", "fraction > 0.95 (|x| for tanh)"],
              rows))
    for name, why in unit["skipped"].items():
        b.append(("li", f"{name}: not measured ({why})."))
    b.append(("h3", "Time per part"))
    b.append(("table", ["part", "seconds"],
              [[k, f"{v:.3f}"] for k, v in unit["timings"].items()]))
    return b


def _transport_blocks(unit: dict, figures: dict[str, Path], stem: str) -> list[tuple]:
    tr = unit.get("transport")
    if tr is None:
        return []
    b = [("h3", "Transport sensitivity at sampled lags (matrix-free)"),
         ("table", ["lag ℓ", *map(str, tr["lags"])],
          [["‖M‖₂", *(_fmt(v) for v in tr["norms"])]]),
         ("li", f"median over the sequences and the end times {tr['end_times']}; Lanczos on "
                f"MᴴM over step JVPs/VJPs (no Jacobian formed), tolerance 1e-3; "
                f"{100 * tr['converged_fraction']:.0f}% of the norms met it.")]
    return b + _img(figures, f"{stem}_transport")


def _lyapunov_blocks(unit: dict) -> list[tuple]:
    ly = unit.get("lyapunov")
    if ly is None:
        return []
    rows = [["Lyapunov λ_k", *(_fmt(v) for v in ly["exponents"])]]
    if ly["gate_prediction"] is not None:
        rows.append(["gates: E_t log r (sorted)", *(_fmt(v) for v in ly["gate_prediction"])])
    k = len(ly["exponents"])
    return [("h3", "Top Lyapunov exponents"),
            ("table", ["k", *map(str, range(1, k + 1))], rows),
            ("li", "finite-time exponents per step (QR method on step JVPs, mean over the "
                   "sequences); the gates' row is the zeroth-order prediction E_t log r_t, "
                   "exact when J_t = diag(r_t). 1/|λ| is a time scale in steps.")]


def _img(figures: dict[str, Path], name: str) -> list[tuple]:
    return [("img", name)] if name in figures else []


def _blocks(summary: dict, figures: dict[str, Path]) -> list[tuple]:
    s = summary["sampled"]
    b: list[tuple] = [("h1", TITLE), ("p", f"Module: {summary['module']}.")]
    b.append(("h2", "What was sampled"))
    b.append(("li", f"{s['batch']} of the {s['sequences_given']} sequences given "
                    f"(indices {s['sequences']}), T = {s['seq_len']} steps, "
                    f"input size {s['input_size']}."))
    b.append(("li", f"effective rates: end times {s['end_times']}, every lag "
                    f"{s['envelope_lags'][0]}..{s['envelope_lags'][1]}; dispersion at lags "
                    f"{s['rate_lags']}."))
    b.append(("li", "the output's lookback: every lag 0..T−1 from the final state h_T."))
    if s.get("transport_lags"):
        b.append(("li", f"transport norms: lags {s['transport_lags']} at end times "
                        f"{s['transport_end_times']}."))
    if summary.get("targets"):
        b.append(("li", f"targets: {summary['targets']}."))
    b.append(("li", f"total compute {summary['timings']['total_s']:.2f} s; settings "
                    f"{summary['settings']}."))
    for unit in summary["units"]:
        b += _unit_blocks(unit, figures, _stem(unit))
    return b


def _stem(unit: dict) -> str:
    return f"layer{unit['layer']}_{unit['direction']}"


def render_markdown(blocks: list[tuple], figures: dict[str, Path], out: Path) -> str:
    """The blocks as Markdown; figures linked relative to ``out``."""
    md: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            md += ["", "#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            md += [block[1], ""]
        elif kind == "li":
            md.append(f"- {block[1]}")
        elif kind == "table":
            md += ["", "| " + " | ".join(block[1]) + " |",
                   "|" + "---|" * len(block[1])]
            md += ["| " + " | ".join(row) + " |" for row in block[2]] + [""]
        elif kind == "img":
            md += ["", f"![{block[1]}]({figures[block[1]].relative_to(out).as_posix()})", ""]
    return "\n".join(md).lstrip() + "\n"


def render_html(blocks: list[tuple], figures: dict[str, Path]) -> str:
    """The blocks as one HTML page with every PNG embedded."""
    body, items = [], []

    def flush():
        if items:
            body.append("<ul>" + "".join(items) + "</ul>")
            items.clear()

    def esc(text: str) -> str:  # the Markdown bold of the list items, as HTML
        parts = html.escape(text).split("**")
        return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))

    for block in blocks:
        kind = block[0]
        if kind == "li":
            items.append(f"<li>{esc(block[1])}</li>")
            continue
        flush()
        if kind in ("h1", "h2", "h3", "p"):
            body.append(f"<{kind}>{esc(block[1])}</{kind}>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row)
                           + "</tr>" for row in block[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif kind == "img":
            data = base64.b64encode(figures[block[1]].read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(block[1])}" '
                        f'src="data:image/png;base64,{data}"></figure>')
    flush()
    style = ("body{font-family:sans-serif;max-width:1000px;margin:auto;line-height:1.4}"
             "table{border-collapse:collapse}td,th{border:1px solid #999;padding:3px}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(TITLE)}"
            f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>")


def write_inspect_report(out: Path, summary: dict) -> dict[str, Path]:
    """Draw the figures and write ``REPORT.md``, ``report.html`` and ``inspect.json`` into
    ``out`` (created if needed), each atomically.

    Args:
        summary: :attr:`gatescope.inspection.InspectResult.summary` (plain numbers and lists).

    Returns:
        ``{"markdown", "html", "json", and one key per figure stem}`` -> path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    for unit in summary["units"]:
        for name, draw in FIGURES.items():
            fig = draw(unit)
            if fig is not None:
                stem = f"{_stem(unit)}_{name}"
                figures[stem] = _save_png(fig, out, stem)
    blocks = _blocks(summary, figures)
    files = {"markdown": atomic_write_bytes(out / "REPORT.md", render_markdown(
                 blocks, figures, out).encode()),
             "html": atomic_write_bytes(out / "report.html", render_html(blocks, figures)
                                        .encode()),
             "json": atomic_write_json(out / "inspect.json", summary)}
    return {**files, **figures}
