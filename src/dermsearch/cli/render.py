"""Human-facing renderings of a :class:`SearchResult`: a terminal table and an HTML sheet."""

from __future__ import annotations

import html
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..extract.images import thumbnail_data_uri
from ..search import SearchResult

__all__ = ["print_tables", "write_contact_sheet"]

_LABELS = {
    "euclidean": "Euclidean score ES", "cosine": "Cosine CSnew", "style": "Style score SS",
    "dice": "Dice DC", "i1_ed": "I1 ED (ES, DC)", "i1_cd": "I1 CD (CSnew, DC)",
    "i1_ecd": "I1 ECD (ES, CSnew, DC)", "i1_se": "I1 SE (SS, ES)", "i1_sc": "I1 SC (SS, CSnew)",
    "i1_sd": "I1 SD (SS, DC)",
}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def print_tables(result: SearchResult, console: Console | None = None) -> None:
    console = console or Console()
    header = f"[bold]Query[/bold] {result.query}   candidates: {result.candidates}   k: {result.k or 'all'}"
    console.print(header, soft_wrap=True)
    for msg in result.messages:
        console.print(f"[yellow]note:[/yellow] {msg}", soft_wrap=True)
    for measure, hits in result.results.items():
        table = Table(title=f"{measure} — {_LABELS[measure]}", title_justify="left", expand=False)
        for col, just in (("#", "right"), ("id", "left"), ("diagnosis", "left"), ("score", "right"),
                          ("ES", "right"), ("CSnew", "right"), ("SS", "right"), ("DC", "right")):
            table.add_column(col, justify=just)
        for h in hits:
            c = h.components
            table.add_row(str(h.rank), h.id, h.diagnosis or "-", f"{h.score:.4f}", _fmt(c["euclidean"]),
                          _fmt(c["cosine"]), _fmt(c["style"]), _fmt(c["dice"]))
        console.print(table)


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em} h2{font-size:1.05em;margin:1.2em 0 .4em}
.row{display:flex;gap:.6em;flex-wrap:wrap}
.card{border:1px solid #ccc;border-radius:6px;padding:.4em;width:170px;font-size:.78em}
.card img{width:160px;height:120px;object-fit:cover;display:block;margin-bottom:.3em}
.mel{border-color:#c0392b;border-width:2px}
.card.q{width:auto;max-width:260px} .q img{width:240px;height:auto}
td{padding:0 .4em 0 0} .s{font-weight:600}
"""


def write_contact_sheet(result: SearchResult, query_image, path: str | Path) -> Path:
    """A self-contained HTML page (thumbnails embedded): the query, then the top-k per measure."""
    path = Path(path)
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>dermsearch: {esc(result.query)}</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>dermsearch results</h1>",
             f"<div class='card q'><img alt='query' src='{thumbnail_data_uri(query_image, 240)}'>"
             f"<div>query: {esc(result.query)}</div><div>{result.candidates} candidates</div></div>"]
    for msg in result.messages:
        parts.append(f"<p><em>{esc(msg)}</em></p>")
    thumbs: dict[str, str] = {}
    for measure, hits in result.results.items():
        parts.append(f"<h2>{esc(_LABELS[measure])} <code>{measure}</code></h2><div class='row'>")
        for h in hits:
            if h.id not in thumbs:
                thumbs[h.id] = thumbnail_data_uri(h.path)
            c = h.components
            comps = "".join(f"<tr><td>{n}</td><td>{_fmt(c[k])}</td></tr>" for n, k in
                            (("ES", "euclidean"), ("CSnew", "cosine"), ("SS", "style"), ("DC", "dice")))
            cls = "card mel" if h.melanoma == 1 else "card"
            parts.append(f"<div class='{cls}'><img alt='{esc(h.id)}' src='{thumbs[h.id]}'>"
                         f"<div>#{h.rank} <b>{esc(h.id)}</b></div><div>{esc(h.diagnosis or '-')}</div>"
                         f"<div class='s'>score {h.score:.4f}</div><table>{comps}</table></div>")
        parts.append("</div>")
    parts.append("</body></html>")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path
