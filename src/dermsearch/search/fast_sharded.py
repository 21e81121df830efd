"""Fast mode sharded on Dask: each worker holds its shard's compact codes; the client merges with
the max-normalisers of the whole archive, so the answers are local fast mode's (:mod:`.fast`).

Each worker opens one contiguous row range of the index's fast-mode files itself (by path: the
compact codes of its rows copied into RAM, the exact rows memory-mapped and read only for the rows
it re-ranks), so nothing big crosses the wire. Fast mode's choices are over all rows (the best
candidates by the estimates, the rows with the largest upper bounds for the max-normalisers, and
the estimates themselves are max-normalised over all rows), so a shard cannot rank alone. A batch
of queries costs three rounds, each one task per shard:

1. every shard computes its estimates (kept on the worker) and returns their maxima over its valid
   rows and, per normalised component (ED, LS), its rows with the largest upper bounds;
2. with the global maxima of the estimates, every shard returns its best candidates per measure by
   the estimates (with their estimated scores), and the exact feature and mask components of those
   rows and of its normaliser candidates;
3. the client picks the archive's candidates from those lists (a shard's best contain every row of
   the archive's best it holds), chooses the rows whose exact style rows are read (fast mode's
   stage B, on the client), and every shard computes those of its rows and returns its largest
   upper bounds left unchecked.

The client then certifies the normalisers as local fast mode does (rounds only for a query whose
normaliser is not certified yet: the shards measure the rows the client picks), scores the
re-ranked rows exactly and merges (ties by row). The few hits of measures without style whose
style was not read cost one more round.

Every row gets the arithmetic of local fast mode: a row's float32 product does not depend on the
other rows in the call (:func:`~dermsearch.search.kernels.row_parallel_products`), and every choice
is made from the same values. So rows and scores equal local fast mode's on the same files, on
workers with the same CPU and BLAS (``tests/test_dask_fast.py``). One exception: rows whose
estimates tie exactly at a candidate cut (duplicate images) may be chosen differently (local fast
mode's choice among them is numpy's introselect's), which can change the answer only where those
tied rows reach the top k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..extract.vectors import Vectors
from ..index.fastfiles import fast_dir
from . import fast as fast_module
from .config import FastConfig
from .engine import Query, QueryRanking, Ranked, top_k_rows
from .fast import FastIndex, FastModeMissing, read_info
from .fast_parts import FastResult, estimated_component, rough_scores
from .fast_sharded_merge import Planner
from .kernels import blas_single_threaded
from .sharded import (
    _RAW_KEPT,
    _SHARDS,
    ShardedEngine,
    ShardLost,
    ShardTooLarge,
    _shard,
    _wait,
    _worker_memory,
    shard_memory_problem,
)

__all__ = ["ShardedFastEngine", "open_shard"]

_STATE: dict[str, list] = {}     # per worker: a batch's per-query state between the rounds


# ------------------------------------------------------------------------------- on a worker
def open_shard(directory, start: int, stop: int) -> FastIndex:
    """Rows ``[start, stop)`` of a fast-mode directory as a :class:`FastIndex` of their own (the
    compact codes of this range copied into RAM, the rest memory-mapped or read at their place)."""
    return FastIndex.open(directory, (start, stop))


@dataclass
class _FastShard:
    fast: FastIndex
    start: int

    def take(self, rows) -> Vectors:
        return self.fast.take(rows)

    def __len__(self) -> int:
        return len(self.fast)


@dataclass
class _ShardQuery:
    """One query's state on a shard between the rounds."""

    p: object                               # the SearchPass over the shard's rows
    upper: dict[str, np.ndarray]            # per normalised component, the unchecked rows' upper bounds
    check: dict[str, np.ndarray]            # the shard's normaliser candidates (local rows)


def _load_fast_shard(key: str, directory: str, start: int, stop: int) -> int:
    """On a worker: open rows [start, stop) and keep them. ShardTooLarge when the shard (its
    compact codes, and the exact feature and mask rows fast mode copies into RAM) cannot fit."""
    shard = open_shard(directory, start, stop)
    pending = sum(a.nbytes for n, a in shard.arrays.items() if n in ("features", "masks") and isinstance(a, np.memmap))
    problem = shard_memory_problem(pending, *_worker_memory())     # the compact codes are resident already
    if problem:
        shard.style_rows.close()
        raise ShardTooLarge(f"rows {start}-{stop}: {problem}")
    _SHARDS[key] = _FastShard(shard, start)
    return len(shard)


