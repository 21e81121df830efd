"""The exact engine: raw and normalised components of a batch of queries against every row.

The cost of exact search is reading the index matrices, so each is read once per batch of
queries: one matrix product ``Q @ Fᵀ`` gives both the Euclidean and the cosine terms, one
``Q @ Sᵀ`` the style losses, and the bit-packed masks are read once for the Dice overlaps. A
batch of B queries therefore costs about one pass over memory, not B (matrix-matrix products).
The matrices may be in RAM or memory-mapped files; nothing here copies them.

Precision: products are float32 (BLAS); everything after them is float64. Squared distances
use ||q||² + ||x||² − 2 q·x, and the pairs where that would cancel (closer than
``RECHECK_FRACTION`` of the norms: near-duplicates) are recomputed from their differences in
float64, so near-duplicate distances keep full precision (``docs/performance.md``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError
from ..extract.vectors import Vectors
from .kernels import KERNELS, SMALL_PRODUCT, chooser, tuned_products
from .measures import (
    cosine_new,
    cosines_from_dots,
    dice_from_intersections,
    distances_from_dots,
    mask_intersections,
    measure_scores,
    normalised_by,
    row_maxima,
    row_sqnorms,
    stored_components,
)
from .select import kth_largest, largest, smallest, top_k_rows

__all__ = ["Query", "Ranked", "QueryRanking", "Engine", "RawEngine", "ExhaustiveEngine", "ExactEngine", "maxima",
           "normalise", "rank_rows", "empty_rankings", "merge_rankings", "top_k_rows", "largest", "smallest",
           "kth_largest", "dead_style_ranges", "live_style_blocks", "checked_style_blocks",
           "block_columns", "outside_sqnorms"]

Blocks = tuple[tuple[int, int], ...]


def dead_style_ranges(layout: Sequence[dict]) -> list[tuple[int, int]]:
    """Column ranges ``[a, b)`` of the packed style vector whose Gram weight β is 0 (adjacent
    ones merged), from an index manifest's ``style_layers``: extraction multiplies those Grams by
    0, so a row holds zeros there and a product over those columns adds nothing."""
    out: list[tuple[int, int]] = []
    for e in layout or []:
        if float(e.get("beta", 1.0)) != 0.0:
            continue
        a, b = int(e["offset"]), int(e["offset"]) + int(e["size"])
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def live_style_blocks(width: int, dead: Sequence[tuple[int, int]]) -> Blocks | None:
    """The column ranges left once ``dead`` ones are skipped; None when nothing is skipped or
    nothing is left (then every column is read, as before)."""
    live, at = [], 0
    for a, b in sorted(dead):
        if a > at:
            live.append((at, a))
        at = max(at, b)
    if at < width:
        live.append((at, width))
    live = [(a, b) for a, b in live if b > a]
    return None if live == [(0, width)] or not dead or not live else tuple(live)


def dead_columns_zero(styles: np.ndarray, dead: Sequence[tuple[int, int]], chunk: int = 2048) -> bool:
    """Whether every row of ``styles`` is exactly 0 in the ``dead`` column ranges."""
    for s in range(0, styles.shape[0], chunk):
        for a, b in dead:
            if np.any(np.asarray(styles[s:s + chunk, a:b])):
                return False
    return True


def block_columns(S, blocks, rows=slice(None)) -> np.ndarray:
    """``S[rows]`` restricted to the column ``blocks`` side by side (every column for None),
    float32 in RAM; only those columns are read from a memory map."""
    if blocks is None:
        return np.asarray(S[rows], dtype=np.float32)
    return np.concatenate([np.asarray(S[rows, a:b], dtype=np.float32) for a, b in blocks], axis=-1)


def outside_sqnorms(S: np.ndarray, blocks) -> np.ndarray:
    """[B] float64 ‖s‖² of each row of ``S`` [B, D] over the columns in no block (0 for None)."""
    S64 = np.asarray(S, dtype=np.float64)
    total, at = np.zeros(S64.shape[0]), 0
    for a, b in (*(blocks or ()), (S64.shape[1], S64.shape[1])):
        total += np.einsum("ij,ij->i", S64[:, at:a], S64[:, at:a])
        at = b
    return total


def checked_style_blocks(styles: np.ndarray | None, layout: Sequence[dict]) -> Blocks | None:
    """The live column blocks of ``styles`` (:func:`live_style_blocks` of the zero-β Grams), after
    checking that every row is 0 in the columns skipped: None when nothing is skipped or a row is
    not (then every column is read, as before)."""
    if styles is None or not (dead := dead_style_ranges(layout)):
        return None
    if max(b for _a, b in dead) > styles.shape[1] or not dead_columns_zero(styles, dead):
        return None
    return live_style_blocks(styles.shape[1], dead)


@dataclass(frozen=True)
class Query:
    """The extracted form of one query image."""

    feature: np.ndarray
    style: np.ndarray | None = None
    mask: np.ndarray | None = None      # bit-packed
    mask_area: int = 0
    label: str = "query"

    @classmethod
    def from_row(cls, vectors: Vectors, i: int = 0, label: str = "query") -> Query:
        """Row ``i`` of a set of vectors, as a query."""
        v = vectors.take(slice(i, i + 1))
        return cls(np.asarray(v.features[0]), None if v.styles is None else np.asarray(v.styles[0]),
                   None if v.masks is None else np.asarray(v.masks[0]),
                   0 if v.mask_areas is None else int(v.mask_areas[0]), label)

    @staticmethod
    def batch(queries: Sequence[Query]) -> Vectors:
        """Queries stacked for the matrix-matrix products (a component is kept when all have it)."""
        if not queries:
            raise ConfigError("no queries")
        has_style = all(q.style is not None for q in queries)
        has_mask = all(q.mask is not None for q in queries)
        return Vectors(np.stack([np.asarray(q.feature, np.float32) for q in queries]),
                       np.stack([np.asarray(q.style, np.float32) for q in queries]) if has_style else None,
                       np.stack([np.asarray(q.mask, np.uint8) for q in queries]) if has_mask else None,
                       np.array([q.mask_area for q in queries], dtype=np.int64) if has_mask else None)


@dataclass
class Ranked:
    """One query's best rows by one measure, best first, with every component of those rows."""

    rows: np.ndarray                      # int64 row numbers of the engine's index
    scores: np.ndarray                    # float64, the measure's score of each row
    components: dict[str, np.ndarray]     # normalised components (ES, CSnew, SS, DC) of each row
    raw: dict[str, np.ndarray]            # raw values (ED, CS, LS, DC) of each row

    def take(self, order: np.ndarray) -> Ranked:
        return Ranked(self.rows[order], self.scores[order], {c: v[order] for c, v in self.components.items()},
                      {c: v[order] for c, v in self.raw.items()})

    @staticmethod
    def empty(components=(), raw=()) -> Ranked:
        return Ranked(np.zeros(0, np.int64), np.zeros(0), {c: np.zeros(0) for c in components},
                      {c: np.zeros(0) for c in raw})


