"""Write the rows of a labels CSV whose image is in the given splits, with absolute image and mask paths
(the copy lives elsewhere than the labels file), atomically:

    python experiments/split_labels.py LABELS SPLIT OUT SPLIT_NAME [SPLIT_NAME ...]

Used by experiments/val_round*.sh to index HAM10000's ``train`` + ``val`` (and ``test``) rows."""

import csv
import os
import sys

from dermsearch.extract.datasets import read_split_map


def main(labels: str, split: str, out: str, *names: str) -> None:
    if not names:
        sys.exit("name at least one split")
    where = read_split_map(split)   # the package's reader (it checks the columns)
    with open(labels, newline="") as f:
        rows = [r for r in csv.DictReader(f) if where.get(r["image_id"]) in names]
    if not rows:
        sys.exit(f"{labels}: no rows in split(s) {', '.join(names)} of {split}")
    root = os.path.dirname(os.path.abspath(labels))
    for r in rows:
        for col in ("image_path", "mask_path"):
            if r.get(col) and not os.path.isabs(r[col]):
                r[col] = os.path.join(root, r[col])
    with open(out + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(out + ".tmp", out)
    print(f"{len(rows)} rows of {' + '.join(names)} -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
