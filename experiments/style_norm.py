"""Style ablation, step 3: entry-wise normalisations of the per-layer Grams (val vs train).

For one pooling variant of ``style_extract.py``'s output, each layer's Gram G is transformed
before packing: ``l2`` (G / ||G||_F), ``sqrt`` (sign(G) |G|^0.5), ``sqrt+l2`` (both, in that
order). The packed vector of a transformed Gram is still compared by its squared distance, so LS
stays exact. Prints JSON with the inverse-channels, single-layer and fitted figures.

    python experiments/style_norm.py /tmp/style-ablation lesion-m0.05
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from dermsearch.evaluate.gram_weights import (
    layer_distance_stack,
)

sys.path.insert(0, str(Path(__file__).parent))
from style_ablation import cached, figures, load_split, score_stack  # noqa: E402


def transform(v: np.ndarray, layout, how: str) -> np.ndarray:
    out = np.empty_like(v, dtype=np.float32)
    r2 = np.float32(np.sqrt(2.0))
    for e in layout:
        c = e["channels"]
        sl = slice(e["offset"], e["offset"] + e["size"])
        x = v[:, sl].astype(np.float32)
        g = x.copy()
        g[:, c:] /= r2                         # Gram entries (diagonal, then the upper triangle)
        if "sqrt" in how:
            g = np.sign(g) * np.sqrt(np.abs(g))
        x = g.copy()
        x[:, c:] *= r2                         # packed again: squared distance = Frobenius distance
        if "l2" in how:
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        out[:, sl] = x
    return out


def main() -> None:
    root, variant = Path(sys.argv[1]), sys.argv[2]
    hows = sys.argv[3].split(",") if len(sys.argv) > 3 else ["l2", "sqrt", "sqrt+l2"]
    d = load_split(root)
    q, c, ql, cl, qmel, cmel = d["q"], d["c"], d["ql"], d["cl"], d["qmel"], d["cmel"]
    valid, chans, layout, es, csn = d["valid"], d["chans"], d["layout"], d["es"], d["csn"]
    mm = np.load(root / f"{variant}.npy", mmap_mode="r")
    report = {}
    for how in hows:
        t0 = time.time()

        def make(how=how):
            cand = np.empty((len(c), mm.shape[1]), np.float32)
            for s in range(0, len(c), 1024):
                cand[s:s + 1024] = transform(np.asarray(mm[c[s:s + 1024]]), layout, how)
            return layer_distance_stack(transform(np.asarray(mm[q]), layout, how), cand, layout)

        stack = cached(root / f"stack-{variant}-{how}.npy", make)
        r = score_stack(stack, d)
        median_w = (1 / np.median(stack.reshape(len(chans), -1), 1)).astype(np.float32)
        r["equal-median"] = figures(np.tensordot(median_w, stack, 1), valid, ql, cl, qmel, cmel, es, csn)
        fit_score = r["fitted"]["macro_p@5"]
        report[how] = r
        print(variant, how, f"{time.time() - t0:.0f}s", json.dumps({
            "inv": round(r["inverse-channels"]["macro_p@5"], 4), "eq": round(r["equal-median"]["macro_p@5"], 4),
            "alone": [round(x, 3) for x in r["layer_alone_macro_p@5"]], "fit": round(fit_score, 4),
            "cv": round(r["fitted"]["cv2_macro_p@5"]["mean"], 4), "auc": round(r["fitted"]["vote_auc16"], 4),
            "i1_se": round(r["fitted"]["i1_se"]["macro_p@5"], 4),
            "i1_sc": round(r["fitted"]["i1_sc"]["macro_p@5"], 4)}),
            file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
