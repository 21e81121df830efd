"""Paired comparison of two indexes of the same images (two models) on the same queries (#17).

`dermsearch evaluate` gives each model its own lesion-level CI; two overlapping CIs say little
about the *difference*, because both models answer the same queries. This script ranks the same
queries in both indexes (same lesion excluded, as `evaluate` does) and reports, for the measure
each model headlines, the difference B - A of macro-P@5 and of the 16-NN melanoma vote AUC with a
95 % CI from one cluster bootstrap over query lesions applied to both models at once (the same
resampled lesions for A and B). It names no winner and chooses nothing: it reads figures that were
already decided on `val`.

    python experiments/paired_test.py --a /tmp/ham-ship --b /tmp/ham-r7 \\
        --split ../shared/data/ham10000/split.csv --query-split test --candidate-split train val \\
        --measure-a euclidean --measure-b cosine --vote-a i1_sd --vote-b style
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import numpy as np

from dermsearch.evaluate import EvaluationConfig, Evaluator, read_split
from dermsearch.evaluate.metrics import bootstrap_ci, lesion_clusters, macro_mean, precision_at_k, vote_auc
from dermsearch.search import Searcher


def per_query(index: str, split: dict, query_splits, candidate_splits, measures, cfg: EvaluationConfig):
    ev = Evaluator(Searcher(index))
    snap = ev.searcher.snapshot
    ids = list(snap.ids)
    queries = ev.queries_from_index([i for i in ids if split.get(i) in query_splits])
    candidates = [i for i in ids if split.get(i) in candidate_splits]
    top, _ = ev.rank(queries, candidates, cfg)
    diag = np.array([d or "" for d in snap.diagnosis] + [""], dtype=object)
    mel = np.append(snap.melanoma, np.nan)
    out = {"ids": np.asarray(queries.ids), "lesion": np.asarray(queries.lesion_id, dtype=object),
           "diagnosis": np.asarray(queries.diagnosis, dtype=object), "melanoma": np.asarray(queries.melanoma)}
    for m in measures:
        rows = top[m]
        out[f"p@k {m}"] = precision_at_k(diag[rows[:, :cfg.k]] == out["diagnosis"][:, None])
        out[f"vote {m}"] = np.nan_to_num(mel[rows[:, :cfg.vote_k]], nan=0.0).mean(axis=1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="index of the first model (e.g. the one replaced)")
    ap.add_argument("--b", required=True, help="index of the second model (e.g. the one shipped)")
    ap.add_argument("--split", required=True)
    ap.add_argument("--query-split", nargs="+", default=["test"])
    ap.add_argument("--candidate-split", nargs="+", default=["train", "val"])
    ap.add_argument("--measure-a", required=True, help="A's macro-P@5 measure (chosen on val)")
    ap.add_argument("--measure-b", required=True, help="B's macro-P@5 measure (chosen on val)")
    ap.add_argument("--vote-a", required=True, help="A's vote measure (chosen on val)")
    ap.add_argument("--vote-b", required=True, help="B's vote measure (chosen on val)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    split = read_split(args.split)
    cfg = EvaluationConfig()
    a = per_query(args.a, split, set(args.query_split), set(args.candidate_split), {args.measure_a, args.vote_a}, cfg)
    b = per_query(args.b, split, set(args.query_split), set(args.candidate_split), {args.measure_b, args.vote_b}, cfg)
    if set(a["ids"]) != set(b["ids"]):
        raise SystemExit("the two indexes do not hold the same query images")
    where = {i: n for n, i in enumerate(b["ids"])}
    align = np.array([where[i] for i in a["ids"]])
    b = {k: v[align] for k, v in b.items()}

    labelled = a["diagnosis"] != ""
    groups = a["diagnosis"][labelled]
    pa, pb = a[f"p@k {args.measure_a}"][labelled], b[f"p@k {args.measure_b}"][labelled]
    clusters = lesion_clusters(a["lesion"])

    def macro_diff(idx):
        return macro_mean(pb[idx], groups[idx]) - macro_mean(pa[idx], groups[idx])

    known = ~np.isnan(a["melanoma"])
    y = a["melanoma"][known]
    va, vb = a[f"vote {args.vote_a}"][known], b[f"vote {args.vote_b}"][known]

    def auc_diff(idx):
        return vote_auc(y[idx], vb[idx, None]) - vote_auc(y[idx], va[idx, None])

    every = np.arange(labelled.sum())
    report = {
        "queries": int(len(a["ids"])), "query_split": args.query_split, "candidate_split": args.candidate_split,
        "bootstrap": args.bootstrap, "ci_unit": "lesion",
        f"macro_p@{cfg.k}": {"a": {args.measure_a: macro_mean(pa, groups)},
                             "b": {args.measure_b: macro_mean(pb, groups)},
                             "b_minus_a": macro_diff(every),
                             "ci95": bootstrap_ci(macro_diff, len(pa), args.bootstrap, args.seed,
                                                  clusters=clusters[labelled])},
        f"melanoma_auc_vote{cfg.vote_k}": {
            "a": {args.vote_a: vote_auc(y, va[:, None])}, "b": {args.vote_b: vote_auc(y, vb[:, None])},
            "b_minus_a": auc_diff(np.arange(len(y))),
            "ci95": bootstrap_ci(auc_diff, len(y), args.bootstrap, args.seed, clusters=clusters[known])},
    }
    print(json.dumps(report, indent=1, default=partial(float)))


if __name__ == "__main__":
    main()
