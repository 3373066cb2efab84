"""``REPORT.md`` and a self-contained ``report.html`` (figures embedded) from verdicts,
figures and extra sections. Pure rendering: every number comes in through the arguments."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write_bytes, atomic_write_json
from .verdicts import Verdict


@dataclass
class Section:
    """A titled block of the report that is not a claim (analogies, fidelity, settings)."""

    title: str
    lines: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


def _summary_table(verdicts: list[Verdict]) -> list[str]:
    lines = ["| claim | statement | verdict |", "|---|---|---|"]
    lines += [f"| {v.claim} | {v.statement} | **{v.verdict}** |" for v in verdicts]
    return lines


def _null_lines(v: Verdict) -> list[tuple[str, str]]:
    """``(label, text)`` of the rule's null model and the measured margin over it (those
    the verdict states)."""
    return [(label, text) for label, text in (("Null", v.null), ("Margin", v.margin)) if text]


def render_markdown(title: str, intro: list[str], verdicts: list[Verdict],
                    sections: list[Section], figures: dict[str, Path], out: Path) -> str:
    """The report as Markdown; figures are linked relative to ``out``."""

    def fig_lines(names):
        return [f"![{n}]({figures[n].relative_to(out).as_posix()})" for n in names
                if n in figures]

    md = [f"# {title}", "", *intro, ""]
    if verdicts:  # a report of measurements only (e.g. ``families``) has no claims
        md += ["## Verdicts", "", *_summary_table(verdicts), ""]
    for v in verdicts:
        md += [f"### {v.claim}: {v.statement}", "", f"**Verdict: {v.verdict}.**", "",
               f"Measured: {v.measurement}.", ""]
        md += [f"{label}: {text}." for label, text in _null_lines(v)] + [""]
        md += [f"- {line}" for line in v.evidence] + [""]
        md += fig_lines(v.figures) + [""]
    for s in sections:
        md += [f"## {s.title}", ""] + [f"- {line}" for line in s.lines] + [""]
        md += fig_lines(s.figures) + [""]
    return "\n".join(md)


def render_html(title: str, intro: list[str], verdicts: list[Verdict],
                sections: list[Section], figures: dict[str, Path]) -> str:
    """The report as one HTML file with every PNG embedded."""

    def img(name):
        if name not in figures:
            return ""
        data = base64.b64encode(figures[name].read_bytes()).decode()
        return f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">' \
               f"<figcaption>{html.escape(name)}</figcaption></figure>"

    def items(lines):
        return "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>"

    rows = "".join(
        f"<tr><td>{v.claim}</td><td>{html.escape(v.statement)}</td>"
        f'<td class="{v.verdict.replace(" ", "-")}">{v.verdict}</td></tr>' for v in verdicts)
    body = [f"<h1>{html.escape(title)}</h1>", *(f"<p>{html.escape(p)}</p>" for p in intro)]
    if verdicts:
        body += ["<h2>Verdicts</h2>", f"<table><tr><th>claim</th><th>statement</th>"
                 f"<th>verdict</th></tr>{rows}</table>"]
    for v in verdicts:
        body += [f"<h3>{v.claim}: {html.escape(v.statement)}</h3>",
                 f"<p><b>Verdict: {v.verdict}.</b> Measured: {html.escape(v.measurement)}.</p>",
                 *(f"<p>{label}: {html.escape(text)}.</p>" for label, text in _null_lines(v)),
                 items(v.evidence), *(img(n) for n in v.figures)]
    for s in sections:
        body += [f"<h2>{html.escape(s.title)}</h2>", items(s.lines), *(img(n) for n in s.figures)]
    style = ("body{font-family:sans-serif;max-width:1000px;margin:auto;line-height:1.4}"
             "table{border-collapse:collapse}td,th{border:1px solid #999;padding:4px}"
             "img{max-width:100%}.supported{background:#dfd}.not-supported{background:#fdd}"
             ".mixed{background:#ffd}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>")


def write_report(out: Path, title: str, intro: list[str], verdicts: list[Verdict],
                 sections: list[Section], figures: dict[str, Path]) -> tuple[Path, Path, Path]:
    """Write ``REPORT.md``, ``report.html`` and ``verdicts.json`` into ``out`` atomically.

    Returns:
        The three paths, in that order.
    """
    md, page, verdict_file = out / "REPORT.md", out / "report.html", out / "verdicts.json"
    atomic_write_bytes(md, render_markdown(title, intro, verdicts, sections, figures, out)
                       .encode())
    atomic_write_bytes(page, render_html(title, intro, verdicts, sections, figures).encode())
    atomic_write_json(verdict_file, [v.__dict__ for v in verdicts])
    return md, page, verdict_file
