"""Issue #40: images reach the model at the sharpness it was trained on (a cap on the long side).

The rule and protocol are in docs/experiments.md ("images reach the model at the sharpness it was
trained on"), committed before this script's figures were computed.

For each cap (0 = the shipped default, none), the product's ``Evaluator`` on a shipped-default index
of HAM10000, candidates ``train`` + ``val``, queries the isic-uda1 images of one split, extracted by the
index's own model with ``ExtractorConfig.max_side`` set to the cap (torch on the CPU for every cap
alike). No HAM10000 image of the index exceeds 200 px, so the index's stored vectors are what the
capped extractor would store too (asserted below).

    python experiments/resolution_cap.py /work/ham-fov ../shared/data --split xval \
        --out docs/results/issue40_resolution_cap_xval.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from PIL import Image

CAPS = (0, 200, 300)
FIGURES = {"xS": ("style", "melanoma_auc_vote16"), "xC": ("cosine", "melanoma_auc_vote16"),
           "xE": ("euclidean", "melanoma_auc_vote16")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index")
    ap.add_argument("data")
    ap.add_argument("--split", default="xval", help="isic-uda1 split of the queries")
    ap.add_argument("--caps", type=int, nargs="+", default=list(CAPS))
    ap.add_argument("--queries", help="a labels CSV of other queries (default: isic-uda1's, with --split)")
    ap.add_argument("--out")
    args = ap.parse_args()

    from dermsearch.config import EvaluationConfig, Runtime
    from dermsearch.evaluate import Evaluator, read_split
    from dermsearch.extract import Extractor

    data = Path(args.data)
    ev = Evaluator(args.index)
    index = ev.searcher.index
    base = ev.searcher.extractor.config
    assert base.max_side == 0, base
    split = read_split(data / "ham10000/split.csv")
    candidates = [i for i, s in split.items() if s in ("train", "val")]
    # the stored HAM rows are what a capped extractor would store: none exceeds the smallest cap
    sizes = [Image.open(data / "ham10000/images" / f"{i}.jpg").size for i in candidates]
    assert max(max(s) for s in sizes) <= min(c for c in args.caps if c), max(max(s) for s in sizes)
    if args.queries:
        labels, only = Path(args.queries), None
    else:
        labels = data / "isic-uda1/labels.csv"
        only = {i for i, s in read_split(data / "isic-uda1/split.csv").items() if s == args.split}
    result = {"index": str(args.index), "queries": str(labels), "split": args.split if only else None,
              "candidates": len(candidates), "fingerprint": index.manifest.get("fingerprint")}
    for cap in args.caps:
        t0 = time.time()
        ev.searcher._extractor = Extractor(replace(base, max_side=cap), Runtime(backend="torch", device="cpu"))
        queries = ev.queries_from_csv(labels, {"nevus": "nv", "melanoma": "mel"}, only_ids=only,
                                      on_problem=lambda p: print(f"skipped {p.where}: {p.reason}", file=sys.stderr))
        report = ev.run(queries, candidates, EvaluationConfig())
        r = {k: report.measures[m][metric] for k, (m, metric) in FIGURES.items()}
        r["xH"] = report.head["melanoma_auc_head"] if report.head else None
        r["queries"] = report.queries
        r["seconds"] = round(time.time() - t0, 1)
        r["all_vote_auc"] = {m: v["melanoma_auc_vote16"]["value"] for m, v in report.measures.items()}
        result[f"R{cap}"] = r
        print(f"R{cap}: " + ", ".join(f"{k} {r[k]['value']:.3f}" for k in ("xS", "xC", "xE", "xH") if r[k]),
              file=sys.stderr, flush=True)
    if "R0" in result and not args.queries:
        def v(c, k):
            return result[c][k]["value"]
        eligible = [f"R{c}" for c in args.caps if c and all(v(f"R{c}", k) >= v("R0", k) - 0.005
                                                            for k in ("xS", "xC", "xE", "xH"))]
        best = max(eligible, key=lambda c: v(c, "xS") + v(c, "xC"), default=None)
        chosen = best if best and (v(best, "xS") + v(best, "xC")) - (v("R0", "xS") + v("R0", "xC")) >= 0.01 else None
        result["rule"] = {"eligible": eligible, "best_eligible": best, "chosen": chosen,
                          "R0_joint": v("R0", "xS") + v("R0", "xC")}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
