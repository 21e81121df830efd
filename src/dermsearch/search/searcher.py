"""The search API: :class:`Searcher` ranks the candidates of an index by the ten measures."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..config.search import SearchConfig
from ..errors import ConfigError, NotFoundError
from ..extract.images import load_image
from ..index.store import Index, Snapshot
from ..names import SEARCH_MODES
from ..runtime import Runtime
from .engine import Engine, Query, Ranked, empty_rankings
from .engines import EngineSpec, OpenVersion, index_components, open_version
from .explain import mask_explanation, overlap_png, style_explanation
from .fast import FastIndex
from .measures import COMPONENTS, MEASURE_COMPONENTS, MEASURES

__all__ = ["Filters", "Hit", "Query", "SearchResult", "Searcher"]

MODES = SEARCH_MODES
_RAW_KEYS = {"euclidean": "ed", "cosine": "cs", "style": "ls", "dice": "dice"}


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
    explain: dict | None = None       # see search/explain.py; set when asked for
    license: str | None = None        # the image's licence and attribution, when its source named them
    attribution: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"rank": self.rank, "id": self.id, "score": self.score, "path": self.path,
               "diagnosis": self.diagnosis, "components": self.components, "raw": self.raw}
        out.update({k: v for k, v in (("license", self.license), ("attribution", self.attribution)) if v})
        if self.explain is not None:
            out["explain"] = self.explain
        return out


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


class Searcher:
    """Search over one consistent version of an index: the measures, the candidate filters and
    the hits. Which engine ranks is :mod:`dermsearch.search.engines`' choice (``mode`` per request).

    >>> s = Searcher("my-index")
    >>> result = s.search("lesion.jpg", k=5)
    >>> result.results["style"][0].id
    """

    def __init__(self, index: Index | str | os.PathLike, extractor=None, runtime: Runtime | None = None,
                 mode: str = SearchConfig.mode, dask=None, max_checked: float = SearchConfig.max_checked):
        """``runtime``: where queries are encoded and exact search runs (default ``Runtime()``: with
        device ``auto``, on CUDA when torch sees it, the engine then holding the matrices in GPU
        memory); with backend ``auto`` a query is encoded from the index's cached ONNX export when
        there is one, else with torch.

        ``mode``: the default of every search: ``exact``, ``fast`` (see :mod:`dermsearch.search.fast`)
        or ``certified`` (exact answers from an int8 first pass: :mod:`dermsearch.search.certified`);
        a search may ask for another. ``dask``: a ``distributed.Client`` or scheduler address: the
        matrices are sharded across its workers and searched there (exact: :mod:`dermsearch.search.sharded`;
        fast: :mod:`dermsearch.search.fast_sharded`). ``max_checked``: certified mode's largest share of
        rows one query may check exactly (:class:`~dermsearch.config.SearchConfig`)."""
        self.runtime = runtime or Runtime()
        SearchConfig(mode=mode, max_checked=max_checked)  # checks them, and the mode with Dask, before connecting
        EngineSpec(mode, self.runtime.device, dask, max_checked)
        if dask is not None:
            from ..errors import require

            require("distributed", "dask", "searching on a Dask cluster")
            from distributed import Client
            dask = dask if isinstance(dask, Client) else Client(dask)
        self._spec = EngineSpec(mode, self.runtime.device, dask, max_checked)
        self.index = index if isinstance(index, Index) else Index.open(index)
        self._extractor = extractor
        self._encoder = None
        self._lease = None            # holds the version searched against compaction (index/leases.py)
        self._open: OpenVersion | None = None
        if extractor is not None:
            self.index.check_fingerprint(extractor.fingerprint, extractor.config)
        self.refresh()

    # ------------------------------------------------------------------ setup
    @property
    def device(self) -> str:
        """The runtime's device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
        return self.runtime.device

    @property
    def mode(self) -> str:
        """The mode a search uses when it names none."""
        return self._spec.mode

    @property
    def dask(self):
        return self._spec.dask

    @property
    def snapshot(self) -> Snapshot:
        return self._open.snapshot

    @property
    def fast(self) -> FastIndex | None:
        """The fast-mode files serving the current version (None when there are none)."""
        return self._open.fast

    @property
    def sharded(self):
        """The sharded engine on the Dask cluster (None without one)."""
        return self._open.sharded if self._open is not None else None

    @property
    def engine(self) -> Engine:
        """The engine of the default mode."""
        return self._open.engine(self._spec)

    def engine_for(self, mode: str | None = None) -> Engine:
        """The engine a search in ``mode`` (None: the default) runs on."""
        return self._open.engine(self._spec.with_mode(mode))

    def refresh(self, mode: str | None = None) -> None:
        """Load the index's newest version (and the row norms the measures reuse). ``mode``: the
        default mode from now on (e.g. ``exact`` once the fast-mode files no longer match)."""
        spec = self._spec.with_mode(mode)
        self._hold(self.index.head_version())     # before reading: compaction keeps what readers hold
        if self.dask is not None and self._open is not None:
            self._open.close()                    # the shards of the old version leave the workers
        opened = open_version(self.index, spec)
        opened.engine(spec)                       # the default mode's engine: fails here, not in a search
        old, self._open, self._spec = self._open, opened, spec
        if old is not None and old is not opened:
            old.close()
        self._positions = {i: n for n, i in enumerate(self.snapshot.ids)}
        self._meta_cache: list[dict] | None = None
        self._hold(self.snapshot.version)

    def _hold(self, version: int) -> None:
        if self._lease is None:
            from ..index.leases import Lease

            self._lease = Lease(self.index.directory, version)
        elif self._lease.version != version:
            self._lease.move(version)

    def close(self) -> None:
        """Let go of the index version (and of the shards on a Dask cluster)."""
        if self._open is not None:
            self._open.close()
        if self._lease is not None:
            self._lease.release()

    def row(self, image_id: str) -> int | None:
        """Position of an id in the current snapshot (None when absent)."""
        return self._positions.get(image_id)

    def metadata(self) -> list[dict]:
        """Every row's labels-CSV columns, parsed once per snapshot."""
        if self._meta_cache is None:
            self._meta_cache = [json.loads(m) for m in self.snapshot.meta_json]
        return self._meta_cache

    @property
    def encoder(self):
        """What encodes query images: the index's model from its cached ONNX export when that
        runs here without torch (:func:`~dermsearch.extract.encoder.cached_encoder`), else
        :attr:`extractor`. Both give the same vectors to float32 rounding."""
        if self._encoder is None:
            from ..extract.encoder import cached_encoder

            cached = (None if self._extractor is not None or self.runtime.backend == "torch"
                      else cached_encoder(self.index.manifest, self.device, self.runtime.threads))
            self._encoder = cached or self.extractor
        return self._encoder

    @property
    def extractor(self):
        """The index's own model, built on first use (never a different one)."""
        if self._extractor is None:
            from ..extract import Extractor

            # backend auto: torch (an ONNX export is not worth its one-off cost for a few queries)
            runtime = self.runtime
            if runtime.backend == "auto":
                runtime = dataclasses.replace(runtime, backend="torch")
            extractor = Extractor(self.index.extractor_config, runtime)
            self.index.check_fingerprint(extractor.fingerprint, extractor.config)
            self._extractor = extractor
        return self._extractor

    @property
    def available_components(self) -> tuple[str, ...]:
        return index_components(self.index.manifest)

    def available_measures(self) -> tuple[str, ...]:
        have = set(self.available_components)
        return tuple(m for m in MEASURES if set(MEASURE_COMPONENTS[m]) <= have)

    # ---------------------------------------------------------------- queries
    def encode(self, image: str | os.PathLike | bytes | Image.Image, label: str | None = None) -> Query:
        """Extract a query image (path, bytes or PIL image) with the index's model."""
        if label is None:
            label = str(image) if isinstance(image, (str, os.PathLike)) else "upload"
        img = image if isinstance(image, Image.Image) else load_image(image)
        return Query.from_row(self.encoder.extract([img]), 0, label)

    def query_for_id(self, image_id: str) -> Query:
        """The stored vectors of an indexed image, as a query (no re-extraction)."""
        try:
            i = self._positions[image_id]
        except KeyError:
            raise NotFoundError(f"id {image_id!r} is not in the index") from None
        return Query.from_row(self.engine.take([i]), 0, image_id)

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
    def search(self, query: Query | str | os.PathLike | bytes | Image.Image, k: int = SearchConfig.k,
               measures: list[str] | tuple[str, ...] | None = None, exclude_ids=(),
               filters: Filters | None = None, explain: bool = False, mode: str | None = None) -> SearchResult:
        """Rank every candidate by each requested measure; return the top ``k`` (0 = all).
        ``explain``: attach each hit's per-layer style loss and mask overlap (search/explain.py).
        ``mode``: this search's engine (None: the searcher's :attr:`mode`)."""
        return self.search_batch([query], k, measures, [exclude_ids], filters, explain, mode)[0]

    def search_batch(self, queries: list, k: int = SearchConfig.k, measures: list[str] | tuple[str, ...] | None = None,
                     exclude_ids: list | None = None, filters: Filters | None = None,
                     explain: bool = False, mode: str | None = None) -> list[SearchResult]:
        """:meth:`search` for several queries at once: the index matrices are read once for the
        whole batch (matrix-matrix products), so a batch costs far less than its queries one by
        one. ``exclude_ids``: one list of ids per query (or None)."""
        engine = self.engine_for(mode)
        queries = [q if isinstance(q, Query) else self.encode(q) for q in queries]
        results = self._search_batch(engine, queries, k, measures, exclude_ids, filters)
        if explain:
            for q, r in zip(queries, results):
                self.explain(q, r)
        return results

    def explain(self, query: Query, result: SearchResult) -> SearchResult:
        """Attach an ``explain`` block to every hit of ``result`` (rows shared by several measures
        are explained once): each stored Gram's part of the style loss, and the two masks' overlap."""
        positions = sorted({self._positions[h.id] for hits in result.results.values() for h in hits})
        if not positions:
            return result
        m = self.index.manifest
        layout = m.get("style_layers") or []
        rows = self.engine.take(positions)
        styles = rows.styles if query.style is not None else None
        masks = rows.masks if query.mask is not None else None
        style_parts = style_explanation(query.style, styles, layout) if styles is not None and layout else None
        by_row = {}
        for n, i in enumerate(positions):
            block = {}
            if style_parts is not None:
                block["style"] = style_parts[n]
            if masks is not None:
                block["mask"] = mask_explanation(query.mask, masks[n], m["mask_size"])
            by_row[i] = block
        for hits in result.results.values():
            for h in hits:
                h.explain = by_row[self._positions[h.id]]
        return result

    def mask_overlay(self, query: Query, image_id: str) -> bytes | None:
        """PNG of the query's mask over the stored mask of ``image_id`` (None without masks)."""
        i = self._positions.get(image_id)
        if i is None:
            raise NotFoundError(f"id {image_id!r} is not in the index")
        if query.mask is None or not self.index.manifest["mask_bytes"]:
            return None
        row = self.engine.take([i]).masks[0]
        return overlap_png(query.mask, row, self.index.manifest["mask_size"])

    def _search_batch(self, engine: Engine, queries: list[Query], k, measures, exclude_ids, filters
                      ) -> list[SearchResult]:
        if k < 0:
            raise ConfigError("k must be >= 0")
        if exclude_ids is not None and len(exclude_ids) != len(queries):
            raise ConfigError("exclude_ids needs one list per query")
        wanted, messages = self._resolve_measures(measures)
        s = self.snapshot
        allowed = self.candidate_mask((), filters)
        valid = np.broadcast_to(allowed, (len(queries), len(s))).copy()
        for j, ids in enumerate(exclude_ids or ()):
            for image_id in ids:
                i = self._positions.get(image_id)
                if i is not None:
                    valid[j, i] = False
        # Every available component is computed: each hit reports all four (SPEC section 3).
        # The max-normalisers see each query's candidates only.
        if len(s):
            rankings = engine.rank(Query.batch(queries), valid, wanted, k)
        else:
            rankings = empty_rankings(len(queries), wanted)
        return [SearchResult(q.label, k, int(valid[j].sum()),
                             {m: self._hits(r) for m, r in ranking.measures.items()}, list(messages) + ranking.notes)
                for j, (q, ranking) in enumerate(zip(queries, rankings))]

    def _resolve_measures(self, measures) -> tuple[tuple[str, ...], list[str]]:
        available = self.available_measures()
        if measures:
            unknown = [m for m in measures if m not in MEASURE_COMPONENTS]
            if unknown:
                raise NotFoundError(f"unknown measure(s) {unknown}; valid: {', '.join(MEASURES)}")
            missing = [m for m in measures if m not in available]
            if missing:
                raise ConfigError(self._missing_message(missing))
            return tuple(dict.fromkeys(measures)), []
        absent = [m for m in MEASURES if m not in available]
        return available, [self._missing_message(absent)] if absent else []

    def _hits(self, r: Ranked) -> list[Hit]:
        s = self.snapshot
        hits = []
        for n, i in enumerate(r.rows.tolist()):
            mel = s.melanoma[i]
            meta = json.loads(s.meta_json[i]) if s.meta_json[i] else {}
            hits.append(Hit(rank=n + 1, id=str(s.ids[i]), score=float(r.scores[n]), path=str(s.paths[i]),
                            diagnosis=s.diagnosis[i],
                            components={c: (float(r.components[c][n]) if c in r.components else None)
                                        for c in COMPONENTS},
                            raw={_RAW_KEYS[c]: (float(r.raw[c][n]) if c in r.raw else None) for c in COMPONENTS},
                            melanoma=None if np.isnan(mel) else int(mel), lesion_id=s.lesion_id[i],
                            license=meta.get("license") or None, attribution=meta.get("attribution") or None))
        return hits

    def _missing_message(self, measures: list[str]) -> str:
        lacking = sorted({c for m in measures for c in MEASURE_COMPONENTS[m]} - set(self.available_components))
        what = {"style": "style (Gram) vectors (built with style=False)",
                "dice": "lesion masks (built with masks=False)"}
        return (f"measures {', '.join(measures)} are unavailable: this index stores no "
                + " and no ".join(what[c] for c in lacking))


def _to_float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")
