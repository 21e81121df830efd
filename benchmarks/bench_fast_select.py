"""Fast mode at a million rows with and without the sampled cut of ``select.largest`` (paired).

Opens the code-space archive ``bench_scaling.py --rows N --workdir DIR`` leaves in ``DIR/codes``
and answers the benchmark's queries (all ten measures, k = 5) twice per query, in turn: once with
every selection partitioning all its scores (``select.SAMPLED_FROM`` set out of reach: the code
before the cut) and once as shipped. Prints JSON: both medians and p95s, the per-query ratio, and
whether every query returned the same rows and scores both ways (it must: the cut chooses the
same rows).

    python benchmarks/bench_fast_select.py /tmp/dermsearch-codes --queries 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import scaling_codes as sc
import synthetic_archive as sa
from _common import machine

from dermsearch.search import select
from dermsearch.search.measures import MEASURES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--queries", type=int, default=100)
    args = ap.parse_args()
    fast, rows, plan = sa.open_archive(args.workdir / "codes")
    real_dir = args.workdir / "real"
    real = sa.RealRows(real_dir, fast.info["mask_size"])
    qrows = np.random.default_rng(1).choice(len(real), max(20, args.queries), replace=False)     # as bench_scaling
    queries = sc.queries_of(real, plan, qrows)[: args.queries]
    n, shipped = len(fast), select.SAMPLED_FROM
    lat = {"partition_all": [], "sampled_cut": []}
    same = True

    def one(j: int, sampled: bool):
        select.SAMPLED_FROM = shipped if sampled else 1 << 62
        valid = np.ones(n, dtype=bool)
        valid[qrows[j]] = False
        t = time.perf_counter()
        r = fast.search(queries[j], 5, MEASURES, valid)
        lat["sampled_cut" if sampled else "partition_all"].append(time.perf_counter() - t)
        return r

    try:
        for j in range(len(queries)):
            first = j % 2 == 0                      # alternate which goes first
            a, b = one(j, first), one(j, not first)
            same &= all(np.array_equal(a.rows[m], b.rows[m]) and np.allclose(a.scores[m], b.scores[m], atol=1e-6)
                        for m in MEASURES)
    finally:
        select.SAMPLED_FROM = shipped
    ratio = [x / y for x, y in zip(lat["partition_all"], lat["sampled_cut"])]
    print(json.dumps({
        "benchmark": "fast_select", "rows": n, "queries": len(queries), "measures": "all ten at once",
        "machine": machine(),
        **{k: {"ms_median": round(statistics.median(v) * 1000, 1),
               "ms_p95": round(float(np.percentile(v, 95)) * 1000, 1)} for k, v in lat.items()},
        "paired_ratio_median": round(statistics.median(ratio), 3), "same_rows_and_scores": bool(same)}, indent=1))


if __name__ == "__main__":
    main()
