"""Fast mode sharded on Dask vs local fast mode: per-query latency, identical answers, bytes on
the wire, and fast mode's bytes per row (what a larger cluster would hold: docs/distributed.md).

    python benchmarks/bench_dask_fast.py [--rows 2000] [--queries 10] [--style-dim 80712]

A synthetic fast-mode archive at the default model's sizes (1024-d features, 80,712-d style
vectors, 128x128 masks; low-rank rows plus noise, the default FastConfig) is written to a
temporary directory; local fast mode (``FastIndex``) and ``ShardedFastEngine`` on a LocalCluster
of 2 worker processes x 1 thread each rank the same queries (all ten measures, top 5, each
query's own row left out), each after one untimed query. Fast mode's RAM and scanned bytes per
row are FastIndex's own figures (``resident_bytes``, ``bytes_scanned_per_query``) at two prefixes
of the archive: their difference per row, and what does not grow with the rows. Also: one round
with nothing to compute (a task per shard), the Dask overhead each of the rounds pays.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit, machine

from dermsearch.search.engine import Query
from dermsearch.search.fast import FastConfig, FastIndex
from dermsearch.search.fast_build import FastIndexWriter
from dermsearch.search.fast_sharded import ShardedFastEngine, _drop_state
from dermsearch.search.measures import MEASURES


def archive(directory: Path, n: int, d: int, s: int, side: int, chunk: int = 256) -> FastIndex:
    rng = np.random.default_rng(0)
    rank = 16
    basis_f, basis_s = rng.normal(size=(rank, d)).astype(np.float32), rng.normal(size=(rank, s)).astype(np.float32)
    yy, xx = np.mgrid[:side, :side]
    w = FastIndexWriter(directory, n, d, s, side * side // 8, side, FastConfig())
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        z = rng.normal(size=(b - a, rank)).astype(np.float32)
        F = z @ basis_f + 0.3 * rng.normal(size=(b - a, d)).astype(np.float32) + 1
        S = np.abs(z @ basis_s + 0.3 * rng.normal(size=(b - a, s)).astype(np.float32))
        cy, cx = rng.uniform(0.3, 0.7, (2, b - a)) * side
        r = rng.uniform(0.1, 0.3, b - a) * side
        masks = (((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2)
                 <= r[:, None, None] ** 2).reshape(b - a, -1)
        w.write(a, [f"r{i}" for i in range(a, b)], F, S, np.packbits(masks, axis=1), masks.sum(1).astype(np.int32))
    return w.finish()


def per_row(fast: FastIndex) -> dict:
    """Fast mode's RAM and scanned bytes: per row, and fixed (bases, sketch hash), from FastIndex."""
    n = len(fast)
    small, big = fast.prefix(n // 2), fast
    out = {}
    for name, f in (("resident", lambda x: x.resident_bytes),
                    ("scanned_per_query", lambda x: x.bytes_scanned_per_query)):
        row = (f(big) - f(small)) / (n - n // 2)
        out[f"{name}_bytes_per_row"] = round(row, 1)
        out[f"{name}_bytes_fixed"] = int(f(big) - row * n)
    e = fast.exact
    out["exact_bytes_per_row"] = int(e.features[0].nbytes + e.styles[0].nbytes + e.masks[0].nbytes + 4 + 16)
    return out


def timed(fn, queries) -> tuple[list[float], list]:
    fn(queries[0])                                  # warm-up, untimed
    lat, out = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        lat.append(time.perf_counter() - t)
    return lat, out


def ms(lat: list[float]) -> dict:
    s = sorted(lat)
    return {"median": round(statistics.median(s) * 1000, 1),
            "p95": round(s[min(len(s) - 1, int(0.95 * len(s)))] * 1000, 1), "all": [round(x * 1000, 1) for x in lat]}


def main() -> None:
    from distributed import Client, LocalCluster

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--feature-dim", type=int, default=1024)
    ap.add_argument("--style-dim", type=int, default=80712)
    ap.add_argument("--mask-side", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        fast = archive(Path(tmp) / "fast", args.rows, args.feature_dim, args.style_dim, args.mask_side)
        write_s = time.perf_counter() - t
        n, e = len(fast), fast.exact
        rows = np.random.default_rng(1).choice(n, args.queries, replace=False)
        queries = [(int(i), Query.batch([Query(np.array(e.features[i]), np.array(e.styles[i]), np.array(e.masks[i]),
                                               int(e.mask_areas[i]))])) for i in rows]

        def valid_for(i: int) -> np.ndarray:
            v = np.ones((1, n), dtype=bool)
            v[0, i] = False
            return v

        local_lat, local_out = timed(lambda q: fast.rank(q[1], valid_for(q[0]), MEASURES, 5)[0], queries)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                          memory_limit=0, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            t = time.perf_counter()
            engine = ShardedFastEngine(client, fast.directory, 0, n, e.components)
            load_s = time.perf_counter() - t
            engine.rank(queries[0][1], valid_for(queries[0][0]), MEASURES, 5)
            engine.wire = {}
            sharded_lat, sharded_out = timed(lambda q: engine.rank(q[1], valid_for(q[0]), MEASURES, 5)[0], queries)
            wire = dict(engine.wire)
            empty = []                      # a round with nothing to compute: the Dask overhead alone
            for _ in range(10):
                t = time.perf_counter()
                engine._gather([engine._submit(_drop_state, sh, "none") for sh in engine.shards], engine.shards)
                empty.append(time.perf_counter() - t)
            engine.close()
        same = sum(all(np.array_equal(a.measures[m].rows, b.measures[m].rows)
                       and np.array_equal(a.measures[m].scores, b.measures[m].scores) for m in MEASURES)
                   for a, b in zip(local_out, sharded_out))
        calls = wire.pop("queries")
        emit({"benchmark": "dask_fast", "rows": n, "feature_dim": args.feature_dim, "style_dim": args.style_dim,
              "mask_side": args.mask_side, "queries": args.queries, "archive_write_seconds": round(write_s, 1),
              "local_fast_ms": ms(local_lat), "sharded_fast_2_workers_ms": ms(sharded_lat),
              "shard_load_seconds": round(load_s, 2), "empty_round_ms": ms(empty),
              "queries_identical_rows_and_scores_all_ten": f"{same}/{args.queries}",
              "wire_bytes_per_query": {k: round(v / calls) for k, v in wire.items()},
              "fast_mode_bytes": per_row(fast), "machine": machine()})


if __name__ == "__main__":
    main()