def _drop_fast_shard(key: str) -> None:
    shard = _SHARDS.pop(key, None)
    if isinstance(shard, _FastShard):
        shard.fast.style_rows.close()


def _drop_state(key: str, query_key: str) -> None:
    _STATE.pop(query_key, None)


def _state(query_key: str) -> list:
    try:
        return _STATE[query_key]
    except KeyError:
        raise ShardLost([], f"the earlier rounds of {query_key} are no longer on this worker") from None


def _unpack(packed, n: int) -> np.ndarray:
    return np.ones(n, dtype=bool) if packed is None else np.unpackbits(packed, count=n).astype(bool)


def _unchecked(st: _ShardQuery, start: int, c: int) -> dict[str, tuple]:
    """Per normalised component: the ``c`` largest unchecked upper bounds (ties by row), their
    global rows, and the largest of all (-inf: none left)."""
    out = {}
    for comp, hi in st.upper.items():
        live = np.flatnonzero(hi > -np.inf)
        top = live[top_k_rows(hi[live], np.ones(live.size, dtype=bool), c)[0]]
        out[comp] = (top + start, hi[top], float(hi[live].max()) if live.size else -np.inf)
    return out


def _exact(fast: FastIndex, query: Query, rows: np.ndarray, comp: str) -> np.ndarray:
    """Exact squared ED or LS of these (local, sorted) rows, as local fast mode measures them."""
    if not rows.size:
        return np.zeros(0)
    if comp == "style":
        return fast._exact_raw(query, rows, with_style=True)["style"]
    return fast._exact_raw(query, rows, with_style=False)["euclidean"] ** 2


def _fast_one(key: str, query_key: str, queries: list[Query], valids: list, k: int, measures: tuple) -> list:
    """Round one: every query's estimates over the shard (kept), their maxima over its valid rows,
    and its normaliser candidates with their upper bounds."""
    sh = _shard(key)
    fast, out, states = sh.fast, [], []
    with blas_single_threaded():
        for query, packed in zip(queries, valids):
            valid = _unpack(packed, len(fast))
            p = fast._pass(query, k, measures, valid)
            if not p.rows_valid.size or not measures:
                states.append(None)
                out.append(None)
                continue
            check, upper = fast._normaliser_candidates(p)
            states.append(_ShardQuery(p, upper, check))
            out.append({"top_f": float(np.max(p.est_f, where=valid, initial=0.0)),
                        "top_s": None if p.est_s is None else float(np.max(p.est_s, where=valid, initial=0.0)),
                        "check": {c: (rows + sh.start, upper[c][rows]) for c, rows in check.items()}})
    _STATE[query_key] = states
    while len(_STATE) > _RAW_KEPT:          # left by clients that died between the rounds
        _STATE.pop(next(iter(_STATE)))
    return out


def _estimates(fast: FastIndex, p, top_f: float, top_s: float | None) -> dict[str, np.ndarray]:
    """Stage 2's estimated components of the shard's rows, max-normalised by the archive's maxima
    (local fast mode's ``_estimated_components`` over all rows; cosine and Dice are row by row)."""
    comp_est = fast._estimated_components(p)
    comp_est["euclidean"] = estimated_component(np.sqrt(p.est_f.astype(np.float32)), float(np.sqrt(top_f)) or 1.0)
    if p.est_s is not None:
        comp_est["style"] = estimated_component(p.rank_s.astype(np.float32), top_s or 1.0)
    return comp_est


