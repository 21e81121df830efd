"""Style ablation, step 2: val queries vs train candidates, from ``style_extract.py``'s output.

For each Gram pooling variant: style macro-P@5 and melanoma vote AUC with today's weights
(β = 1/C), each layer alone, weights fitted on val (with a two-fold lesion-grouped
cross-validated figure), and the I1 combinations that use style. Same-lesion pairs are never
candidates (val and train share no lesion anyway). Prints JSON.

    python experiments/style_ablation.py /tmp/style-ablation > docs/results/style_ablation_val.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from dermsearch.evaluate.gram_weights import (
    cross_validated,
    fit_gram_weights,
    layer_distance_stack,
    macro_precision_at_k,
)
from dermsearch.extract.gram import style_layout


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def topk(d: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    d = np.where(valid, d, np.inf)
    part = np.argpartition(d, k - 1, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(np.take_along_axis(d, part, 1), 1), 1)


def vote_auc(d, valid, qmel, cmel, k=16) -> float:
    return float(roc_auc_score(qmel, cmel[topk(d, valid, k)].mean(1)))


def normalised(d, valid):
    mx = np.where(valid, d, 0).max(1, keepdims=True)
    return np.where(mx > 0, 1 - d / np.where(mx > 0, mx, 1), 1.0)


def hmean(*xs):
    with np.errstate(divide="ignore"):
        inv = sum(np.where(x > 0, 1 / np.maximum(x, 1e-300), np.inf) for x in xs)
    return np.where(np.isfinite(inv), len(xs) / inv, 0.0)


def figures(d, valid, ql, cl, qmel, cmel, es, csn, k=5):
    """macro-P@5 and vote AUC of a distance, and of its I1 combinations with ES and CSnew."""
    ss = normalised(d, valid)
    out = {"macro_p@5": macro_precision_at_k(d, valid, ql, cl, k), "vote_auc16": vote_auc(d, valid, qmel, cmel)}
    for name, other in (("i1_se", es), ("i1_sc", csn)):
        s = -hmean(ss, other)
        out[name] = {"macro_p@5": macro_precision_at_k(s, valid, ql, cl, k),
                     "vote_auc16": vote_auc(s, valid, qmel, cmel)}
    return out


def load_split(root: Path) -> dict:
    """val queries, train candidates, labels, the valid-pair mask, and the feature components."""
    meta = json.loads((root / "meta.json").read_text())
    split = np.array(meta["split"])
    q, c = np.flatnonzero(split == "val"), np.flatnonzero(split == "train")
    diag, mel = np.array(meta["diagnosis"], dtype=object), np.array(meta["melanoma"])
    les = np.array(meta["lesion_id"], dtype=object)
    valid = les[q][:, None] != les[c][None, :]
    chans = meta["channels"]
    feats = np.load(root / "features.npy").astype(np.float64)
    fq, fc = feats[q], feats[c]
    dots = fq @ fc.T
    nq, nc = (fq * fq).sum(1), (fc * fc).sum(1)
    ed = np.sqrt(np.maximum(nq[:, None] + nc[None] - 2 * dots, 0))
    cs = dots / np.sqrt(nq[:, None] * nc[None])
    return {"meta": meta, "q": q, "c": c, "ql": diag[q], "cl": diag[c], "qmel": mel[q], "cmel": mel[c], "les": les,
            "valid": valid, "chans": chans, "layout": style_layout(chans, "image", [1.0] * len(chans)),
            "ed": ed, "cs": cs, "es": normalised(ed, valid), "csn": (cs + 1) / 2}


def cached(path: Path, make) -> np.ndarray:
    """``make()``, saved at ``path`` the first time and read from there afterwards."""
    if path.exists():
        return np.load(path)
    a = make()
    np.save(path, a)
    return a


def score_stack(stack: np.ndarray, d: dict) -> dict:
    """A per-layer distance stack scored three ways: today's β = 1/C, each layer alone, and fitted
    weights (with the two-fold held-out figure)."""
    valid, ql, cl, qmel, cmel, es, csn = d["valid"], d["ql"], d["cl"], d["qmel"], d["cmel"], d["es"], d["csn"]
    chans = d["chans"]
    inv = (1.0 / np.asarray(chans, dtype=np.float64) ** 2).astype(np.float32)
    r = {"inverse-channels": figures(np.tensordot(inv, stack, 1), valid, ql, cl, qmel, cmel, es, csn),
         "layer_alone_macro_p@5": [macro_precision_at_k(stack[i], valid, ql, cl) for i in range(len(chans))]}
    fit = fit_gram_weights(stack, valid, ql, cl, channels=chans)
    w = (np.asarray(fit.betas) ** 2).astype(np.float32)
    r["fitted"] = {"shares": fit.shares, "betas": fit.betas, "start": fit.start, "evaluations": fit.evaluations,
                   **figures(np.tensordot(w, stack, 1), valid, ql, cl, qmel, cmel, es, csn),
                   "cv2_macro_p@5": cross_validated(stack, valid, ql, cl, d["les"][d["q"]], channels=chans)}
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--variants", default="")
    args = ap.parse_args()
    root = Path(args.data)
    d = load_split(root)
    meta, q, c, ql, cl, qmel, cmel, les = d["meta"], d["q"], d["c"], d["ql"], d["cl"], d["qmel"], d["cmel"], d["les"]
    valid, chans, layout, es, csn, ed, cs = d["valid"], d["chans"], d["layout"], d["es"], d["csn"], d["ed"], d["cs"]
    base = {name: {"macro_p@5": macro_precision_at_k(d, valid, ql, cl), "vote_auc16": vote_auc(d, valid, qmel, cmel)}
            for name, d in (("euclidean", ed), ("cosine", -cs))}
    report = {"queries": int(len(q)), "candidates": int(len(c)), "baselines": base, "variants": {}}
    log(json.dumps(report["baselines"]))
    variants = args.variants.split(",") if args.variants else meta["variants"]
    stacks = {}
    for v in variants:
        t0 = time.time()

        def make(v=v):
            mm = np.load(root / f"{v}.npy", mmap_mode="r")
            return layer_distance_stack(np.asarray(mm[q], dtype=np.float32), mm[c], layout)

        stack = stacks[v] = cached(root / f"stack-{v}.npy", make)
        r = report["variants"][v] = score_stack(stack, d)
        log(v, f"{time.time() - t0:.0f}s", json.dumps({"inv": r["inverse-channels"]["macro_p@5"],
                                                       "alone": [round(x, 3) for x in r["layer_alone_macro_p@5"]],
                                                       "fit": r["fitted"]["macro_p@5"],
                                                       "cv": r["fitted"]["cv2_macro_p@5"]["mean"]}))
    # lesion + skin: the two stacks side by side (14 Grams)
    skin = stacks.get("skin")
    lesion_variants = [v for v in stacks if v.startswith("lesion")]
    best = max(lesion_variants, key=lambda v: report["variants"][v]["fitted"]["cv2_macro_p@5"]["mean"], default=None)
    for v in [best] if skin is not None and best else []:
        t0 = time.time()
        stack = np.concatenate([stacks[v], skin])
        ch2 = list(chans) * 2
        fit = fit_gram_weights(stack, valid, ql, cl, channels=ch2)
        w = (np.asarray(fit.betas) ** 2).astype(np.float32)
        r = {"fitted": {"shares": fit.shares, "start": fit.start,
                        **figures(np.tensordot(w, stack, 1), valid, ql, cl, qmel, cmel, es, csn),
                        "cv2_macro_p@5": cross_validated(stack, valid, ql, cl, les[q], channels=ch2)}}
        report["variants"][f"{v}+skin"] = r
        log(f"{v}+skin", f"{time.time() - t0:.0f}s", r["fitted"]["macro_p@5"], r["fitted"]["cv2_macro_p@5"]["mean"])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
