"""``python -m dermsearch.train.data LABELS SPLIT OUT --size 128`` writes a resized copy of a data
set (JPEG images, PNG masks, labels.csv, split.csv) for fast training on another machine.

The loaders themselves live in :mod:`dermsearch.extract.datasets` (evaluation uses them too).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from ..extract.datasets import LabelledSet, PairSet, load_labelled, load_pair, load_pairs, read_pairs, read_split_map

__all__ = ["PairSet", "load_pairs", "read_pairs", "read_split_map", "LabelledSet", "load_labelled",
           "write_resized_copy"]


def write_resized_copy(labels_csv, split_csv, out: Path, size: int, splits: tuple[str, ...]) -> int:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    split = read_split_map(split_csv)
    items = read_pairs(labels_csv, split_csv, splits)
    with open(out / "labels.csv", "w", newline="") as f, open(out / "split.csv", "w", newline="") as g:
        w, ws = csv.writer(f), csv.writer(g)
        w.writerow(["image_id", "image_path", "mask_path"])
        ws.writerow(["image_id", "split"])
        for image_id, img_path, mask_path in items:
            rgb, mask = load_pair((image_id, img_path, mask_path), size)
            Image.fromarray(rgb).save(out / "images" / f"{image_id}.jpg", quality=92)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{image_id}.png", optimize=True)
            w.writerow([image_id, f"images/{image_id}.jpg", f"masks/{image_id}.png"])
            ws.writerow([image_id, split[image_id]])
    return len(items)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="write a resized copy of an image/mask data set")
    ap.add_argument("labels")
    ap.add_argument("split")
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--splits", nargs="+", default=["train", "val"])
    a = ap.parse_args()
    print(write_resized_copy(a.labels, a.split, a.out, a.size, tuple(a.splits)), "pairs written to", a.out)
