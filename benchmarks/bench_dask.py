"""Dask scale-out: extraction throughput with 1 vs 2 local workers, and sharded vs local exact
search at 100,000 images. All in one run, on this machine (a LocalCluster).

    python benchmarks/bench_dask.py [--images 160] [--archive /tmp/dermsearch-scaling/fast]
                                    [--search-rows 20000,100000] [--worker-memory-limit 0]

Extraction: the first ``--images`` of isic-uda1 with the default model (ONNX Runtime backend),
indexed locally (``build_index``, both cores) and through Dask with 1 worker x 2 threads and
2 workers x 1 thread. Search: the fast-mode files written by ``bench_scaling.py`` (100,000 rows,
real + synthetic) searched by the local exact engine and by 2 shards on 2 workers, at each size of
``--search-rows`` (e.g. ``20000,100000``), plus one shard's half alone with its rows in RAM.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import DATA, emit, machine, require

from dermsearch.extract import ExtractorConfig
from dermsearch.index.build import build_index
from dermsearch.index.distributed import build_index_dask
from dermsearch.runtime import Runtime
from dermsearch.search.engine import ExactEngine, Query, maxima, normalise, top_k_rows
from dermsearch.search.fast import FastIndex
from dermsearch.search.measures import MEASURES, measure_scores
from dermsearch.search.sharded import ShardedEngine


def subset(labels: Path, n: int, tmp: Path) -> Path:
    lines = labels.read_text().splitlines()
    out = tmp / "labels.csv"
    header = lines[0].split(",")
    col = header.index("image_path")
    rows = []
    for line in lines[1: n + 1]:
        cells = line.split(",")
        cells[col] = str((labels.parent / cells[col]).resolve())
        rows.append(",".join(cells))
    out.write_text("\n".join([lines[0]] + rows) + "\n")
    return out


def extraction(n: int) -> dict:
    from distributed import Client, LocalCluster

    labels = require(DATA / "isic-uda1" / "labels.csv")
    cfg = Runtime(backend="onnx")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = subset(labels, n, Path(tmp))
        build_index(src, Path(tmp) / "warm", ExtractorConfig(), cfg)       # ONNX export cached, not timed
        t = time.perf_counter()
        build_index(src, Path(tmp) / "local", ExtractorConfig(), cfg)
        out["local_build_index_images_per_s"] = round(n / (time.perf_counter() - t), 2)
        for workers, threads in ((1, 2), (2, 1)):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                              silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
                # warm-up: every worker loads its models once (that cost is per worker, not per image)
                build_index_dask(src, Path(tmp) / f"warm{workers}", client, ExtractorConfig(),
                                 replace(cfg, threads=threads), chunk_size=8)
                t = time.perf_counter()
                build_index_dask(src, Path(tmp) / f"dask{workers}", client, ExtractorConfig(),
                                 replace(cfg, threads=threads), chunk_size=16)
                out[f"dask_{workers}_workers_x_{threads}_threads_images_per_s"] = round(
                    n / (time.perf_counter() - t), 2)
    out["speedup_2_vs_1_workers"] = round(out["dask_2_workers_x_1_threads_images_per_s"]
                                          / out["dask_1_workers_x_2_threads_images_per_s"], 3)
    out["images"] = n
    return out


def search(archive: Path, queries: int, rows_limit: int = 0, memory_limit: str = "0") -> dict:
    """Local exact engine vs 2 shards on 2 local worker processes, all ten measures, top 5.

    Both read the same memory-mapped fast-mode files; each side runs one untimed query first.
    ``memory_limit``: the workers' Dask memory limit. The default 0 (none) because memory-mapped
    rows count in a worker's resident memory: a shard larger than 80% of the limit is refused."""
    from distributed import Client, LocalCluster

    fast = FastIndex.open(archive)
    n = min(len(fast), rows_limit) if rows_limit else len(fast)
    full = fast.exact
    e = ExactEngine(full.features[:n], full.styles[:n], full.masks[:n], full.mask_areas[:n],
                    full.feature_sqnorms[:n], full.style_sqnorms[:n], style_blocks=full.style_blocks)
    rng = np.random.default_rng(0)
    rows = rng.choice(n, queries, replace=False)
    qs = [Query(np.array(e.features[i]), np.array(e.styles[i]), np.array(e.masks[i]), int(e.mask_areas[i]))
          for i in rows]
    valid = np.ones((1, n), dtype=bool)

    def local(q):
        raw = e.raw(Query.batch([q]))
        scores = measure_scores(normalise(raw, maxima(raw, valid)), MEASURES)
        return {m: top_k_rows(scores[m], valid, 5)[0] for m in MEASURES}

    local(qs[0])                                   # warm-up, untimed (as for the shards)
    local_lat, local_top = [], []
    for q in qs:
        print(f"local query ({n} rows)", file=sys.stderr, flush=True)
        t = time.perf_counter()
        local_top.append(local(q))
        local_lat.append(time.perf_counter() - t)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit=memory_limit, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        t = time.perf_counter()
        sharded = ShardedEngine(client, None, 0, n, fast_path=archive)
        load = time.perf_counter() - t
        sharded.rank(Query.batch(qs[:1]), valid, MEASURES, 5)
        lat, same = [], 0
        for q, ref in zip(qs, local_top):
            print(f"sharded query ({n} rows)", file=sys.stderr, flush=True)
            t = time.perf_counter()
            got = sharded.rank(Query.batch([q]), valid, MEASURES, 5)[0].measures
            lat.append(time.perf_counter() - t)
            same += all(list(got[m].rows) == list(ref[m]) for m in MEASURES)
    # One shard's share alone (rows [0, n/2), local engine, warmed): what each of 2 machines would
    # spend if its shard stayed in its own RAM (the Dask rounds add the sharded-minus-local overhead).
    half = ExactEngine(e.features[: n // 2], e.styles[: n // 2], e.masks[: n // 2], e.mask_areas[: n // 2],
                       e.feature_sqnorms[: n // 2], e.style_sqnorms[: n // 2], style_blocks=e.style_blocks)
    valid_half = valid[:, : n // 2]
    half.raw(Query.batch(qs[:1]))
    half_lat = []
    for q in qs:
        t = time.perf_counter()
        raw = half.raw(Query.batch([q]))
        measure_scores(normalise(raw, maxima(raw, valid_half)), MEASURES)
        half_lat.append(time.perf_counter() - t)
    return {"images": n, "queries": queries, "local_exact_ms": round(statistics.median(local_lat) * 1000, 1),
            "one_shard_of_2_alone_ms": round(statistics.median(half_lat) * 1000, 1),
            "sharded_2_workers_ms": round(statistics.median(lat) * 1000, 1), "shard_load_seconds": round(load, 1),
            "local_exact_ms_all": [round(x * 1000, 1) for x in local_lat],
            "sharded_2_workers_ms_all": [round(x * 1000, 1) for x in lat],
            "queries_with_identical_top5_all_measures": f"{same}/{queries}",
            "bytes_per_query": e.bytes_per_query, "worker_memory_limit": memory_limit}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--archive", type=Path, default=Path("/tmp/dermsearch-scaling/fast"))
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument("--search-rows", default="0", help="comma-separated sizes: search the first N rows of the "
                    "archive (0 = all; default all)")
    ap.add_argument("--worker-memory-limit", default="0", help="Dask memory limit per worker (default 0 = none)")
    args = ap.parse_args()
    result = {"benchmark": "dask"}
    if args.images:
        result["extraction"] = extraction(args.images)
        print(json.dumps(result["extraction"]), file=sys.stderr, flush=True)     # partial result, early
    if args.queries and (args.archive / "fast.json").is_file():
        result["search"] = []
        for rows in (int(x) for x in args.search_rows.split(",")):
            result["search"].append(search(args.archive, args.queries, rows, args.worker_memory_limit))
            print(json.dumps(result["search"][-1]), file=sys.stderr, flush=True)
    else:
        result["search"] = {"skipped": f"{args.archive} not found: run bench_scaling.py first"}
    emit({**result, "machine": machine()})


if __name__ == "__main__":
    main()
