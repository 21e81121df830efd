"""What the per-hit explanations cost: search with and without ``explain``, paired in one run.

    python benchmarks/bench_explain.py INDEX [--queries 20] [-k 5]

Queries are indexed rows (their stored vectors, so encoding is not timed); each is searched for
all ten measures without, then with explanations, alternating, and the medians are compared.
Also times the overlap PNG of one hit (what the contact sheet and the web page add per hit).
Prints JSON; CPU model in "machine".
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from _common import emit, machine

from dermsearch.search import Searcher


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("index", type=Path)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("-k", type=int, default=5)
    args = ap.parse_args()
    s = Searcher(args.index, device="cpu")
    rng = np.random.default_rng(0)
    ids = [str(i) for i in rng.choice(s.snapshot.ids, min(args.queries, len(s.snapshot.ids)), replace=False)]
    plain, explained, png, rows = [], [], [], []
    s.search(s.query_for_id(ids[0]), k=args.k, explain=True)          # warm-up, untimed
    for i in ids:
        q = s.query_for_id(i)
        t0 = time.perf_counter()
        s.search(q, k=args.k, exclude_ids=[i])
        t1 = time.perf_counter()
        r = s.search(q, k=args.k, exclude_ids=[i], explain=True)
        t2 = time.perf_counter()
        hit = r.results["style"][0].id
        s.mask_overlay(q, hit)
        t3 = time.perf_counter()
        plain.append(t1 - t0)
        explained.append(t2 - t1)
        png.append(t3 - t2)
        rows.append(len({h.id for hits in r.results.values() for h in hits}))
    p, e = statistics.median(plain), statistics.median(explained)
    emit({"benchmark": "explain", "index": str(args.index), "rows": len(s.snapshot.ids), "k": args.k,
          "queries": len(ids), "machine": {**machine(), "cpu": cpu_model()},
          "distinct_hits_per_query_median": statistics.median(rows),
          "search_ms_median": round(1e3 * p, 2), "search_with_explain_ms_median": round(1e3 * e, 2),
          "added_ms_median": round(1e3 * (e - p), 2), "ratio": round(e / p, 3),
          "overlap_png_ms_median": round(1e3 * statistics.median(png), 3)})


if __name__ == "__main__":
    main()
