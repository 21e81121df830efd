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

Workers can go away (a crash, the nanny restarting one over its memory limit, a pre-empted job).
A shard whose worker left is loaded again on a live worker and the query is run again, up to
``ShardedEngine.retries`` times; tasks pinned to a worker that is gone would otherwise wait
forever. Before keeping a shard a worker checks that it fits under its Dask memory limit:
memory-mapped rows count in the worker's resident memory once touched, and a worker past 95% of
its limit is restarted, so a shard too large for its worker is refused with a message instead.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DermsearchError, require
from ..extract.vectors import Vectors
from .engine import ExactEngine, QueryRanking, checked_style_blocks, maxima, merge_rankings, rank_rows
from .measures import COMPONENTS

__all__ = ["ShardedEngine", "ShardLost", "ShardTooLarge", "ClusterError", "shard_memory_problem"]

_SHARDS: dict[str, ExactEngine] = {}      # per worker process
_RAW: dict[str, dict] = {}                # per worker: raw components of a query batch between the rounds
_RAW_KEPT = 16                            # at most this many batches between rounds per worker (oldest dropped)


class ShardLost(DermsearchError, RuntimeError):
    """A shard is no longer held where it was placed (its worker left or was restarted)."""

    def __init__(self, keys: Sequence[str], why: str):
        super().__init__(why)
        self.keys, self.why = list(keys), why

    def __reduce__(self):                 # raised on a worker, re-raised on the client
        return ShardLost, (self.keys, self.why)


class ClusterError(DermsearchError, RuntimeError):
    """The Dask cluster cannot serve the search: it has no workers, or they keep leaving."""


class ShardTooLarge(DermsearchError, MemoryError):
    """A worker refused a shard that cannot fit under its Dask memory limit."""


def shard_memory_problem(shard_bytes: int, resident_bytes: int, memory_limit: int | None,
                         terminate: float | bool = 0.95, pause: float | bool = 0.8) -> str | None:
    """Why a shard of ``shard_bytes`` cannot be kept by a worker already using ``resident_bytes``
    under Dask's ``memory_limit`` (None or 0: no limit), or None when it fits.

    Past ``pause`` x limit a worker stops running tasks; past ``terminate`` x limit its nanny
    restarts it. The shard must stay under the pause threshold, since every query touches all of
    it (memory-mapped pages included: they are resident memory of the worker process).
    """
    if not memory_limit:
        return None
    fractions = [f for f in (pause, terminate) if f]
    if not fractions:
        return None
    ceiling = min(fractions) * memory_limit
    if resident_bytes + shard_bytes <= ceiling:
        return None
    gb = 1e9
    return (f"a shard of {shard_bytes / gb:.2f} GB does not fit this worker: it already uses "
            f"{resident_bytes / gb:.2f} GB and Dask pauses it at {ceiling / gb:.2f} GB "
            f"({min(fractions):.0%} of its {memory_limit / gb:.2f} GB memory limit; memory-mapped rows count "
            "once touched). Start more workers, or workers with a larger --memory-limit (0 = none, when the "
            "rows are memory-mapped from the fast-mode files and the page cache may hold them)")


def _worker_memory() -> tuple[int, int | None, float | bool, float | bool]:
    """(resident bytes, memory limit, terminate fraction, pause fraction) of this worker process."""
    dask = require("dask", "dask", "sharded search")
    psutil = require("psutil", "dask", "sharded search")

    rss = psutil.Process().memory_info().rss
    try:
        from distributed import get_worker

        mm = get_worker().memory_manager
    except (ImportError, ValueError):       # not on a worker (direct calls)
        return rss, None, False, False
    return (rss, mm.memory_limit, dask.config.get("distributed.worker.memory.terminate"),   # the nanny's
            mm.memory_pause_fraction)


def _engine_bytes(arrays) -> int:
    return int(sum(a.nbytes for a in arrays if a is not None))


def _load_shard(key: str, index_dir: str | None, version: int, start: int, stop: int,
                fast_path: str | None = None, kernel: str | None = None) -> int:
    """On a worker: load rows [start, stop) of one index version and keep them. Returns the row
    count. Raises ShardTooLarge when the shard cannot fit under this worker's memory limit."""
    from ..index import Index
    from .fast import FastIndex, FastModeMissing, fast_dir

    def check(arrays) -> None:
        problem = shard_memory_problem(_engine_bytes(arrays), *_worker_memory())
        if problem:
            raise ShardTooLarge(f"rows {start}-{stop}: {problem}")

    try:
        fast = FastIndex.open(fast_path or fast_dir(index_dir, version))
        e = fast.exact
        kept = (e.features, e.styles, e.masks, e.mask_areas)
        check([a[start:stop] for a in kept if a is not None])         # slices of memory maps: nothing read yet
        engine = ExactEngine(e.features[start:stop], None if e.styles is None else e.styles[start:stop],
                             None if e.masks is None else e.masks[start:stop],
                             None if e.mask_areas is None else e.mask_areas[start:stop],
                             e.feature_sqnorms[start:stop], None if e.styles is None else e.style_sqnorms[start:stop],
                             kernel=kernel, style_blocks=e.style_blocks)
    except FastModeMissing:
        index = Index.open(index_dir)
        if index.version != version:
            index._table.checkout(version)
        s = index.snapshot()
        def rows(a):
            return None if a is None else np.ascontiguousarray(a[start:stop])

        arrays = [rows(s.features), rows(s.styles), rows(s.masks), rows(s.mask_areas)]
        del s
        check([])           # the whole snapshot was read to slice it: what is resident now must fit
        engine = ExactEngine(*arrays, kernel=kernel,
                             style_blocks=checked_style_blocks(arrays[1], index.manifest.get("style_layers")))
    _SHARDS[key] = engine
    return len(engine)


