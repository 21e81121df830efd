"""Fast mode's search steps around its re-rank rows (:mod:`.fast`, :mod:`.fast_rows`): exact
scores from compact (fp16, int8) re-rank rows where the full rows are at hand, the style of hits
not read yet, rows' vectors and labels without the exact engine, a ranking's notes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..extract.vectors import Vectors
from ..index.fastfiles import index_identity
from .engine import Query
from .fast_parts import FastResult, components_of, top_rows
from .measures import MEASURE_COMPONENTS, measure_scores

__all__ = ["exact_near_max", "exact_hits", "fill_style", "take_rows", "ranking_notes", "fast_labels"]


def _spread(fast, ls: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """How far a style loss from compact rows may lie from the float32 one: ``|LS − LŜ| ≤
    2·√LŜ·e + e²`` with ``e = ‖x − x̂‖`` (``√LS`` and ``√LŜ`` differ by at most ``e``)."""
    e = fast.arrays["style_code_err"][rows]
    return 2.0 * np.sqrt(np.maximum(ls, 0.0)) * e + e * e


def _read_exact(fast, query: Query, raw: dict[str, np.ndarray], rerank: np.ndarray, exact_ls: np.ndarray,
                pos: np.ndarray) -> None:
    raw["style"][pos] = fast._exact_raw(query, rerank[pos], True, full=True)["style"]
    exact_ls[pos] = True


def exact_near_max(fast, query: Query, valid: np.ndarray, raw: dict[str, np.ndarray], rerank: np.ndarray,
                   exact_ls: np.ndarray) -> None:
    """Compact re-rank rows with the full rows at hand: the style losses of the rows that may
    hold the maximum (their interval ``LŜ ± spread`` reaches the largest lower bound) read in
    float32, so the SS normaliser is the exact one."""
    if fast.full_rows is None or exact_ls.all():
        return
    ls = raw["style"]
    pos = np.flatnonzero(~np.isnan(ls) & valid[rerank] & ~exact_ls)
    if pos.size:
        spread = _spread(fast, ls[pos], rerank[pos])
        _read_exact(fast, query, raw, rerank, exact_ls, pos[ls[pos] + spread >= np.max(ls[pos] - spread)])


def _may_enter(fast, raw, rerank, ok, exact_ls, normalisers, rows_out, k) -> np.ndarray:
    """Re-ranked rows whose style loss is still the compact one and whose best case (the loss's
    lower bound; a harmonic mean rises with each part) reaches a measure's k-th returned score."""
    ls = raw["style"]
    open_rows = ~exact_ls & ~np.isnan(ls) & ok
    with_style = [m for m in rows_out if "style" in MEASURE_COMPONENTS[m] and rows_out[m].size >= k]
    if not open_rows.any() or not with_style:
        return np.zeros(0, dtype=np.int64)
    scores = measure_scores(components_of(raw, normalisers), with_style)
    low = np.where(open_rows, np.maximum(ls - _spread(fast, np.nan_to_num(ls), rerank), 0.0), ls)
    best = measure_scores(components_of({**raw, "style": low}, normalisers), with_style)
    may = np.zeros(rerank.size, dtype=bool)
    for m in with_style:
        may |= open_rows & (best[m] >= scores[m][np.searchsorted(rerank, rows_out[m])].min())
    return np.flatnonzero(may)


