"""What test-time views cost: extraction with the packaged model at 1 view against its own 4, paired.

    python benchmarks/bench_tta.py [--images 64] [--rounds 3]

ONNX Runtime backend (what `dermsearch index` and `search` use), batch 16 (an index build) and
batch 1 (one query), interleaved rounds, medians. Prints JSON; the CPU model is in "machine".
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from dataclasses import replace
from pathlib import Path

from _common import DATA, cpu_model, emit, machine, require

from dermsearch.extract import Extractor, ExtractorConfig, load_image
from dermsearch.runtime import Runtime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    labels = require(DATA / "ham10000" / "labels.csv")
    with open(labels, newline="") as f:
        rows = [r for _, r in zip(range(a.images), csv.DictReader(f))]
    images = [load_image(Path(labels).parent / r["image_path"]) for r in rows]
    shipped = Extractor(ExtractorConfig(), Runtime(backend="onnx"))
    one = Extractor(replace(ExtractorConfig(), tta=1), Runtime(backend="onnx"))
    prepared = [shipped.prepare(im) for im in images]
    for ex in (one, shipped):                       # export + warm-up, untimed
        ex.extract_prepared(prepared[:2])
    timing: dict[str, dict[str, list[float]]] = {f"views={ex.tta}": {"batch16": [], "batch1": []}
                                                  for ex in (one, shipped)}
    for _ in range(a.rounds):
        for ex in (one, shipped):
            t0 = time.perf_counter()
            for i in range(0, len(prepared), 16):
                ex.extract_prepared(prepared[i:i + 16])
            t1 = time.perf_counter()
            for p in prepared[:16]:
                ex.extract_prepared([p])
            t2 = time.perf_counter()
            timing[f"views={ex.tta}"]["batch16"].append((t1 - t0) / len(prepared) * 1e3)
            timing[f"views={ex.tta}"]["batch1"].append((t2 - t1) / 16 * 1e3)
    out = {k: {f"ms_per_image_{b}": round(statistics.median(v), 2) for b, v in d.items()} for k, d in timing.items()}
    base, new = out["views=1"], out[f"views={shipped.tta}"]
    emit({"images": len(prepared), "rounds": a.rounds, "extraction": out,
          "ratio_batch16": round(new["ms_per_image_batch16"] / base["ms_per_image_batch16"], 2),
          "ratio_batch1": round(new["ms_per_image_batch1"] / base["ms_per_image_batch1"], 2),
          "machine": {**machine(), "cpu": cpu_model()}})


if __name__ == "__main__":
    main()