@dataclass
class QueryRanking:
    """What an engine returns for one query: per measure its :class:`Ranked` rows, and notes
    (e.g. what an approximate engine certified)."""

    measures: dict[str, Ranked]
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class Engine(Protocol):
    """The contract every search engine (exact, fast, sharded) keeps: rank a batch of queries
    over its rows, restricted per query by ``valid`` ([B, N] booleans: the candidates), with the
    max-normalisers of ES and SS taken over each query's candidates (SPEC section 2); and give
    back stored rows. Ranks are by score, ties in row order; ``k <= 0`` ranks every candidate."""

    kernel: str | None

    def __len__(self) -> int: ...

    @property
    def components(self) -> tuple[str, ...]: ...

    def rank(self, batch: Vectors, valid: np.ndarray, measures: Sequence[str], k: int) -> list[QueryRanking]: ...

    def take(self, rows: Sequence[int]) -> Vectors: ...


@runtime_checkable
class RawEngine(Engine, Protocol):
    """An engine that computes every row's raw values (exact and device): ``raw`` gives [B, N]
    ED, CS, LS and DC of a batch over all rows (the ``components`` asked for, default all it
    stores), and ``rank`` is :func:`rank_rows` over them. The fast, certified and sharded engines
    build on an exact engine's ``raw`` for the rows they measure; they keep only :class:`Engine`."""

    def raw(self, batch: Vectors, components: Sequence[str] | None = None) -> dict[str, np.ndarray]: ...


