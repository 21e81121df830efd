"""Regenerate the bundled demo sample from ../shared/data/isic-uda1 (CC0 1.0).

48 images to index (30 nevi, 18 melanomas, spread over the archive) and 2 held-out queries,
downscaled to a long side of 256 px.
"""

import csv
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT.parent / "shared" / "data" / "isic-uda1"
SAMPLE = ROOT / "examples" / "isic-sample"
QUERIES = ROOT / "examples" / "queries"
COLUMNS = ["image_id", "image_path", "diagnosis", "melanoma", "age_approx", "sex"]


def save(row: dict, folder: Path) -> None:
    img = ImageOps.exif_transpose(Image.open(SRC / row["image_path"])).convert("RGB")
    img.thumbnail((256, 256), Image.Resampling.LANCZOS)
    img.save(folder / f"{row['image_id']}.jpg", quality=88)


def main() -> None:
    with open(SRC / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    nevi = [r for r in rows if r["diagnosis"] == "nevus"]
    melanomas = [r for r in rows if r["diagnosis"] == "melanoma"]
    pick = sorted(nevi[::12][:30] + melanomas[::8][:18], key=lambda r: r["image_id"])
    queries = [nevi[5], melanomas[3]]
    assert not {r["image_id"] for r in queries} & {r["image_id"] for r in pick}
    (SAMPLE / "images").mkdir(parents=True, exist_ok=True)
    QUERIES.mkdir(parents=True, exist_ok=True)
    with open(SAMPLE / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in pick:
            save(r, SAMPLE / "images")
            w.writerow([r["image_id"], f"images/{r['image_id']}.jpg", r["diagnosis"], r["melanoma"],
                        r["age_approx"], r["sex"]])
    for r in queries:
        save(r, QUERIES)
        print("query", r["image_id"], r["diagnosis"])


if __name__ == "__main__":
    main()