def _fast_two(key: str, query_key: str, tops: list) -> list:
    """Round two: per query, the shard's best rows per measure by the estimates (as stage A chooses
    over all rows), and the exact feature and mask components of those and of its normaliser
    candidates, with their estimated style components."""
    sh = _shard(key)
    fast, cfg, out = sh.fast, sh.fast.config, []
    with blas_single_threaded():
        for st, top in zip(_state(query_key), tops):
            if st is None or top is None:
                out.append(None)
                continue
            p = st.p
            comp_est = _estimates(fast, p, *top)
            est_scores = rough_scores({c: v for c, v in comp_est.items() if c in p.needs}, p.measures)
            per_measure = max(cfg.wide_candidates, cfg.wide_rows // len(p.measures), p.k)
            wide = {}
            for m in p.measures:
                est_scores[m][p.invalid] = -np.inf
                rows = p.largest(est_scores[m], per_measure)
                wide[m] = (rows + sh.start, est_scores[m][rows])
            cand = np.unique(np.concatenate([r - sh.start for r, _ in wide.values()] + list(st.check.values())))
            raw = fast._exact_raw(p.query, cand, with_style=False)
            out.append({"wide": wide, "rows": cand + sh.start, "raw": raw,
                        "style_est": comp_est["style"][cand] if "style" in comp_est else None})
    return out


def _fast_three(key: str, query_key: str, jobs: list) -> list:
    """Round three: per query, the exact style losses of the rows the client chose (global rows,
    sorted), the rows known exactly marked checked, and the largest unchecked upper bounds."""
    sh = _shard(key)
    fast, out = sh.fast, []
    with blas_single_threaded():
        for st, job in zip(_state(query_key), jobs):
            if st is None or job is None:
                out.append(None)
                continue
            style_rows, known = job
            st.upper["euclidean"][known - sh.start] = -np.inf
            ls = None
            if style_rows is not None:
                ls = _exact(fast, st.p.query, style_rows - sh.start, "style")
                st.upper["style"][style_rows - sh.start] = -np.inf
            out.append({"style": ls, "unchecked": _unchecked(st, sh.start, fast.config.normaliser_candidates)})
    return out


def _fast_more(key: str, query_key: str, jobs: list) -> list:
    """A normaliser round: per query and component, exact values of the rows the client picked
    (marked checked), and the largest unchecked upper bounds left."""
    sh = _shard(key)
    fast, out = sh.fast, []
    with blas_single_threaded():
        for st, job in zip(_state(query_key), jobs):
            if st is None or not job:
                out.append(None)
                continue
            values = {}
            for comp, rows in job.items():
                values[comp] = _exact(fast, st.p.query, rows - sh.start, comp)
                st.upper[comp][rows - sh.start] = -np.inf
            out.append({"values": values, "unchecked": _unchecked(st, sh.start, fast.config.normaliser_candidates)})
    return out


def _fast_style(key: str, query_key: str, jobs: list) -> list:
    """Exact style losses of hits whose style was not read yet (global rows, sorted)."""
    sh = _shard(key)
    with blas_single_threaded():
        return [None if st is None or rows is None else _exact(sh.fast, st.p.query, rows - sh.start, "style")
                for st, rows in zip(_state(query_key), jobs)]


# --------------------------------------------------------------------------------- the client
class ShardedFastEngine(ShardedEngine):
    """Fast mode over shards of the fast-mode files held by the workers of a Dask cluster (the
    module doc). Cluster plumbing (placement, lost workers, retries) is :class:`ShardedEngine`'s.
    ``wire``: when a dict, the pickled bytes sent and received are added to it (``sent``,
    ``received``, ``queries``)."""

    mode = "fast"

    def __init__(self, client, fast_path, version: int, n_rows: int, components: Sequence[str],
                 poll_s: float = 1.0, retries: int = 2):
        self.config = FastConfig(**read_info(Path(fast_path))["config"])
        self.wire: dict | None = None
        super().__init__(client, None, version, n_rows, fast_path=fast_path, poll_s=poll_s, retries=retries,
                         components=components)

    @classmethod
    def for_index(cls, client, index, snapshot, components: Sequence[str]) -> ShardedFastEngine:
        """Over the fast-mode files of ``index``'s current version (FastModeMissing, saying what to
        run, when there are none or they do not match it)."""
        directory = fast_dir(index.directory, index.head_version())
        try:
            info = read_info(directory)
        except FastModeMissing as e:
            why = str(e) if "format" in str(e) else f"{index.directory} has no fast-mode files for version " \
                                                    f"{snapshot.version}"
            raise FastModeMissing(f"{why}; run 'dermsearch optimize {index.directory}'") from None
        if info.get("precision", "float32") != "float32":
            raise ConfigError(f"fast mode on Dask re-ranks from float32 rows; the fast-mode files of {index.directory} "
                              f"keep {info['precision']} rows: run 'dermsearch optimize {index.directory} --precision "
                              "float32' (or search without --dask)")
        ids = np.load(directory / "ids.npy", mmap_mode="r")
        if info.get("index_version") != snapshot.version or not np.array_equal(snapshot.ids.astype(str), ids):
            raise FastModeMissing(f"the fast-mode files of {index.directory} do not match its current version; "
                                  f"run 'dermsearch optimize {index.directory}'")
        return cls(client, directory, snapshot.version, len(snapshot), components)

    def _load(self, shards) -> list[int]:
        futures = [self._submit(_load_fast_shard, sh, self.fast_path, sh.start, sh.stop) for sh in shards]
        return self._gather(futures, shards)

    def close(self) -> None:
        """Drop the shards from their workers (waiting a few seconds: a one-off search's client
        goes right after)."""
        _wait([self._submit(_drop_fast_shard, sh) for sh in self.shards], 5.0)

    def _round(self, fn, query_key: str, jobs: dict[int, object]) -> dict[int, list]:
        """One task per shard with something to do (``jobs``: shard number -> its argument);
        their results by shard number."""
        shards = [self.shards[i] for i in jobs]
        futures = [self._submit(fn, sh, f"{sh.key}-{query_key}", *jobs[i]) for i, sh in zip(jobs, shards)]
        results = self._gather(futures, shards)
        if self.wire is not None:        # as Dask pickles task arguments and results (a size, never a load)
            from distributed.protocol.pickle import dumps

            self.wire["sent"] = self.wire.get("sent", 0) + sum(len(dumps(a)) for a in jobs.values())
            self.wire["received"] = self.wire.get("received", 0) + sum(len(dumps(r)) for r in results)
        return dict(zip(jobs, results))

    def rank(self, batch: Vectors, valid: np.ndarray, measures: Sequence[str], k: int) -> list[QueryRanking]:
        """The contract (:class:`~dermsearch.search.engine.Engine`): local fast mode's rankings."""
        if k <= 0:
            raise ConfigError("fast mode returns the top k rows (k >= 1); use exact mode to rank every row (k=0)")
        with self._in_flight:
            results = self._retrying("sharded fast search", lambda: self.search(batch, valid, measures, k))
        if self.wire is not None:
            self.wire["queries"] = self.wire.get("queries", 0) + len(batch)
        return [_ranking(r, len(self.shards)) for r in results]

    def search(self, batch: Vectors, valid: np.ndarray, measures: Sequence[str], k: int) -> list[FastResult]:
        """Every query's :class:`FastResult`, as :meth:`FastIndex.search` gives it locally."""
        qk = f"q{next(self._queries)}"
        queries = [Query.from_row(batch, j) for j in range(len(batch))]
        stages = {"one": _fast_one, "two": _fast_two, "three": _fast_three, "more": _fast_more, "style": _fast_style}
        plan = Planner([(sh.start, sh.stop) for sh in self.shards], self.config, queries, valid, tuple(measures), k,
                       fast_module.NORMALISER_ROUNDS)
        try:
            return plan.run(lambda stage, jobs: self._round(stages[stage], qk, jobs))
        finally:                            # the workers forget the batch (its estimates are large)
            from distributed import fire_and_forget

            fire_and_forget([self._submit(_drop_state, sh, f"{sh.key}-{qk}") for sh in self.shards])


def _ranking(r: FastResult, shards: int) -> QueryRanking:
    """A FastResult as the engine contract's ranking, with local fast mode's notes."""
    per = {}
    for m in r.rows:
        at = np.searchsorted(r.reranked, r.rows[m])
        per[m] = Ranked(r.rows[m], r.scores[m], {c: v[at] for c, v in r.components.items()},
                        {c: v[at] for c, v in r.raw.items()})
    notes = [f"fast mode: {r.reranked.size} rows re-ranked with exact vectors"]
    for comp, ok in r.certified.items():
        lo, hi = r.normaliser_bounds[comp]
        notes.append(f"{comp} normaliser certified exact" if ok else
                     f"{comp} normaliser not certified: exact max in [{lo:.6g}, {hi:.6g}]")
    notes.append(f"sharded on Dask: {shards} shards")
    return QueryRanking(per, notes)
