"""Issue #40: multi-scale test-time views (a zoomed-in centre crop beside the whole image).

The rule and protocol are in docs/experiments.md ("multi-scale views"), committed before this
script's figures were computed.

Step 1 (``extract``): for each image, the packaged ensemble's members' pooled vectors (field-of-view
pooling, as shipped) for the views flip-free and left-right flip of the whole image, and the 4 shipped
views of its centre crop (each side / 1.25, prepared from the decoded image like any image: resized,
Shades of Gray, its own field of view). From them, per image:

- ``Z8``: the 4 shipped whole-image views plus the 4 crop views (twice the shipped cost);
- ``Z4``: identity and flip of the whole image, identity and flip of the crop (the shipped cost);

each as the feature and the head's melanoma probability. The shipped ``F1`` (4 whole-image views) is
read from ``experiments/lesion_pooling.py``'s output for the same images. Images: HAM ``val``, isic-uda1
``xval`` and the first 1,000 of the lesion-pooling run's HAM ``train`` sample (a uniform sample).
Written as ``OUT/part-<n>.npz`` per batch, so a cut run resumes.

Step 2 (``evaluate``): the rule's figures for ``F1``, ``Z4`` and ``Z8``.

    python experiments/multiscale.py extract ../shared/data /work/multiscale --rows /work/lesionpool/rows.json
    python experiments/multiscale.py evaluate /work/multiscale /work/lesionpool \
        --out docs/results/issue40_multiscale_val.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crosssource import (  # noqa: E402
    K_VOTE,
    cosine_distance,
    euclidean_distance,
    extract_parts,
    features_and_heads,
    load_parts,
    load_run,
    main,
    rows_args,
    stored_feature_args,
    view_figures,
    views_rule,
    write_result,
)

ZOOM = 1.25
TRAIN_SAMPLE = 1000
VARIANTS = ("Z4", "Z8")


def _selection(rows: list[dict]) -> list[dict]:
    train = [r for r in rows if r["source"] == "ham" and r["split"] == "train"][:TRAIN_SAMPLE]
    return [r for r in rows if not (r["source"] == "ham" and r["split"] == "train")] + train


def crop_centre(img, zoom: float = ZOOM):
    w, h = img.size
    cw, ch = round(w / zoom), round(h / zoom)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def extract(args) -> None:
    import torch

    from dermsearch.extract import Extractor, ExtractorConfig, load_image
    from dermsearch.models.ensemble import tta_views
    from dermsearch.runtime import Runtime

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    selected = _selection(json.loads(Path(args.rows).read_text()))
    (out / "rows.json").write_text(json.dumps(selected))
    ex = Extractor(ExtractorConfig(), Runtime(backend="torch", device="cpu"))
    net = ex.net
    assert ex.config.fov and ex.tta == 4, (ex.config, ex.tta)

    def load(batch):
        res = []
        for r in batch:
            img = load_image(r["path"])
            res.append((ex.prepare(img), ex.prepare(crop_centre(img))))
        return res

    def tensors(prepared):
        x = ex._normalised(np.stack([p.pixels for p in prepared]))
        fields = torch.from_numpy(np.stack([p.field for p in prepared])[:, None].astype(np.float32))
        return x, fields

    def per_view(x, fields):
        """Each of the 4 shipped views' member pooled vectors (the field flipped and turned alike)."""
        return [[o.pooled for o in net.member_outputs(xv, fv)]
                for xv, fv in zip(tta_views(x, 4), tta_views(fields, 4))]

    def mean(views):
        return [sum(v[i] for v in views) / len(views) for i in range(len(views[0]))]

    def compute(loaded):
        with torch.inference_mode():
            w = per_view(*tensors([a for a, _ in loaded]))
            c = per_view(*tensors([b for _, b in loaded]))
            pooled = {"Z4": mean(w[:2] + c[:2]), "Z8": mean(w + c), "F1": mean(w)}
            return features_and_heads(net, pooled)

    print(json.dumps(extract_parts(selected, out, args.batch, load, compute)))


def evaluate(args) -> None:
    out, fdir = Path(args.out_dir), Path(args.feature_dir)
    selected, data, gr = load_run(out)
    stored = load_parts(fdir)
    pos = {i: k for k, i in enumerate(stored["ids"])}
    take = np.array([pos[i] for i in data["ids"]])
    dev = float(np.abs(stored["f_F1"][take] - data["f_F1"]).max())
    assert dev < 1e-3, dev                                  # this run's F1 is the stored shipped feature
    result = {"F1_max_abs_diff_vs_stored": dev, **view_figures(data, gr, ("F1", *VARIANTS))}
    eligible, best = views_rule(result, "Z4", "Z8")      # the cost-neutral one first
    result["rule"] = {"eligible": eligible, "chosen": best,
                      "counts": {"val": len(gr.hv), "train_sample": len(gr.ht), "xval": len(gr.xq)}}
    result["reading_Z4_minus_F1"] = paired_differences(data, gr)     # after the verdict: how sure each gain is
    write_result(result, args.out)


def paired_differences(data: dict, gr, rounds: int = 1000, seed: int = 0) -> dict:
    """``Z4 - F1`` per figure's AUC with a 95 % paired bootstrap CI over the queries' lesions (the
    same resample for both): ``vC``/``hA`` on HAM ``val``, ``xC``/``xE``/``xH`` on isic ``xval``."""
    from sklearn.metrics import roc_auc_score

    def votes(f, q, c, dist, valid=None):
        dd = dist(f[q], f[c])
        dd = np.where(valid, dd, np.inf) if valid is not None else dd
        return gr.melanoma[c][np.argpartition(dd, K_VOTE - 1, axis=1)[:, :K_VOTE]].mean(1)

    rng = np.random.default_rng(seed)
    out = {}
    for name, q, c, dist, valid in (("vC", gr.hv, gr.ht, cosine_distance, gr.valid),
                                    ("hA", gr.hv, None, None, None),
                                    ("xC", gr.xq, gr.hc, cosine_distance, None),
                                    ("xE", gr.xq, gr.hc, euclidean_distance, None),
                                    ("xH", gr.xq, None, None, None)):
        y = gr.melanoma[q]
        s = {v: data[f"p_{v}"][q] if c is None else votes(data[f"f_{v}"], q, c, dist, valid) for v in ("F1", "Z4")}
        _, inv = np.unique(gr.lesion[q], return_inverse=True)
        members = [np.flatnonzero(inv == k) for k in range(inv.max() + 1)]
        diffs = []
        for _ in range(rounds):
            idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
            if y[idx].min() != y[idx].max():
                diffs.append(roc_auc_score(y[idx], s["Z4"][idx]) - roc_auc_score(y[idx], s["F1"][idx]))
        out[name] = {"value": float(roc_auc_score(y, s["Z4"]) - roc_auc_score(y, s["F1"])),
                     "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]}
    return out


if __name__ == "__main__":
    main(__doc__, extract, evaluate, rows_args, stored_feature_args)
