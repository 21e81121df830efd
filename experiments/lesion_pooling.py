"""Issue #40: the 1,024-d feature pooled over the lesion instead of the whole field (no retraining).

The rule and protocol are in docs/experiments.md ("the feature pooled over the lesion"), committed
before this script's figures were computed.

Step 1 (``extract``): one pass of the packaged ensemble (4 views) and segmenter per image, torch on
the CPU, giving every candidate's feature and head probability from the same head maps: ``F1`` (the
shipped field-of-view pooling), ``L05``/``L15`` (the lesion mask dilated by 5 %/15 % of the side, within
the field; the field where that is empty) and ``M05`` (the mean of ``L05``'s and ``F1``'s pooled vectors).
Images: HAM ``val``, isic-uda1 ``xval`` and a uniform sample of 3,000 HAM ``train`` images (seed 40).
Written as ``OUT/part-<n>.npz`` per batch, so a cut run resumes.

Step 2 (``evaluate``): the rule's figures.

    python experiments/lesion_pooling.py extract ../shared/data /work/lesionpool
    python experiments/lesion_pooling.py evaluate ../shared/data /work/lesionpool \
        --out docs/results/issue40_lesion_pooling_val.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crosssource import (  # noqa: E402  (the same rows, groups and vote as the other #40 scripts)
    Groups,
    cosine_distance,
    euclidean_distance,
    extract_parts,
    load_parts,
    main,
    sample_selection,
    vote_auc,
    write_result,
)

SIZE = 224
VARIANTS = ("F1", "L05", "L15", "M05")
TRAIN_SAMPLE = 3000


def _selection(data: Path) -> list[dict]:
    return sample_selection(data, TRAIN_SAMPLE)


def extract(args) -> None:
    import torch

    from dermsearch.extract import Extractor, ExtractorConfig, load_image
    from dermsearch.extract.gram import dilate_masks
    from dermsearch.models.ensemble import melanoma_probability, tta_views
    from dermsearch.models.pooling import field_weights, masked_mean
    from dermsearch.runtime import Runtime

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    selected = _selection(data)
    (out / "rows.json").write_text(json.dumps(selected))
    ex = Extractor(ExtractorConfig(), Runtime(backend="torch", device="cpu"))
    cfg, net = ex.config, ex.net
    assert cfg.fov and ex.tta == 4 and cfg.colour == "shades-of-gray", (cfg, ex.tta)
    k = net.shared_stages
    radii = {"L05": int(round(0.05 * SIZE)), "L15": int(round(0.15 * SIZE))}

    def load(batch):
        return [ex.prepare(load_image(r["path"])) for r in batch]

    def pooled_all(x, fields, masks):
        """Per variant, per member, the pooled vector averaged over the views."""
        regions = {"F1": fields}
        for name, radius in radii.items():
            m = dilate_masks(masks, radius) * fields
            empty = m.sum(dim=(1, 2, 3), keepdim=True) <= 0
            regions[name] = torch.where(empty, fields, m)
        totals = {v: None for v in regions}
        views = {v: tta_views(w, ex.tta) for v, w in regions.items()}
        for i, xv in enumerate(tta_views(x, ex.tta)):
            h, taps = net.members[0].forward_prefix(xv, k)
            maps = []
            for m in net.members:
                y = h
                for stage in m.stages[k:]:
                    y = stage(y)
                maps.append(m.head(y))
            for v in regions:
                p = [masked_mean(hm, field_weights(views[v][i], tuple(hm.shape[-2:]))) for hm in maps]
                totals[v] = p if totals[v] is None else [a + b for a, b in zip(totals[v], p)]
        out_ = {v: [t / ex.tta for t in ts] for v, ts in totals.items()}
        out_["M05"] = [(a + b) / 2 for a, b in zip(out_["L05"], out_["F1"])]
        return out_

    checked = []

    def compute(prepared):
        with torch.inference_mode():
            raw = ex._segmenter.segment_batch(np.stack([p.segmenter for p in prepared]))
            masks = torch.from_numpy(ex.pool_masks(raw))
            fields = torch.from_numpy(np.stack([p.field for p in prepared])[:, None].astype(np.float32))
            x = ex._normalised(np.stack([p.pixels for p in prepared]))
            pooled = pooled_all(x, fields, masks)
            res = {}
            for v in VARIANTS:
                feature, logits = net.combine(pooled[v])
                res[f"f_{v}"] = feature.numpy()
                res[f"p_{v}"] = melanoma_probability(logits, net.spec).numpy()
            if not checked:     # F1 is the product's own extraction
                ref = ex.extract_prepared(prepared).features
                assert np.allclose(ref, res["f_F1"], atol=1e-4), float(np.abs(ref - res["f_F1"]).max())
                checked.append(True)
        return res

    print(json.dumps(extract_parts(selected, out, args.batch, load, compute)))


def evaluate(args) -> None:
    from sklearn.metrics import roc_auc_score

    from dermsearch.evaluate.gram_weights import macro_precision_at_k

    out = Path(args.out_dir)
    selected = json.loads((out / "rows.json").read_text())
    data = load_parts(out)
    assert list(data["ids"]) == [r["id"] for r in selected], "incomplete extraction"
    gr = Groups.of(selected)
    diag, mel, hv, ht, hc, xq, valid = gr.diagnosis, gr.melanoma, gr.hv, gr.ht, gr.hc, gr.xq, gr.valid
    cos, euc, vote = cosine_distance, euclidean_distance, vote_auc

    result = {}
    for v in VARIANTS:
        f, p = data[f"f_{v}"], data[f"p_{v}"]
        dv = np.where(valid, cos(f[hv], f[ht]), np.inf)
        result[v] = {"mP": macro_precision_at_k(dv, valid, diag[hv], diag[ht]), "vC": vote(dv, mel[hv], mel[ht]),
                     "hA": float(roc_auc_score(mel[hv], p[hv])),
                     "xC": vote(cos(f[xq], f[hc]), mel[xq], mel[hc]), "xE": vote(euc(f[xq], f[hc]), mel[xq], mel[hc]),
                     "xH": float(roc_auc_score(mel[xq], p[xq]))}
    base = result["F1"]
    eligible = [v for v in VARIANTS[1:] if result[v]["mP"] >= base["mP"] - 0.01 and result[v]["vC"] >= base["vC"] - 0.01
                and result[v]["hA"] >= base["hA"] - 0.01 and result[v]["xC"] >= base["xC"]]
    best = max(eligible, key=lambda v: result[v]["vC"] + result[v]["xC"], default=None)
    chosen = best if best and (result[best]["vC"] + result[best]["xC"]) - (base["vC"] + base["xC"]) >= 0.01 else None
    result["rule"] = {"eligible": eligible, "best_eligible": best, "chosen": chosen,
                      "counts": {"val": len(hv), "train_sample": len(ht), "xval": len(xq)}}
    write_result(result, args.out)


if __name__ == "__main__":
    def _evaluate_args(p):
        p.add_argument("data")
        p.add_argument("out_dir")

    main(__doc__, extract, evaluate, evaluate_args=_evaluate_args)
