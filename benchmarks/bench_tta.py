"""What test-time views cost: extraction with the packaged model at 1 view against its own 4, paired.

    python benchmarks/bench_tta.py [--images 64] [--rounds 3]

ONNX Runtime backend (what `dermsearch index` and `search` use), batch 16 (an index build) and
batch 1 (one query), interleaved rounds, medians. Prints JSON; the CPU model is in "machine".
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from _common import cpu_model, emit, ham_images, machine, time_extractors

from dermsearch.extract import Extractor, ExtractorConfig
from dermsearch.runtime import Runtime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    images = ham_images(a.images)
    shipped = Extractor(ExtractorConfig(), Runtime(backend="onnx"))
    one = Extractor(replace(ExtractorConfig(), tta=1), Runtime(backend="onnx"))
    out = time_extractors({f"views={ex.tta}": ex for ex in (one, shipped)}, images, a.rounds)
    base, new = out["views=1"], out[f"views={shipped.tta}"]
    emit({"images": len(images), "rounds": a.rounds, "extraction": out,
          "ratio_batch16": round(new["ms_per_image_batch16"] / base["ms_per_image_batch16"], 2),
          "ratio_batch1": round(new["ms_per_image_batch1"] / base["ms_per_image_batch1"], 2),
          "machine": {**machine(), "cpu": cpu_model()}})


if __name__ == "__main__":
    main()