def _shard(key: str) -> ExactEngine:
    try:
        return _SHARDS[key]
    except KeyError:
        raise ShardLost([key], f"shard {key} is not on this worker (restarted?)") from None


def _shard_rows(key: str, rows: list[int]) -> Vectors:
    return _shard(key).take(rows)


def _drop_shard(key: str) -> None:
    _SHARDS.pop(key, None)


def _drop_raw(key: str, query_key: str) -> None:
    _RAW.pop(query_key, None)


def _round_one(key: str, query_key: str, batch: Vectors, valid: np.ndarray) -> dict[str, np.ndarray]:
    engine = _shard(key)
    raw = engine.raw(batch)
    _RAW[query_key] = raw
    while len(_RAW) > _RAW_KEPT:          # left by clients that died between the rounds
        _RAW.pop(next(iter(_RAW)))
    return maxima(raw, valid)


def _round_two(key: str, query_key: str, valid: np.ndarray, tops: dict[str, np.ndarray], measures: Sequence[str],
               k: int, offset: int) -> list[QueryRanking]:
    try:
        raw = _RAW.pop(query_key)
    except KeyError:
        raise ShardLost([], f"round one of {query_key} is no longer on this worker") from None   # rerun the query
    return rank_rows(raw, valid, measures, k, tops, np.arange(offset, offset + valid.shape[1]))


def _wait(futures, seconds: float) -> None:
    """Until all ``futures`` are done (finished or failed) or ``seconds`` have passed (through
    their own client). Nothing is fetched: the results travel once, when gathered."""
    from distributed import wait

    try:
        wait(list(futures), timeout=seconds)
    except TimeoutError:
        pass


@dataclass
class Shard:
    key: str
    start: int
    stop: int
    worker: str


