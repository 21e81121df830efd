"""The search API: :class:`Searcher` ranks the candidates of an index by the ten measures."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..extract import Extractor, load_image
from ..index import Index
from .measures import (
    COMPONENTS,
    MEASURE_COMPONENTS,
    MEASURES,
    cosine_new,
    cosine_similarities,
    dice_coefficients,
    euclidean_distances,
    max_normalised,
    measure_scores,
    row_sqnorms,
    style_losses,
)

__all__ = ["Filters", "Hit", "Query", "SearchResult", "Searcher"]

_COMPONENT_NEEDS = {"style": "styles", "dice": "masks"}
_RAW_KEYS = {"euclidean": "ed", "cosine": "cs", "style": "ls", "dice": "dice"}


@dataclass(frozen=True)
class Query:
    """The extracted form of a query image."""

    feature: np.ndarray
    style: np.ndarray | None = None
    mask: np.ndarray | None = None      # bit-packed
    mask_area: int = 0
    label: str = "query"


@dataclass(frozen=True)
class Filters:
    """Restrict the candidate set (and therefore the max-normalisers of ES and SS).

    ``equals``: column -> allowed values (case-insensitive); a column is ``diagnosis``,
    ``lesion_id``, ``melanoma`` or any labels-CSV column. ``ranges``: column -> (low, high),
    inclusive, either end ``None``; rows whose value is missing or not a number are dropped.
    """

    equals: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.equals or self.ranges)


@dataclass
class Hit:
    rank: int
    id: str
    score: float
    path: str
    diagnosis: str | None
    components: dict[str, float | None]
    raw: dict[str, float | None]
    melanoma: int | None = None
    lesion_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "id": self.id, "score": self.score, "path": self.path,
                "diagnosis": self.diagnosis, "components": self.components, "raw": self.raw}


@dataclass
class SearchResult:
    query: str
    k: int
    candidates: int
    results: dict[str, list[Hit]]
    messages: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "query": self.query, "k": self.k, "candidates": self.candidates,
            "results": {m: [h.to_json() for h in hits] for m, hits in self.results.items()},
        }
        if self.messages:
            out["messages"] = self.messages
        return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first; ties keep index order (deterministic).
    ``k <= 0`` ranks everything."""
    n = scores.shape[0]
    neg = -scores
    if k <= 0 or k >= n:
        return np.argsort(neg, kind="stable")
    kth = np.partition(neg, k - 1)[k - 1]
    cand = np.flatnonzero(neg <= kth)
    return cand[np.argsort(neg[cand], kind="stable")][:k]


