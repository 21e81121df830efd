"""Issue #44: where a fast-mode query's time goes at a million rows, step by step (wall time per step,
measured by wrapping FastIndex's steps; nested steps are counted in their callers too). Uses the
code-space archive of ``benchmarks/bench_scaling.py`` (its --workdir) and prints JSON.

    PYTHONPATH=src:benchmarks .venv/bin/python experiments/fast_steps.py /tmp/dermsearch-codes16 \
        --real /tmp/dermsearch-codes/real
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np
import scaling_codes as sc
import synthetic_archive as sa

from dermsearch.search import fast as F
from dermsearch.search import fast_rerank as FR
from dermsearch.search.measures import MEASURES

STEPS = {F.FastIndex: ("_pass", "_normaliser_candidates", "_estimated_components", "_wide_rows", "_exact_raw",
                       "_normaliser"),
         F: ("style_candidates", "top_rows", "code_products", "row_parallel_products", "rough_scores"),
         FR: ("exact_near_max", "fill_style", "exact_hits")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--real", type=Path, help="the real rows (default WORKDIR/real)")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--warm", type=int, default=5)
    args = ap.parse_args()
    fast, rows, plan = sa.open_archive(args.workdir / "codes")
    real = sa.RealRows(args.real or args.workdir / "real", fast.info["mask_size"])
    qrows = np.random.default_rng(1).choice(len(real), 100, replace=False)
    queries = sc.queries_of(real, plan, qrows)[:args.warm + args.queries]
    spent: collections.Counter = collections.Counter()
    for owner, names in STEPS.items():
        for name in names:
            f = getattr(owner, name)

            def timed(*a, _f=f, _n=name, **k):
                t = time.perf_counter()
                try:
                    return _f(*a, **k)
                finally:
                    spent[_n] += time.perf_counter() - t
            setattr(owner, name, timed)
    n = len(fast)

    def one(j):
        valid = np.ones(n, dtype=bool)
        valid[qrows[j]] = False
        return fast.search(queries[j], 5, MEASURES, valid)

    for j in range(args.warm):
        one(j)
    spent.clear()
    rows.seconds = 0.0
    t = time.perf_counter()
    for j in range(args.warm, args.warm + args.queries):
        one(j)
    per_query = (time.perf_counter() - t) / args.queries * 1e3
    print(json.dumps({"rows": n, "queries": args.queries, "ms_per_query": round(per_query, 1),
                      "synthesis_ms_per_query": round(rows.seconds / args.queries * 1e3, 1),
                      "steps_ms_per_query": {k: round(v / args.queries * 1e3, 1) for k, v in spent.most_common()},
                      "code_bytes_scanned_per_query": fast.bytes_scanned_per_query}, indent=1))


if __name__ == "__main__":
    main()
