"""A report as a list of blocks (headings, paragraphs, lists, tables, figures, code), rendered to Markdown and
to one self-contained HTML file (figures inlined as base64 PNG; only `code` and **bold** inline markup)."""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Doc:
    blocks: list = field(default_factory=list)

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list], note: str = ""):
        self.blocks.append(("table", header, [[cell_text(v) for v in r] for r in rows], note))

    def img(self, rel: str, caption: str):
        self.blocks.append(("img", rel, caption))

    def code(self, text: str, lang: str = ""):
        self.blocks.append(("code", text, lang))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out.append("#" * b[1] + " " + b[2])
            elif kind == "p":
                out.append(b[1])
            elif kind == "ul":
                out.append("\n".join(f"- {x}" for x in b[1]))
            elif kind == "table":
                _, header, rows, note = b
                lines = ["| " + " | ".join(_md_esc(h) for h in header) + " |",
                         "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
                lines += ["| " + " | ".join(_md_esc(v) for v in r) + " |" for r in rows]
                out.append("\n".join(lines) + (f"\n\n{note}" if note else ""))
            elif kind == "img":
                out.append(f"![{b[2]}]({b[1]})\n\n*{b[2]}*")
            elif kind == "code":
                out.append(f"```{b[2]}\n{b[1]}\n```")
        return "\n\n".join(out) + "\n"

    def html(self, base: Path, title: str) -> str:
        out = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
            elif kind == "p":
                out.append(f"<p>{_inline(b[1])}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b[1]) + "</ul>")
            elif kind == "table":
                _, header, rows, note = b
                t = ["<table><thead><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header) + "</tr></thead><tbody>"]
                t += ["<tr>" + "".join(f"<td>{_inline(v)}</td>" for v in r) + "</tr>" for r in rows]
                t.append("</tbody></table>")
                if note:
                    t.append(f"<p class='note'>{_inline(note)}</p>")
                out.append("".join(t))
            elif kind == "img":
                data = base64.b64encode((base / b[1]).read_bytes()).decode()
                out.append(f"<figure><img alt='{html.escape(b[2], quote=True)}' src='data:image/png;base64,{data}'>"
                           f"<figcaption>{_inline(b[2])}</figcaption></figure>")
            elif kind == "code":
                out.append(f"<pre><code>{html.escape(b[1])}</code></pre>")
        css = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.45;"
               "color:#222}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}"
               "th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}th:first-child,td:first-child"
               "{text-align:left}thead{background:#f2f2f2}code,pre{background:#f6f6f6}pre{padding:.7em;"
               "overflow-x:auto}img{max-width:100%;border:1px solid #eee}figcaption{font-style:italic;color:#555}"
               ".note{font-size:.85em;color:#555}")
        return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{css}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def cell_text(v) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.3g}"
    return "" if v is None else str(v)


def _md_esc(v: str) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _inline(text: str) -> str:
    """Minimal inline Markdown for the HTML: `code` and **bold**, everything else escaped."""
    parts = re.split(r"(`[^`]+`)", str(text))
    out = []
    for part in parts:
        if len(part) > 1 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(part)))
    return "".join(out)
