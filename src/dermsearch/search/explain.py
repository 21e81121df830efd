"""Why a match matched: each stored Gram's share of the style loss, and where the masks agree.

For a query and one hit (computed for the top k only, from the stored rows):

``{"style": {"ls": LS, "layers": [{"stage", "region", "channels", "ls", "share"}, ...]},
   "mask": {"size", "query_area", "match_area", "overlap", "dice"}}``

``layers[i].ls`` sum to ``ls`` (the raw style loss of the hit, float64 from the stored float32
vectors); ``share`` = ls_i / LS (all 0 when LS = 0). ``mask`` counts pixels of the stored masks
(``size`` x ``size``); ``dice`` = 2 overlap / (query_area + match_area), 1 when both are empty.
A part is absent when the index stores no style vectors or no masks. :func:`overlap_png` draws
the two masks over each other (the overlay of the contact sheet and the web page).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..extract.masks import unpack_mask
from .measures import dice

__all__ = ["layer_losses", "style_explanation", "mask_explanation", "overlap_png", "mask_png", "OVERLAP_COLOURS"]

# RGBA: both masks, the query's only, the match's only (transparent where neither).
OVERLAP_COLOURS = {"both": (18, 183, 106, 170), "query": (217, 45, 32, 150), "match": (46, 144, 250, 150)}


def style_explanation(query_style: np.ndarray, row_styles: np.ndarray, layout: Sequence[dict]) -> list[dict]:
    """One ``{"ls", "layers"}`` dict per row of ``row_styles`` [R, S]."""
    per = layer_losses(query_style, np.atleast_2d(row_styles), layout)
    out = []
    for row in per:
        total = float(row.sum())
        out.append({"ls": total, "layers": [
            {"stage": e["stage"], "region": e["region"], "channels": e["channels"], "ls": float(v),
             "share": float(v / total) if total > 0 else 0.0} for e, v in zip(layout, row)]})
    return out


def mask_explanation(query_packed: np.ndarray, row_packed: np.ndarray, size: int) -> dict:
    q, m = unpack_mask(query_packed, size), unpack_mask(row_packed, size)
    qa, ma, both = int(q.sum()), int(m.sum()), int((q & m).sum())
    return {"size": size, "query_area": qa, "match_area": ma, "overlap": both, "dice": float(dice(both, qa + ma))}


def overlap_png(query_packed: np.ndarray, row_packed: np.ndarray, size: int) -> bytes:
    """An RGBA PNG (size x size): green where both masks are set, red the query's alone, blue the match's."""
    q, m = unpack_mask(query_packed, size), unpack_mask(row_packed, size)
    img = np.zeros((size, size, 4), np.uint8)
    img[q & m] = OVERLAP_COLOURS["both"]
    img[q & ~m] = OVERLAP_COLOURS["query"]
    img[~q & m] = OVERLAP_COLOURS["match"]
    return _png(img)


def mask_png(packed: np.ndarray, size: int, colour: tuple[int, int, int, int]) -> bytes:
    """One stored mask as an RGBA PNG overlay: ``colour`` where set, transparent elsewhere."""
    m = unpack_mask(packed, size)
    img = np.zeros((size, size, 4), np.uint8)
    img[m] = colour
    return _png(img)


def _png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def layer_losses(q: np.ndarray, rows: np.ndarray, layout: Sequence[dict]) -> np.ndarray:
    """Each stored Gram's share of LS: [R, L] with Σ_l = LS(q, row) (float64). ``q`` [S], ``rows`` [R, S]."""
    d = np.asarray(rows, dtype=np.float64) - np.asarray(q, dtype=np.float64)[None, :]
    return np.stack([np.einsum("ij,ij->i", d[:, e["offset"]:e["offset"] + e["size"]],
                               d[:, e["offset"]:e["offset"] + e["size"]]) for e in layout], axis=1)
