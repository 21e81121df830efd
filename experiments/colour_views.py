"""Issue #40: colour test-time views (the feature averaged over several colour-constancy estimates).

The rule and protocol are in docs/experiments.md ("colour test-time views"), committed before this
script's figures were computed.

Step 1 (``extract``): for each image, the packaged ensemble's members' pooled vectors (field-of-view
pooling, as shipped) for the 4 shipped views of the Shades of Gray (p = 6) image, and for the
identity and left-right flip of the same image uncorrected and Gray World-corrected (Shades of Gray
with p = 1). From them, per image:

- ``F1``: the 4 shipped views of the p = 6 image (the shipped feature, recomputed);
- ``C2``: identity and flip of the p = 6 image and of the uncorrected image (the shipped cost);
- ``C3``: identity and flip of the p = 6, the Gray World and the uncorrected image (1.5x the cost);

each as the feature and the head's melanoma probability. Images: HAM ``val``, isic-uda1 ``xval`` and
the same 1,000 HAM ``train`` images as the multi-scale run (the first 1,000 of a seed-40 permutation
of ``train``). Written as ``OUT/part-<n>.npz`` per batch, so a cut run resumes.

Step 2 (``evaluate``): the rule's figures for ``F1``, ``C2`` and ``C3``. ``F1``'s must equal the
multi-scale run's ``F1`` (``docs/results/issue40_multiscale_val.json``: same images, same model).

    python experiments/colour_views.py extract ../shared/data /work/colourviews
    python experiments/colour_views.py evaluate /work/colourviews --out docs/results/issue40_colour_views_val.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crosssource import (  # noqa: E402
    extract_parts,
    features_and_heads,
    load_run,
    main,
    sample_selection,
    view_figures,
    views_rule,
    write_result,
)

TRAIN_SAMPLE = 1000
VARIANTS = ("C2", "C3")
MULTISCALE = Path(__file__).resolve().parents[1] / "docs/results/issue40_multiscale_val.json"


def extract(args) -> None:
    import torch

    from dermsearch.extract import Extractor, ExtractorConfig, load_image
    from dermsearch.extract.colour import shades_of_gray
    from dermsearch.extract.encoder import prepare_image
    from dermsearch.models.ensemble import tta_views
    from dermsearch.runtime import Runtime

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    selected = sample_selection(data, TRAIN_SAMPLE)      # the multi-scale run's images
    (out / "rows.json").write_text(json.dumps(selected))
    ex = Extractor(ExtractorConfig(), Runtime(backend="torch", device="cpu"))
    cfg, net = ex.config, ex.net
    assert cfg.fov and ex.tta == 4 and cfg.colour == "shades-of-gray" and not cfg.max_side, (cfg, ex.tta)

    def load(batch):
        res = []
        for r in batch:
            p = prepare_image(load_image(r["path"]), cfg.image_size, "none", None, fov=True)
            res.append((shades_of_gray(p.pixels, 6.0), shades_of_gray(p.pixels, 1.0), p.pixels, p.field))
        return res

    def views(pixels, fields, n):
        """Each of the first ``n`` shipped views' member pooled vectors (the field flipped alike)."""
        x = ex._normalised(np.stack(pixels))
        return [[o.pooled for o in net.member_outputs(xv, fv)] for xv, fv in zip(tta_views(x, n), tta_views(fields, n))]

    def mean(vs):
        return [sum(v[i] for v in vs) / len(vs) for i in range(len(vs[0]))]

    def compute(loaded):
        fields = torch.from_numpy(np.stack([f for *_, f in loaded])[:, None].astype(np.float32))
        with torch.inference_mode():
            sog = views([a for a, *_ in loaded], fields, 4)
            gw = views([b for _, b, *_ in loaded], fields, 2)
            raw = views([c for _, _, c, _ in loaded], fields, 2)
            pooled = {"F1": mean(sog), "C2": mean(sog[:2] + raw), "C3": mean(sog[:2] + gw + raw)}
            return features_and_heads(net, pooled)

    first = selected[:3]           # this script's F1 is the product's feature
    got = compute(load(first))["f_F1"]
    want = ex.extract([load_image(r["path"]) for r in first]).features
    dev = float(np.abs(got - want).max())
    assert dev < 1e-3, dev
    print(f"F1 equals the product's feature to {dev:.2e}", file=sys.stderr)
    print(json.dumps(extract_parts(selected, out, args.batch, load, compute)))


def evaluate(args) -> None:
    out = Path(args.out_dir)
    selected, data, gr = load_run(out)
    result = view_figures(data, gr, ("F1", *VARIANTS))
    earlier = json.loads(MULTISCALE.read_text())["F1"]
    result["F1_max_abs_diff_vs_multiscale_run"] = max(abs(result["F1"][k] - earlier[k]) for k in earlier)
    eligible, best = views_rule(result, "C2", "C3")
    result["rule"] = {"eligible": eligible, "chosen": best,
                      "counts": {"val": len(gr.hv), "train_sample": len(gr.ht), "xval": len(gr.xq)}}
    write_result(result, args.out)


def _evaluate_args(p) -> None:
    p.add_argument("out_dir")


if __name__ == "__main__":
    main(__doc__, extract, evaluate, evaluate_args=_evaluate_args)
