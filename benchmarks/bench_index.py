"""Indexing throughput on isic-uda1 (557 real images) and index size per image.

Baselines in the same run, on the same images, already decoded and resized (so they measure the
networks alone): the bare ONNX Runtime forward of the same models (ensemble with its in-graph Gram
matrices, and the segmenter), batch 16, and the bare torch forward of the ensemble. The pipeline
(decode + resize in threads, inference, mask packing, atomic commits) is then timed end to end.

    python benchmarks/bench_index.py [--limit N] [--labels CSV]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DATA, dir_bytes, emit, machine, require

from dermsearch.extract import Extractor, load_image
from dermsearch.extract.encoder import pool_masks, stack_fields
from dermsearch.index import Index
from dermsearch.index.build import build_index
from dermsearch.index.sources import read_labels_csv
from dermsearch.runtime import Runtime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0, help="index only the first N images")
    ap.add_argument("--labels", type=Path, help="another labels CSV (default isic-uda1)")
    args = ap.parse_args()
    labels = require(args.labels or DATA / "isic-uda1" / "labels.csv")
    records, _ = read_labels_csv(labels)
    if args.limit:
        records = records[: args.limit]
    extractor = Extractor(runtime=Runtime(backend="onnx"))
    runtime = extractor.ort              # exported once (cached), not timed

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
        prepared = [extractor.prepare(load_image(r.path)) for r in records]
        batches = [prepared[i:i + 16] for i in range(0, len(prepared), 16)]
        size = extractor.config.image_size

        def bare_onnx(b):
            """The segmenter, then the extractor graph with every input it takes (lesion masks, fields)."""
            raw = runtime.segment(np.stack([p.segmenter for p in b]))
            masks = pool_masks(raw, size) if runtime.info.get("masks_input") else None
            runtime.features(np.stack([p.pixels for p in b]), masks, stack_fields(b))

        bare_onnx(batches[0])                                           # warm-up
        t0 = time.perf_counter()
        for b in batches:
            bare_onnx(b)
        bare = time.perf_counter() - t0
        import torch

        torch_ex = Extractor(runtime=Runtime(backend="torch"))
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                fields = stack_fields(b)
                torch_ex.net(torch_ex._normalised(np.stack([p.pixels for p in b])), views=torch_ex.tta,
                             field=None if fields is None else torch.from_numpy(fields))
        torch_bare = time.perf_counter() - t0

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
        "backend": extractor.backend,
        "pipeline_seconds": round(report.seconds, 2),
        "pipeline_images_per_s": round(n / report.seconds, 2),
        "bare_onnx_forward_images_per_s": round(len(records) / bare, 2),
        "pipeline_vs_bare_onnx_forward": round((n / report.seconds) / (len(records) / bare), 3),
        "bare_torch_ensemble_forward_images_per_s": round(len(records) / torch_bare, 2),
        "index_bytes_per_image": int(size / max(1, n)),
        "vector_bytes_per_image": 4 * (m["feature_dim"] + m["style_dim"]) + m["mask_bytes"],
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
