"""Readers during writes: search an index continuously while `build_index` extends it.

    python benchmarks/concurrent_reads.py [--source CSV] [--readers 2]

Every search runs on one snapshot; the script checks each snapshot is consistent (unique ids,
every vector matrix with one row per id, row count a multiple of the commit size) and counts
the searches completed while the writer was running. Prints JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import threading
import time
from pathlib import Path

from _common import REPO, machine

from dermsearch.extract import Extractor
from dermsearch.index.build import build_index
from dermsearch.search import Searcher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", type=Path, default=REPO / "examples" / "isic-sample" / "labels.csv")
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--commit-every", type=int, default=8)
    args = ap.parse_args()
    with open(args.source) as f:
        rows = list(csv.DictReader(f))
    half = len(rows) // 2
    tmp = Path(tempfile.mkdtemp(prefix="concurrent-"))
    first = tmp / "first.csv"
    with open(first, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows[:half]:
            w.writerow({**r, "image_path": str((args.source.parent / r["image_path"]).resolve())})
    extractor = Extractor()
    build_index(first, tmp / "ix", extractor=extractor, commit_every=args.commit_every)
    query = str((args.source.parent / rows[0]["image_path"]).resolve())
    stats = {"searches": 0, "inconsistent": 0, "errors": [], "sizes": set()}
    lock, done = threading.Lock(), threading.Event()

    def reader():
        while not done.is_set():
            try:
                s = Searcher(tmp / "ix", extractor=extractor)
                snap = s.snapshot
                n = len(snap.ids)
                ok = len(set(snap.ids)) == n == snap.features.shape[0] == snap.styles.shape[0] == snap.masks.shape[0]
                ok &= (n - half) % args.commit_every == 0 or n == len(rows)
                res = s.search(query, k=5)
                ok &= res.candidates == n
                with lock:
                    stats["searches"] += 1
                    stats["inconsistent"] += 0 if ok else 1
                    stats["sizes"].add(n)
            except Exception as e:  # noqa: BLE001
                with lock:
                    stats["errors"].append(repr(e))

    threads = [threading.Thread(target=reader) for _ in range(args.readers)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    build_index(args.source, tmp / "ix", extractor=extractor, commit_every=args.commit_every)
    write_s = time.perf_counter() - t0
    done.set()
    for t in threads:
        t.join()
    print(json.dumps({"benchmark": "concurrent_reads", "rows_before": half, "rows_after": len(rows),
                      "readers": args.readers, "write_seconds": round(write_s, 1),
                      "searches_during_write": stats["searches"], "inconsistent_snapshots": stats["inconsistent"],
                      "errors": stats["errors"][:5], "distinct_snapshot_sizes_seen": sorted(stats["sizes"]),
                      "machine": machine()}, indent=1))


if __name__ == "__main__":
    main()
