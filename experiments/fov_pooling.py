"""Issue #40: pooling over the field of view instead of the whole frame (no retraining).

The rule and protocol are in docs/experiments.md ("pooling over the field of view"), committed
before this script's figures were computed.

Step 1 (``extract``): one pass of the packaged ensemble (4 test-time views, as shipped) and segmenter
per selected image, torch on the CPU, giving both poolings from the same maps: ``F0`` (today: the
head map averaged over the frame; Grams over the dilated lesion mask) and ``F1`` (the head map
averaged over the field of view, the views flipped/turned with it; Grams over dilated mask x field).
Selected: every HAM10000 ``train``+``val`` and isic-uda1 image whose field of view is not the whole
frame, all of isic-uda1 (its query features), and all of HAM ``val`` with a synthetic vignette
(``syn``). Written as ``OUT/part-<group>-<n>.npz`` per batch, so a cut run resumes.

Step 2 (``evaluate``): the rule's figures for ``F0`` and ``F1``. Rows not extracted here keep the
stored vectors (features from the shipped index, Grams from the Gram-colour experiment's
``sog-lesion`` store, which is the product's definition at beta = 1).

    python experiments/fov_pooling.py extract ../shared/data /work/fov
    python experiments/fov_pooling.py evaluate ../shared/data /work/fov --index /work/ham-meta-index \
        --grams /work/gramcol --out docs/results/issue40_fov_val.json
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crosssource import (  # noqa: E402  (the same rows, groups and vote as the other #40 scripts)
    Groups,
    cosine_distance,
    extract_parts,
    load_parts,
    main,
    rows,
    vote_auc,
    write_result,
)
from gram_colour import _stack  # noqa: E402  (the same Gram stacks)

SIZE = 224


def synthetic_vignette(img):
    """Black outside a centred circle of diameter 1.1 x the image height (a contact dermatoscope's
    field in a 4:3 frame), applied to the decoded image before resizing."""
    from PIL import Image

    a = np.asarray(img.convert("RGB")).copy()
    h, w = a.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    r = 0.55 * h
    a[(yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 > r * r] = 0
    return Image.fromarray(a)


def _selection(data: Path) -> list[dict]:
    from dermsearch.extract import load_image
    from dermsearch.extract.fov import field_of_view
    from dermsearch.extract.images import resize_rgb

    every = [r for r in rows(data) if r["source"] == "isic" or r["split"] in ("train", "val")]

    def share(r):
        return 1.0 - float(field_of_view(resize_rgb(load_image(r["path"]), SIZE)).mean())

    with ThreadPoolExecutor(2) as pool:
        shares = list(pool.map(share, every))
    chosen = []
    for r, s in zip(every, shares):
        if r["source"] == "isic" or s > 0:
            chosen.append({**r, "group": r["source"], "vignette": s})
    chosen += [{**r, "group": "syn", "vignette": None} for r in every if r["source"] == "ham" and r["split"] == "val"]
    return chosen


def extract(args) -> None:
    import torch

    from dermsearch.extract import Extractor, ExtractorConfig, load_image
    from dermsearch.extract.encoder import prepare_image
    from dermsearch.extract.fov import field_of_view
    from dermsearch.extract.gram import average_grams, dilate_masks, normalise_grams, style_vector
    from dermsearch.models.ensemble import tta_views
    from dermsearch.models.pooling import field_weights, masked_mean
    from dermsearch.runtime import Runtime

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    sel_path = out / "selection.json"
    if sel_path.exists():
        sel = json.loads(sel_path.read_text())
    else:
        t0 = time.time()
        sel = _selection(data)
        tmp = sel_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sel))
        tmp.replace(sel_path)
        print(f"selection: {len(sel)} images in {time.time() - t0:.0f} s "
              f"({sum(r['group'] == 'ham' for r in sel)} HAM with a vignette, "
              f"{sum(r['group'] == 'isic' and r['vignette'] > 0 for r in sel)} isic with one)", file=sys.stderr)
    ex = Extractor(ExtractorConfig(), Runtime(backend="torch", device="cpu"))
    cfg = ex.config
    assert cfg.colour == "shades-of-gray" and cfg.gram_pool == "lesion" and ex.tta == 4, (cfg, ex.tta)
    net = ex.net
    k = net.shared_stages
    seg_size = ex._segmenter.input_size or cfg.mask_size
    radius = int(round(cfg.gram_margin * SIZE))

    def load(batch):
        out_ = []
        for r in batch:
            img = load_image(r["path"])
            if r["group"] == "syn":
                img = synthetic_vignette(img)
            pix, seg = prepare_image(img, SIZE, cfg.colour, seg_size)[:2]
            from dermsearch.extract.images import resize_rgb
            fov = field_of_view(resize_rgb(img, SIZE))
            out_.append((pix, seg, fov))
        return out_

    def pooled_both(x, fields):
        """Per member, the pooled vector averaged over the views: (frame, field)."""
        p0 = p1 = None
        for xv, fv in zip(tta_views(x, ex.tta), tta_views(fields, ex.tta)):
            h, taps = net.members[0].forward_prefix(xv, k)
            a, b = [], []
            for m in net.members:
                y = h
                for stage in m.stages[k:]:
                    y = stage(y)
                hm = m.head(y)
                a.append(masked_mean(hm, None))
                b.append(masked_mean(hm, field_weights(fv, tuple(hm.shape[-2:]))))
            p0 = a if p0 is None else [u + v for u, v in zip(p0, a)]
            p1 = b if p1 is None else [u + v for u, v in zip(p1, b)]
        return [u / ex.tta for u in p0], [u / ex.tta for u in p1]

    groups = {}
    for r in sel:
        groups.setdefault(r["group"], []).append(r)
    checked = []

    def compute(prepared):
        pix = np.stack([p[0] for p in prepared])
        fields = torch.from_numpy(np.stack([p[2] for p in prepared])[:, None].astype(np.float32))
        with torch.inference_mode():
            raw = ex._segmenter.segment_batch(np.stack([p[1] for p in prepared]))
            masks = torch.from_numpy(ex.pool_masks(raw))
            x = ex._normalised(pix)
            p0, p1 = pooled_both(x, fields)
            f0, f1 = net.combine(p0)[0], net.combine(p1)[0]
            if not checked:     # the re-implemented pooling is the product's on the frame
                ref = net(x, views=ex.tta).feature
                assert torch.allclose(ref, f0, atol=1e-4), float((ref - f0).abs().max())
                checked.append(True)
            taps = net.member_outputs(x)
            taps = [o.features for o in taps]
            g0 = normalise_grams(average_grams(taps, masks, "lesion", cfg.gram_margin), cfg.gram_norm)
            m1 = dilate_masks(masks, radius) * fields
            g1 = normalise_grams(average_grams(taps, m1, "lesion", 0.0), cfg.gram_norm)
            ones = [1.0] * len(g0)
            s0, s1 = style_vector(g0, ones), style_vector(g1, ones)
        return {"f0": f0.numpy(), "f1": f1.numpy(), "s0": s0.astype(np.float16), "s1": s1.astype(np.float16),
                "field": np.array([p[2].mean() for p in prepared])}

    done = [extract_parts(group, out, args.batch, load, compute, prefix=f"part-{g}-") for g, group in groups.items()]
    print(json.dumps({k: round(sum(d[k] for d in done), 1) for k in ("images", "seconds")}))


def evaluate(args) -> None:
    from dermsearch.evaluate.gram_weights import macro_precision_at_k
    from dermsearch.extract import Extractor, ExtractorConfig
    from dermsearch.extract.gram import style_layout
    from dermsearch.index.store import Index
    from dermsearch.runtime import Runtime

    out, grams = Path(args.out_dir), Path(args.grams)
    meta = json.loads((grams / "meta.json").read_text())
    rows = meta["rows"][:json.loads((grams / "done.json").read_text())["done"]]
    pos = {r["id"]: i for i, r in enumerate(rows)}
    ex = Extractor(ExtractorConfig(), Runtime(backend="torch", device="cpu"))
    betas = np.asarray(ex.betas, dtype=np.float64)
    layout = style_layout(meta["channels"], "lesion", [1.0] * len(meta["channels"]))
    w = (betas ** 2).astype(np.float32)
    gr = Groups.of(rows)
    src, diag, mel = gr.source, gr.diagnosis, gr.melanoma
    hv, ht, hc, xq = gr.hv, gr.ht, gr.hc, gr.xq

    # features: the shipped index for HAM, this run's F0 for isic-uda1
    table = Index.open(args.index)._columns(["id", "feature"])
    fid = {i: k for k, i in enumerate(table.column("id").to_pylist())}
    fmat = np.asarray(table.column("feature").combine_chunks().values, dtype=np.float32).reshape(len(fid), -1)
    feat0 = np.zeros((len(rows), fmat.shape[1]), np.float32)
    for i, r in enumerate(rows):
        if r["source"] == "ham":
            feat0[i] = fmat[fid[r["id"]]]
    isic, ham, syn = (load_parts(out, f"part-{g}-") for g in ("isic", "ham", "syn"))
    style0 = np.load(grams / "sog-lesion.npy", mmap_mode="r")
    feat1 = feat0.copy()
    changed_style = {}
    for part in (isic, ham):
        for j, image_id in enumerate(part["ids"]):
            i = pos[image_id]
            if src[i] == "isic":
                feat0[i] = part["f0"][j]
            changed = part["field"][j] < 1.0
            feat1[i] = part["f1"][j] if changed else feat0[i]
            if changed:
                changed_style[i] = part["s1"][j]
    # isic F0 rows must equal what the product would store: check this run's F0 Grams against the store
    check = [pos[x] for x in isic["ids"][:20]]
    dev = float(np.abs(np.asarray(style0[check], np.float32) - isic["s0"][:20].astype(np.float32)).max())
    print(f"F0 Grams vs the gramcol store: max |diff| {dev:.2e}", file=sys.stderr)

    def style_rows(idx: np.ndarray, variant: int) -> np.ndarray:
        s = np.asarray(style0[idx], dtype=np.float16).copy()
        if variant == 1:
            for k, i in enumerate(idx):
                if i in changed_style:
                    s[k] = changed_style[i]
        return s

    valid_val = gr.valid
    all_layers = list(range(len(layout)))

    def figures(variant: int, qv_feat=None, qv_style=None) -> dict:
        feat = feat0 if variant == 0 else feat1
        qf = feat[hv] if qv_feat is None else qv_feat
        qs = style_rows(hv, variant) if qv_style is None else qv_style
        cos_v = np.where(valid_val, cosine_distance(qf, feat[ht]), np.inf)
        sty_v = np.where(valid_val, np.tensordot(w, _stack(qs, style_rows(ht, variant), layout, all_layers), 1), np.inf)
        res = {"mP": macro_precision_at_k(cos_v, valid_val, diag[hv], diag[ht]),
               "vA": vote_auc(sty_v, mel[hv], mel[ht])}
        if qv_feat is None:
            cos_x = cosine_distance(feat[xq], feat[hc])
            sty_x = np.tensordot(w, _stack(style_rows(xq, variant), style_rows(hc, variant), layout, all_layers), 1)
            res["xS"] = vote_auc(sty_x, mel[xq], mel[hc])
            res["xC"] = vote_auc(cos_x, mel[xq], mel[hc])
        return res

    t0 = time.time()
    syn_order = [list(syn["ids"]).index(rows[i]["id"]) for i in hv]
    result = {"F0": figures(0), "F1": figures(1)}
    for v in (0, 1):
        key = f"f{v}"
        result[f"F{v}"]["stress"] = figures(v, syn[key][syn_order], syn[f"s{v}"][syn_order])
    n_ham = int(sum(1 for i in changed_style if src[i] == "ham"))
    n_isic = int(sum(1 for i in changed_style if src[i] == "isic"))
    n_xq = int(sum(1 for i in xq if i in changed_style))
    result["counts"] = {"ham_train_val_with_vignette": n_ham, "isic_with_vignette": n_isic,
                        "isic_xval_queries_with_vignette": n_xq,
                        "syn_val_field_share_median": float(np.median(syn["field"]))}
    f0, f1 = result["F0"], result["F1"]
    eligible = all(f1[k] >= f0[k] - 0.003 for k in ("mP", "vA", "xS", "xC"))
    gain = (f1["xS"] + f1["xC"]) - (f0["xS"] + f0["xC"])
    loss0 = {k: f0[k] - f0["stress"][k] for k in ("mP", "vA")}
    loss1 = {k: f1[k] - f1["stress"][k] for k in ("mP", "vA")}
    protects = all(loss1[k] <= 0.5 * loss0[k] for k in ("mP", "vA")) and all(loss0[k] > 0 for k in ("mP", "vA"))
    flat = all(abs(f1[k] - f0[k]) <= 0.003 for k in ("mP", "vA", "xS", "xC"))
    result["rule"] = {"eligible": eligible, "xS+xC gain": gain, "stress loss F0": loss0, "stress loss F1": loss1,
                      "ships": bool(eligible and (gain >= 0.005 or (flat and protects)))}
    result["seconds"] = round(time.time() - t0, 1)
    write_result(result, args.out)


if __name__ == "__main__":
    def _evaluate_args(p):
        p.add_argument("data")
        p.add_argument("out_dir")
        p.add_argument("--index", required=True)
        p.add_argument("--grams", required=True)

    main(__doc__, extract, evaluate, evaluate_args=_evaluate_args)
