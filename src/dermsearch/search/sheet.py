"""The HTML contact sheet of a :class:`SearchResult`: self-contained (thumbnails embedded), no script.

Rendered by Jinja2 from ``search/templates`` with autoescaping on: every id, diagnosis, message,
licence and attribution is text, never markup. Used by ``dermsearch search --html`` and by the web
API's export (``format=html``).
"""

from __future__ import annotations

import base64
from functools import cache
from pathlib import Path

from jinja2 import Environment

from ..extract.images import thumbnail_data_uri
from ..io import write_text
from ..templating import package_env
from .measures import MEASURE_INFO
from .searcher import SearchResult

__all__ = ["contact_sheet_html", "write_contact_sheet", "style_bar_html", "mask_html", "rights_html",
           "STAGE_COLOURS"]

# one colour per Gram tap stage (1-7); a skin Gram is drawn lighter than its lesion Gram
STAGE_COLOURS = ("#98a2b3", "#7a5af8", "#2e90fa", "#06aed4", "#12b76a", "#f79009", "#d92d20")


@cache
def _env() -> Environment:
    env = package_env("search/templates")
    env.globals["stage_colours"] = STAGE_COLOURS
    return env


def _parts():
    return _env().get_template("sheet_parts.html").module


def style_bar_html(style: dict) -> str:
    """Each stored Gram's share of the style loss as a stacked bar (inline, no script)."""
    return str(_parts().style_bar(style))


def rights_html(hit) -> str:
    """The hit's licence and attribution (escaped; nothing when its source named neither)."""
    return str(_parts().rights(getattr(hit, "license", None), getattr(hit, "attribution", None)))


def mask_html(mask: dict) -> str:
    return str(_parts().mask(mask))


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
    thumbs: dict[str, str] = dict(thumbnails or {})
    for hits in result.results.values():
        for h in hits:
            if h.id not in thumbs:
                thumbs[h.id] = thumbnail_data_uri(h.path)
    pngs = {i: base64.b64encode(png).decode() for i, png in (overlays or {}).items() if png}
    return _env().get_template("contact_sheet.html").render(
        result=result, query_uri=thumbnail_data_uri(query_image, 240), thumbs=thumbs, overlays=pngs,
        measure_info=MEASURE_INFO)
