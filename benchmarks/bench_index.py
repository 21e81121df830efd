"""Indexing throughput on isic-uda1 (557 real images) and index size per image.

Baseline in the same run: the bare cost of decoding + the network forward pass on the same
images (no segmentation, no Gram matrices, no writes), so the pipeline's overhead is visible.

    python benchmarks/bench_index.py [--limit N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import DATA, dir_bytes, emit, machine, require

from dermsearch.extract import Extractor, load_image
from dermsearch.index import Index
from dermsearch.index.build import build_index
from dermsearch.index.sources import read_labels_csv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0, help="index only the first N images")
    args = ap.parse_args()
    labels = require(DATA / "isic-uda1" / "labels.csv")
    records, _ = read_labels_csv(labels)
    if args.limit:
        records = records[: args.limit]
    extractor = Extractor()

    with tempfile.TemporaryDirectory() as tmp:
        src = labels
        if args.limit:
            src = Path(tmp) / "labels.csv"
            lines = labels.read_text().splitlines()
            src.write_text("\n".join(lines[: args.limit + 1]) + "\n")
            for r in records:  # paths in the CSV are relative to it
                dst = Path(tmp) / Path(r.meta["image_path"])
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.exists():
                    dst.symlink_to(r.path)
        # baseline: decode + forward only, same batch size
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(records), 16):
                imgs = [load_image(r.path) for r in records[i:i + 16]]
                x, _ = extractor.preprocess(imgs)
                extractor.net(x)
        bare = time.perf_counter() - t0

        index_dir = Path(tmp) / "ix"
        report = build_index(src, index_dir, extractor=extractor)
        n = len(Index.open(index_dir))
        size = dir_bytes(index_dir)
        m = Index.open(index_dir).manifest

    emit({
        "benchmark": "index",
        "data": "isic-uda1" + (f" (first {args.limit})" if args.limit else ""),
        "images": n,
        "model": {"backbone": m["extractor"]["backbone"], "image_size": m["extractor"]["image_size"],
                  "feature_dim": m["feature_dim"], "style_dim": m["style_dim"], "mask_size": m["mask_size"]},
        "pipeline_seconds": round(report.seconds, 2),
        "pipeline_images_per_s": round(n / report.seconds, 2),
        "baseline_decode_forward_images_per_s": round(len(records) / bare, 2),
        "pipeline_vs_baseline": round((n / report.seconds) / (len(records) / bare), 3),
        "index_bytes_per_image": int(size / max(1, n)),
        "vector_bytes_per_image": 4 * (m["feature_dim"] + m["style_dim"]) + m["mask_bytes"],
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
