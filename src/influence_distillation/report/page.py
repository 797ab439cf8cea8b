"""A report page as data (sections of text, tables, figures), rendered twice: one self-contained HTML file (figures
embedded as PNG, no JavaScript, every piece of record text escaped) and a Markdown twin with its figures beside it.

Building the content once and rendering it twice keeps the two files saying the same thing.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from influence_distillation.artifacts import atomic_file


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    name: str  # file stem of the Markdown twin's PNG
    png: bytes
    alt: str


@dataclass
class Note:
    """A warning the reader must not miss."""

    text: str


@dataclass
class Code:
    text: str


@dataclass
class Section:
    id: str  # the HTML anchor; tests and the browser check find sections by it
    title: str
    blocks: list = field(default_factory=list)  # str (a paragraph), Table, Figure, Note, Code

    def add(self, *blocks) -> Section:
        self.blocks.extend(blocks)
        return self


@dataclass
class Page:
    title: str
    subtitle: str
    sections: list[Section]


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (then closed: reports draw many)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def clip(text: str, limit: int) -> str:
    """One line of at most `limit` characters: record text shown in a table cell."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1180px; margin: 1.5em auto; padding: 0 1em; color: #222;
       line-height: 1.45; }
h1 { margin-bottom: 0.2em; } .subtitle { color: #555; margin-top: 0; }
nav { margin: 1em 0; font-size: 0.95em; } nav a { margin-right: 1em; }
section { border-top: 1px solid #ddd; padding-top: 0.4em; }
table { border-collapse: collapse; margin: 0.8em 0; max-width: 100%; table-layout: auto; }
td, th { border: 1px solid #ccc; padding: 3px 8px; vertical-align: top; overflow-wrap: anywhere; }
td.short, th.short { white-space: nowrap; overflow-wrap: normal; }
th { background: #f3f3f3; text-align: left; } caption { text-align: left; color: #555; padding: 2px 0; }
img { max-width: 100%; height: auto; margin: 0.5em 0; }
pre { background: #f6f6f6; padding: 0.8em; white-space: pre-wrap; overflow-wrap: anywhere; font-size: 0.85em; }
.note { background: #fff4e5; border-left: 4px solid #f28e2b; padding: 0.5em 0.8em; margin: 0.8em 0; }
"""


def render_html(page: Page) -> str:
    parts = [f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
             f'content="width=device-width, initial-scale=1"><title>{html.escape(page.title)}</title>'
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(page.title)}</h1><p class=\"subtitle\">{html.escape(page.subtitle)}</p>",
             "<nav>" + "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in page.sections) + "</nav>"]
    for section in page.sections:
        parts.append(f'<section id="{section.id}"><h2>{html.escape(section.title)}</h2>')
        parts += [_html_block(block) for block in section.blocks]
        parts.append("</section>")
    return "\n".join(parts) + "\n</body></html>\n"


def _html_block(block) -> str:
    if isinstance(block, str):
        return f"<p>{html.escape(block)}</p>"
    if isinstance(block, Note):
        return f'<p class="note">{html.escape(block.text)}</p>'
    if isinstance(block, Code):
        return f"<pre>{html.escape(block.text)}</pre>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode()
        return f'<img alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}">'
    caption = f"<caption>{html.escape(block.caption)}</caption>" if block.caption else ""
    head = "".join(_cell("th", c) for c in block.header)
    body = "".join("<tr>" + "".join(_cell("td", c) for c in row) + "</tr>" for row in block.rows)
    head = f"<thead><tr>{head}</tr></thead>" if any(block.header) else ""  # a key/value table has no header
    return f"<table>{caption}{head}<tbody>{body}</tbody></table>"


def _cell(tag: str, text: str) -> str:
    """Short cells (numbers, yes/no) never wrap; long ones (ids, record text) wrap anywhere so no table overflows."""
    short = ' class="short"' if len(text) <= 14 else ""
    return f"<{tag}{short}>{html.escape(text)}</{tag}>"


def render_markdown(page: Page, figure_dir: Path, link_prefix: str) -> str:
    """Markdown; each figure is written to `figure_dir` and linked as `link_prefix` + its file name."""
    parts = [f"# {page.title}", page.subtitle]
    for section in page.sections:
        parts.append(f"## {section.title}")
        for block in section.blocks:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Note):
                parts.append(f"> **Warning:** {block.text}")
            elif isinstance(block, Code):
                parts.append(f"```\n{block.text}\n```")
            elif isinstance(block, Figure):
                figure_dir.mkdir(parents=True, exist_ok=True)
                with atomic_file(figure_dir / f"{block.name}.png", "wb") as handle:
                    handle.write(block.png)
                parts.append(f"![{block.alt}]({link_prefix}{block.name}.png)")
            else:
                parts.append(markdown_table(block))
    return "\n\n".join(parts) + "\n"


def markdown_table(table: Table) -> str:
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    lines = ([f"*{table.caption}*", ""] if table.caption else []) + [
        "| " + " | ".join(cell(c) for c in table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def write_page(page: Page, html_path: Path) -> dict[str, Path]:
    """`html_path` and its Markdown twin (same stem, .md) with figures in `<stem>_files/`; each file atomic."""
    html_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path = html_path.with_suffix(".md")
    figure_dir = html_path.parent / f"{html_path.stem}_files"
    markdown = render_markdown(page, figure_dir, f"{figure_dir.name}/")
    with atomic_file(markdown_path) as handle:
        handle.write(markdown)
    with atomic_file(html_path) as handle:
        handle.write(render_html(page))
    return {"html": html_path, "markdown": markdown_path}
