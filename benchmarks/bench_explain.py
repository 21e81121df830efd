"""What the style options and the per-hit explanations cost, each paired against its baseline in one run.

    python benchmarks/bench_explain.py INDEX [--queries 20] [-k 5] [--images 64]

1. Extraction (ONNX Runtime, the packaged model): the paper's whole-image Grams against the default
   lesion-pooled, l2-normalised ones, on ``--images`` HAM10000 images (batch 16, interleaved rounds).
2. Search:
queries are indexed rows (their stored vectors, so encoding is not timed); each is searched for
all ten measures without, then with explanations, alternating, and the medians are compared.
Also times the overlap PNG of one hit (what the contact sheet and the web page add per hit).
Prints JSON; CPU model in "machine".
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from _common import DATA, cpu_model, emit, machine

from dermsearch.extract import Extractor, ExtractorConfig, load_image
from dermsearch.extract.extractor import PAPER_STYLE
from dermsearch.runtime import Runtime
from dermsearch.search import Searcher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("index", type=Path)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--images", type=int, default=64, help="HAM10000 images for the extraction pairing (0: skip)")
    args = ap.parse_args()
    extraction = extraction_pairing(args.images) if args.images else None
    s = Searcher(args.index, runtime=Runtime(device="cpu"))
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
          "overlap_png_ms_median": round(1e3 * statistics.median(png), 3), "extraction": extraction})


def extraction_pairing(n: int, batch: int = 16, rounds: int = 3) -> dict | None:
    labels = DATA / "ham10000" / "labels.csv"
    if not labels.is_file():
        return None
    import csv

    rows = list(csv.DictReader(open(labels)))[:n]
    images = [load_image(labels.parent / r["image_path"]) for r in rows]
    exs = {"paper": Extractor(ExtractorConfig(**PAPER_STYLE), Runtime(backend="onnx")),
           "default": Extractor(ExtractorConfig(), Runtime(backend="onnx"))}
    for ex in exs.values():
        ex.extract(images[:batch])                                  # export/warm-up, untimed
    times = {k: [] for k in exs}
    for _ in range(rounds):
        for name, ex in exs.items():
            t0 = time.perf_counter()
            for s in range(0, len(images), batch):
                ex.extract(images[s:s + batch])
            times[name].append((time.perf_counter() - t0) / len(images))
    p, d = statistics.median(times["paper"]), statistics.median(times["default"])
    return {"images": len(images), "batch": batch, "rounds": rounds, "paper_ms_per_image": round(1e3 * p, 2),
            "default_ms_per_image": round(1e3 * d, 2), "ratio": round(d / p, 3),
            "style_floats_per_image": {k: ex.style_dim for k, ex in exs.items()}}


if __name__ == "__main__":
    main()
