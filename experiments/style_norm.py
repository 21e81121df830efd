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
    cross_validated,
    fit_gram_weights,
    layer_distance_stack,
    macro_precision_at_k,
)

sys.path.insert(0, str(Path(__file__).parent))
from style_ablation import figures, load_split  # noqa: E402


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
    q, c, ql, cl, qmel, cmel, les = d["q"], d["c"], d["ql"], d["cl"], d["qmel"], d["cmel"], d["les"]
    valid, chans, layout, es, csn = d["valid"], d["chans"], d["layout"], d["es"], d["csn"]
    mm = np.load(root / f"{variant}.npy", mmap_mode="r")
    report = {}
    for how in hows:
        t0 = time.time()
        cache = root / f"stack-{variant}-{how}.npy"
        if cache.exists():
            stack = np.load(cache)
        else:
            cand = np.empty((len(c), mm.shape[1]), np.float32)
            for s in range(0, len(c), 1024):
                cand[s:s + 1024] = transform(np.asarray(mm[c[s:s + 1024]]), layout, how)
            stack = layer_distance_stack(transform(np.asarray(mm[q]), layout, how), cand, layout)
            del cand
            np.save(cache, stack)
        inv = (1.0 / np.asarray(chans, dtype=np.float64) ** 2).astype(np.float32)
        r = {"inverse-channels": figures(np.tensordot(inv, stack, 1), valid, ql, cl, qmel, cmel, es, csn),
             "equal-median": figures(np.tensordot((1 / np.median(stack.reshape(len(chans), -1), 1)).astype(np.float32),
                                                  stack, 1), valid, ql, cl, qmel, cmel, es, csn),
             "layer_alone_macro_p@5": [macro_precision_at_k(stack[i], valid, ql, cl) for i in range(len(chans))]}
        fit = fit_gram_weights(stack, valid, ql, cl, channels=chans)
        w = (np.asarray(fit.betas) ** 2).astype(np.float32)
        r["fitted"] = {"shares": fit.shares, "betas": fit.betas, "start": fit.start,
                       **figures(np.tensordot(w, stack, 1), valid, ql, cl, qmel, cmel, es, csn),
                       "cv2_macro_p@5": cross_validated(stack, valid, ql, cl, les[q], channels=chans)}
        report[how] = r
        print(variant, how, f"{time.time() - t0:.0f}s", json.dumps({
            "inv": round(r["inverse-channels"]["macro_p@5"], 4), "eq": round(r["equal-median"]["macro_p@5"], 4),
            "alone": [round(x, 3) for x in r["layer_alone_macro_p@5"]], "fit": round(fit.score, 4),
            "cv": round(r["fitted"]["cv2_macro_p@5"]["mean"], 4), "auc": round(r["fitted"]["vote_auc16"], 4),
            "i1_se": round(r["fitted"]["i1_se"]["macro_p@5"], 4),
            "i1_sc": round(r["fitted"]["i1_sc"]["macro_p@5"], 4)}),
            file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