class ExhaustiveEngine:
    """What the engines that compute every row (:class:`RawEngine`) share: the empty-index guard,
    the ranking of their raw values, and the components their stored matrices allow. A subclass
    has ``styles`` and ``masks`` (None when the index stores none) and ``raw``."""

    styles: object
    masks: object

    def __len__(self) -> int:
        raise NotImplementedError

    def raw(self, batch: Vectors, components: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @property
    def components(self) -> tuple[str, ...]:
        return stored_components(self.styles is not None, self.masks is not None)

    def rank(self, batch: Vectors, valid: np.ndarray, measures: Sequence[str], k: int) -> list[QueryRanking]:
        """The contract (:class:`Engine`): one pass over the matrices for the whole batch."""
        if not len(self):
            return empty_rankings(len(batch), measures)
        return rank_rows(self.raw(batch), valid, measures, k)


def empty_rankings(queries: int, measures: Sequence[str], notes: Sequence[str] = ()) -> list[QueryRanking]:
    """What any engine returns over no rows: every measure empty, for each of ``queries``."""
    return [QueryRanking({m: Ranked.empty() for m in measures}, list(notes)) for _ in range(queries)]


def maxima(raw: dict[str, np.ndarray], valid: np.ndarray) -> dict[str, np.ndarray]:
    """[B] max-normalisers of ES (max ED) and SS (max LS) over each query's valid rows."""
    return {c: row_maxima(raw[c], valid) for c in ("euclidean", "style") if c in raw}


def normalise(raw: dict[str, np.ndarray], tops: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ES, CSnew, SS, DC of [B, n] raw values, given each query's maxima ``tops`` ([B]) of ED
    and LS (:func:`maxima`; a shard gets the global ones)."""
    comp = {}
    if "euclidean" in raw:
        comp["euclidean"] = normalised_by(raw["euclidean"], tops["euclidean"])
    if "cosine" in raw:
        comp["cosine"] = cosine_new(raw["cosine"])
    if "style" in raw:
        comp["style"] = normalised_by(raw["style"], tops["style"])
    if "dice" in raw:
        comp["dice"] = raw["dice"]
    return comp


def rank_rows(raw: dict[str, np.ndarray], valid: np.ndarray, measures: Sequence[str], k: int,
              tops: dict[str, np.ndarray] | None = None, rows: np.ndarray | None = None) -> list[QueryRanking]:
    """Rank [B, n] raw values: normalise (by ``tops``, else each query's own maxima), score the
    measures, keep each query's top ``k`` valid entries. ``rows``: the row number of each column
    (default ``0..n-1``; a shard passes its global row numbers). Every engine ends here."""
    comp = normalise(raw, maxima(raw, valid) if tops is None else tops)
    scores = measure_scores(comp, measures)
    out = []
    for j in range(valid.shape[0]):
        per = {}
        for m in measures:
            top = top_k_rows(scores[m][j], valid[j], k)[0]
            per[m] = Ranked(top if rows is None else rows[top], scores[m][j, top],
                            {c: v[j, top] for c, v in comp.items()}, {c: v[j, top] for c, v in raw.items()})
        out.append(QueryRanking(per))
    return out


def merge_rankings(parts: Sequence[QueryRanking], k: int) -> QueryRanking:
    """One query's rankings over disjoint row sets (shards), merged into the top ``k`` over all:
    the same order as one ranking over every row (by score, ties by row number)."""
    merged = {}
    for m in parts[0].measures:
        pieces = [p.measures[m] for p in parts]
        allrows = Ranked(np.concatenate([p.rows for p in pieces]), np.concatenate([p.scores for p in pieces]),
                         {c: np.concatenate([p.components[c] for p in pieces]) for c in pieces[0].components},
                         {c: np.concatenate([p.raw[c] for p in pieces]) for c in pieces[0].raw})
        by_row = allrows.take(np.argsort(allrows.rows, kind="stable"))
        merged[m] = by_row.take(top_k_rows(by_row.scores, np.ones(by_row.rows.size, bool), k)[0])
    return QueryRanking(merged, [n for p in parts for n in p.notes])


class ExactEngine(ExhaustiveEngine):
    """Exact components over matrices that stay where they are (RAM or memory map)."""

    def __init__(self, features: np.ndarray, styles: np.ndarray | None = None, masks: np.ndarray | None = None,
                 mask_areas: np.ndarray | None = None, feature_sqnorms: np.ndarray | None = None,
                 style_sqnorms: np.ndarray | None = None, product=None, kernel: str | None = None,
                 style_blocks: Sequence[Sequence[int]] | None = None):
        """``product``: a ``Q @ Xᵀ`` function; else ``kernel`` (numpy or torch; default: numpy for
        small matrices, else the kernel this process's :class:`~dermsearch.search.kernels.KernelChooser`
        picks: the calibrated one, kept checked while the process runs).

        ``style_blocks``: the column ranges ``[a, b)`` of the style matrix where rows may be non-zero
        (:func:`checked_style_blocks`: the caller has checked the other columns hold zeros in every
        row). The style product reads only those (strided views of the same matrix, nothing
        copied): the Grams whose weight β is 0 are never read. Norms and the values returned are
        those of the whole vectors; a query may have any values in the skipped columns."""
        if product is None:
            width = max(features.shape[1], 0 if styles is None else styles.shape[1])
            if kernel is not None:
                product = KERNELS[kernel]
            elif features.shape[0] * width < SMALL_PRODUCT:
                kernel, product = "numpy", KERNELS["numpy"]
            else:
                product = tuned_products
        self.product, self._kernel = product, kernel

        self.features, self.styles, self.masks = features, styles, masks
        self.style_blocks: Blocks | None = None
        if style_blocks is not None and styles is not None:
            blocks = tuple((int(a), int(b)) for a, b in style_blocks)
            if any(not 0 <= a < b <= styles.shape[1] for a, b in blocks) or any(
                    blocks[i][1] > blocks[i + 1][0] for i in range(len(blocks) - 1)):
                raise ValueError(f"style blocks {blocks} are not ordered ranges within {styles.shape[1]} columns")
            self.style_blocks = None if blocks == ((0, styles.shape[1]),) else blocks
        self.mask_areas = None if mask_areas is None else np.asarray(mask_areas)
        # ||x||² per row, float64, computed once per index version
        self.feature_sqnorms = row_sqnorms(features) if feature_sqnorms is None else feature_sqnorms
        self.style_sqnorms = None if styles is None else (
            row_sqnorms(styles) if style_sqnorms is None else style_sqnorms)

    @property
    def kernel(self) -> str | None:
        """The kernel serving this engine's products now (None for a given product function)."""
        if self.product is tuned_products:
            return os.environ.get("DERMSEARCH_KERNEL") or chooser().current
        return self._kernel

    @classmethod
    def of(cls, vectors: Vectors, **kwargs) -> ExactEngine:
        return cls(*vectors.arrays(), **kwargs)

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def vectors(self) -> Vectors:
        return Vectors(self.features, self.styles, self.masks, self.mask_areas)

    def take(self, rows: Sequence[int]) -> Vectors:
        return self.vectors.take(np.asarray(rows, dtype=np.int64))

    @property
    def style_width_read(self) -> int:
        """Style columns a product reads (all of them, or the live blocks)."""
        if self.styles is None:
            return 0
        return self.styles.shape[1] if self.style_blocks is None else sum(b - a for a, b in self.style_blocks)

    @property
    def stored_bytes_per_query(self) -> int:
        """Bytes every stored matrix holds (what a query read before any column was skipped):
        the yardstick of the bandwidth bound."""
        if self.styles is None:
            return self.bytes_per_query
        extra = len(self) * (self.styles.shape[1] - self.style_width_read) * self.styles.itemsize
        return self.bytes_per_query + extra

    @property
    def bytes_per_query(self) -> int:
        """Bytes one exact query (or one batch) reads: every matrix once (the style matrix's live
        blocks), plus the row norms."""
        total = self.features.nbytes + self.feature_sqnorms.nbytes
        if self.styles is not None:
            total += len(self) * self.style_width_read * self.styles.itemsize + self.style_sqnorms.nbytes
        if self.masks is not None:
            total += self.masks.nbytes + self.mask_areas.nbytes
        return int(total)

    def raw(self, Q: Vectors, components: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """[B, N] raw values over every row: ``euclidean`` (ED), ``cosine`` (CS), ``style`` (LS), ``dice`` (DC)."""
        want = set(components or self.components)
        out: dict[str, np.ndarray] = {}
        if want & {"euclidean", "cosine"}:
            F = np.asarray(Q.features, dtype=np.float32)
            q_sq = row_sqnorms(F)
            dots = self.product(F, self.features)   # one pass over the feature matrix for both measures
            if "euclidean" in want:
                out["euclidean"] = np.sqrt(distances_from_dots(dots, F, self.features, q_sq, self.feature_sqnorms))
            if "cosine" in want:
                out["cosine"] = cosines_from_dots(dots, q_sq, self.feature_sqnorms)
        if "style" in want and self.styles is not None and Q.styles is not None:
            S = np.asarray(Q.styles, dtype=np.float32)
            out["style"] = distances_from_dots(self.style_products(S), S, self.styles, row_sqnorms(S),
                                               self.style_sqnorms)
        if "dice" in want and self.masks is not None and Q.masks is not None:
            out["dice"] = dice_from_intersections(mask_intersections(Q.masks, self.masks), Q.mask_areas,
                                                  self.mask_areas)
        return out

    def style_products(self, S: np.ndarray) -> np.ndarray:
        """[B, N] float32 ``S @ stylesᵀ`` over the live column blocks (all columns without them)."""
        if self.style_blocks is None:
            return self.product(S, self.styles)
        out = None
        for a, b in self.style_blocks:
            part = self.product(S[:, a:b], self.styles[:, a:b])
            out = part if out is None else out + part
        return out
