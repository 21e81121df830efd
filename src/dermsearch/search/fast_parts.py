"""The pieces of fast mode (:mod:`dermsearch.search.fast`) outside its search steps: what its reader
and writer (:mod:`~dermsearch.search.fast_build`) share (count sketches, mask cell counts), the
positioned-read row reader, one query's state through the search steps and its result, and the
arithmetic on estimates."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine import Query, largest, normalise, smallest, top_k_rows
from .measures import MEASURE_COMPONENTS, measure_scores, normalised_by

__all__ = ["count_sketch", "cell_counts", "RowReader", "SearchPass", "FastResult", "rough_scores",
           "score_error_bound", "top_rows"]


def count_sketch(x: np.ndarray, order: np.ndarray, signs: np.ndarray, buckets: int, block: int = 256) -> np.ndarray:
    """[B, buckets] float32 count sketches of the rows of ``x`` [B, D]."""
    x = np.asarray(x, dtype=np.float32)
    starts = (np.arange(buckets, dtype=np.int64) * x.shape[1]) // buckets
    out = np.empty((x.shape[0], buckets), dtype=np.float32)
    for a in range(0, x.shape[0], block):
        out[a:a + block] = np.add.reduceat(x[a:a + block, order] * signs, starts, axis=1)
    return out


def cell_counts(masks_packed: np.ndarray, side: int, grid: int) -> np.ndarray:
    """[B, grid²] float32 pixel counts of bit-packed square masks."""
    bits = np.unpackbits(np.asarray(masks_packed, dtype=np.uint8), axis=1)[:, : side * side]
    cell = side // grid
    return bits.reshape(-1, grid, cell, grid, cell).sum(axis=(2, 4), dtype=np.int32).reshape(-1, grid * grid
                                                                                            ).astype(np.float32)


# ---------------------------------------------------------------------------------- querying
class RowReader:
    """Reads chosen rows of a 2-D ``.npy`` file with positioned reads from a few threads.

    Faster than fancy-indexing a memory map for scattered rows: no page-table work per 4 KB page,
    and reads from disk overlap when the file is larger than the page cache."""

    def __init__(self, path: Path, threads: int = 4):
        self.path = Path(path)
        mm = np.load(path, mmap_mode="r")
        self.shape, self.dtype, self.offset = mm.shape, mm.dtype, mm.offset
        self.row_bytes = int(np.prod(mm.shape[1:])) * mm.dtype.itemsize
        del mm
        self.fd = os.open(path, os.O_RDONLY)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="dermsearch-rows")
        self._local = threading.local()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """The rows, in a buffer owned by the calling thread and reused by its next call (a fresh
        array per query would cost a page fault per 4 KB)."""
        buf = getattr(self._local, "buffer", None)
        if buf is None or buf.shape[0] < len(rows):
            buf = self._local.buffer = np.zeros((max(len(rows), 2 * (0 if buf is None else buf.shape[0])),)
                                                + tuple(self.shape[1:]), dtype=self.dtype)
        out = buf[:len(rows)]
        self._read(rows, out)
        return out

    def _read(self, rows: np.ndarray, out: np.ndarray) -> None:
        flat = out.reshape(len(rows), -1).view(np.uint8)

        def read(part: np.ndarray) -> None:
            for j in part:
                view = memoryview(flat[j])
                got = os.preadv(self.fd, [view], self.offset + int(rows[j]) * self.row_bytes)
                if got != self.row_bytes:
                    raise OSError(f"short read of row {rows[j]}")

        parts = np.array_split(np.arange(len(rows)), min(len(rows), self.pool._max_workers) or 1)
        list(self.pool.map(read, parts))

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        os.close(self.fd)


@dataclass
class SearchPass:
    """One query on its way through the steps of fast mode's search (:class:`~dermsearch.search.fast.FastIndex`):
    what it asks, and its estimates of every row (PCA squared distances, their proven radii, the
    sketch-refined style estimate)."""

    query: Query
    k: int
    measures: tuple[str, ...]
    valid: np.ndarray
    rows_valid: np.ndarray
    invalid: np.ndarray
    est_f: np.ndarray | None = None
    rad_f: np.ndarray | None = None
    est_s: np.ndarray | None = None
    rad_s: np.ndarray | None = None
    rank_s: np.ndarray | None = None

    @property
    def needs(self) -> set[str]:
        return {c for m in self.measures for c in MEASURE_COMPONENTS[m]}

    def largest(self, scores: np.ndarray, c: int) -> np.ndarray:
        """The rows of the ``c`` largest valid ``scores`` (invalid rows already -inf)."""
        return self.rows_valid if c >= self.rows_valid.size else largest(scores, c)


@dataclass
class FastResult:
    """Per measure, the returned rows (best first) and their exact scores; plus what the query read."""

    rows: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    components: dict[str, np.ndarray]          # [n_reranked] exact normalised components of `reranked`
    raw: dict[str, np.ndarray]
    reranked: np.ndarray                        # rows scored exactly
    normalisers: dict[str, float]               # the maxima used (ED for ES, LS for SS)
    normaliser_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)  # certified [low, high]
    certified: dict[str, bool] = field(default_factory=dict)
    style_precision: str | None = None          # the style losses' rows when not all float32 (None: float32)


def rough_scores(components: dict[str, np.ndarray], measures: Sequence[str]) -> dict[str, np.ndarray]:
    """The measures of estimated components, in float32 and without the exact function's guards (a
    part <= 0 gives a score of about 0): they only choose candidates, over every row. A measure of
    one component *is* that component's array (not a copy: a million rows' copy costs more than
    the choice; callers may overwrite the scores of rows they rule out, which no later step reads)."""
    inv = {}
    for c, v in components.items():
        if any(len(MEASURE_COMPONENTS[m]) > 1 and c in MEASURE_COMPONENTS[m] for m in measures):
            r = np.maximum(np.asarray(v, dtype=np.float32), np.float32(1e-12))
            inv[c] = np.reciprocal(r, out=r)
    out = {}
    for m in measures:
        parts = MEASURE_COMPONENTS[m]
        if len(parts) == 1:
            out[m] = components[parts[0]]
            continue
        total = inv[parts[0]] + inv[parts[1]]
        for c in parts[2:]:
            total += inv[c]
        out[m] = np.divide(np.float32(len(parts)), total, out=total)
    return out


def estimated_component(values: np.ndarray, top: float) -> np.ndarray:
    """An estimated max-normalised component 1 − v/top of float32 estimates, in float32."""
    return normalised_by(values[None], np.array([top], dtype=np.float32))[0]


def components_of(raw: dict[str, np.ndarray], tops: dict[str, float]) -> dict[str, np.ndarray]:
    """ES, CSnew, SS, DC of one query's raw values (1-D) for scalar maxima."""
    comp = normalise({c: v[None] for c, v in raw.items()}, {c: np.array([t]) for c, t in tops.items()})
    return {c: v[0] for c, v in comp.items()}