class ShardedEngine:
    """The client side: one shard per worker, loaded on the workers and kept there.

    ``poll_s``: while waiting for a round, how often to check that the shards' workers are still
    there. ``retries``: how many times a query is run again after shards were lost and reloaded.
    """

    _ids = itertools.count()
    mode = "exact"                # the search mode it serves (search/fast_sharded.py: "fast")

    def __init__(self, client, index_dir, version: int, n_rows: int, fast_path=None, poll_s: float = 1.0,
                 retries: int = 2, kernel: str | None = None, components: Sequence[str] = COMPONENTS):
        """``components``: those the index stores (for :attr:`components`)."""
        self.client = client
        self._components = tuple(components)
        self.kernel = kernel          # the product kernel of the whole index (None: each shard's own)
        self.index_dir = None if index_dir is None else str(index_dir)
        self.version = version
        self.fast_path = None if fast_path is None else str(fast_path)
        self.poll_s = poll_s
        self.retries = retries
        self.reloads = 0
        workers = self._workers()
        if not workers:
            raise ClusterError(f"the Dask cluster{self._address()} has no workers: start some "
                               "('dask worker SCHEDULER') and search again")
        bounds = np.linspace(0, n_rows, len(workers) + 1).astype(int)
        tag = f"dermsearch-{next(self._ids)}-{id(self)}"
        self.shards = [Shard(f"{tag}-{a}", int(a), int(b), w) for w, (a, b) in zip(workers, itertools.pairwise(bounds))]
        loaded = self._load(self.shards)
        if sum(loaded) != n_rows:
            raise ClusterError(f"the shards hold {sum(loaded)} rows, the index {n_rows}: the index changed while "
                               "its shards were loading; open it again")
        self._queries = itertools.count()
        # concurrent searches from this client (web server threads): fewer than the round-one results
        # a worker keeps, so that none is dropped while its round two is still coming
        self._in_flight = threading.BoundedSemaphore(_RAW_KEPT // 2)

    def _address(self) -> str:
        """`` at SCHEDULER-ADDRESS`` (empty when the client does not say)."""
        address = getattr(getattr(self.client, "scheduler", None), "address", None)
        return f" at {address}" if address else ""

    def _workers(self) -> list[str]:
        return sorted(self.client.scheduler_info()["workers"])

    def _submit(self, fn, shard: Shard, *args):
        return self.client.submit(fn, shard.key, *args, workers=[shard.worker], allow_other_workers=False,
                                  pure=False)

    def _load(self, shards: Sequence[Shard]) -> list[int]:
        futures = [self._submit(_load_shard, sh, self.index_dir, self.version, sh.start, sh.stop, self.fast_path,
                                self.kernel) for sh in shards]
        return self._gather(futures, shards)

    def _gather(self, futures, shards: Sequence[Shard]) -> list:
        """Results of tasks pinned to ``shards``' workers; ShardLost as soon as one of those
        workers has left the cluster (its pinned task would never run)."""
        while True:
            _wait(futures, self.poll_s)
            failed = [(f, sh) for f, sh in zip(futures, shards) if f.status == "error"]
            lost = [sh.key for f, sh in failed if isinstance(f.exception(), ShardLost)]
            if not lost and (failed or all(f.done() for f in futures)):
                return self.client.gather(futures)              # results, or the task's own error
            alive = set(self._workers())
            lost += [sh.key for f, sh in zip(futures, shards) if sh.worker not in alive and not f.done()]
            if lost:
                for f in futures:
                    f.cancel()
                raise ShardLost(lost, "worker(s) holding shards left the cluster")

    def _replace(self, keys: Sequence[str]) -> None:
        """Load the lost shards again on the live workers holding the fewest shards."""
        alive = self._workers()
        if not alive:
            raise ClusterError(f"the Dask cluster{self._address()} has no workers left: start some "
                               "('dask worker SCHEDULER') and search again")
        lost = [sh for sh in self.shards if sh.key in set(keys) or sh.worker not in alive]
        held = {w: sum(sh.worker == w for sh in self.shards if sh not in lost) for w in alive}
        for sh in lost:
            sh.worker = min(alive, key=lambda w: (held[w], w))
            held[sh.worker] += 1
        self._load(lost)
        self.reloads += len(lost)

    def _retrying(self, what: str, fn):
        """fn(), run again after reloading lost shards, up to ``retries`` times."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except ShardLost as e:
                if attempt == self.retries:
                    raise ClusterError(f"{what} failed: shards lost {self.retries + 1} times (last: {e}); the "
                                       "workers keep leaving: check their memory limits and logs") from e
                try:
                    self._replace(e.keys)
                except ShardLost:
                    pass                  # lost again while reloading: the next attempt finds out which

    def __len__(self) -> int:
        return self.shards[-1].stop if self.shards else 0

    @property
    def components(self) -> tuple[str, ...]:
        return self._components

    def take(self, rows) -> Vectors:
        """The stored vectors of these rows (in this order), one request per shard that holds some."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        where = np.searchsorted([sh.stop for sh in self.shards], rows, side="right")
        groups = [(self.shards[n], np.flatnonzero(where == n)) for n in np.unique(where)]
        if not groups:
            raise IndexError("no rows asked for")

        def fetch() -> list[Vectors]:           # every shard's request in flight at once
            return self._gather([self._submit(_shard_rows, sh, (rows[sel] - sh.start).tolist()) for sh, sel in groups],
                                [sh for sh, _ in groups])

        parts = self._retrying(f"fetching {rows.size} rows", fetch)
        picked = np.concatenate([sel for _, sel in groups])
        return Vectors.concat(parts).take(np.argsort(picked, kind="stable"))

    def close(self) -> None:
        for sh in self.shards:
            self._submit(_drop_shard, sh)

    def rank(self, batch: Vectors, valid: np.ndarray, measures: Sequence[str], k: int) -> list[QueryRanking]:
        """The contract (:class:`~dermsearch.search.engine.Engine`), in two rounds (module doc)."""
        with self._in_flight:
            return self._retrying("sharded search", lambda: self._rank(batch, valid, measures, k))

    def _rank(self, batch: Vectors, valid: np.ndarray, measures: Sequence[str], k: int) -> list[QueryRanking]:
        qk = f"q{next(self._queries)}"
        one = [self._submit(_round_one, sh, f"{sh.key}-{qk}", batch, valid[:, sh.start:sh.stop])
               for sh in self.shards]
        try:
            shard_maxima = self._gather(one, self.shards)
        except ShardLost:
            for sh in self.shards:        # the surviving shards' round-one results are not needed
                self._submit(_drop_raw, sh, f"{sh.key}-{qk}")
            raise
        tops = {comp: np.max(np.stack([m[comp] for m in shard_maxima]), axis=0) for comp in shard_maxima[0]}
        two = [self._submit(_round_two, sh, f"{sh.key}-{qk}", valid[:, sh.start:sh.stop], tops, tuple(measures), k,
                            sh.start) for sh in self.shards]
        parts: list[list[QueryRanking]] = self._gather(two, self.shards)
        return [merge_rankings([p[j] for p in parts], k) for j in range(len(batch))]
