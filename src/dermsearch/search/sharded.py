"""Sharded exact search on Dask: the matrices live on the workers, queries travel to them.

Each worker holds one contiguous block of rows (a shard), loaded by the worker itself from the
index (memory-mapped from the fast-mode files when ``dermsearch optimize`` wrote them, else read
from LanceDB) and kept there between queries. A batch of queries costs two rounds:

1. every shard computes the raw components of its rows (one pass over its matrices, the result
   kept on the worker) and returns its per-query maxima of ED and LS over its valid rows;
2. the client combines them into the global max-normalisers (the max of the shard maxima); every
   shard normalises with them, scores the measures and returns its own top k; the client merges.

Every row gets the same arithmetic as in the local engine, with the same global normalisers, so
ranks and scores match local search; the only differences are float32 rounding of the products
(a product over a shard may round differently from one over the whole matrix).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .engine import ExactEngine, QueryBatch, top_k_rows
from .measures import measure_scores

__all__ = ["ShardedEngine"]

_SHARDS: dict[str, ExactEngine] = {}      # per worker process
_RAW: dict[str, dict] = {}                # per worker: raw components of a query batch between the rounds


@dataclass
class ShardTop:
    rows: dict[str, list[np.ndarray]]     # measure -> per query, global row numbers
    scores: dict[str, list[np.ndarray]]
    comp: dict[str, list[dict]]           # measure -> per query, component -> values of those rows
    raw: dict[str, list[dict]]


def _load_shard(key: str, index_dir: str | None, version: int, start: int, stop: int,
                fast_path: str | None = None) -> int:
    """On a worker: load rows [start, stop) of one index version and keep them. Returns the row count."""
    from ..index import Index
    from .fast import FastIndex, FastModeMissing, fast_dir

    try:
        fast = FastIndex.open(fast_path or fast_dir(index_dir, version))
        e = fast.exact
        engine = ExactEngine(e.features[start:stop], None if e.styles is None else e.styles[start:stop],
                             None if e.masks is None else e.masks[start:stop],
                             None if e.mask_areas is None else e.mask_areas[start:stop],
                             e.feature_sqnorms[start:stop], None if e.styles is None else e.style_sqnorms[start:stop])
    except FastModeMissing:
        index = Index.open(index_dir)
        if index.version != version:
            index._table.checkout(version)
        s = index.snapshot()
        def rows(a):
            return None if a is None else np.ascontiguousarray(a[start:stop])

        engine = ExactEngine(rows(s.features), rows(s.styles), rows(s.masks), rows(s.mask_areas))
        del s
    _SHARDS[key] = engine
    return len(engine)


def _shard_row(key: str, i: int):
    e = _SHARDS[key]
    return (np.array(e.features[i]), None if e.styles is None else np.array(e.styles[i]),
            None if e.masks is None else np.array(e.masks[i]), 0 if e.mask_areas is None else int(e.mask_areas[i]))


def _drop_shard(key: str) -> None:
    _SHARDS.pop(key, None)


def _round_one(key: str, query_key: str, batch: QueryBatch, valid: np.ndarray) -> dict[str, np.ndarray]:
    engine = _SHARDS[key]
    raw = engine.raw(batch)
    _RAW[query_key] = raw
    return ExactEngine.maxima(raw, valid)


def _round_two(key: str, query_key: str, valid: np.ndarray, maxima: dict[str, np.ndarray], measures: Sequence[str],
               k: int, offset: int) -> ShardTop:
    raw = _RAW.pop(query_key)
    comp = ExactEngine.normalise(raw, valid, maxima)
    scores = measure_scores(comp, measures)
    out = ShardTop({}, {}, {}, {})
    for m in measures:
        tops = top_k_rows(scores[m], valid, k)
        out.rows[m] = [t + offset for t in tops]
        out.scores[m] = [scores[m][j, t] for j, t in enumerate(tops)]
        out.comp[m] = [{c: v[j, t] for c, v in comp.items()} for j, t in enumerate(tops)]
        out.raw[m] = [{c: v[j, t] for c, v in raw.items()} for j, t in enumerate(tops)]
    return out


class ShardedEngine:
    """The client side: one shard per worker, loaded on the workers and kept there."""

    _ids = itertools.count()

    def __init__(self, client, index_dir, version: int, n_rows: int, fast_path=None):
        from distributed import wait

        self.client = client
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            raise RuntimeError("the Dask cluster has no workers")
        bounds = np.linspace(0, n_rows, len(workers) + 1).astype(int)
        tag = f"dermsearch-{next(self._ids)}-{id(self)}"
        self.shards = []      # (key, start, stop, worker)
        futures = []
        for w, (a, b) in zip(workers, itertools.pairwise(bounds)):
            key = f"{tag}-{a}"
            self.shards.append((key, int(a), int(b), w))
            futures.append(client.submit(_load_shard, key, None if index_dir is None else str(index_dir), version,
                                         int(a), int(b), None if fast_path is None else str(fast_path),
                                         workers=[w], allow_other_workers=False, pure=False))
        wait(futures)
        loaded = client.gather(futures)
        if sum(loaded) != n_rows:
            raise RuntimeError(f"the shards hold {sum(loaded)} rows, the index {n_rows}")
        self._queries = itertools.count()

    def row(self, i: int):
        """The stored vectors of row i, fetched from the worker that holds them."""
        for key, a, b, w in self.shards:
            if a <= i < b:
                return self.client.submit(_shard_row, key, i - a, workers=[w], allow_other_workers=False,
                                          pure=False).result()
        raise IndexError(i)

    def close(self) -> None:
        for key, _, _, w in self.shards:
            self.client.submit(_drop_shard, key, workers=[w], pure=False)

    def search(self, batch: QueryBatch, valid: np.ndarray, measures: Sequence[str], k: int):
        """Per query and measure: (rows, scores, components, raw) of the global top k."""
        c = self.client
        qk = f"q{next(self._queries)}"
        one = [c.submit(_round_one, key, f"{key}-{qk}", batch, valid[:, a:b], workers=[w], allow_other_workers=False,
                        pure=False) for key, a, b, w in self.shards]
        maxima = c.gather(one)
        glob = {comp: np.max(np.stack([m[comp] for m in maxima]), axis=0) for comp in maxima[0]}
        two = [c.submit(_round_two, key, f"{key}-{qk}", valid[:, a:b], glob, tuple(measures), k, a, workers=[w],
                        allow_other_workers=False, pure=False) for key, a, b, w in self.shards]
        parts: list[ShardTop] = c.gather(two)
        merged = []
        for j in range(len(batch)):
            per_measure = {}
            for m in measures:
                rows = np.concatenate([p.rows[m][j] for p in parts])
                scores = np.concatenate([p.scores[m][j] for p in parts])
                comps = {cn: np.concatenate([p.comp[m][j][cn] for p in parts]) for cn in parts[0].comp[m][j]}
                raws = {cn: np.concatenate([p.raw[m][j][cn] for p in parts]) for cn in parts[0].raw[m][j]}
                order = np.lexsort((rows, -scores))           # by score, ties by row: as the local engine
                if k > 0:
                    order = order[:k]
                per_measure[m] = (rows[order], scores[order], {cn: v[order] for cn, v in comps.items()},
                                  {cn: v[order] for cn, v in raws.items()})
            merged.append(per_measure)
        return merged
