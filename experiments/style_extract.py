"""Style ablation, step 1: extract per-layer Gram vectors of several pooling variants at once.

One forward pass of the packaged ensemble and segmenter per image; for every variant the
per-layer averaged Gram is packed with beta_l = 1 (diagonal, then sqrt(2) x strict upper triangle,
as in ``extract.gram``) and stored as float16 in ``OUT/<variant>.npy`` (memory-mapped), so that
``style_ablation.py`` can recombine layers with any weights without extracting again.

Variants: ``image`` (the paper's whole-image Gram), ``lesion-m{margin}`` (pooled over the
segmenter's mask dilated by ``margin`` x the mask side), ``skin`` (pooled outside the undilated
mask). Also stored: the 1024-d features and the packed masks (for ES, CSnew, DC).

    python experiments/style_extract.py ../shared/data/ham10000 /tmp/style-ablation --splits train,val
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from dermsearch.extract import Extractor, ExtractorConfig, load_image
from dermsearch.extract.gram import average_grams, style_dim, style_vector
from dermsearch.extract.masks import pack_masks, resize_mask
from dermsearch.runtime import Runtime

MARGINS = (0.0, 0.05, 0.1, 0.2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--splits", default="train,val")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = {r["image_id"]: r["split"] for r in csv.DictReader(open(data / "split.csv"))}
    rows = [r for r in csv.DictReader(open(data / "labels.csv")) if split[r["image_id"]] in args.splits.split(",")]
    if args.limit:
        rows = rows[: args.limit]
    n = len(rows)
    torch.set_num_threads(2)
    ex = Extractor(ExtractorConfig(), Runtime(backend="torch"))
    chans = ex.tap_channels
    sd = style_dim(chans)
    variants = ["image"] + [f"lesion-m{m:g}" for m in MARGINS] + ["skin"]
    mm = {v: np.lib.format.open_memmap(out / f"{v}.npy", mode="w+", dtype=np.float16, shape=(n, sd)) for v in variants}
    feats = np.zeros((n, ex.feature_dim), np.float32)
    ms = ex.config.mask_size
    masks = np.zeros((n, ms * ms // 8), np.uint8)
    areas = np.zeros(n, np.int32)
    meta = {"ids": [r["image_id"] for r in rows], "diagnosis": [r["diagnosis"] for r in rows],
            "lesion_id": [r["lesion_id"] for r in rows], "melanoma": [int(r["melanoma"]) for r in rows],
            "split": [split[r["image_id"]] for r in rows], "channels": list(chans), "variants": variants,
            "margins": list(MARGINS)}
    (out / "meta.json").write_text(json.dumps(meta))
    pool = ThreadPoolExecutor(2)

    def load(batch):
        return [ex.prepare(load_image(data / r["image_path"])) for r in batch]

    t0 = time.time()
    batches = [rows[i:i + args.batch] for i in range(0, n, args.batch)]
    fut = pool.submit(load, batches[0])
    for bi, _ in enumerate(batches):
        prepared = fut.result()
        if bi + 1 < len(batches):
            fut = pool.submit(load, batches[bi + 1])
        s = bi * args.batch
        e = s + len(prepared)
        with torch.inference_mode():
            pix = np.stack([p[0] for p in prepared])
            o = ex.net(ex._normalised(pix))
            seg = ex._segmenter.segment_batch(np.stack([p[1] for p in prepared]))
            feats[s:e] = o.feature.numpy()
            bm = np.stack([resize_mask(m, ms) if m.shape != (ms, ms) else m for m in seg])
            masks[s:e] = pack_masks(bm)
            areas[s:e] = bm.reshape(len(bm), -1).sum(1)
            seg_t = torch.nn.functional.interpolate(torch.from_numpy(seg).float()[:, None],
                                                    size=pix.shape[1:3], mode="nearest")
            for v in variants:
                if v == "image":
                    grams = average_grams(o.member_taps)
                elif v == "skin":     # the product's skin Grams: outside the undilated mask
                    grams = average_grams(o.member_taps, seg_t, "lesion+skin")[1::2]
                else:
                    grams = average_grams(o.member_taps, seg_t, "lesion", float(v.split("-m")[1]))
                mm[v][s:e] = style_vector(grams, [1.0] * len(grams)).astype(np.float16)
        if bi % 20 == 0:
            el = time.time() - t0
            print(f"{e}/{n} {e / el:.1f} img/s", file=sys.stderr, flush=True)
    np.save(out / "features.npy", feats)
    np.save(out / "masks.npy", masks)
    np.save(out / "areas.npy", areas)
    for v in variants:
        mm[v].flush()
    print(json.dumps({"images": n, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