def score_error_bound(value: float, low: float, high: float) -> float:
    """Largest |returned − exact| of a max-normalised score 1 − v/max, when the max used is
    ``low`` and the exact max lies in [low, high]."""
    if low <= 0:
        return 0.0
    return float(value) * (1.0 / low - 1.0 / high)


def top_rows(comp: dict[str, np.ndarray], measures: Sequence[str], rerank: np.ndarray, valid: np.ndarray,
         k: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The top ``k`` valid re-ranked rows per measure and their scores."""
    scores = measure_scores(comp, measures)
    rows_out, scores_out = {}, {}
    in_valid = valid[rerank]
    for m in measures:
        order = top_k_rows(scores[m], in_valid & ~np.isnan(scores[m]), k)[0]    # rerank is sorted: ties by row
        rows_out[m], scores_out[m] = rerank[order], scores[m][order]
    return rows_out, scores_out


def style_candidates(raw: dict[str, np.ndarray], rerank: np.ndarray, valid: np.ndarray, measures: Sequence[str],
                     wide: dict[str, np.ndarray], style_est: np.ndarray, est_f2_max: float, candidates: int,
                     k: int) -> list[np.ndarray]:
    """Stage B: the rows whose exact style rows are read (323 KB each). Per measure with style,
    stage A's rows (``wide``) re-scored with their exact feature and mask components (``raw``, for
    the sorted rows ``rerank``) and the style estimate (``style_est``, for the same rows), the best
    ``candidates`` kept; and the exact top ``k`` of the measures without style (known now: their
    components are exact for these rows), whose hits report a style too. ``est_f2_max``: the
    largest estimated squared feature distance over all valid rows (the ED normaliser's floor)."""
    with_style = [m for m in measures if "style" in MEASURE_COMPONENTS[m]]
    no_style = {c: v for c, v in raw.items() if c != "style"}
    e2 = raw["euclidean"] ** 2
    max_f = float(np.sqrt(max(e2[valid[rerank]].max(), est_f2_max)))
    refined = components_of(no_style, {"euclidean": max_f})
    refined["style"] = style_est
    refined_scores = measure_scores(refined, with_style)
    picked = []
    for m in with_style:
        pos = np.flatnonzero(np.isin(rerank, wide[m]))
        c = min(max(candidates, k), pos.size)
        picked.append(rerank[pos][smallest(-refined_scores[m][pos], c)])
    nonstyle = [m for m in measures if m not in with_style]
    if nonstyle:
        e2v = np.where(valid[rerank], e2, np.nan)
        ed_top = float(np.sqrt(np.nanmax(e2v))) if np.isfinite(e2v).any() else 0.0
        exact_scores = measure_scores(components_of(no_style, {"euclidean": ed_top}), nonstyle)
        picked += [rerank[top_k_rows(exact_scores[m], valid[rerank] & ~np.isnan(exact_scores[m]), k)[0]]
                   for m in nonstyle]
    return picked