def exact_hits(fast, query: Query, measures: Sequence[str], rerank: np.ndarray, valid: np.ndarray, k: int,
               raw: dict[str, np.ndarray], normalisers: dict[str, float], exact_ls: np.ndarray,
               rows_out: dict[str, np.ndarray]):
    """The returned rows' style losses, and those of the rows that may still enter a top k, read
    in float32 and the rows re-ranked until no such row is left (a few rounds; then the hits are
    scored exactly and re-sorted)."""
    ok = valid[rerank]
    for _ in range(4):
        hits = np.searchsorted(rerank, np.unique(np.concatenate(list(rows_out.values()))))
        todo = np.union1d(hits[~exact_ls[hits]], _may_enter(fast, raw, rerank, ok, exact_ls, normalisers, rows_out, k))
        if not todo.size:
            break
        _read_exact(fast, query, raw, rerank, exact_ls, todo)
        comp = components_of(raw, normalisers)
        rows_out, _ = top_rows(comp, measures, rerank, valid, k)
        fill_style(fast, query, rows_out, rerank, raw, comp, normalisers)
    hits = np.searchsorted(rerank, np.unique(np.concatenate(list(rows_out.values()))))
    if (~exact_ls[hits]).any():
        _read_exact(fast, query, raw, rerank, exact_ls, hits[~exact_ls[hits]])
    comp = components_of(raw, normalisers)
    scores = measure_scores(comp, measures)
    scores_out = {}
    for m in measures:
        at = np.searchsorted(rerank, rows_out[m])
        order = np.argsort(-scores[m][at], kind="stable")
        rows_out[m], scores_out[m] = rows_out[m][order], scores[m][at][order]
    return comp, rows_out, scores_out


def take_rows(fast, rows) -> Vectors:
    """Rows' vectors of a fast-mode index whose exact engine is not open: the style rows from the
    full rows where there are any, else the compact re-rank rows decoded."""
    rows = np.asarray(rows, dtype=np.int64)
    a = fast.arrays
    styles = np.array((fast.full_rows or fast.style_rows)(rows), dtype=np.float32)
    masks, areas = a.get("masks"), a.get("mask_areas")
    return Vectors(np.asarray(a["features"][rows]), styles, None if masks is None else np.asarray(masks[rows]),
                   None if areas is None else np.asarray(areas[rows]))


def ranking_notes(r: FastResult, precision: str) -> list[str]:
    """The first notes of a fast-mode ranking: what it re-ranked with, and whether its style
    scores are exact."""
    notes = [f"fast mode: {r.reranked.size} rows re-ranked with exact vectors" if precision == "float32"
             else f"fast mode: {r.reranked.size} rows re-ranked with {precision} style vectors"]
    if r.style_precision == "float32":
        notes.append("scores exact: the returned rows' style losses read from the full float32 rows")
    elif r.style_precision is not None:
        notes.append(f"style scores computed from the {r.style_precision} rows (no full rows kept): not exact float32")
    return notes


def fast_labels(directory: Path, manifest: dict, n: int) -> dict[str, np.ndarray] | None:
    """:meth:`FastIndex.rows <dermsearch.search.fast.FastIndex.rows>`: the labels in ``rows.json``
    when they are there, readable and of the index of ``manifest`` with ``n`` rows."""
    try:
        r = json.loads((directory / "rows.json").read_text())
    except (OSError, ValueError):
        return None
    if r.get("identity") != index_identity(manifest) or r.get("rows") != n:
        return None
    obj = {k: np.array(r[k], dtype=object) for k in ("paths", "diagnosis", "lesion_id", "meta_json")}
    obj["melanoma"] = np.array([np.nan if v is None else v for v in r["melanoma"]], dtype=np.float64)
    return obj


def fill_style(fast, query: Query, rows_out: dict[str, np.ndarray], rerank: np.ndarray,
                raw: dict[str, np.ndarray], comp: dict[str, np.ndarray], normalisers: dict[str, float]) -> None:
    """Every hit reports all four components: the style of returned rows not read yet."""
    ls = raw["style"]
    hits = np.unique(np.concatenate(list(rows_out.values())))
    missing = hits[np.isnan(ls[np.searchsorted(rerank, hits)])]
    if missing.size:
        ls[np.searchsorted(rerank, missing)] = fast._exact_raw(query, missing, with_style=True)["style"]
        comp["style"] = components_of({"style": ls}, normalisers)["style"]
