"""Query latency for all ten measures, exact, on a real index.

    python benchmarks/bench_search.py INDEX_DIR [--queries 20]

With no INDEX_DIR, indexes isic-uda1 (557 images) into a temporary directory first. For
N = 10,015: ``dermsearch index ../shared/data/ham10000/labels.csv --index /tmp/ham-index``
then ``python benchmarks/bench_search.py /tmp/ham-index``.

Baseline in the same run: a per-image Python loop over the candidates (how the measures are
naturally written from the paper), on the same query, checked to give the same scores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DATA, dir_bytes, emit, machine, require

from dermsearch.index.build import build_index
from dermsearch.search import MEASURES, Searcher
from dermsearch.search.measures import cosine_new, harmonic_mean


def naive_scores(s: Searcher, q) -> dict[str, np.ndarray]:
    snap = s.snapshot
    n = len(snap)
    ed, cs, ls, dc = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    qm = np.unpackbits(q.mask)
    qf, qs = q.feature.astype(np.float64), q.style.astype(np.float64)
    for i in range(n):  # one candidate at a time, in float64
        f = snap.features[i].astype(np.float64)
        ed[i] = float(np.sqrt(((f - qf) ** 2).sum()))
        cs[i] = float(f @ qf / (np.linalg.norm(f) * np.linalg.norm(qf)))
        ls[i] = float(((snap.styles[i].astype(np.float64) - qs) ** 2).sum())
        m = np.unpackbits(snap.masks[i])
        tot = m.sum() + qm.sum()
        dc[i] = 2 * (m & qm).sum() / tot if tot else 1.0
    es, ss, csn = 1 - ed / ed.max(), 1 - ls / ls.max(), cosine_new(cs)
    return {"euclidean": es, "cosine": csn, "style": ss, "dice": dc, "i1_sd": harmonic_mean(ss, dc)}


def run(index_dir: Path, n_queries: int) -> dict:
    t0 = time.perf_counter()
    s = Searcher(index_dir)
    open_s = time.perf_counter() - t0
    n = len(s.snapshot)
    rng = np.random.default_rng(0)
    ids = rng.choice(s.snapshot.ids, size=min(n_queries, n), replace=False)
    s.search(s.query_for_id(ids[0]), k=5)  # warm-up
    lat = []
    for i in ids:
        q = s.query_for_id(i)
        t = time.perf_counter()
        s.search(q, k=5, exclude_ids=[i])
        lat.append(time.perf_counter() - t)
    q = s.query_for_id(ids[0])

    # baseline: per-image loop, same query; verify identical scores
    t = time.perf_counter()
    ref = naive_scores(s, q)
    naive = time.perf_counter() - t
    full = s.search(q, k=0)
    max_diff = 0.0
    for m, scores in ref.items():
        by_id = {h.id: h.score for h in full.results[m]}
        got = np.array([by_id[i] for i in s.snapshot.ids])
        max_diff = max(max_diff, float(np.abs(got - scores).max()))

    # end to end from an image file (decode + extraction + search)
    path = s.snapshot.paths[0]
    s.search(path, k=5)
    t = time.perf_counter()
    for _ in range(3):
        s.search(path, k=5)
    e2e = (time.perf_counter() - t) / 3

    snap = s.snapshot
    return {
        "images": n,
        "measures": list(MEASURES),
        "open_seconds": round(open_s, 2),
        "query_ms_all_ten_measures": {"median": round(statistics.median(lat) * 1000, 2),
                                      "p95": round(float(np.percentile(lat, 95)) * 1000, 2), "queries": len(lat)},
        "baseline_per_image_loop_ms": round(naive * 1000, 1),
        "speedup_vs_loop": round(naive / statistics.median(lat), 1),
        "max_abs_score_diff_vs_loop": max_diff,
        "end_to_end_ms_from_image_file": round(e2e * 1000, 1),
        "bytes_scanned_per_query": int(snap.features.nbytes + snap.styles.nbytes + snap.masks.nbytes),
        "index_bytes_per_image": int(dir_bytes(index_dir) / n),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("index", nargs="?", type=Path)
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args()
    if args.index:
        result = run(args.index, args.queries)
        result["data"] = str(args.index)
    else:
        labels = require(DATA / "isic-uda1" / "labels.csv")
        with tempfile.TemporaryDirectory() as tmp:
            build_index(labels, Path(tmp) / "ix")
            result = run(Path(tmp) / "ix", args.queries)
        result["data"] = "isic-uda1"
    emit({"benchmark": "search", **result, "machine": machine()})


if __name__ == "__main__":
    main()