class Searcher:
    """Exact search over one consistent version of an index.

    >>> s = Searcher("my-index")
    >>> result = s.search("lesion.jpg", k=5)
    >>> result.results["style"][0].id
    """

    def __init__(self, index: Index | str | os.PathLike, extractor: Extractor | None = None, device: str = "auto"):
        self.index = index if isinstance(index, Index) else Index.open(index)
        self._extractor = extractor
        self.device = device          # where queries are encoded (``auto``: CUDA when torch sees it)
        if extractor is not None:
            self.index.check_fingerprint(extractor.fingerprint, extractor.config)
        self.refresh()

    # ------------------------------------------------------------------ setup
    def refresh(self) -> None:
        """Load the index's newest version (and the row norms the measures reuse)."""
        s = self.snapshot = self.index.snapshot()
        self._positions = {i: n for n, i in enumerate(s.ids)}
        self._meta_cache: list[dict] | None = None
        self._feature_sqnorms = row_sqnorms(s.features)
        self._style_sqnorms = None if s.styles is None else row_sqnorms(s.styles)

    def row(self, image_id: str) -> int | None:
        """Position of an id in the current snapshot (None when absent)."""
        return self._positions.get(image_id)

    def metadata(self) -> list[dict]:
        """Every row's labels-CSV columns, parsed once per snapshot."""
        if self._meta_cache is None:
            self._meta_cache = [json.loads(m) for m in self.snapshot.meta_json]
        return self._meta_cache

    @property
    def row_sqnorms(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Cached float64 ||x||² of the feature and style rows (for batched distances)."""
        return self._feature_sqnorms, self._style_sqnorms

    @property
    def extractor(self) -> Extractor:
        """The index's own model, built on first use (never a different one)."""
        if self._extractor is None:
            extractor = Extractor(self.index.extractor_config, device=self.device)
            self.index.check_fingerprint(extractor.fingerprint, extractor.config)
            self._extractor = extractor
        return self._extractor

    @property
    def available_components(self) -> tuple[str, ...]:
        s = self.snapshot
        return tuple(c for c in COMPONENTS if c not in _COMPONENT_NEEDS or getattr(s, _COMPONENT_NEEDS[c]) is not None)

    def available_measures(self) -> tuple[str, ...]:
        have = set(self.available_components)
        return tuple(m for m in MEASURES if set(MEASURE_COMPONENTS[m]) <= have)

    # ---------------------------------------------------------------- queries
    def encode(self, image: str | os.PathLike | bytes | Image.Image, label: str | None = None) -> Query:
        """Extract a query image (path, bytes or PIL image) with the index's model."""
        if label is None:
            label = str(image) if isinstance(image, (str, os.PathLike)) else "upload"
        img = image if isinstance(image, Image.Image) else load_image(image)
        ex = self.extractor.extract([img])
        return Query(ex.features[0], None if ex.styles is None else ex.styles[0],
                     None if ex.masks is None else ex.masks[0],
                     0 if ex.mask_areas is None else int(ex.mask_areas[0]), label)

    def query_for_id(self, image_id: str) -> Query:
        """The stored vectors of an indexed image, as a query (no re-extraction)."""
        try:
            i = self._positions[image_id]
        except KeyError:
            raise KeyError(f"id {image_id!r} is not in the index") from None
        s = self.snapshot
        return Query(s.features[i], None if s.styles is None else s.styles[i],
                     None if s.masks is None else s.masks[i],
                     0 if s.mask_areas is None else int(s.mask_areas[i]), image_id)

    # ------------------------------------------------------------- candidates
    def _column(self, name: str) -> list:
        s = self.snapshot
        if name == "diagnosis":
            return list(s.diagnosis)
        if name == "lesion_id":
            return list(s.lesion_id)
        if name == "melanoma":
            return [None if np.isnan(v) else str(int(v)) for v in s.melanoma]
        return [m.get(name) for m in self.metadata()]

    def candidate_mask(self, exclude_ids=(), filters: Filters | None = None) -> np.ndarray:
        s = self.snapshot
        keep = np.ones(len(s), dtype=bool)
        for image_id in exclude_ids:
            i = self._positions.get(image_id)
            if i is not None:
                keep[i] = False
        if filters:
            for col, allowed in filters.equals.items():
                wanted = {str(a).strip().lower() for a in allowed}
                values = self._column(col)
                keep &= np.array([v is not None and str(v).strip().lower() in wanted for v in values])
            for col, (lo, hi) in filters.ranges.items():
                values = np.array([_to_float(v) for v in self._column(col)])
                ok = ~np.isnan(values)
                if lo is not None:
                    ok &= values >= lo
                if hi is not None:
                    ok &= values <= hi
                keep &= ok
        return keep

    # ----------------------------------------------------------------- search
    def search(self, query: Query | str | os.PathLike | bytes | Image.Image, k: int = 5,
               measures: list[str] | tuple[str, ...] | None = None, exclude_ids=(),
               filters: Filters | None = None) -> SearchResult:
        """Rank every candidate by each requested measure; return the top ``k`` (0 = all)."""
        if not isinstance(query, Query):
            query = self.encode(query)
        if k < 0:
            raise ValueError("k must be >= 0")
        messages: list[str] = []
        available = self.available_measures()
        if measures:
            unknown = [m for m in measures if m not in MEASURE_COMPONENTS]
            if unknown:
                raise KeyError(f"unknown measure(s) {unknown}; valid: {', '.join(MEASURES)}")
            missing = [m for m in measures if m not in available]
            if missing:
                raise ValueError(self._missing_message(missing))
            wanted = tuple(dict.fromkeys(measures))
        else:
            wanted = available
            absent = [m for m in MEASURES if m not in available]
            if absent:
                messages.append(self._missing_message(absent))

        s = self.snapshot
        keep = self.candidate_mask(exclude_ids, filters)
        rows = np.flatnonzero(keep)
        # Every available component is computed: each hit reports all four (SPEC section 3).
        # Raw values are computed over all rows (one pass over the matrices, no copies of
        # them) and then restricted; the max-normalisers see the candidates only.
        raw: dict[str, np.ndarray] = {}
        comp: dict[str, np.ndarray] = {}
        if rows.size:
            pick = (lambda a: a) if rows.size == len(s) else (lambda a: a[rows])
            raw["euclidean"] = pick(euclidean_distances(query.feature, s.features, self._feature_sqnorms))
            raw["cosine"] = pick(cosine_similarities(query.feature, s.features, self._feature_sqnorms))
            comp["euclidean"] = max_normalised(raw["euclidean"])
            comp["cosine"] = cosine_new(raw["cosine"])
            if "style" in self.available_components and query.style is not None:
                raw["style"] = pick(style_losses(query.style, s.styles, self._style_sqnorms))
                comp["style"] = max_normalised(raw["style"])
            if "dice" in self.available_components and query.mask is not None:
                raw["dice"] = pick(dice_coefficients(query.mask, query.mask_area, s.masks, s.mask_areas))
                comp["dice"] = raw["dice"]
        scores = measure_scores(comp, wanted) if rows.size else {m: np.zeros(0) for m in wanted}

        results: dict[str, list[Hit]] = {}
        for m in wanted:
            order = top_k(scores[m], k)
            hits = []
            for rank, j in enumerate(order, start=1):
                i = int(rows[j])
                mel = s.melanoma[i]
                hits.append(Hit(
                    rank=rank, id=str(s.ids[i]), score=float(scores[m][j]), path=str(s.paths[i]),
                    diagnosis=s.diagnosis[i],
                    components={c: (float(comp[c][j]) if c in comp else None) for c in COMPONENTS},
                    raw={_RAW_KEYS[c]: (float(raw[c][j]) if c in raw else None) for c in COMPONENTS},
                    melanoma=None if np.isnan(mel) else int(mel), lesion_id=s.lesion_id[i],
                ))
            results[m] = hits
        return SearchResult(query.label, k, int(rows.size), results, messages)

    def _missing_message(self, measures: list[str]) -> str:
        lacking = sorted({c for m in measures for c in MEASURE_COMPONENTS[m]} - set(self.available_components))
        what = {"style": "style (Gram) vectors (built with --no-style)", "dice": "lesion masks (built with --no-masks)"}
        return (f"measures {', '.join(measures)} are unavailable: this index stores no "
                + " and no ".join(what[c] for c in lacking))


def _to_float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")
