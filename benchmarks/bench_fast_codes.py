"""Fast mode at a million rows with float32 and with float16 scanned codes (paired).

Opens the code-space archive ``bench_scaling.py --rows N --workdir DIR --code-precision float32``
leaves in ``DIR/codes`` (float32 codes) and a twin of it whose style sketches and mask cells are
converted in memory as ``optimize`` writes them from 100,000 rows (``code_precision`` fp16:
float16 sketches scaled by a power of two, float16 mask cells as fractions of a cell; the PCA
projections stay float32). Answers the benchmark's queries
(all ten measures, k = 5) once with each, in turn, and prints JSON: both medians and p95s, the
per-query ratio, recall@5 of each against exact float32 (``DIR/codes_references.npz``, which
``bench_scaling.py`` wrote for these queries), and how many answers are the same rows both ways.

    python benchmarks/bench_scaling.py /work/ham-index --rows 1000000 --workdir /tmp/dermsearch-codes \
        --code-precision float32
    python benchmarks/bench_fast_codes.py /tmp/dermsearch-codes --queries 100
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import scaling_codes as sc
import synthetic_archive as sa
from _common import machine

from dermsearch.search.kernels import power_of_two_scale
from dermsearch.search.measures import MEASURES

CODES = ("style_sketch", "mask_cells")


def half_twin(fast):
    """``fast`` with its sketches and mask cells as ``optimize`` writes them with fp16 codes."""
    a = fast.arrays
    if a["mask_cells"].dtype != np.float32 or a["style_sketch"].dtype != np.float32:
        raise SystemExit("the archive's codes are not float32: write it with bench_scaling.py --code-precision float32")
    px = (fast.info["mask_size"] // fast.config.mask_grid) ** 2
    scale = power_of_two_scale(float(np.abs(a["style_sketch"]).max()))        # as half_sketches
    twin = copy.copy(fast)
    twin.arrays = {**a, "style_sketch": (a["style_sketch"] * np.float32(scale)).astype(np.float16),
                   "mask_cells": (a["mask_cells"] / np.float32(px)).astype(np.float16)}
    twin.info = {**fast.info, "mask_cells_unit": "fraction", "style_sketch_scale": scale, "code_precision": "fp16"}
    return twin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--queries", type=int, default=100)
    args = ap.parse_args()
    fast32, _rows, plan = sa.open_archive(args.workdir / "codes")
    fast16 = half_twin(fast32)
    real = sa.RealRows(args.workdir / "real", fast32.info["mask_size"])
    qrows = np.random.default_rng(1).choice(len(real), max(20, args.queries), replace=False)     # as bench_scaling
    queries = sc.queries_of(real, plan, qrows)[: args.queries]
    n = len(fast32)
    meta = json.loads((args.workdir / "codes_references.json").read_text())
    if meta["queries"][: len(queries)] != [int(i) for i in qrows[: len(queries)]]:
        raise SystemExit("codes_references.npz holds other queries: run bench_scaling.py on this workdir first")
    with np.load(args.workdir / "codes_references.npz") as z:
        raw = {c: z[c] for c in z.files}
    truth = sc.top5(raw, qrows, n, len(queries))
    del raw
    lat = {"float32": [], "fp16": []}
    hits = {v: {m: 0 for m in MEASURES} for v in lat}
    same = 0

    def one(j: int, name: str):
        valid = np.ones(n, dtype=bool)
        valid[qrows[j]] = False
        t = time.perf_counter()
        r = (fast16 if name == "fp16" else fast32).search(queries[j], 5, MEASURES, valid)
        lat[name].append(time.perf_counter() - t)
        for m in MEASURES:
            hits[name][m] += len(set(r.rows[m].tolist()) & set(truth[m][j].tolist()))
        return r

    for j in range(len(queries)):
        order = ("float32", "fp16") if j % 2 == 0 else ("fp16", "float32")     # alternate which goes first
        got = {name: one(j, name) for name in order}
        same += sum(np.array_equal(got["float32"].rows[m], got["fp16"].rows[m]) for m in MEASURES)
    ratio = [x / y for x, y in zip(lat["float32"], lat["fp16"])]
    out = {"benchmark": "fast_codes", "rows": n, "queries": len(queries), "measures": "all ten at once",
           "machine": machine(),
           "code_bytes_per_row": {"float32": int(sum(fast32.arrays[c].itemsize * fast32.arrays[c].shape[1]
                                                     for c in CODES)),
                                  "fp16": int(sum(fast16.arrays[c].itemsize * fast16.arrays[c].shape[1]
                                                  for c in CODES))},
           "paired_ratio_median": round(statistics.median(ratio), 3),
           "same_rows": f"{same}/{len(queries) * len(MEASURES)} (query, measure) answers"}
    for name, v in lat.items():
        rec = {m: round(h / (5 * len(queries)), 4) for m, h in hits[name].items()}
        out[name] = {"ms_median": round(statistics.median(v) * 1000, 1),
                     "ms_p95": round(float(np.percentile(v, 95)) * 1000, 1),
                     "recall_at_5": rec, "recall_at_5_lowest": min(rec.values())}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
