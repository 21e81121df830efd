"""Issue #40: colour handling for the Grams decided apart from the feature (no retraining).

Step 1 (``extract``): one pass of the packaged ensemble and segmenter per image and input colour
(``sog``: Shades of Gray, what the members were trained on and what the product feeds today;
``none``: the image as it is, what the frozen ImageNet stages 1-5 were trained on; only those
shared stages are run on it, so its stages 6-7 are left 0). For each colour
and each of two Gram definitions (``lesion``: the product's default, the segmenter's mask dilated
by 5 %, l2 per layer; ``image``: the paper's whole-image Gram, no normalisation) the per-layer Grams
are packed with beta_l = 1 (as ``extract.gram.style_vector``) and stored as float16 memory maps
``OUT/<colour>-<pool>.npy``, so that step 2 can recombine layers and colours with any weights.
The segmenter sees the uncorrected image, as in the product.

Step 2 (``evaluate``): the style measure's figures for a recipe (a colour per layer, a Gram
definition, the layer weights) on HAM10000 ``val`` (vs ``train``) and isic-uda1 ``xval`` (vs HAM
``train``+``val``), and the fits the pre-registered rule calls for (docs/experiments.md, issue #40).

    python experiments/gram_colour.py extract ../shared/data /work/gramcol
    python experiments/gram_colour.py evaluate ../shared/data /work/gramcol --out docs/results/issue40_gram_colour_val.json
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

COLOURS = ("sog", "none")
POOLS = ("lesion", "image")


def _rows(data: Path) -> list[dict]:
    """HAM10000 train+val+test and all of isic-uda1, with source, split and mapped labels."""
    rows = []
    ham_split = {r["image_id"]: r["split"] for r in csv.DictReader(open(data / "ham10000/split.csv"))}
    for r in csv.DictReader(open(data / "ham10000/labels.csv")):
        rows.append({"id": r["image_id"], "path": str(data / "ham10000" / r["image_path"]), "source": "ham",
                     "split": ham_split[r["image_id"]], "diagnosis": r["diagnosis"], "lesion": r["lesion_id"],
                     "melanoma": int(r["melanoma"])})
    isic_split = {r["image_id"]: r["split"] for r in csv.DictReader(open(data / "isic-uda1/split.csv"))}
    dx = {"nevus": "nv", "melanoma": "mel"}
    for r in csv.DictReader(open(data / "isic-uda1/labels.csv")):
        rows.append({"id": r["image_id"], "path": str(data / "isic-uda1" / r["image_path"]), "source": "isic",
                     "split": isic_split[r["image_id"]], "diagnosis": dx.get(r["diagnosis"], "unknown"),
                     "lesion": r["image_id"], "melanoma": int(r["melanoma"])})
    return rows


def _ordered(rows: list[dict]) -> list[dict]:
    """isic-uda1, then HAM ``val``, then HAM ``train`` in a seeded random order (so that any prefix
    of the train rows is a uniform sample of them); HAM ``test`` is left for the once-only report."""
    isic = [r for r in rows if r["source"] == "isic"]
    val = [r for r in rows if r["source"] == "ham" and r["split"] == "val"]
    train = [r for r in rows if r["source"] == "ham" and r["split"] == "train"]
    order = np.random.default_rng(40).permutation(len(train))
    return isic + val + [train[i] for i in order]


def extract(args) -> None:
    import torch

    from dermsearch.extract import Extractor, ExtractorConfig, load_image
    from dermsearch.extract.colour import apply_colour
    from dermsearch.extract.encoder import prepare_image
    from dermsearch.extract.gram import average_grams, normalise_grams, style_dim, style_vector
    from dermsearch.runtime import Runtime

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _ordered(_rows(data))
    if args.limit:
        rows = rows[: args.limit // 2] + rows[-args.limit // 2:]
    n = len(rows)
    torch.set_num_threads(args.threads)
    ex = Extractor(ExtractorConfig(), Runtime(backend="torch", device="cpu"))
    assert ex.config.colour == "shades-of-gray" and ex.config.gram_pool == "lesion", ex.config
    chans = ex.tap_channels
    sd = style_dim(chans)
    done_path = out / "done.json"
    done = json.loads(done_path.read_text())["done"] if done_path.exists() else 0
    mode = "r+" if done else "w+"
    mm = {f"{c}-{p}": np.lib.format.open_memmap(out / f"{c}-{p}.npy", mode=mode, dtype=np.float16, shape=(n, sd))
          for c in COLOURS for p in POOLS}
    (out / "meta.json").write_text(json.dumps({"rows": rows, "channels": list(chans), "margin": ex.config.gram_margin,
                                               "norm": ex.config.gram_norm}))
    shared = ex.net.shared_stages
    assert shared == 5, shared
    seg_size = ex._segmenter.input_size or ex.config.mask_size
    pool = ThreadPoolExecutor(1)

    def load(batch):
        return [prepare_image(load_image(r["path"]), ex.config.image_size, "none", seg_size) for r in batch]

    t0 = time.time()
    starts = list(range(done, n, args.batch))
    fut = pool.submit(load, rows[starts[0]:starts[0] + args.batch]) if starts else None
    for bi, s in enumerate(starts):
        prepared = fut.result()
        if bi + 1 < len(starts):
            fut = pool.submit(load, rows[starts[bi + 1]:starts[bi + 1] + args.batch])
        e = s + len(prepared)
        raw = np.stack([p[0] for p in prepared])
        with torch.inference_mode():
            seg = ex._segmenter.segment_batch(np.stack([p[1] for p in prepared]))
            masks = torch.from_numpy(ex.pool_masks(seg))
            for colour in COLOURS:
                if colour == "none":     # the shared ImageNet stages only: (h, their taps)
                    taps = [ex.net.members[0].forward_prefix(ex._normalised(raw), shared)[1]]
                else:
                    pix = np.stack([apply_colour(x, "shades-of-gray") for x in raw])
                    taps = ex.net(ex._normalised(pix)).member_taps
                lesion = normalise_grams(average_grams(taps, masks, "lesion", ex.config.gram_margin),
                                         ex.config.gram_norm)
                v = style_vector(lesion, [1.0] * len(lesion))
                mm[f"{colour}-lesion"][s:e, :v.shape[1]] = v.astype(np.float16)
                image = average_grams(taps)
                v = style_vector(image, [1.0] * len(image))
                mm[f"{colour}-image"][s:e, :v.shape[1]] = v.astype(np.float16)
        if bi % 10 == 0 or e == n:
            for m in mm.values():
                m.flush()
            tmp = done_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"done": e}))
            tmp.replace(done_path)
            el = time.time() - t0
            print(f"{e}/{n} {(e - done) / el:.1f} img/s", file=sys.stderr, flush=True)
    print(json.dumps({"images": n, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("extract")
    a.add_argument("data")
    a.add_argument("out")
    a.add_argument("--batch", type=int, default=32)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    {"extract": extract}[args.cmd](args)
