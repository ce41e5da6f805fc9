"""How a report is written out: the text of its numbers, each Table as Markdown, HTML, CSV and
LaTeX, and the page (report.md, index.html) assembled from a report.Report.

Nothing here computes: bench/report.py decides what the report shows, this module only formats it,
and the same report gives the same bytes.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # for annotations only: bench.report imports this module
    from bench.report import Report, Table

# ---------------------------------------------------------------- numbers as text


def num(x: float, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def cell(c: dict | None) -> str:
    """A table.cell() as `mean ± half-width (estimator)`; – where there is none."""
    if c is None:
        return "–"
    text = num(c["mean"]) if not math.isfinite(c["half"]) else f"{num(c['mean'])} ± {num(c['half'])}"
    return text + (f" ({c['estimator']})" if c.get("estimator") else "")


def big(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:,.0f}" if abs(x) < 1e9 else f"{x:.2e}"


def p_value(p: float) -> str:
    return "–" if not math.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def raw(x):
    """A CSV value: full precision, empty for missing."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return float(x) if isinstance(x, (float, np.floating)) else x


# ---------------------------------------------------------------- one table


def _md_escape(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "★": r"$\star$",
    "×": r"$\times$",
    "−": "-",
    "Δ": r"$\Delta$",
    "–": "--",
    "≤": r"$\leq$",
    "α": r"$\alpha$",
    "…": r"\ldots{}",
    "†": r"$\dagger$",
    "≥": r"$\geq$",
    "—": "---",
    "<": r"$<$",
    ">": r"$>$",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def latex(t: Table) -> str:
    lines = [
        f"% {t.title}",
        r"\begin{tabular}{" + "l" * len(t.header) + "}",
        r"\toprule",
        " & ".join(_latex_escape(h) for h in t.header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(_latex_escape(c) for c in row) + r" \\" for row in t.rows]
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def csv_text(t: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(t.csv_header)
    writer.writerows(t.csv_rows)
    return buf.getvalue()


# ---------------------------------------------------------------- the page

SECTIONS = (
    ("summary", "Summary"),
    ("claims", "The DPO paper's findings on these runs"),
    ("frontier", "Reward vs KL"),
    ("matched_kl", "Frontiers at matched KL"),
    ("pairwise", "Best settings compared (unmatched KL)"),
    ("cost", "Cost"),
    ("curves", "Training curves"),
    ("samples", "Sample completions"),
    ("runs", "Runs"),
)
"""The page's sections in order: a table's name, or curves and samples."""
CSV_ONLY = ("matched_kl_grid",)
"""Tables too long for the page, written as CSV only (every piece of every matched-KL comparison)."""


def _blocks(report: Report) -> list[tuple]:
    """The document as a list of (kind, ...) blocks, rendered to Markdown and to HTML alike."""
    out: list[tuple] = [("h1", f"Report: {report.task}")] + [("p", p) for p in report.intro]
    for key, title in SECTIONS:
        if key == "frontier":
            out.append(("h2", title))
            if "frontier.png" in report.figures:
                out.append(("img", "frontier.png", f"{report.task}: reward vs KL frontier"))
            if report.frontier_note:
                out.append(("p", report.frontier_note))
            if key in report.tables:
                out += [("table", report.tables[key])]
        elif key == "curves":
            curves = sorted(n for n in report.figures if n.startswith("curves-"))
            if curves:
                out.append(("h2", title))
                out += [("img", n, n[len("curves-") : -len(".png")] + " training curves") for n in curves]
        elif key == "samples":
            if report.samples:
                out.append(("h2", title))
                out.append(("p", report.samples_note))
                rows = [
                    [
                        s["algo"],
                        s["setting"],
                        s["prompt"],
                        s["completion"],
                        num(s["gold_reward"]) if isinstance(s["gold_reward"], (int, float)) else "–",
                    ]
                    for s in report.samples
                ]
                out.append(("rows", ["algorithm", "setting", "prompt", "completion", "gold reward"], rows))
        elif key in report.tables:
            out += [("h2", title), ("table", report.tables[key])]
    return out


def markdown(report: Report) -> str:
    parts = []
    for block in _blocks(report):
        kind = block[0]
        if kind == "h1":
            parts.append(f"# {block[1]}")
        elif kind == "h2":
            parts.append(f"## {block[1]}")
        elif kind == "p":
            parts.append(block[1])
        elif kind == "img":
            parts.append(f"![{block[2]}]({block[1]})")
        elif kind == "rows":
            parts.append(_md_table(block[1], block[2]))
        elif kind == "table":
            t = block[1]
            parts.append(
                _md_table(t.header, t.rows) + (f"\n\n{t.note}" if t.note else "") + f"\n\n({t.name}.csv, {t.name}.tex)"
            )
    return "\n\n".join(parts) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;display:block;margin:.5em 0}.note{color:#555;font-size:.9em}"""


def html_page(report: Report) -> str:
    """A self-contained page: the figures embedded as data URIs."""
    parts = []
    for block in _blocks(report):
        kind = block[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "img":
            data = base64.b64encode(report.figures[block[1]]).decode("ascii")
            parts.append(f'<img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">')
        elif kind == "rows":
            parts.append(_html_table(block[1], block[2]))
        elif kind == "table":
            t = block[1]
            parts.append(_html_table(t.header, t.rows))
            if t.note:
                parts.append(f'<p class="note">{html.escape(t.note)}</p>')
    title = html.escape(f"Report: {report.task}")
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n"
    )


def files(report: Report) -> dict[str, str | bytes]:
    """File name -> contents of every file of the report: the page twice, each table twice, the figures."""
    out: dict[str, str | bytes] = {"report.md": markdown(report), "index.html": html_page(report)}
    for t in report.tables.values():
        out[f"{t.name}.csv"] = csv_text(t)
        if t.name not in CSV_ONLY:
            out[f"{t.name}.tex"] = latex(t)
    out.update(report.figures)
    return out
