"""The HTML contact sheet of a :class:`SearchResult`: self-contained (thumbnails embedded), no script.

Used by ``dermsearch search --html`` and by the web API's export (``format=html``).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..extract.images import thumbnail_data_uri
from ..io import write_text
from .measures import MEASURE_INFO
from .searcher import SearchResult

__all__ = ["contact_sheet_html", "write_contact_sheet", "style_bar_html", "mask_html", "rights_html",
           "STAGE_COLOURS"]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em} h2{font-size:1.05em;margin:1.2em 0 .4em}
.row{display:flex;gap:.6em;flex-wrap:wrap}
.card{border:1px solid #ccc;border-radius:6px;padding:.4em;width:170px;font-size:.78em}
.card img{width:160px;height:120px;object-fit:cover;display:block;margin-bottom:.3em}
.mel{border-color:#c0392b;border-width:2px}
.card.q{width:auto;max-width:260px} .q img{width:240px;height:auto}
td{padding:0 .4em 0 0} .s{font-weight:600}
.pic{position:relative;width:160px;height:120px;margin-bottom:.3em}
.pic img{position:absolute;left:0;top:0;width:160px;height:120px;margin:0}
.pic img.ov{opacity:0;image-rendering:pixelated} .pic:hover img.ov{opacity:1}
.bar{display:flex;height:9px;width:160px;background:#eee;margin:.25em 0 .1em;border-radius:2px;overflow:hidden}
.bar span{display:block;height:100%} .why{font-size:.9em;color:#555}
.lic{font-size:.85em;color:#555;overflow-wrap:anywhere}
"""

# one colour per Gram tap stage (1-7); a skin Gram is drawn lighter than its lesion Gram
STAGE_COLOURS = ("#98a2b3", "#7a5af8", "#2e90fa", "#06aed4", "#12b76a", "#f79009", "#d92d20")


def style_bar_html(style: dict) -> str:
    """Each stored Gram's share of the style loss as a stacked bar (inline, no script)."""
    esc = html.escape
    spans = []
    for e in style["layers"]:
        if e["share"] <= 0:
            continue
        colour = STAGE_COLOURS[(e["stage"] - 1) % len(STAGE_COLOURS)]
        opacity = "0.45" if e["region"] == "skin" else "1"
        title = f"stage {e['stage']} {e['region']} (C={e['channels']}): {100 * e['share']:.1f}% of LS"
        spans.append(f"<span style='width:{100 * e['share']:.2f}%;background:{colour};opacity:{opacity}' "
                     f"title='{esc(title)}'></span>")
    top = max(style["layers"], key=lambda e: e["share"])
    return (f"<div class='bar' title='share of the style loss per layer'>{''.join(spans)}</div>"
            f"<div class='why'>LS {style['ls']:.4g}; most from stage {top['stage']} {esc(top['region'])} "
            f"({100 * top['share']:.0f}%)</div>")


def rights_html(hit) -> str:
    """The hit's licence and attribution (escaped; nothing when its source named neither)."""
    lines = [f"licence: {html.escape(hit.license)}" if getattr(hit, "license", None) else "",
             f"&copy; {html.escape(hit.attribution)}" if getattr(hit, "attribution", None) else ""]
    return "".join(f"<div class='lic'>{line}</div>" for line in lines if line)


def mask_html(mask: dict) -> str:
    return (f"<div class='why'>masks overlap {mask['overlap']} px of {mask['query_area']} (query) / "
            f"{mask['match_area']} (match): Dice {mask['dice']:.3f}</div>")


def write_contact_sheet(result: SearchResult, query_image, path: str | Path,
                        overlays: dict[str, bytes | None] | None = None) -> Path:
    """Write :func:`contact_sheet_html` to ``path`` atomically."""
    path = Path(path)
    write_text(path, contact_sheet_html(result, query_image, overlays))
    return path


def contact_sheet_html(result: SearchResult, query_image, overlays: dict[str, bytes | None] | None = None,
                       thumbnails: dict[str, str] | None = None) -> str:
    """A self-contained HTML page (thumbnails embedded): the query, then the top-k per measure.
    Hits with an ``explain`` block show a per-layer style-loss bar and the mask overlap; an
    ``overlays`` PNG (query mask over the hit's) appears when the pointer is over the image.
    ``query_image``: a path or bytes; ``thumbnails``: id -> data URI, else read from each hit's path."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>dermsearch: {esc(result.query)}</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>dermsearch results</h1>",
             f"<div class='card q'><img alt='query' src='{thumbnail_data_uri(query_image, 240)}'>"
             f"<div>query: {esc(result.query)}</div><div>{result.candidates} candidates</div></div>"]
    for msg in result.messages:
        parts.append(f"<p><em>{esc(msg)}</em></p>")
    thumbs: dict[str, str] = dict(thumbnails or {})
    for measure, hits in result.results.items():
        parts.append(f"<h2>{esc(MEASURE_INFO[measure][0])} <code>{measure}</code></h2>"
                     f"<p class='why'>{esc(MEASURE_INFO[measure][1])}</p><div class='row'>")
        for h in hits:
            if h.id not in thumbs:
                thumbs[h.id] = thumbnail_data_uri(h.path)
            c = h.components
            comps = "".join(f"<tr><td>{n}</td><td>{_fmt(c[k])}</td></tr>" for n, k in
                            (("ES", "euclidean"), ("CSnew", "cosine"), ("SS", "style"), ("DC", "dice")))
            cls = "card mel" if h.melanoma == 1 else "card"
            overlay = (overlays or {}).get(h.id)
            pic = f"<img alt='{esc(h.id)}' src='{thumbs[h.id]}'>"
            if overlay:
                pic = (f"<div class='pic'>{pic}<img class='ov' alt='mask overlap' title='green: both masks, "
                       f"red: query only, blue: match only' src='data:image/png;base64,"
                       f"{base64.b64encode(overlay).decode()}'></div>")
            why = ""
            if h.explain:
                why = (style_bar_html(h.explain["style"]) if "style" in h.explain else "") + (
                    mask_html(h.explain["mask"]) if "mask" in h.explain else "")
            parts.append(f"<div class='{cls}'>{pic}"
                         f"<div>#{h.rank} <b>{esc(h.id)}</b></div><div>{esc(h.diagnosis or '-')}</div>"
                         f"<div class='s'>score {h.score:.4f}</div><table>{comps}</table>{why}{rights_html(h)}</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
