"""Issue #40: the spread of the Shades of Gray illuminant estimate (p = 6) over 500 random HAM10000 `train`
images (seed 0, 224 px): the mean-free log-chromaticity std that fixed `--illuminant 0.16` (twice it; the gains'
log std is then 0.16 sqrt(2/3) = 0.131, 1.6x it).

    .venv/bin/python experiments/illuminant_spread.py
"""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image

D = "../shared/data/ham10000"


def main() -> None:
    split = {r["image_id"]: r["split"] for r in csv.DictReader(open(f"{D}/split.csv"))}
    rows = [r for r in csv.DictReader(open(f"{D}/labels.csv")) if split[r["image_id"]] == "train"]
    pick = np.random.default_rng(0).choice(len(rows), 500, replace=False)
    logs = []
    for i in pick:
        image = Image.open(f"{D}/{rows[i]['image_path']}").convert("RGB").resize((224, 224))
        unit = np.asarray(image, dtype=np.float64) / 255
        estimate = np.log((unit.reshape(-1, 3) ** 6).mean(0) ** (1 / 6))
        logs.append(estimate - estimate.mean())
    logs = np.array(logs)
    print("per-channel std of log gain (mean-free):", logs.std(0).round(4), "mean:", logs.mean(0).round(4))
    print("pooled std:", round(float(np.sqrt((logs ** 2).mean() - (logs.mean(0) ** 2).mean())), 4))


if __name__ == "__main__":
    main()
