"""A report as plain data (sections of text, tables and figures) and its two renderings.

Markdown references the figures as PNG files beside it; HTML embeds them (base64), so the HTML file
is self-contained and fetches nothing. Every string that did not come from this module is escaped.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1280px; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 2px 7px; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #f7f7f7; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .caption { color: #555; font-size: 13px; }
"""


@dataclass(frozen=True)
class Figure:
    name: str  # file stem of the PNG next to the Markdown
    png: bytes
    caption: str


@dataclass(frozen=True)
class Table:
    caption: str
    frame: pd.DataFrame


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Document:
    title: str
    sections: list[Section]


def cell(value) -> str:
    """A table cell as text: floats to 4 significant digits, missing values blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown_table(table: Table) -> str:
    def text(value) -> str:
        return cell(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(text(c) for c in table.frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.frame.columns) + "|"
    body = ["| " + " | ".join(text(v) for v in row) + " |" for row in table.frame.itertuples(index=False)]
    caption = [f"*{table.caption}*", ""] if table.caption else []
    return "\n".join([*caption, header, rule, *body]) + "\n"


def to_markdown(document: Document, figure_dir: str = "figures") -> str:
    parts = [f"# {document.title}\n"]
    for section in document.sections:
        parts.append(f"## {section.title}\n")
        parts += [f"{paragraph}\n" for paragraph in section.paragraphs]
        parts += [
            f"![{figure.caption}]({figure_dir}/{figure.name}.png)\n\n{figure.caption}\n" for figure in section.figures
        ]
        parts += [_markdown_table(table) for table in section.tables]
    return "\n".join(parts)


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(cell(c))}</th>" for c in table.frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row) + "</tr>"
        for row in table.frame.itertuples(index=False)
    )
    caption = f"<caption class='caption'>{html.escape(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _html_figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    alt = html.escape(figure.caption, quote=True)
    return (
        f"<figure><img src='data:image/png;base64,{data}' alt='{alt}'>"
        f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>"
    )


def to_html(document: Document) -> str:
    body = [f"<h1>{html.escape(document.title)}</h1>"]
    for section in document.sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [f"<p>{html.escape(paragraph)}</p>" for paragraph in section.paragraphs]
        body += [_html_figure(figure) for figure in section.figures]
        body += [_html_table(table) for table in section.tables]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(document.title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def is_current(out: str | Path, digest: str, stem: str = "report") -> bool:
    """Whether `out` holds the report `write` wrote for this digest, every file of it still there."""
    out = Path(out)
    kept, markdown, page = (out / f"{stem}.{suffix}" for suffix in ("digest", "md", "html"))
    if not (kept.is_file() and kept.read_text().strip() == digest and markdown.is_file() and page.is_file()):
        return False
    return all((out / name).is_file() for name in re.findall(r"\]\((figures/[^)]+\.png)\)", markdown.read_text()))


def write(document: Document, out: str | Path, stem: str = "report", digest: str | None = None) -> list[Path]:
    """Write `stem.md` (+ figures/*.png) and the self-contained `stem.html` into `out`; with a digest (what the
    report was made from), `stem.digest` last, so `is_current` can tell a finished report from a partial one."""
    out = Path(out)
    (out / f"{stem}.digest").unlink(missing_ok=True)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    written = []
    for section in document.sections:
        for figure in section.figures:
            path = figures / f"{figure.name}.png"
            path.write_bytes(figure.png)
            written.append(path)
    for path, text in ((out / f"{stem}.md", to_markdown(document)), (out / f"{stem}.html", to_html(document))):
        path.write_text(text, encoding="utf-8")
        written.append(path)
    if digest is not None:
        (out / f"{stem}.digest").write_text(digest + "\n")
    return written
