"""Members' pooled vectors of a packaged ensemble, per image and per test-time view (#17 experiments).

Writes ``OUT/<set>-<view>.npy`` ([N, members, 1280] fp16) and ``OUT/<set>.json`` (ids, lesions,
diagnoses, melanoma, split) for HAM10000 (all rows) and isic-uda1. Views: the dihedral ``id``,
``hflip``, ``vflip``, ``rot90`` and ``sog`` (Shades of Gray colour constancy, identity orientation).
Phase-two variants (experiments/head_variants.py) train on these without touching the members.

    python experiments/feature_vectors.py --out /tmp/fv --views id hflip vflip rot90 sog
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from dermsearch.extract.colour import shades_of_gray_batch
from dermsearch.extract.datasets import load_labelled
from dermsearch.models.ensemble import default_ensemble_path, load_ensemble
from dermsearch.train.head import pooled_encoder

VIEWS = {
    "id": lambda x: x, "hflip": lambda x: x.flip(3), "vflip": lambda x: x.flip(2),
    "rot90": lambda x: x.rot90(1, (2, 3)), "sog": shades_of_gray_batch,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--weights", default=str(default_ensemble_path()))
    ap.add_argument("--views", nargs="+", default=list(VIEWS))
    ap.add_argument("--sets", nargs="+", default=["isic", "ham"])
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    net, spec = load_ensemble(a.weights)
    net.eval()
    encode = pooled_encoder(net, spec.normalization, 1, spec.image_size, torch.device("cpu"), out,
                            log=lambda m: None)   # the trainer's own encoder (ONNX Runtime on CPU)
    data = Path(a.data)
    split = {r["image_id"]: r["split"] for r in csv.DictReader(open(data / "ham10000/split.csv"))}
    for name in a.sets:
        labels = data / ("ham10000/labels.csv" if name == "ham" else "isic-uda1/labels.csv")
        rows = list(csv.DictReader(open(labels)))
        d = load_labelled(labels, None, None, spec.image_size, "diagnosis", limit=0)
        meta = {"ids": d.ids, "diagnosis": d.labels, "melanoma": d.melanoma.tolist(),
                "lesion": [r.get("lesion_id", r["image_id"]) for r in rows],
                "split": [split.get(r["image_id"], "isic") for r in rows]}
        (out / f"{name}.json").write_text(json.dumps(meta))
        for view in a.views:
            path = out / f"{name}-{view}.npy"
            if path.exists():
                continue
            t0 = time.perf_counter()
            rows_out = []
            with torch.inference_mode():
                for i in range(0, len(d), a.batch):
                    u8 = VIEWS[view](d.images[i:i + a.batch])
                    rows_out.append(encode(u8, lambda m: None).numpy().astype(np.float16))
            np.save(str(path) + ".tmp.npy", np.concatenate(rows_out))
            Path(str(path) + ".tmp.npy").replace(path)
            print(json.dumps({"set": name, "view": view, "images": len(d),
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
