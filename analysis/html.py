"""``index.html`` beside ``index.md``: the report as one self-contained page.

The page is ``index.md`` turned into HTML by a small converter of the Markdown the report writes
(headings, paragraphs, lists, pipe tables, code blocks, images, links, bold, italics, inline code),
with every PNG figure embedded as base64 (no file beside the page is needed to see it), each figure's
caption under it, and extra sections only the page has: the ``lucir train`` command that reproduces
every trial and the MLflow run of each trial when ``mlflow_runs.json`` names it.
"""

from __future__ import annotations

import base64
import html as _html
import re
import struct
from pathlib import Path
from typing import Iterable

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#111;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border-top:1px solid #ccc;border-bottom:1px solid #ccc;padding:.25em .6em;vertical-align:top}
th{border-top:2px solid #333;border-bottom:1.5px solid #333}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font-family:SFMono-Regular,Consolas,monospace;font-size:.88em;background:#f5f5f5}
pre{padding:.6em;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
figure{margin:1em 0}figcaption{font-size:.9em;color:#333;max-width:7in}
img{max-width:100%;height:auto;border:1px solid #eee}
h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ddd;margin-top:1.6em}h3{font-size:1.1em}
"""
_NUM = re.compile(r"^[\s*]*[+\-−]?\d[\d.,]*( ± [\d.]+)?[\s*]*$|^–$")


def _png_width_in(data: bytes, dpi: float = 300.0) -> float | None:
    """The printed width (inches) of a PNG saved at ``dpi`` (from its IHDR header)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    w = struct.unpack(">I", data[16:20])[0]
    return w / dpi


def _inline(text: str, root: Path) -> str:
    """Inline Markdown of one line: code spans, images (embedded), links, bold, italics (escaped first)."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append(f"<code>{_html.escape(part[1:-1])}</code>")
            continue
        s = _html.escape(part, quote=False)

        def img(m):
            return _img_tag(m.group(1), m.group(2), root)

        s = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", img, s)
        s = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', s)
        s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


def _img_tag(alt: str, src: str, root: Path) -> str:
    path = root / src
    if path.suffix.lower() == ".png" and path.is_file():
        data = path.read_bytes()
        width = _png_width_in(data)
        style = f' style="width:{width * 1.4:.2f}in"' if width else ""
        b64 = base64.b64encode(data).decode("ascii")
        return f'<img alt="{_html.escape(alt)}" src="data:image/png;base64,{b64}"{style}>'
    if path.suffix.lower() == ".svg" and path.is_file():
        b64 = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img alt="{_html.escape(alt)}" src="data:image/svg+xml;base64,{b64}">'
    return f'<img alt="{_html.escape(alt)}" src="{_html.escape(src)}">'


def _table(rows: list[str], root: Path) -> str:
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    head, body = cells[0], [r for r in cells[2:]]
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{_inline(h, root)}</th>" for h in head) + "</tr></thead>",
           "<tbody>"]
    for r in body:
        out.append("<tr>" + "".join(
            f'<td class="num">{_inline(c, root)}</td>' if _NUM.match(c) else f"<td>{_inline(c, root)}</td>"
            for c in r) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def markdown_to_html(md: str, root: Path) -> str:
    """The body HTML of the report's Markdown (the subset ``analysis.report`` writes; raw HTML lines pass)."""
    lines = md.splitlines()
    out: list[str] = []
    i = 0
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append("<p>" + " ".join(_inline(x, root) for x in para) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre><code>" + _html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
            continue
        m = re.match(r"^(#{1,6}) (.*)$", line)
        if m:
            flush()
            level = len(m.group(1))
            out.append(f"<h{level}>{_inline(m.group(2), root)}</h{level}>")
            i += 1
            continue
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1].strip()):
            flush()
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append(_table(lines[i:j], root))
            i = j
            continue
        if line.startswith("- "):
            flush()
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:], root)}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        if line.startswith("<"):
            flush()
            out.append(line)
            i += 1
            continue
        if re.match(r"^!\[[^\]]*\]\([^)]+\)$", line.strip()):  # a figure on its own line, caption after it
            flush()
            cap = ""
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and re.match(r"^\*[^*].*\*$", lines[j].strip()):
                cap = lines[j].strip()[1:-1]
                i = j
            out.append("<figure>" + _inline(line.strip(), root)
                       + (f"<figcaption>{_inline(cap, root)}</figcaption>" if cap else "") + "</figure>")
            i += 1
            continue
        if not line.strip():
            flush()
        else:
            para.append(line)
        i += 1
    flush()
    return "\n".join(out)


def mlflow_runs(exp) -> dict[str, str]:
    """slot -> a link (http(s) tracking server) or 'run <id> in <uri>' from the folder's ``mlflow_runs.json``."""
    from lucir import record

    doc = record.read_json_dict(exp.path / record.MLFLOW_RUNS_FILE) if exp.path is not None else None
    out: dict[str, str] = {}
    for uri, entry in (doc or {}).items():
        if not isinstance(entry, dict):
            continue
        exp_id = entry.get("experiment_id")
        for slot, run in (entry.get("slots") or {}).items():
            run = run.get("run") if isinstance(run, dict) else run  # {"run": id, ...}; an id in older folders
            if not isinstance(run, str) or not run:
                continue
            if str(uri).startswith(("http://", "https://")):
                url = (f"{uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run}" if exp_id
                       else f"{uri.rstrip('/')}/#/runs/{run}")
                out[str(slot)] = f"[{run[:8]}]({url})"
            else:
                out[str(slot)] = f"`{run}` in `{uri}`"
    return out


def reproduce_section(exp, title: str = "Commands that reproduce every trial") -> list[str]:
    """Markdown lines: per trial its status, MLflow run and the ``lucir train`` command of its config."""
    from analysis import tables

    runs = mlflow_runs(exp)
    lines = [f"## {title}", "", "Each trial's configuration as a `lucir train` command (the same config and "
             "seed give the same accuracy matrix on CPU)"
             + (f"; MLflow: `mlflow ui --backend-store-uri {exp.meta.get('mlflow_uri')}`"
                if exp.meta.get("mlflow_uri") else "") + ".", ""]
    rows = ["| trial | method | seed | status | MLflow run | command |", "|---|---|---|---|---|---|"]
    for t in sorted(exp.trials, key=lambda t: t.trial_id):
        try:
            cmd = tables.best_command_line(t.config)
        except Exception as exc:  # noqa: BLE001 - a config the trainer refuses: say why, keep the row
            cmd = f"(no command: {type(exc).__name__})"
        rows.append(f"| {t.trial_id} | {tables.paper_name(t.config.get('preset'))} | {t.config.get('seed', '')} | "
                    f"{t.status} | {runs.get(t.trial_id, '–')} | `{cmd}` |")
    return lines + rows + [""]


def write_html(md_path: Path, out: Path, extra_md: Iterable[str] = (), captions: dict | None = None) -> Path:
    """``out``: the page of ``md_path`` (its figures embedded) plus ``extra_md``; written atomically."""
    from analysis.tables import _atomic_write

    root = md_path.parent
    md = md_path.read_text(encoding="utf-8")
    extra = list(extra_md)
    if extra:  # before "## All files", so the page ends with the file list as index.md does
        at = md.find("\n## All files")
        md = (md[:at] + "\n\n" + "\n".join(extra) + md[at:]) if at >= 0 else md + "\n" + "\n".join(extra)
    title = md.splitlines()[0].lstrip("# ").strip() if md else "report"
    body = markdown_to_html(md, root)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")
    _atomic_write(out, page)
    return out
